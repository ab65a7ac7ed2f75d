"""Benchmark: GPU training and inference images/s, the project's loop against the bare model.

For each model (VGG16 and ResNet-50 by default, random weights: speed does not depend on their
values), in one run on one GPU, bf16 autocast and channels_last on both sides:

- **project**: `pipeline.training.engine.train_epoch` / `predict` on in-memory uint8 224x224 images
  served by `pipeline.training.data.make_loader` (pinned memory, workers) and turned into the model
  input on the GPU by `pipeline.training.transforms.ModelInput`, with the project's optimiser,
  schedule and weighted loss, the whole network trainable (`full`);
- **bare**: the timm model on a synthetic float batch already on the GPU, AdamW, no loader
  (what timm's benchmark.py measures).

It prints images/s of both, their ratio, and the share of the project's wall time spent
waiting for the next batch (the GPU idles then: the loop syncs once per step). A low ratio
with a high data-wait share means the loader, not the model, is the bottleneck: raise
`train.num_workers`. Without CUDA it says so and exits 0.

Run: `python -m bench.bench_gpu [--models vgg16.tv_in1k resnet50.a1_in1k] [--steps 40]
[--batch 64] [--infer-batch 128] [--workers 8]`
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.training import data, engine, optim
from pipeline.training.device import resolve_device as device_of
from pipeline.training.freeze import apply_freeze, param_groups
from pipeline.training.models import build_model, model_data_config
from pipeline.training.transforms import ModelInput, Preprocess, preprocess_spec
from pipeline.training.weights import resolve_weights

log = logging.getLogger("bench.gpu")
NUM_CLASSES, SIZE, WARMUP_STEPS = 5, 224, 8


class TimedLoader:
    """Wraps a loader and adds up the seconds spent waiting for each next batch."""

    def __init__(self, loader: DataLoader):
        self.loader, self.wait_s = loader, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - start
            yield batch


@dataclass
class Result:
    images_per_s: float
    data_wait: float | None = None  # share of wall time spent waiting for batches


def _images(n: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    return TensorDataset(images, torch.randint(0, NUM_CLASSES, (n,), generator=gen))


def _project_model(name: str, device: torch.device) -> tuple[torch.nn.Module, ModelInput]:
    model = build_model(name, NUM_CLASSES, resolve_weights(name, "random"))
    apply_freeze(model, "full")
    spec = preprocess_spec(model_data_config(model), "grey3", SIZE)
    model.to(device).to(memory_format=torch.channels_last)
    return model, ModelInput(Preprocess.from_spec(spec)).to(device)


def _timed(loader: DataLoader, run) -> Result:
    """Runs `run(loader)` once to warm up (cudnn autotune, workers), then timed."""
    run(loader)
    timed = TimedLoader(loader)
    torch.cuda.synchronize()
    start = time.perf_counter()
    run(timed)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return Result(len(loader.dataset) / seconds, timed.wait_s / seconds)  # type: ignore[arg-type]


def project_train(name: str, device: torch.device, images: TensorDataset, batch: int,
                  workers: int) -> Result:
    model, prepare = _project_model(name, device)
    cfg = engine.FitConfig(epochs=1, lr=1e-4, warmup_epochs=0.1, label_smoothing=0.1)
    optimizer = optim.make_optimizer(param_groups(model, cfg.lr, cfg.weight_decay, 0.75), cfg)
    loader = data.make_loader(images, batch, device, 0, num_workers=workers,
                              sampler=torch.utils.data.RandomSampler(images))
    scheduler = optim.make_scheduler(optimizer, cfg, len(loader) * 2)
    weights = torch.ones(NUM_CLASSES, device=device)
    criterion = engine.WeightedCrossEntropy(weights, cfg.label_smoothing)
    loop = engine._Loop(model, optimizer, scheduler, criterion, device, prepare)
    return _timed(loader, lambda batches: engine.train_epoch(loop, batches, desc="train"))


def project_predict(name: str, device: torch.device, images: TensorDataset, batch: int,
                    workers: int) -> Result:
    model, prepare = _project_model(name, device)
    loader = data.make_loader(images, batch, device, 0, num_workers=workers)
    return _timed(loader, lambda batches: engine.predict(model, batches, device, prepare))


def bare(name: str, device: torch.device, batch: int, steps: int, train: bool) -> Result:
    """The timm model alone on a synthetic batch resident on the GPU."""
    model = build_model(name, NUM_CLASSES, resolve_weights(name, "random"))
    model.to(device).to(memory_format=torch.channels_last).train(train)
    x = torch.randn(batch, 3, SIZE, SIZE, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16), torch.set_grad_enabled(train):
            out = model(x)
            if train:
                loss = torch.nn.functional.cross_entropy(out.float(), y)
        if train:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    for _ in range(WARMUP_STEPS):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return Result(batch * steps / (time.perf_counter() - start))


def _report(model: str, kind: str, project: Result, baseline: Result) -> None:
    log.info("%-18s %-9s project %8.1f img/s | bare timm %8.1f img/s | ratio %.2f | "
             "waiting for data %4.1f %% of the project's time", model, kind,
             project.images_per_s, baseline.images_per_s,
             project.images_per_s / baseline.images_per_s, 100 * (project.data_wait or 0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vgg16.tv_in1k", "resnet50.a1_in1k"])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--batch", type=int, default=64, help="training batch (params.yaml)")
    parser.add_argument("--infer-batch", type=int, default=128, help="evaluate.batch_size")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader processes (default: the project's choice on CUDA)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    if not torch.cuda.is_available():
        log.info("bench_gpu: no CUDA device visible, nothing to measure (run it on a GPU node)")
        return 0
    device = device_of("cuda")  # cudnn.benchmark and TF32, as train/evaluate set
    workers = data.resolve_workers(args.workers, device)
    log.info("%s, torch %s, bf16 autocast, channels_last, %d loader workers, %d steps",
             torch.cuda.get_device_name(device), torch.__version__, workers, args.steps)
    for name in args.models:
        train_images = _images(args.batch * args.steps)
        infer_images = _images(args.infer_batch * args.steps)
        _report(name, "train", project_train(name, device, train_images, args.batch, workers),
                bare(name, device, args.batch, args.steps, train=True))
        _report(name, "inference",
                project_predict(name, device, infer_images, args.infer_batch, workers),
                bare(name, device, args.infer_batch, args.steps, train=False))
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
