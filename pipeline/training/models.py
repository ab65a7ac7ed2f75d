"""Model factory: building timm models from resolved weights.

`build_model` always calls ``timm.create_model(name, pretrained=..., num_classes=K)``; a file goes
through timm's ``pretrained_cfg_overlay=dict(file=...)``, which re-initialises the classifier
for K classes but then loads non-strictly, so `build_model` checks that every other tensor came
from the file. Where weights come from is `pipeline.training.weights`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import get_model_traits, load_state_dict

from pipeline.training.weights import WeightsSource, known_cfg, split_name

log = logging.getLogger(__name__)

def build_model(
    model_name: str, num_classes: int, weights: WeightsSource, **timm_kwargs: Any
) -> torch.nn.Module:
    """Creates a timm model with `num_classes` outputs, initialised from `weights`.

    Args:
        model_name: timm model name, as given to `resolve_weights`.
        num_classes: classifier outputs; a pretrained classifier of another size is re-initialised.
        weights: from `resolve_weights`.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. drop_rate, in_chans).

    Raises:
        ValueError: the weights file does not match the architecture.
    """
    name = _timm_name(model_name)
    kwargs: dict[str, Any] = {"num_classes": num_classes, **timm_kwargs}
    if weights.kind == "random":
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights.kind == "hub":
        overlay = {"hf_hub_id": weights.location}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    if weights.kind != "file":
        raise ValueError(f"weights kind {weights.kind!r}: make sources with resolve_weights()")
    path = Path(weights.location)
    try:
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    except RuntimeError as err:  # torch's size-mismatch report, raised even by non-strict loads
        raise ValueError(
            f"{path} does not fit {name}: {str(err)[:800]}\nCheck that the file was saved from "
            f"'{name}' in timm's key layout, or pick the model it belongs to."
        ) from err
    _verify_loaded(model, path)
    log.info("built %s (%d classes) from %s", name, num_classes, weights.describe())
    return model


def model_data_config(model: torch.nn.Module) -> dict[str, Any]:
    """Input normalisation the model was pretrained with (mean, std, input_size, interpolation).

    tf_mobilenetv3_small_100 uses mean = std = 0.5, most others the ImageNet statistics. A model
    built with in_chans=1 (timm sums the stem's RGB weights) gets the channel-averaged mean/std.
    """
    cfg = timm.data.resolve_model_data_config(model)
    in_chans = get_model_traits(model).get("in_chans") or cfg["input_size"][0]
    mean, std = (tuple(float(v) for v in cfg[k]) for k in ("mean", "std"))
    if in_chans != len(mean):  # timm keeps the 3-channel values of the pretrained config
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return {
        "mean": mean,
        "std": std,
        "input_size": (int(in_chans), *(int(v) for v in cfg["input_size"][1:])),
        "interpolation": str(cfg["interpolation"]),
    }


def _timm_name(model_name: str) -> str:
    """Drops a tag timm does not know (a local file's tag) so timm builds the architecture."""
    arch, tag = split_name(model_name)
    if tag and known_cfg(model_name) is None:
        log.info("tag '%s' is not a timm pretrained tag; building %s with its default config",
                 tag, arch)
        return arch
    return model_name


def _verify_loaded(model: Any, path: Path) -> None:
    """Fails unless every non-classifier tensor of `model` equals the file's.

    timm loads non-strictly once the classifier is re-sized, logging missing keys at INFO only.
    """
    state = load_state_dict(str(path))
    head = tuple(f"{c}." for c in _as_tuple(model.pretrained_cfg.get("classifier")))
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    required = {k for k in ours if not k.startswith(head)}
    if not required <= state.keys():
        state = _model_filter(model)(state)  # e.g. torchvision VGG keys, as timm's loader maps them
    missing = sorted(required - state.keys())
    unexpected = sorted(k for k in state.keys() - ours.keys()
                        if not k.startswith(head) and not k.endswith("num_batches_tracked"))
    differ = sorted(k for k in required - set(missing) if ours[k].shape == state[k].shape
                    and not torch.equal(ours[k], state[k].to(ours[k].dtype)))
    if missing or unexpected or differ:
        raise ValueError(
            f"{path} does not match '{model.pretrained_cfg['architecture']}': "
            f"{len(missing)} backbone tensors missing {missing[:8]}, {len(unexpected)} unexpected "
            f"{unexpected[:8]}, {len(differ)} not loaded {differ[:8]}. Use the weights file saved "
            "from this architecture (timm key layout) or the model it was saved from."
        )


def _model_filter(model: torch.nn.Module) -> Callable[[dict], dict]:
    """The architecture's checkpoint filter (timm convention), or identity."""
    module = sys.modules[type(model).__module__]
    fn = getattr(module, "checkpoint_filter_fn", None) or getattr(module, "_filter_fn", None)
    if fn is None:
        return lambda state: state

    def apply(state: dict[str, Any]) -> dict[str, Any]:
        try:
            return fn(state, model)
        except TypeError:  # one-argument filters, as timm's load_pretrained also allows
            return fn(state)

    return apply


def _as_tuple(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)
