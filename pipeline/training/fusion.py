"""Heads that fuse pooled CNN features with rhythm (RR) features, and the whole fused network.

`train.inputs` chooses what the classifier sees: "image" (pooled CNN features), "rr" (the
rhythm features of `data_prep.beats.rhythm`, standardised) or "image+rr" (both, concatenated before
the classifier layer(s): the usual fusion of the strong inter-patient results). `train.head` is
"linear" (one layer) or "mlp" (one hidden layer with GELU and dropout). With both inputs,
`train.image_dropout` hides the whole image vector of a random share of the training beats
(modality dropout, "ModDrop", Neverova et al. 2016): a thousand image columns otherwise crowd
out the rhythm and shape features (17 by default), which are what carries over to unseen
patients.

Rhythm features are standardised inside the head with a mean/std fitted on the training split
(`Standardise.fit`): they travel with the weights, so evaluate, export and predict feed raw
features and cannot apply other statistics.

`HeadEnsemble` averages the probabilities of several heads over one shared backbone (one head
per cross-validation fold, each selected on its own held-out patients); `class_bias` adds a
per-class log-prior shift fitted on out-of-fold validation predictions (`calibration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Inputs = Literal["image", "rr", "image+rr"]
HeadKind = Literal["linear", "mlp"]


def uses_image(inputs: str) -> bool:
    return inputs in ("image", "image+rr")


def uses_rr(inputs: str) -> bool:
    return inputs in ("rr", "image+rr")


class Standardise(nn.Module):
    """(x - mean) / std with buffers fitted on training data (identity until fitted)."""

    mean: Tensor
    std: Tensor

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: Tensor) -> Standardise:
        if x.shape[1] == 0:  # no rhythm input: nothing to fit
            return self
        x = x.double()
        self.mean.copy_(x.mean(0).float())
        self.std.copy_(x.std(0).clamp_min(1e-6).float())  # a constant feature stays finite
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std


class FusionHead(nn.Module):
    """Classifier over [image features, standardised rr features] (either may be absent).

    Args:
        image_dim: width of the pooled CNN features (0: no image input).
        rr_dim: number of rhythm features (0: no rhythm input).
        num_classes: outputs.
        kind: "linear" or "mlp".
        hidden: MLP width.
        dropout: MLP dropout (also before a linear head on image features, as timm's heads).
        image_dropout: training only, with both inputs: the share of beats whose whole image
            vector is zeroed (the rest scaled up, as dropout does); 0 = off.
    """

    def __init__(self, image_dim: int, rr_dim: int, num_classes: int, kind: HeadKind = "linear",
                 hidden: int = 256, dropout: float = 0.2, image_dropout: float = 0.0):
        super().__init__()
        if image_dim + rr_dim == 0:
            raise ValueError("a head needs image features, rhythm features or both")
        self.image_dim, self.rr_dim = image_dim, rr_dim
        # Dropout1d drops whole channels: one channel per beat = its whole image vector
        self.image_drop = nn.Dropout1d(image_dropout if image_dim and rr_dim else 0.0)
        self.rr_norm = Standardise(rr_dim)
        width = image_dim + rr_dim
        if kind == "linear":
            self.net: nn.Module = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.GELU(),
                                     nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        else:
            raise ValueError(f"head {kind!r}: use 'linear' or 'mlp'")

    def forward(self, features: Tensor, rr: Tensor) -> Tensor:
        parts = []
        if self.image_dim:
            parts.append(self.image_drop(features.float().unsqueeze(1)).squeeze(1))
        if self.rr_dim:
            parts.append(self.rr_norm(rr))
        return self.net(torch.cat(parts, dim=1))


class HeadEnsemble(nn.Module):
    """Mean probability of several heads, returned as logits (log of the mean probability)
    plus a fitted per-class bias, so softmax(output) is the calibrated ensemble probability."""

    class_bias: Tensor

    def __init__(self, heads: Sequence[nn.Module], num_classes: int):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.register_buffer("class_bias", torch.zeros(num_classes))

    def forward(self, features: Tensor, rr: Tensor) -> Tensor:
        if len(self.heads) == 1:
            return self.heads[0](features, rr).float() + self.class_bias
        probs = torch.stack([h(features, rr).float().softmax(1) for h in self.heads]).mean(0)
        return probs.clamp_min(1e-12).log() + self.class_bias


class FusedNet(nn.Module):
    """Backbone (timm model whose classifier was removed) + fusion head: (image, rr) -> logits.

    `image` is the normalised float batch (B, C, H, W); `rr` raw rhythm features (B, F). With
    inputs "rr" the backbone is never run (the image may be any tensor, even empty).
    """

    backbone: nn.Module | None
    head: nn.Module  # a HeadEnsemble; one FusionHead while train fits a fold

    def __init__(self, backbone: nn.Module | None, head: nn.Module, inputs: Inputs):
        super().__init__()
        if uses_image(inputs) and backbone is None:
            raise ValueError(f"inputs {inputs!r} need a backbone")
        self.backbone = backbone if uses_image(inputs) else None
        self.head, self.inputs = head, inputs

    def image_features(self, image: Tensor) -> Tensor:
        model = self.backbone
        assert model is not None
        return model.forward_head(model.forward_features(image), pre_logits=True)  # type: ignore[operator]

    def forward(self, image: Tensor, rr: Tensor) -> Tensor:
        if self.backbone is None:
            features = rr.new_zeros(rr.shape[0], 0)
        else:
            features = self.image_features(image)
        return self.head(features, rr)


def feature_width(backbone: nn.Module) -> int:
    """Width of the pooled pre-logits features (timm's num_features, after any pre-logits MLP)."""
    head_hidden = getattr(backbone, "head_hidden_size", None)
    return int(head_hidden or backbone.num_features)  # type: ignore[arg-type]
