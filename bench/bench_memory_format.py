"""CPU backbone throughput: channels_last (NHWC) against contiguous (NCHW) memory layout.

oneDNN's convolution kernels work in NHWC; a contiguous NCHW batch is reordered inside every
convolution. The pipeline therefore runs image batches and backbones in channels_last on every
device (`pipeline.training.device`). This prints images per second of frozen-backbone inference
(what the feature store and evaluate do) for both layouts, measured in the same run, and the ratio.

    python -m bench.bench_memory_format [--models ...] [--batch 64] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

MODELS = ("tf_mobilenetv3_small_100", "resnet18", "efficientnet_b0", "vgg16.tv_in1k")


@torch.inference_mode()
def images_per_second(model: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    model(batch[:2])  # first call: kernel selection, allocations
    start = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def compare(name: str, batch_size: int, repeats: int) -> tuple[float, float]:
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    batch = torch.randn(batch_size, 3, 224, 224)
    nchw = images_per_second(model, batch, repeats)
    model = model.to(memory_format=torch.channels_last)
    nhwc = images_per_second(model, batch.contiguous(memory_format=torch.channels_last), repeats)
    return nchw, nhwc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    print("| backbone | NCHW img/s | channels_last img/s | ratio |\n|---|---|---|---|")
    for name in args.models:
        nchw, nhwc = compare(name, args.batch, args.repeats)
        print(f"| {name} | {nchw:.1f} | {nhwc:.1f} | {nhwc / nchw:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
