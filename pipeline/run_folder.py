"""A trained model's folder (`models/<run>/`, written by train): its files, and loading it.

    model.safetensors      the best epoch's full model (MODEL)
    checkpoint/            the last epoch's resumable state (CHECKPOINT, `pipeline.checkpoint`)
    history.csv            per-epoch curves for `dvc plots` (HISTORY, HISTORY_COLUMNS)
    metrics.json           best val scores for `dvc metrics` (METRICS)
    resolved_config.json   params, classes, preprocessing spec, weights, freeze report (RESOLVED)
    mlflow_run.json        the model's MLflow run id (RUN_FILE, `pipeline.run_tracking`)
    features/              frozen mode's cached backbone features (FEATURES)

Evaluate and export rebuild the model from here (`load_model`) and wrap it as the one
uint8-images -> probabilities network (`ImageClassifier`) that evaluate logs and export
converts to ONNX.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from torch import nn

from data_prep.layout import atomic_path, read_json
from pipeline.checkpoint import load_weights
from pipeline.engine import FitResult
from pipeline.freeze import FreezeReport, apply_freeze
from pipeline.models import build_model, model_data_config
from pipeline.transforms import ModelInput, Preprocess, SpecAugment, preprocess_spec
from pipeline.weights import WeightsSource, resolve_weights

log = logging.getLogger(__name__)

MODEL, HISTORY, METRICS, RESOLVED = (
    "model.safetensors", "history.csv", "metrics.json", "resolved_config.json")
CHECKPOINT, FEATURES, RUN_FILE = "checkpoint", "features", "mlflow_run.json"
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "train_macro_f1",
                   "val_loss", "val_acc", "val_macro_f1", "lr")


class ImageClassifier(nn.Module):
    """uint8 spectrograms (B, H, W) -> softmax probabilities (B, K), float32.

    With `with_logits`, returns (probabilities, logits): the export bundle's two outputs.
    """

    def __init__(self, preprocess: Preprocess, model: nn.Module, with_logits: bool = False):
        super().__init__()
        self.preprocess, self.model, self.with_logits = preprocess, model, with_logits

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(self.preprocess(images)).float()
        probs = torch.softmax(logits, dim=1)
        return (probs, logits) if self.with_logits else probs


def write_history(path: Path, history: list[dict]) -> None:
    """history.csv for `dvc plots` (x: epoch), rewritten atomically after every epoch."""
    with atomic_path(path) as tmp:
        pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_csv(tmp, index=False)


def build_network(backbone: str, num_classes: int, weights: WeightsSource, in_chans: int,
                  freeze: str, trainable_groups: int, pre_logits: str
                  ) -> tuple[nn.Module, FreezeReport]:
    """The run's network as train builds it and evaluate/export rebuild it: the timm model
    (1 or 3 input channels) with the run's freeze mode applied."""
    extra = {"in_chans": 1} if in_chans == 1 else {}
    model = build_model(backbone, num_classes, weights, **extra)
    return model, apply_freeze(model, freeze, trainable_groups, pre_logits)


@dataclass
class TrainingModel:
    """Everything one run builds before training."""

    model: nn.Module
    weights: WeightsSource
    report: FreezeReport
    spec: dict  # the model-input preprocessing (`transforms.preprocess_spec`)
    prepare: ModelInput

    @property
    def weights_id(self) -> str:
        return self.weights.sha256 or self.weights.describe()


def build_for_training(backbone: str, freeze: str, num_classes: int, image_size: int, *,
                       weights: str, weights_dir: str | None, seed: int, channels: str,
                       trainable_groups: int, pre_logits: str, augment: dict) -> TrainingModel:
    """Resolves the weights (failing early when offline without them), builds and freezes
    (`train:` params of the same names)."""
    source = resolve_weights(backbone, weights, Path(weights_dir) if weights_dir else None)
    log.info("weights for %s: %s", backbone, source.describe())
    torch.manual_seed(seed)  # the new classifier (and random weights) are seeded too
    model, report = build_network(backbone, num_classes, source,
                                  1 if channels == "in_chans1" else 3, freeze,
                                  trainable_groups, pre_logits)
    log.info("freeze %s", report.summary())
    spec = preprocess_spec(model_data_config(model), channels, image_size)
    prepare = ModelInput(Preprocess.from_spec(spec), SpecAugment(**augment))
    return TrainingModel(model, source, report, spec, prepare)


def train_metrics(result: FitResult, train_images: int, val_images: int, seconds: float) -> dict:
    """metrics.json of a train run: the selected epoch's scores and what the run did."""
    best = result.history[result.best_epoch - 1]
    return {
        "best_epoch": result.best_epoch,
        "best_val_macro_f1": best["val_macro_f1"],
        "best_val_acc": best["val_acc"],
        "best_val_loss": best["val_loss"],
        "train_macro_f1_at_best": best["train_macro_f1"],
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "train_images": train_images,
        "val_images": val_images,
        "train_seconds": round(seconds, 1),  # of this call (a resumed run counts its part)
    }


def split_counts(frame: pd.DataFrame, classes: list[str]) -> dict[str, dict[str, int]]:
    """Images per split and class (resolved_config.json "counts")."""
    table = pd.crosstab(frame["split"], frame["label"]).reindex(columns=classes, fill_value=0)
    return {split: {c: int(n) for c, n in row.items()} for split, row in table.iterrows()}


def library_versions() -> dict[str, str]:
    """The versions a trained result depends on (resolved_config.json "versions")."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": np.__version__,
            "cuda": torch.version.cuda or "none"}


def read_resolved(folder: Path) -> dict:
    """The run's resolved_config.json (what train used and produced)."""
    return read_json(Path(folder) / RESOLVED)


def load_model(folder: Path) -> tuple[nn.Module, Preprocess, dict]:
    """Rebuilds a trained model exactly as train saved it: architecture, freezing, weights.

    Returns:
        (model in eval mode, its preprocessing, the resolved config).
    """
    resolved = read_resolved(folder)
    spec, params = resolved["preprocessing"], resolved["params"]
    # Random init, then every tensor is overwritten by the strict load below.
    model, _ = build_network(resolved["backbone"], len(resolved["classes"]),
                             WeightsSource("random", "random"), spec["in_chans"],
                             resolved["freeze"], params["trainable_groups"], params["pre_logits"])
    load_weights(model, Path(folder) / MODEL)
    return model.eval(), Preprocess.from_spec(spec), resolved
