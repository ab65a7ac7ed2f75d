"""Benchmark: frozen-backbone head training on cached features vs recomputing the backbone.

Same synthetic data (uint8 224x224 spectrogram-like images), same model (mobilenetv2_100,
random weights: timing does not depend on their values), same training loop
(`pipeline.training.engine.fit`),
one process. Prints the seconds per epoch of both paths, the one-off
feature extraction and the speed-up per epoch (target >= 10x).

Run: `python -m bench.bench_feature_cache [--images 160] [--epochs 1] [--model mobilenetv2_100]`
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from pipeline.training import data, features
from pipeline.training.checkpoint import Checkpointer
from pipeline.training.engine import FitConfig, fit
from pipeline.training.freeze import apply_freeze, feature_extractor, param_groups
from pipeline.training.models import build_model, model_data_config
from pipeline.training.transforms import ModelInput, Preprocess, preprocess_spec
from pipeline.training.weights import WeightsSource

log = logging.getLogger("bench.feature_cache")
NUM_CLASSES, SIZE, VAL_SHARE = 5, 224, 0.2


def _images(n: int, seed: int = 0) -> TensorDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8)
    targets = rng.integers(0, NUM_CLASSES, n)
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(targets))


def _split(ds: TensorDataset) -> dict[str, TensorDataset]:
    n_val = max(1, int(len(ds) * VAL_SHARE))
    x, y = ds.tensors
    return {"train": TensorDataset(x[n_val:], y[n_val:]),
            "val": TensorDataset(x[:n_val], y[:n_val])}


def _fit_seconds(module, model, sets, cfg, device, prepare, batch_index, folder) -> float:
    gen = torch.Generator()
    sampler = data.train_sampler(sets["train"].tensors[1].numpy(), False, gen)
    loaders = {s: data.make_loader(ds, 32, device, 0, batch_index=batch_index,
                                   sampler=sampler if s == "train" else None)
               for s, ds in sets.items()}
    groups = param_groups(model, cfg.lr, cfg.weight_decay, None)
    start = time.perf_counter()
    fit(module, groups, loaders["train"], loaders["val"], cfg, device,
        Checkpointer(folder, "bench"), prepare=prepare, sampler_generator=gen)
    return (time.perf_counter() - start) / cfg.epochs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenetv2_100")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(args.model, NUM_CLASSES, WeightsSource("random", "random"))
    report = apply_freeze(model, "frozen")
    spec = preprocess_spec(model_data_config(model), "grey3", SIZE)
    prepare = ModelInput(Preprocess.from_spec(spec))
    sets = _split(_images(args.images))
    cfg = FitConfig(epochs=args.epochs, lr=1e-3, warmup_epochs=0)
    model.to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        recompute = _fit_seconds(model, model, sets, cfg, device, prepare, True, Path(tmp) / "a")
        feature_fn, head = feature_extractor(model, "frozen")
        start = time.perf_counter()
        cached = {
            s: TensorDataset(*features.extract_features(
                feature_fn, data.make_loader(ds, 64, device, 0, batch_index=True), device,
                prepare.preprocess, desc=f"{s} features"))
            for s, ds in sets.items()
        }
        extract = time.perf_counter() - start
        head_epoch = _fit_seconds(head, model, cached, cfg, device, None, True, Path(tmp) / "b")
    ratio = recompute / head_epoch
    log.info(
        "%s on %s, %d images (%d train / %d val) at %d px, %s, %d epochs each",
        args.model, device, args.images, len(sets["train"]), len(sets["val"]), SIZE,
        report.summary(), args.epochs,
    )
    log.info("recompute backbone every epoch: %.2f s/epoch", recompute)
    log.info("cached features: %.3f s/epoch (+ %.2f s once to extract them)", head_epoch, extract)
    log.info("speed-up per epoch: %.0fx (target >= 10x); break-even after %.1f epochs",
             ratio, extract / max(recompute - head_epoch, 1e-9))


if __name__ == "__main__":
    main()
