"""A run's optimisation settings (`FitConfig`), its optimiser and learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings of one run (see the `train:` section of params.yaml)."""

    epochs: int
    lr: float
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    patience: int = 0  # epochs without val macro-F1 gain before stopping; 0 = never stop early
    seed: int = 0
    select: tuple[int, ...] | None = None  # classes of the selection macro-F1 (None: all present)


def make_optimizer(
    param_groups: list[dict[str, Any]], cfg: FitConfig
) -> torch.optim.Optimizer:
    """AdamW or SGD with Nesterov momentum over the given parameter groups."""
    if not any(p.requires_grad for g in param_groups for p in g["params"]):
        raise ValueError("no trainable parameters: check train.freeze / trainable_groups")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
            weight_decay=cfg.weight_decay,
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use 'adamw' or 'sgd'")


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: FitConfig, steps_per_epoch: int
) -> LambdaLR:
    """Linear warmup then cosine decay to 0, stepped per iteration.

    A factor on each group's own initial `lr`, so per-group learning rates (layer-wise decay
    from `freeze.param_groups`, which sets each group's `lr` to lr x lr_scale) keep their
    ratios. (timm's CosineLRScheduler would multiply by `lr_scale` a second time.)
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    return LambdaLR(optimizer, partial(warmup_cosine, warmup=warmup, total=total))


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor at `step`: linear from ~0 to 1 over `warmup` steps, then cosine to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
