"""One training run's model and fits: the fused network, its training sets, one fit per fold.

`build` makes the network the run trains (`fusion.FusedNet`: a timm backbone without its
classifier, frozen as asked, and one fusion head per fold). `fit_folds` trains each head (with
the backbone in partial/full modes) on its fold's training rows, early-stopped on the fold's
validation rows, and returns every fit's history and out-of-fold probabilities. With
`train.rr_lda_weight` each fold's head is mixed with a rhythm discriminant fitted on the same
training rows (`rhythm_prior`); epochs are selected on the mix and the out-of-fold
probabilities are the mix's.

In frozen mode the backbone's features come from the shared `feature_store` (computed once per
image, reused by every run); with inputs "rr" no backbone runs at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from pipeline.training import data, distributed
from pipeline.training.cv import Fold
from pipeline.training.engine import EpochCallback, FitConfig, FitResult, fit, predict
from pipeline.training.feature_store import FeatureStore
from pipeline.training.freeze import FreezeMode, FreezeReport, apply_freeze, param_groups
from pipeline.training.fusion import FusedNet, FusionHead, HeadEnsemble, feature_width, uses_image
from pipeline.training.models import build_model, model_data_config
from pipeline.training.rhythm_prior import RhythmDiscriminant, RhythmMix
from pipeline.training.transforms import ModelInput, Preprocess, SpecAugment, preprocess_spec
from pipeline.training.weights import WeightsSource

log = logging.getLogger(__name__)


def assemble(backbone: str, freeze: str, params: dict, arch: dict, num_classes: int,
             weights: WeightsSource) -> tuple[FusedNet, FreezeReport, dict]:
    """The run's network from its recorded architecture (`arch`, resolved_config "model").

    Train calls it with the resolved weights; `run_folder.load_model` with random weights that
    the saved state then overwrites. Sets arch["image_dim"] (the pooled feature width, 0 when
    the image is not an input). Returns the network, the freeze report and the backbone's
    pretrained data config (mean/std), also for rr-only networks, which drop the backbone.
    """
    extra = {"in_chans": 1} if params["channels"] == "in_chans1" else {}
    model = build_model(backbone, num_classes, weights, **extra)
    report = apply_freeze(model, cast(FreezeMode, freeze), params["trainable_groups"],
                          params["pre_logits"])
    model.reset_classifier(0)  # type: ignore[operator]  # the fusion head classifies
    arch["image_dim"] = feature_width(model) if uses_image(arch["inputs"]) else 0
    rr_dim = len(arch["rr_features"])
    heads = [_member(_head(arch, rr_dim, num_classes), rr_dim, num_classes,
                     arch.get("rr_lda_weight", 0.0)) for _ in range(arch["heads"])]
    net = FusedNet(model, HeadEnsemble(heads, num_classes), arch["inputs"])
    return net, report, model_data_config(model)


def _head(arch: dict, rr_dim: int, num_classes: int) -> FusionHead:
    """One fusion head as `arch` records it (runs before image_dropout existed: none)."""
    return FusionHead(arch["image_dim"], rr_dim, num_classes, arch["head"], arch["hidden"],
                      arch["dropout"], arch.get("image_dropout", 0.0))


def _member(head: FusionHead, rr_dim: int, num_classes: int, weight: float) -> nn.Module:
    """One ensemble member: the head, mixed with a rhythm discriminant when weighted."""
    if not weight or not rr_dim:
        return head
    return RhythmMix(head, RhythmDiscriminant(rr_dim, num_classes), weight)


@dataclass
class Setup:
    """Everything one run builds before training."""

    net: FusedNet
    weights: WeightsSource
    report: FreezeReport
    spec: dict
    prepare: ModelInput
    arch: dict

    @property
    def weights_id(self) -> str:
        return self.weights.sha256 or self.weights.describe()


def build(params: Any, backbone: str, freeze: str, num_classes: int, image_size: int,
          rr_features: list[str], n_heads: int, weights: WeightsSource) -> Setup:
    """Builds (seeded) and freezes the run's network; `params` is the train section."""
    torch.manual_seed(params.seed)  # the heads (and random weights) are seeded too
    fused = uses_image(params.inputs) and bool(rr_features)  # image dropout needs both inputs
    arch = {"inputs": params.inputs, "head": params.head, "hidden": params.head_hidden,
            "dropout": params.head_dropout, "rr_features": list(rr_features), "heads": n_heads,
            "image_dropout": params.image_dropout if fused else 0.0,
            "rr_lda_weight": params.rr_lda_weight if rr_features else 0.0}
    net, report, data_config = assemble(backbone, freeze, params.model_dump(), arch,
                                        num_classes, weights)
    spec = preprocess_spec(data_config, params.channels, image_size)
    prepare = ModelInput(Preprocess.from_spec(spec), SpecAugment(**params.augment.model_dump()))
    return Setup(net, weights, report, spec, prepare, arch)


@dataclass
class RunInputs:
    """What the heads train on: cached features (frozen/rr-only) or images, and rr features."""

    frame: pd.DataFrame  # the train+val rows, positions used by the folds
    rr: np.ndarray  # (n, F) raw rhythm features (F may be 0)
    features: np.ndarray | None  # (n, D) cached backbone features; None: images through the CNN
    spectrograms: Path

    def dataset(self, rows: np.ndarray) -> Dataset:
        frame = self.frame.iloc[rows]
        targets = torch.from_numpy(frame["target"].to_numpy(dtype=np.int64).copy())
        rr = torch.from_numpy(self.rr[rows])
        if self.features is None:
            return data.SpectrogramDataset(self.spectrograms, frame, self.rr[rows])
        return TensorDataset(torch.from_numpy(self.features[rows]), rr, targets)


def cached_features(setup: Setup, store_root: Path, spectrograms: Path, frame: pd.DataFrame,
                    device: torch.device, batch_size: int, dtype: str) -> np.ndarray:
    """Backbone features of every row from the feature store (zero-width without images)."""
    if not uses_image(setup.arch["inputs"]):
        return np.zeros((len(frame), 0), dtype=np.float32)
    net = setup.net.to(device).eval()
    identity = feature_identity(net.backbone, setup.weights, setup.spec, setup.arch["image_dim"])
    store = FeatureStore(store_root, identity, net.image_features,
                         setup.prepare.preprocess, device, batch_size, dtype)
    return store.rows(spectrograms, frame, desc="backbone features")


def feature_identity(backbone: torch.nn.Module | None, weights: WeightsSource, spec: dict,
                     width: int) -> dict:
    """What cached features depend on besides the images (the store's key)."""
    assert backbone is not None, "rr-only networks have no backbone features"
    return {"model": type(backbone).__name__, "weights": weights.sha256 or weights.describe(),
            "spec": spec, "width": width,
            "random_seed": None if weights.kind != "random" else "seeded"}


@dataclass
class FoldFit:
    """One fold's result: the loop's history and the held-out rows' probabilities."""

    fold: Fold
    result: FitResult
    val_probs: np.ndarray


def fit_folds(setup: Setup, inputs: RunInputs, folds: list[Fold], cfg: FitConfig,
              params: Any, freeze: str, device: torch.device, out: Path, fingerprint: str,
              weight_fn: Callable[[np.ndarray], torch.Tensor | None],
              on_epoch: Callable[[Fold], EpochCallback | None]) -> list[FoldFit]:
    """Fits head k (with the backbone unless features are cached) on fold k, in turn."""
    fits = []
    heads = cast(HeadEnsemble, setup.net.head).heads
    for k, fold in enumerate(folds):
        targets = inputs.frame["target"].to_numpy()[fold.train]
        member, head = _fit_fixed_parts(heads[k], inputs.rr[fold.train], targets)
        cached = inputs.features is not None
        module = head if cached else FusedNet(setup.net.backbone, head, setup.arch["inputs"])
        groups = param_groups(head, cfg.lr, cfg.weight_decay, None)
        if not cached and setup.net.backbone is not None:
            decay = params.layer_decay if freeze != "frozen" else None
            groups += _backbone_groups(setup.net.backbone, cfg, decay)
        sets = {"train": inputs.dataset(fold.train), "val": inputs.dataset(fold.val)}
        loaders = _loaders(sets, targets, params, device, cached)
        scored = member if cached else FusedNet(setup.net.backbone, member, setup.arch["inputs"])
        result = fit(distributed.wrap(module, device), groups, loaders["train"], loaders["val"],
                     cfg, device, distributed.MainOnlyCheckpointer(
                         out / fold.name if len(folds) > 1 else out, fingerprint),
                     prepare=None if cached else setup.prepare, class_weights=weight_fn(targets),
                     sampler_generator=loaders["generator"], on_epoch_end=on_epoch(fold),
                     gather=distributed.gather, scorer=scored if member is not head else None)
        logits, _ = predict(scored, loaders["val"], device, None if cached else setup.prepare)
        probs = torch.softmax(distributed.gather(logits).float(), 1).cpu().numpy()
        fits.append(FoldFit(fold, result, probs))
        log.info("%s: best epoch %d, val macro-F1 over %s %.4f", fold.name, result.best_epoch,
                 "/".join(params.select_classes), result.best_score)
    return fits


def _fit_fixed_parts(member: nn.Module, rr: np.ndarray,
                     targets: np.ndarray) -> tuple[nn.Module, FusionHead]:
    """Fits what the loop does not train on the fold's training rows: the rhythm
    standardisation and any rhythm discriminant. Returns the member and its trainable head."""
    head = cast(FusionHead, member.head if isinstance(member, RhythmMix) else member)
    head.rr_norm.fit(torch.from_numpy(rr))
    if isinstance(member, RhythmMix):
        member.discriminant.fit(rr, targets)
    return member, head


def _backbone_groups(backbone: torch.nn.Module, cfg: FitConfig,
                     layer_decay: float | None) -> list[dict]:
    if not any(p.requires_grad for p in backbone.parameters()):
        return []
    return param_groups(backbone, cfg.lr, cfg.weight_decay, layer_decay)


def _loaders(sets: dict[str, Dataset], targets: np.ndarray, params: Any,
             device: torch.device, cached: bool) -> dict:
    gen = torch.Generator().manual_seed(params.seed)
    sampler = data.train_sampler(targets, params.imbalance == "balanced_sampler", gen)
    workers = 0 if cached else data.resolve_workers(params.num_workers, device)
    loaders: dict = {"generator": gen}
    for split, ds in sets.items():
        loaders[split] = data.make_loader(
            ds, distributed.local_batch(params.batch_size), device, params.seed,
            num_workers=workers, batch_index=cached,
            sampler=distributed.sharded_sampler(sampler, ds, params.batch_size)
            if split == "train" else distributed.sharded_sampler(None, ds, None))
    return loaders
