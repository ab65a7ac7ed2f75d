"""Where and how tensors run: device choice, bf16 autocast, device-side input, seeds.

Shared by the training loop (`pipeline.training.engine`), the feature cache and the evaluate stage,
so train and evaluate feed the model the same way (non-blocking copy, preprocessing on the device,
channels_last image batches, bf16 autocast on CUDA). channels_last on every device: cuDNN's
tensor-core kernels and oneDNN's CPU convolutions both work in NHWC (on 2 CPU cores, frozen backbone
inference 1.2-1.6x faster: bench/bench_memory_format.py).
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds legacy global users)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed seed for one epoch (seed 1/epoch 2 and seed 2/epoch 1 differ)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but no CUDA device is visible; use auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 224x224 inputs: pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def split_batch(batch: Any) -> tuple[Inputs, torch.Tensor]:
    """A loader batch (x, y) or (x, rr, y) -> (inputs, targets); several inputs stay a tuple."""
    *xs, y = batch
    return (xs[0] if len(xs) == 1 else tuple(xs)), y


def forward(module: nn.Module, inputs: Inputs) -> torch.Tensor:
    """Calls `module` with one input or several (image and rhythm features)."""
    return module(*inputs) if isinstance(inputs, tuple) else module(inputs)


def model_input(x: Inputs, device: torch.device, prepare: nn.Module | None) -> Any:
    """Non-blocking copy (the loader pins memory on CUDA), preprocessing on the device, and
    channels_last for image batches. Half-precision cached features become float32.
    With several inputs, the first (images or features) is prepared; the others (rhythm
    features) are copied as float32."""
    if isinstance(x, tuple):
        rest = tuple(t.to(device, non_blocking=True).float() for t in x[1:])
        return (model_input(x[0], device, prepare), *rest)
    out: torch.Tensor = x.to(device, non_blocking=True)
    if prepare is not None:
        out = prepare(out)
    elif out.dtype in (torch.float16, torch.bfloat16):
        out = out.float()
    if out.dim() == 4:
        out = out.contiguous(memory_format=torch.channels_last)
    return out
