"""A trained model's folder (`models/<run>/`, written by train): its files, and loading it.

    model.safetensors      the best epoch's full model (MODEL)
    checkpoint/            the last epoch's resumable state (CHECKPOINT,
                           `pipeline.training.checkpoint`)
    history.csv            per-epoch curves for `dvc plots` (HISTORY)
    metrics.json           best val scores for `dvc metrics` (METRICS)
    resolved_config.json   params, classes, preprocessing spec, weights, freeze report (RESOLVED)
    mlflow_run.json        the model's MLflow run id (RUN_FILE, `pipeline.tracking.run_tracking`)

Frozen-mode backbone features live in the shared feature store (FEATURE_STORE, or
train.feature_cache_dir; `pipeline.training.feature_store`), not in the run folder.

Evaluate and export rebuild the model from here (`load_model`) and wrap it as the one
(uint8 images, rhythm features) -> probabilities network (`ImageClassifier`) that evaluate logs
and export converts to ONNX.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from data_prep.layout import read_json
from pipeline.training.checkpoint import load_weights
from pipeline.training.fitting import assemble
from pipeline.training.fusion import FusedNet
from pipeline.training.transforms import Preprocess
from pipeline.training.weights import WeightsSource

MODEL, HISTORY, METRICS, RESOLVED = (
    "model.safetensors", "history.csv", "metrics.json", "resolved_config.json")
CHECKPOINT, RUN_FILE = "checkpoint", "mlflow_run.json"
FEATURE_STORE = ".feature_store"  # default shared store of frozen-backbone features (gitignored)


class ImageClassifier(nn.Module):
    """(uint8 spectrograms (B, H, W) or (B, C, H, W), float32 raw rhythm features (B, F)) ->
    softmax probabilities (B, K), float32. Networks without rhythm input ignore `rr` (F = 0).

    With `with_logits`, returns (probabilities, logits): the export bundle's two outputs.
    """

    def __init__(self, preprocess: Preprocess, model: nn.Module, with_logits: bool = False):
        super().__init__()
        self.preprocess, self.model, self.with_logits = preprocess, model, with_logits

    def forward(self, images: torch.Tensor,
                rr: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(self.preprocess(images), rr).float()
        probs = torch.softmax(logits, dim=1)
        return (probs, logits) if self.with_logits else probs


class PackedClassifier(nn.Module):
    """`ImageClassifier` behind one float32 input (B, C*H*W + F): images then rhythm features.

    MLflow's PyTorch flavour passes a single array to a model; this is the network MLflow logs
    (and the registry serves). Pixel values 0..255 are exact in float32. Research scripts use
    the export bundle's ONNX model, which takes the two inputs by name.
    """

    def __init__(self, classifier: ImageClassifier, image_shape: tuple[int, ...], n_rr: int):
        super().__init__()
        self.classifier, self.image_shape, self.n_rr = classifier, tuple(image_shape), n_rr

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        pixels = packed.shape[1] - self.n_rr
        images = packed[:, :pixels].round().clamp(0, 255).to(torch.uint8)
        rr = packed[:, pixels:].float()
        out = self.classifier(images.reshape(-1, *self.image_shape), rr)
        return out[0] if isinstance(out, tuple) else out


def read_resolved(folder: Path) -> dict:
    """The run's resolved_config.json (what train used and produced)."""
    return read_json(Path(folder) / RESOLVED)


def load_model(folder: Path) -> tuple[FusedNet, Preprocess, dict]:
    """Rebuilds a trained model exactly as train saved it: architecture, freezing, weights.

    Returns:
        (model in eval mode, its preprocessing, the resolved config).
    """
    resolved = read_resolved(folder)
    # Random init, then every tensor is overwritten by the strict load below.
    model, _, _ = assemble(resolved["backbone"], resolved["freeze"], resolved["params"],
                           dict(resolved["model"]), len(resolved["classes"]),
                           WeightsSource("random", "random"))
    load_weights(model, Path(folder) / MODEL)
    return model.eval(), Preprocess.from_spec(resolved["preprocessing"]), resolved


def rhythm_names(resolved: dict) -> list[str]:
    """The rhythm features the model takes, in input order (empty: image only)."""
    return list(resolved.get("model", {}).get("rr_features", []))
