"""Freeze modes, optimizer parameter groups and the frozen-backbone feature extractor.

Modes of `apply_freeze` (call it once, on a model fresh from
`pipeline.training.models.build_model`):

* ``frozen``: the backbone is fixed, BatchNorm statistics included; only the classifier
  (``model.get_classifier()``) trains. Pair with `feature_extractor` to compute each image's
  features once and train the classifier on the cache.
* ``partial``: the last ``trainable_groups`` block groups train, by timm's own coarse grouping
  (``model.group_matcher(coarse=True)``: ResNet ``layer1..4``, EfficientNet/MobileNet ``blocks.i``,
  VGG one group per conv layer); earlier groups are fixed like ``frozen``. timm's last group,
  the head (classifier plus whatever timm groups with it, e.g. VGG's pre-logits MLP), always trains.
* ``full``: everything trains.

Frozen parts go through timm's ``timm.utils.model.freeze``: ``requires_grad=False`` and BatchNorm
layers become ``FrozenBatchNorm2d`` / ``FrozenBatchNormAct2d``, whose statistics and affine terms
are buffers, so ``model.train()`` cannot change them. Two consequences: parameter counts shrink
after freezing (`FreezeReport` counts before), and their state_dict has no ``num_batches_tracked``,
so reload a checkpoint with build_model -> apply_freeze(same arguments) -> load_state_dict.

``pre_logits`` decides, in ``frozen`` mode, the fate of the layers that ``forward_head`` runs before
the classifier. VGG16's fc6/fc7 (``pre_logits``, a ConvMlp) hold 119,545,856 of its 138,357,544
parameters (features 14,714,688; ImageNet classifier 4,097,000; measured, timm 1.0.31).
``"frozen"`` (default) treats them as backbone: features are the 4096-d pre-logits output and only a
4096xK linear trains (20,485 parameters for K=5), fast and small to cache. ``"trainable"`` trains
them with the classifier on cached ``forward_features`` maps (512x7x7 for VGG16 at 224 px).
MobileNetV3's ``conv_head`` and ConvNeXt's ``head.norm`` are pre-logits layers too; ResNet,
EfficientNet, RegNet, DenseNet and MobileNetV2 have none. In ``partial`` and ``full`` modes they
always train: timm groups them with the classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from timm.layers import FrozenBatchNormAct2d
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.utils.model import freeze
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

FreezeMode = Literal["frozen", "partial", "full"]
PreLogits = Literal["frozen", "trainable"]
_PROBE_SIZE = 64  # small input to find which modules forward_head runs; any CNN accepts it


@dataclass(frozen=True)
class FreezeReport:
    """What `apply_freeze` did.

    Attributes:
        mode: "frozen", "partial" or "full".
        trainable_params: parameters that train.
        total_params: all parameters (counted before BatchNorm layers became buffers).
        trainable_groups: names of the trainable groups, input side first, head last
            (e.g. ("layer3", "layer4", "fc")).
        pre_logits: whether the pre-logits layers train ("frozen"/"trainable"); always
            "trainable" in partial and full modes, where they belong to timm's head group.
    """

    mode: str
    trainable_params: int
    total_params: int
    trainable_groups: tuple[str, ...]
    pre_logits: str

    def summary(self) -> str:
        """One line for logs."""
        share = 100.0 * self.trainable_params / max(self.total_params, 1)
        return (f"{self.mode}: {self.trainable_params:,} of {self.total_params:,} parameters "
                f"trainable ({share:.2f} %) in {', '.join(self.trainable_groups)}")


def apply_freeze(
    model: nn.Module,
    mode: FreezeMode,
    trainable_groups: int = 2,
    pre_logits: PreLogits = "frozen",
) -> FreezeReport:
    """Freezes `model` in place according to `mode` (see module doc).

    Args:
        model: a timm model fresh from build_model.
        mode: "frozen", "partial" or "full".
        trainable_groups: partial mode: how many of the last block groups train.
        pre_logits: frozen mode only: "frozen" keeps the pre-logits layers fixed, "trainable"
            trains them with the classifier. partial/full always train them.

    Raises:
        ValueError: bad arguments, a model frozen before, or trainable_groups out of range.
    """
    _check_args(model, mode, pre_logits)
    names = [n for n, _ in model.named_parameters()]
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    if mode == "full":
        trainable, labels = set(names), [g for g, _ in block_groups(model)]
    elif mode == "frozen":
        trainable = classifier_param_names(model)
        if pre_logits == "trainable":
            trainable |= forward_head_param_names(model)
        split = [[n for n in names if n not in trainable], [n for n in names if n in trainable]]
        labels = group_labels(split)[1:]
    else:
        groups = block_groups(model)
        if not 1 <= trainable_groups <= len(groups) - 1:
            raise ValueError(
                f"trainable_groups={trainable_groups} for {len(groups) - 1} block groups "
                f"({', '.join(g for g, _ in groups[:-1])}); use 1..{len(groups) - 1}, "
                "or mode frozen / full"
            )
        chosen = groups[-(trainable_groups + 1):]
        trainable = {n for _, members in chosen for n in members}
        labels = [g for g, _ in chosen]
    _freeze_all_but(model, trainable)
    effective = pre_logits if mode == "frozen" else "trainable"  # timm's head group trains
    return FreezeReport(mode, sum(sizes[n] for n in trainable), sum(sizes.values()),
                        tuple(labels), effective)


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None
) -> list[dict]:
    """Optimizer param groups over the trainable parameters, via timm.optim.

    Each group carries its own ``lr`` (= `lr` x ``lr_scale``), so plain torch optimizers and
    schedulers apply layer decay (timm schedulers would multiply by ``lr_scale`` again: use torch
    schedulers, as optim.make_scheduler does). Norm and bias
    parameters (1-d) get no weight decay.

    Args:
        model: after apply_freeze.
        lr: learning rate of the head, the top of the decay.
        weight_decay: for weights (>= 2-d).
        layer_decay: lr factor per timm layer group (``group_matcher(coarse=False)``) going towards
            the input; None for one lr everywhere.

    Raises:
        ValueError: nothing trainable, or layer_decay outside (0, 1].
    """
    skip = tuple(_timm(model).no_weight_decay()) if hasattr(model, "no_weight_decay") else ()
    if layer_decay is None:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
        for group in groups:
            group["lr_scale"] = 1.0
    elif 0.0 < layer_decay <= 1.0:
        groups = param_groups_layer_decay(
            model, weight_decay=weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay
        )
    else:
        raise ValueError(f"layer_decay={layer_decay}: use a factor in (0, 1], or null for none")
    if not groups:
        raise ValueError("no trainable parameters; call apply_freeze with mode frozen/partial/full")
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return groups


def feature_extractor(
    model: nn.Module, pre_logits: PreLogits
) -> tuple[Callable[[Tensor], Tensor], nn.Module]:
    """Splits `model` for the frozen-mode feature cache: ``head(feature_fn(x)) == model(x)``.

    Run `feature_fn` with ``model.eval()`` under ``torch.inference_mode()`` to fill the cache. The
    head shares its parameters with `model`, so training it trains the model's own classifier.

    Args:
        model: after apply_freeze(model, "frozen", pre_logits=pre_logits).
        pre_logits: "frozen": features are the pooled pre-logits vector (VGG16: 4096-d) and the
            head is the classifier (after the model's dropout, if any). "trainable": features are
            the ``forward_features`` map and the head is the model's ``forward_head``.
    """
    if pre_logits == "trainable":
        return _timm(model).forward_features, _ForwardHead(model)
    if pre_logits != "frozen":
        raise ValueError(f"pre_logits={pre_logits!r}: use 'frozen' or 'trainable'")

    def feature_fn(x: Tensor) -> Tensor:
        return _timm(model).forward_head(_timm(model).forward_features(x), pre_logits=True)

    head: nn.Module = _timm(model).get_classifier()
    drop = float(getattr(model, "drop_rate", 0.0) or 0.0)
    if drop > 0:  # timm applies it between pre-logits and classifier in training
        head = nn.Sequential(nn.Dropout(drop), head)
    return feature_fn, head


class _ForwardHead(nn.Module):
    """The model's own forward_head (pre-logits layers + classifier) as a module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor) -> Tensor:
        return _timm(self.model).forward_head(features)


def block_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """timm's coarse parameter groups as (label, parameter names), input first, head last."""
    if not hasattr(model, "group_matcher"):
        raise ValueError(f"{type(model).__name__} has no timm group_matcher; use frozen or full")
    by_id = group_parameters(model, _timm(model).group_matcher(coarse=True))
    members = [names for _, names in sorted(by_id.items())]
    groups = list(zip(group_labels(members), members, strict=True))
    assert classifier_param_names(model) <= set(groups[-1][1]), "classifier not in the last group"
    return groups


def classifier_param_names(model: nn.Module) -> set[str]:
    """Names of the parameters of ``model.get_classifier()``."""
    ids = {id(p) for p in _timm(model).get_classifier().parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def forward_head_param_names(model: nn.Module) -> set[str]:
    """Parameters of the modules that ``forward_head`` runs (pre-logits layers + classifier).

    Found by running the model once on a small zero input in eval mode, because timm's grouping
    does not always agree (DenseNet groups its last feature norm with the head).
    """
    first = next(model.parameters())
    in_chans = next((p.shape[1] for p in model.parameters() if p.ndim == 4), 3)
    x = torch.zeros(1, in_chans, _PROBE_SIZE, _PROBE_SIZE, device=first.device, dtype=first.dtype)
    was_training, called = model.training, set()
    model.eval()
    try:
        with torch.no_grad():
            features = _timm(model).forward_features(x)
            hooks = [m.register_forward_hook(lambda mod, *_: called.add(id(mod)))
                     for m in model.modules()]
            _timm(model).forward_head(features)
    finally:
        for hook in locals().get("hooks", []):
            hook.remove()
        model.train(was_training)
    return {f"{mn}.{pn}" if mn else pn
            for mn, m in model.named_modules() if id(m) in called
            for pn, _ in m.named_parameters(recurse=False)}


def group_labels(groups: list[list[str]]) -> list[str]:
    """Short labels for groups of parameter names: the shortest module prefixes unique to a group.

    E.g. ResNet's ["conv1+bn1", "layer1", ..., "fc"], VGG's [..., "features.28", "pre_logits+head"].
    """
    owners: dict[str, set[int]] = {}
    for i, names in enumerate(groups):
        for name in names:
            for prefix in _prefixes(name):
                owners.setdefault(prefix, set()).add(i)
    labels = []
    for i, names in enumerate(groups):
        unique = [next(p for p in _prefixes(n) if owners[p] == {i}) for n in names]
        labels.append("+".join(dict.fromkeys(unique)))  # ordered, without repeats
    return labels


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:depth]) for depth in range(1, len(parts) + 1)]


def _timm(model: nn.Module) -> Any:
    """The model as a timm model: nn.Module's typing knows no forward_head, group_matcher..."""
    return model


def _check_args(model: nn.Module, mode: str, pre_logits: str) -> None:
    if mode not in ("frozen", "partial", "full"):
        raise ValueError(f"mode={mode!r}: use 'frozen', 'partial' or 'full'")
    if pre_logits not in ("frozen", "trainable"):
        raise ValueError(f"pre_logits={pre_logits!r}: use 'frozen' or 'trainable'")
    if any(isinstance(m, FrozenBatchNorm2d | FrozenBatchNormAct2d) for m in model.modules()):
        raise ValueError("model was frozen before; apply_freeze needs a fresh model (build_model)")


def _freeze_all_but(model: nn.Module, trainable: set[str]) -> None:
    """Freezes every parameter not in `trainable`, and the BatchNorm layers that own them."""
    frozen = [n for n, _ in model.named_parameters() if n not in trainable]
    owners = sorted({n.rpartition(".")[0] for n in frozen} - {""})
    for name, param in model.named_parameters():
        param.requires_grad = name in trainable  # also root-level parameters, which have no owner
    if owners:
        freeze(model, submodules=owners, include_bn_running_stats=True)
    still = {n for n, p in model.named_parameters() if p.requires_grad}
    assert still == trainable, f"freeze touched trainable parameters: {sorted(trainable - still)}"
