"""Train stage: fine-tune one timm CNN on the spectrogram images.

Reads `data/spectrograms/` (index.csv, meta.json, shards/) and `data/splits/assignment.csv`;
params from the `train:` section of params.yaml. Writes to `models/<run>/`:

- `model.safetensors`: the best epoch's full model (selected on val macro-F1);
- `checkpoint/`: the last epoch's resumable state (re-running the same command resumes);
- `history.csv`: per-epoch train/val loss, accuracy, macro-F1 and lr (`dvc plots`);
- `metrics.json`: best val macro-F1 and friends (`dvc metrics`);
- `resolved_config.json`: params, classes, preprocessing spec, weights source, freeze report,
  device, versions;
- `mlflow_run.json`: the id of this model's MLflow run (see `pipeline.run_tracking`), which
  the evaluate stage completes; params from the `tracking:` section. An unreachable
  `MLFLOW_TRACKING_URI` fails before any training;
- `features/`: frozen mode's cached backbone features (unless train.feature_cache_dir is set).

Run: `python -m pipeline.train --params params.yaml --backbone vgg16.tv_in1k --freeze frozen
--spectrograms data/spectrograms --splits data/splits --out models/vgg16.tv_in1k-frozen`
(dvc.yaml runs it for every backbone x freeze mode in `train.backbones` x `train.freeze_modes`).
With `train.nproc` > 1 it restarts itself under `torchrun --standalone` with that many
data-parallel processes (several nodes: start torchrun yourself, docs/cluster.md); see
`pipeline.distributed`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from data_prep.cli import run_main
from data_prep.layout import write_json
from data_prep.params import DEFAULT_PARAMS, StrictModel, load_section
from pipeline import data, distributed, features, run_tracking
from pipeline.checkpoint import Checkpointer, save_weights
from pipeline.device import resolve_device
from pipeline.engine import EpochCallback, FitConfig, FitResult, fit
from pipeline.freeze import param_groups
from pipeline.run_folder import (
    CHECKPOINT,
    FEATURES,
    HISTORY,
    METRICS,
    MODEL,
    RESOLVED,
    TrainingModel,
    build_for_training,
    library_versions,
    split_counts,
    train_metrics,
    write_history,
)

log = logging.getLogger(__name__)

FreezeMode = Literal["frozen", "partial", "full"]
MATRIX_KEYS = ("backbones", "freeze_modes")  # choose the DVC matrix runs, not one run's result
CODE_MODULES = ("train", "engine", "device", "checkpoint", "data", "features", "transforms",
                "models", "freeze", "run_folder", "distributed")  # what a trained result depends on
LAUNCH_KEYS = ("nproc",)  # how many processes, not what is trained: a run resumes with any

class AugmentParams(StrictModel):
    """SpecAugment-style masks (pixels); 0 turns a mask off."""

    time_mask: int = Field(ge=0)
    freq_mask: int = Field(ge=0)
    num_masks: int = Field(ge=0)


class TrainParams(StrictModel):
    """The `train:` section of params.yaml (the comments there say why each value)."""

    backbones: list[str] = Field(min_length=1)
    freeze_modes: list[FreezeMode] = Field(min_length=1)
    weights: str
    weights_dir: str | None = None
    trainable_groups: int = Field(ge=1)
    pre_logits: Literal["frozen", "trainable"]
    channels: Literal["grey3", "in_chans1"]
    optimizer: Literal["adamw", "sgd"]
    lr: dict[FreezeMode, float]
    layer_decay: float | None = Field(gt=0, le=1)
    weight_decay: float = Field(ge=0)
    momentum: float = Field(ge=0, lt=1)
    epochs: int = Field(ge=1)
    warmup_epochs: float = Field(ge=0)
    batch_size: int = Field(ge=1)
    label_smoothing: float = Field(ge=0, lt=1)
    imbalance: Literal["weighted_loss", "balanced_sampler", "none"]
    class_weight_power: float = Field(ge=0, le=1)
    class_weight_cap: float | None = Field(ge=1)
    patience: int = Field(ge=0)
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    num_workers: int | None = Field(default=None, ge=0)
    max_per_class: dict[Literal["train", "val"], int | None] = Field(default_factory=dict)
    cache_features: bool
    feature_cache_dir: str | None = None
    feature_dtype: Literal["float16", "float32"]
    augment: AugmentParams
    nproc: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        missing = [m for m in self.freeze_modes if m not in self.lr]
        if missing:
            raise ValueError(f"lr has no value for freeze modes {missing}")
        if any(v is not None and v < 1 for v in self.max_per_class.values()):
            raise ValueError("max_per_class values must be >= 1, or null for no cap")
        return self


def run(
    params: TrainParams,
    backbone: str,
    freeze: FreezeMode,
    spectrograms: Path,
    splits: Path,
    out: Path,
    tracking_params: run_tracking.TrackingParams | None = None,
) -> dict:
    """Trains one backbone x freeze-mode run and writes its outputs to `out`.

    Args:
        tracking_params: the `tracking:` section; None trains without MLflow (tests).

    Returns:
        The metrics written to metrics.json.
    """
    started = time.monotonic()
    if tracking_params is not None:  # a down server must fail now, not after hours of training
        run_tracking.check_tracking_server()
    meta = data.read_meta(spectrograms)
    classes = list(meta["classes"])
    frame = data.load_split_index(spectrograms, splits, classes)
    frame = data.cap_per_class(frame, params.max_per_class, params.seed)
    frames = {split: data.split_frame(frame, split, splits) for split in ("train", "val")}
    device = distributed.device_of_rank(resolve_device(params.device))
    setup = build_for_training(
        backbone, freeze, len(classes), int(meta["image_size"]), weights=params.weights,
        weights_dir=params.weights_dir, seed=params.seed, channels=params.channels,
        trainable_groups=params.trainable_groups, pre_logits=params.pre_logits,
        augment=params.augment.model_dump())
    cached = freeze == "frozen" and params.cache_features
    if cached and setup.prepare.augment.enabled:
        raise ValueError(
            "train.augment masks change every epoch, but frozen mode caches features once: set "
            "train.cache_features=false to recompute features each epoch, or turn the masks off"
        )
    data_version = features.data_fingerprint(spectrograms, splits, frame)
    fingerprint = features.cache_key(
        params=params.model_dump(exclude={*MATRIX_KEYS, *LAUNCH_KEYS}), backbone=backbone,
        freeze=freeze,
        data=data_version, weights=setup.weights_id, spec=setup.spec, code=_code_version(),
    )
    targets = frames["train"]["target"].to_numpy()
    weight = (data.class_weights(targets, len(classes), params.class_weight_power,
                                 params.class_weight_cap)
              if params.imbalance == "weighted_loss" else None)
    resolved = {
        "stage": "train", "backbone": backbone, "freeze": freeze, "params": params.model_dump(),
        "classes": classes, "preprocessing": setup.spec,
        "weights": {**asdict(setup.weights), "describe": setup.weights.describe()},
        "freeze_report": asdict(setup.report), "device": str(device), "seed": params.seed,
        "num_workers": 0 if cached else data.resolve_workers(params.num_workers, device),
        # data_fingerprint: shard names/sizes/mtimes, for cache and resume decisions only; the
        # content hashes of the data are the DVC tags (provenance.dvc_data_version)
        "data_fingerprint": data_version, "fingerprint": fingerprint,
        "class_weights": weight.tolist() if weight is not None else None,
        "counts": split_counts(frame, classes), "cached_features": cached,
        "versions": library_versions(),
        "processes": distributed.ranks().world,
    }
    main = distributed.is_main()  # only rank 0 writes the run folder and logs to MLflow
    with run_tracking.train_run_or_none(tracking_params if main else None, out,
                                        resolved) as run_id:
        train_sets = _train_sets(params, setup, backbone, spectrograms, frames, device, cached,
                                 data_version, out)
        result = _fit(params, freeze, setup.model, train_sets, targets, device, weight,
                      distributed.MainOnlyCheckpointer(out / CHECKPOINT, fingerprint),
                      out / HISTORY if main else None,
                      run_tracking.epoch_logger(run_id) if run_id else None)
        metrics = train_metrics(result, len(frames["train"]), len(frames["val"]),
                                time.monotonic() - started)
        if main:  # no metadata in the weights: its order varies, the bytes would too
            save_weights(setup.model, out / MODEL)
            write_json(out / METRICS, metrics)
            write_json(out / RESOLVED, resolved)
        if run_id:
            run_tracking.log_train_outputs(run_id, metrics, [out / RESOLVED, out / HISTORY])
    log.info("wrote %s: best val macro-F1 %.4f at epoch %d",
             out, metrics["best_val_macro_f1"], metrics["best_epoch"])
    return metrics


def _train_sets(
    params: TrainParams,
    setup: TrainingModel,
    backbone: str,
    spectrograms: Path,
    frames: dict[str, pd.DataFrame],
    device: torch.device,
    cached: bool,
    data_version: str,
    out: Path,
) -> features.TrainSets:
    workers = data.resolve_workers(params.num_workers, device)
    images = {s: data.SpectrogramDataset(spectrograms, df) for s, df in frames.items()}
    if not cached:
        return features.TrainSets(setup.model, images, setup.prepare, workers, batch_index=False)
    key = features.cache_key(backbone=backbone, weights=setup.weights_id, spec=setup.spec,
                             pre_logits=params.pre_logits, data=data_version,
                             seed=params.seed if setup.weights.kind == "random" else None)
    folder = Path(params.feature_cache_dir or out / FEATURES) / f"{backbone}-{key}"
    return features.cached_head_sets(
        setup.model, params.pre_logits, images, folder, device, setup.prepare.preprocess,
        extract=distributed.feature_datasets,  # ranks share the extraction
        batch_size=2 * params.batch_size,  # no gradients to keep: twice the batch fits
        workers=workers, dtype=params.feature_dtype)


def _fit(
    params: TrainParams,
    freeze: FreezeMode,
    model: torch.nn.Module,
    train_sets: features.TrainSets,
    targets: np.ndarray,
    device: torch.device,
    weight: torch.Tensor | None,
    checkpointer: Checkpointer,
    history: Path | None,
    on_epoch_end: EpochCallback | None = None,
) -> FitResult:
    """Loaders, optimiser groups and the training loop; history.csv (and `on_epoch_end`,
    e.g. MLflow logging) after every epoch; `history` None writes none (ranks other than 0).

    Under torchrun each process loads its share of every global batch of `train.batch_size`
    and the module trains in DistributedDataParallel (`pipeline.distributed`)."""
    gen = torch.Generator().manual_seed(params.seed)
    sampler = data.train_sampler(targets, params.imbalance == "balanced_sampler", gen)
    loaders = {
        split: data.make_loader(
            ds, distributed.local_batch(params.batch_size), device, params.seed,
            num_workers=train_sets.workers, batch_index=train_sets.batch_index,
            sampler=distributed.sharded_sampler(sampler, ds, params.batch_size)
            if split == "train" else distributed.sharded_sampler(None, ds, None),
        )
        for split, ds in train_sets.sets.items()
    }
    cfg = _fit_config(params, freeze)
    layer_decay = params.layer_decay if freeze != "frozen" else None  # one head: no layers
    result = fit(
        distributed.wrap(train_sets.module, device),
        param_groups(model, cfg.lr, cfg.weight_decay, layer_decay),
        loaders["train"], loaders["val"], cfg, device, checkpointer,
        prepare=train_sets.prepare, class_weights=weight, sampler_generator=gen,
        on_epoch_end=partial(_after_epoch, history, on_epoch_end) if history is not None else None,
        gather=distributed.gather,
    )
    if history is not None:
        write_history(history, result.history)
    return result


def _fit_config(params: TrainParams, freeze: FreezeMode) -> FitConfig:
    return FitConfig(
        epochs=params.epochs, lr=params.lr[freeze], optimizer=params.optimizer,
        weight_decay=params.weight_decay, momentum=params.momentum,
        warmup_epochs=params.warmup_epochs, label_smoothing=params.label_smoothing,
        patience=params.patience, seed=params.seed,
    )


def _after_epoch(path: Path, then: EpochCallback | None, history: list[dict]) -> None:
    write_history(path, history)
    if then is not None:
        then(history)


def _code_version() -> str:
    """Hash of the modules a run's result depends on: a checkpoint written by other code (a
    fixed bug, a changed loop) is never resumed, like DVC re-running on changed deps."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in CODE_MODULES:
        digest.update((here / f"{name}.py").read_bytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--backbone", help="timm model name (default: train.backbones[0])")
    parser.add_argument("--freeze", choices=["frozen", "partial", "full"],
                        help="freeze mode (default: train.freeze_modes[0])")
    parser.add_argument("--spectrograms", type=Path, default=Path("data/spectrograms"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits"))
    parser.add_argument("--out", type=Path, help="run folder (default: models/<backbone>-<freeze>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params = load_section("train", TrainParams, args.params)
    tracking_params = run_tracking.load_tracking(args.params)
    backbone = args.backbone or params.backbones[0]
    freeze = args.freeze or params.freeze_modes[0]
    distributed.relaunch_under_torchrun(params.nproc, "pipeline.train",
                                        sys.argv[1:] if argv is None else argv)
    with distributed.session(params.device):  # joins torchrun's process group, if any
        run(params, backbone, freeze, args.spectrograms, args.splits,
            args.out or Path("models") / f"{backbone}-{freeze}", tracking_params)


if __name__ == "__main__":
    run_main(main)
