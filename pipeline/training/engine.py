"""Training loop: optimiser, per-step cosine schedule, metrics, model selection, resume.

`fit` trains any module (a whole network on images, or just a head on cached features) on
the batches of a training loader, validates every epoch, keeps the best epoch by validation
macro-F1, stops early after `patience` epochs without improvement and checkpoints after every
epoch through `pipeline.training.checkpoint`, resuming from it when called again. `predict` and
`classification_metrics` give the per-epoch validation scores; the evaluate stage shares only
the device helpers (`pipeline.training.device`); its EC57 metrics are `pipeline.evaluation.metrics`.

Reproducibility: every epoch starts by re-seeding python, numpy, torch and the sampler's
generator from (seed, epoch), so the random stream of an epoch does not depend on what ran
before it and a resumed run repeats the uninterrupted one (bit-exact on CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipeline.training.checkpoint import Checkpointer
from pipeline.training.device import (
    autocast,
    epoch_seed,
    forward,
    model_input,
    seed_everything,
    split_batch,
)
from pipeline.training.optim import FitConfig, make_optimizer, make_scheduler

log = logging.getLogger(__name__)

EpochCallback = Callable[[list[dict[str, float]]], None]
Gather = Callable[[torch.Tensor], torch.Tensor]  # one rank's rows -> every rank's (distributed)


@dataclass
class FitResult:
    """What `fit` did: per-epoch history and the selected epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -1.0
    stopped_early: bool = False
    resumed_after: int | None = None


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with label smoothing, each sample weighted by its true class's weight.

    Normalised by the sum of the batch's weights, like torch's weighted cross-entropy. Unlike
    `nn.CrossEntropyLoss(weight=..., label_smoothing=...)`, the smoothing term is not weighted
    per class: there, a rare class's large weight pulls every sample's probability towards it.
    Data-parallel (`gather` given): each rank divides by the mean of all ranks' weight sums, so
    the ranks' average (what DDP's gradient is) is the weighted mean over the global batch.
    """

    weight: torch.Tensor | None  # a buffer, declared for type checkers

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0,
                 gather: Gather | None = None):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight)
        self.gather = gather

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(
            logits, targets, reduction="none", label_smoothing=self.label_smoothing
        )
        if self.weight is None:
            return loss.mean()
        w = self.weight[targets]
        if self.gather is None:
            return (loss * w).sum() / w.sum()
        return (loss * w).sum() / self.gather(w.sum().detach().view(1)).mean()


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor,
                           select: list[int] | None = None) -> dict[str, float]:
    """Loss (plain cross-entropy), accuracy and macro-F1.

    Args:
        select: class indices the macro-F1 averages over (e.g. N, S, V, F: mitdb's training
            patients have 8 Q beats, whose F1 is noise); None: the classes that occur.
    """
    preds = logits.argmax(1)
    y_true, y_pred = targets.cpu().numpy(), preds.cpu().numpy()
    return {
        "loss": float(nn.functional.cross_entropy(logits.float(), targets)),
        "acc": float((preds == targets).float().mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=select, average="macro",
                                   zero_division=0)),
    }


@torch.no_grad()
def predict(
    module: nn.Module,
    loader: DataLoader,
    device: torch.device,
    prepare: nn.Module | None = None,
    desc: str = "predict",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode float32 logits and targets (on `device`) of every batch in `loader`."""
    module.eval()
    if prepare is not None:
        prepare.eval()
    logits, targets = [], []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        x, y = split_batch(batch)
        with autocast(device):
            out = forward(module, model_input(x, device, prepare))
        logits.append(out.float())
        targets.append(y.to(device, non_blocking=True))
    return torch.cat(logits), torch.cat(targets)


@dataclass
class _Loop:
    """Objects of one fit() call that every epoch uses."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    criterion: nn.Module
    device: torch.device
    prepare: nn.Module | None
    step: int = 0
    gather: Gather = field(default=lambda t: t)  # `distributed.gather` in data-parallel runs
    select: tuple[int, ...] | None = None  # FitConfig.select
    scorer: nn.Module | None = None  # what validation scores; None: `module`


def train_epoch(loop: _Loop, loader: DataLoader, desc: str) -> dict[str, float]:
    """One pass over `loader`; returns the epoch's training loss, accuracy and macro-F1."""
    loop.module.train()
    if loop.prepare is not None:
        loop.prepare.train()
    total_loss, count, logits_all, targets_all = 0.0, 0, [], []
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for batch in bar:
        x, y = split_batch(batch)
        y = y.to(loop.device, non_blocking=True)
        with autocast(loop.device):
            logits = forward(loop.module, model_input(x, loop.device, loop.prepare))
            loss = loop.criterion(logits.float(), y)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        loop.step += 1
        loop.scheduler.step()
        total_loss += float(loss.detach()) * len(y)  # one sync per step is cheap next to a CNN
        count += len(y)
        logits_all.append(logits.detach().float())
        targets_all.append(y)
        bar.set_postfix(loss=f"{total_loss / count:.4f}")
    metrics = classification_metrics(loop.gather(torch.cat(logits_all)),
                                     loop.gather(torch.cat(targets_all)),
                                     list(loop.select) if loop.select is not None else None)
    sums = torch.tensor([[total_loss, count]], dtype=torch.float64)
    loss_sum, seen = loop.gather(sums).sum(0).tolist()
    metrics["loss"] = loss_sum / max(seen, 1)  # the optimised objective, not plain CE
    return metrics


def fit(
    module: nn.Module,
    param_groups: list[dict[str, Any]],
    train_loader: DataLoader,
    val_loader: DataLoader,
    cfg: FitConfig,
    device: torch.device,
    checkpointer: Checkpointer,
    prepare: nn.Module | None = None,
    class_weights: torch.Tensor | None = None,
    sampler_generator: torch.Generator | None = None,
    on_epoch_end: EpochCallback | None = None,
    gather: Gather | None = None,
    scorer: nn.Module | None = None,
) -> FitResult:
    """Trains `module`, resuming from `checkpointer` when it holds this run's last epoch.

    Args:
        module: what is trained and checkpointed (a network, or a head on cached features).
        param_groups: optimiser groups over `module`'s parameters (`freeze.param_groups`).
        train_loader: training batches (x, y); x goes through `prepare` on the device.
        val_loader: validation batches, used for model selection on macro-F1.
        cfg: optimisation settings.
        device: where to train.
        checkpointer: writes the state after each epoch and restores it.
        prepare: device-side input module (`transforms.ModelInput`), or None for features.
        class_weights: per-class loss weights (weighted loss), or None.
        sampler_generator: the training sampler's generator, re-seeded every epoch.
        on_epoch_end: called with the history so far after each epoch's checkpoint is written.
        gather: concatenates every process's logits/targets (`distributed.gather`) so that the
            metrics of a data-parallel run cover all of its batches; None in one process.
        scorer: the module whose validation output selects the epoch, when it is not `module`
            itself (a head mixed with a fixed rhythm discriminant: `fitting`); it must hold
            `module`'s trained parameters.

    Returns:
        The history and the best epoch; the module is left with the best epoch's weights.
    """
    for part in (module, scorer):
        if part is not None:  # channels_last as its inputs (pipeline.training.device)
            part.to(device).to(memory_format=torch.channels_last)
    if prepare is not None:
        prepare.to(device)
    optimizer = make_optimizer(param_groups, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))
    criterion = WeightedCrossEntropy(class_weights, cfg.label_smoothing, gather).to(device)
    loop = _Loop(module, optimizer, scheduler, criterion, device, prepare, select=cfg.select,
                 scorer=scorer)
    if gather is not None:
        loop.gather = gather
    result = FitResult()
    state = checkpointer.load(module, optimizer)
    if state is not None:
        scheduler.load_state_dict(state["scheduler"])
        loop.step = state["step"]
        result = FitResult(
            history=state["history"], best_epoch=state["best_epoch"],
            best_score=state["best_score"], stopped_early=state["stopped_early"],
            resumed_after=state["epoch"],
        )
    start = len(result.history)
    for epoch in range(start, cfg.epochs):
        if result.stopped_early:
            break
        seed = epoch_seed(cfg.seed, epoch)
        seed_everything(seed)
        if sampler_generator is not None:
            sampler_generator.manual_seed(seed)
        row = _run_epoch(loop, train_loader, val_loader, epoch, cfg.epochs)
        result.history.append(row)
        improved = row["val_macro_f1"] > result.best_score
        if improved:
            result.best_epoch, result.best_score = epoch + 1, row["val_macro_f1"]
        patience_out = cfg.patience > 0 and epoch + 1 - result.best_epoch >= cfg.patience
        result.stopped_early = patience_out and epoch + 1 < cfg.epochs
        checkpointer.save(epoch + 1, module, optimizer, _state(result, loop), improved)
        if on_epoch_end is not None:
            on_epoch_end(result.history)
    if result.stopped_early:
        log.info("early stop: no gain in val macro-F1 (selected classes) for %d epochs",
                 cfg.patience)
    checkpointer.load_best(module)
    log.info("best epoch %d: val macro-F1 over the selected classes %.4f", result.best_epoch,
             result.best_score)
    return result


def _run_epoch(
    loop: _Loop, train_loader: DataLoader, val_loader: DataLoader, epoch: int, epochs: int
) -> dict[str, float]:
    lr = max(g["lr"] for g in loop.optimizer.param_groups)  # the head's, at the epoch's start
    train = train_epoch(loop, train_loader, desc=f"epoch {epoch + 1}/{epochs}")
    scorer = loop.module if loop.scorer is None else loop.scorer
    logits, targets = predict(scorer, val_loader, loop.device, loop.prepare, "val")
    select = list(loop.select) if loop.select is not None else None
    val = classification_metrics(loop.gather(logits), loop.gather(targets), select)
    row = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()}}
    row |= {f"val_{k}": v for k, v in val.items()} | {"lr": lr}
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f F1 %.4f | val loss %.4f acc %.4f F1 %.4f",
        epoch + 1, epochs, row["train_loss"], row["train_acc"], row["train_macro_f1"],
        row["val_loss"], row["val_acc"], row["val_macro_f1"],
    )
    return row


def _state(result: FitResult, loop: _Loop) -> dict[str, Any]:
    return {
        "step": loop.step,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "stopped_early": result.stopped_early,
        "scheduler": loop.scheduler.state_dict(),
    }
