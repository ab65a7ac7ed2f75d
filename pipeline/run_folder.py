"""A trained model's folder (`models/<run>/`, written by train): its files, and loading it.

    model.safetensors      the best epoch's full model (MODEL)
    checkpoint/            the last epoch's resumable state (CHECKPOINT, `pipeline.checkpoint`)
    history.csv            per-epoch curves for `dvc plots` (HISTORY)
    metrics.json           best val scores for `dvc metrics` (METRICS)
    resolved_config.json   params, classes, preprocessing spec, weights, freeze report (RESOLVED)
    mlflow_run.json        the model's MLflow run id (RUN_FILE, `pipeline.run_tracking`)
    features/              frozen mode's cached backbone features (FEATURES)

Evaluate and export rebuild the model from here (`load_model`) and wrap it as the one
uint8-images -> probabilities network (`ImageClassifier`) that evaluate logs and export
converts to ONNX.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from data_prep.layout import read_json
from pipeline.checkpoint import load_weights
from pipeline.freeze import apply_freeze
from pipeline.models import build_model
from pipeline.transforms import Preprocess
from pipeline.weights import WeightsSource

MODEL, HISTORY, METRICS, RESOLVED = (
    "model.safetensors", "history.csv", "metrics.json", "resolved_config.json")
CHECKPOINT, FEATURES, RUN_FILE = "checkpoint", "features", "mlflow_run.json"


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
    extra = {"in_chans": 1} if spec["in_chans"] == 1 else {}
    # Random init, then every tensor is overwritten by the strict load below.
    model = build_model(resolved["backbone"], len(resolved["classes"]),
                        WeightsSource("random", "random"), **extra)
    apply_freeze(model, resolved["freeze"], params["trainable_groups"], params["pre_logits"])
    load_weights(model, Path(folder) / MODEL)
    return model.eval(), Preprocess.from_spec(spec), resolved
