"""Model factory: which pretrained weights to use, building timm models, backbone presets.

`weights` (a params value) is "random" (on purpose; the only way to get random init), a path to
a .safetensors (or .pth/.pt/.bin, read with torch.load(weights_only=True)) file in timm's key
layout, or "imagenet", looked up in this order and never replaced by random weights:

1. A file in ``weights_dir``, then ``$ECG_WEIGHTS_DIR``: ``<model>.safetensors`` or
   ``<model>.<tag>.safetensors``. A tagged name needs its exact file (``vgg16.tv_in1k`` ->
   ``vgg16.tv_in1k.safetensors``); an untagged one takes any tag (``mobilenetv2_100`` ->
   ``mobilenetv2_100.tv_qat_in1k.safetensors``) unless several match.
2. A Hugging Face cache in those folders (HF_HOME layout: the folder or its ``hub/`` holds
   ``models--timm--<model>.<tag>/snapshots/<rev>/model.safetensors``), made on a connected
   machine with ``HF_HOME=DIR python -c "import timm; timm.create_model('vgg16.tv_in1k',
   pretrained=True)"`` and copied over. The snapshot file, which timm's hub loader would read, is
   loaded as a local file: no network needed.
3. The hub (timm's default source, ``timm/<model>.<tag>``), or its default cache when
   ``HF_HUB_OFFLINE=1``. Offline or unreachable, `resolve_weights` raises before any training and
   says how to provide weights.

`build_model` always calls ``timm.create_model(name, pretrained=..., num_classes=K)``; a file goes
through timm's ``pretrained_cfg_overlay=dict(file=...)``, which re-initialises the classifier
for K classes but then loads non-strictly, so `build_model` checks that every other tensor came
from the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError
from pydantic import Field
from timm.models import (
    get_model_traits,
    get_pretrained_cfg,
    load_state_dict,
    split_model_name_tag,
)

from data_prep.params import StrictModel, read_yaml

log = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "ECG_WEIGHTS_DIR"
FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # timm's hub loader prefers the first
BACKBONES_YAML = Path(__file__).resolve().parents[1] / "configs" / "backbones.yaml"
_HUB_PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's initial weights come from.

    Attributes:
        kind: "hub", "file" or "random".
        location: hub id (e.g. "timm/vgg16.tv_in1k"), a file path, or "random".
        sha256: of the weights file; None for random init or a hub file not yet known.
    """

    kind: Literal["hub", "file", "random"]
    location: str
    sha256: str | None = None

    def describe(self) -> str:
        """One line for logs and MLflow tags, e.g. ``file:/w/x.safetensors sha256=ab12...``."""
        if self.kind == "random":
            return "random (explicitly requested, no pretrained weights)"
        return f"{self.kind}:{self.location}" + (f" sha256={self.sha256}" if self.sha256 else "")


def resolve_weights(
    model_name: str, weights: str, weights_dir: Path | None = None
) -> WeightsSource:
    """Decides, before any training, where `model_name`'s weights come from (see module doc).

    Args:
        model_name: timm model name, optionally with a pretrained tag ("vgg16.tv_in1k").
        weights: "imagenet", "random", or a path to a weights file.
        weights_dir: folder of local weight files or a Hugging Face cache; searched before
            ``$ECG_WEIGHTS_DIR``.

    Raises:
        ValueError: unknown model, ambiguous local files, or no ImageNet weights reachable.
        FileNotFoundError: a weights path or weights folder that does not exist.
    """
    arch, tag = _split_name(model_name)
    if weights == "random":
        return WeightsSource("random", "random", None)
    if weights != "imagenet":
        return _explicit_file(Path(weights))
    folders = _weights_folders(weights_dir)
    hub_id = _hub_id(model_name)
    for folder in folders:
        found = _find_local_file(folder, arch, tag) or _cached_hub_file(
            hub_id, [folder, folder / "hub"]
        )
        if found:
            log.info("ImageNet weights for %s: %s", model_name, found)
            return WeightsSource("file", str(found), _sha256(found))
    return _hub_source(model_name, hub_id, folders)


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


class BackbonePreset(StrictModel):
    """One entry of configs/backbones.yaml."""

    model: str
    lr: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    layer_decay: float | None = Field(default=None, gt=0, le=1)
    notes: str = ""


def load_preset(name: str, path: Path = BACKBONES_YAML) -> dict[str, Any]:
    """Returns the preset called `name` ("default" for the default backbone), validated.

    Raises:
        ValueError: unknown preset (the message lists the known ones) or a malformed entry.
    """
    data = read_yaml(path)
    presets = data.get("presets") or {}
    key = data.get("default") if name == "default" else name
    if key not in presets:
        matches = [k for k, v in presets.items() if v and v.get("model") == name]
        if len(matches) != 1:
            raise ValueError(
                f"{path}: no backbone preset '{name}'; known: {', '.join(presets)}. "
                "Add an entry there or pass the timm settings explicitly."
            )
        key = matches[0]
    try:
        return BackbonePreset.model_validate(presets[key]).model_dump()
    except ValueError as err:
        raise ValueError(f"{path} [presets.{key}]: {err}") from None


def _split_name(model_name: str) -> tuple[str, str]:
    arch, tag = split_model_name_tag(model_name)
    if not timm.is_model(arch):
        near = timm.list_models(f"*{arch.split('_')[0]}*")[:12]
        raise ValueError(f"unknown timm model '{arch}'; similar names: {', '.join(near) or 'none'}")
    return arch, tag


def _timm_name(model_name: str) -> str:
    """Drops a tag timm does not know (a local file's tag) so timm builds the architecture."""
    arch, tag = _split_name(model_name)
    if tag and _known_cfg(model_name) is None:
        log.info("tag '%s' is not a timm pretrained tag; building %s with its default config",
                 tag, arch)
        return arch
    return model_name


def _known_cfg(model_name: str) -> Any:
    try:
        return get_pretrained_cfg(model_name)
    except RuntimeError:  # timm raises for a tag it does not know
        return None


def _hub_id(model_name: str) -> str | None:
    return getattr(_known_cfg(model_name), "hf_hub_id", None)


def _explicit_file(path: Path) -> WeightsSource:
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} not found; give an existing {'/'.join(FILE_SUFFIXES)} file, "
            "or weights: imagenet / random"
        )
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(f"{path}: weights files must end in {', '.join(FILE_SUFFIXES)}")
    return WeightsSource("file", str(path.resolve()), _sha256(path))


def _weights_folders(weights_dir: Path | None) -> list[Path]:
    folders = [Path(weights_dir)] if weights_dir else []
    if os.environ.get(ENV_WEIGHTS_DIR):
        folders.append(Path(os.environ[ENV_WEIGHTS_DIR]))
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(
                f"weights folder {folder} does not exist; fix weights_dir / ${ENV_WEIGHTS_DIR}"
            )
    return folders


def _find_local_file(folder: Path, arch: str, tag: str) -> Path | None:
    if tag:
        path = folder / f"{arch}.{tag}.safetensors"
        return path if path.is_file() else None
    # "<arch>.safetensors" or "<arch>.<tag>.safetensors"; tags never contain dots
    found = sorted(
        p for p in folder.glob("*.safetensors")
        if p.name == f"{arch}.safetensors"
        or (p.name.startswith(f"{arch}.") and p.name.count(".") == arch.count(".") + 2)
    )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ValueError(
            f"several weight files for '{arch}' in {folder}: {names}. Name the one to use with its "
            f"tag, e.g. model: {found[0].name.removesuffix('.safetensors')}"
        )
    return found[0] if found else None


def _cached_hub_file(hub_id: str | None, caches: list[Path | None]) -> Path | None:
    """The file timm's hub loader would read from a HF cache (None: the default cache)."""
    if not hub_id:
        return None
    for cache in caches:
        for filename in HUB_FILENAMES:
            hit = try_to_load_from_cache(hub_id, filename, cache_dir=cache)
            if isinstance(hit, str):  # else None or a "known missing" sentinel
                return Path(hit)
    return None


def _hub_source(model_name: str, hub_id: str | None, folders: list[Path]) -> WeightsSource:
    if not hub_id:
        arch = split_model_name_tag(model_name)[0]
        known = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
        reason = f"timm has no hub weights for it; known pretrained names: {known}"
        raise ValueError(_no_weights_message(model_name, folders, reason))
    cached = _cached_hub_file(hub_id, [None])  # the default cache works offline
    if cached:
        return WeightsSource("hub", hub_id, _sha256(cached))
    if _hub_offline():
        raise ValueError(_no_weights_message(model_name, folders, "HF_HUB_OFFLINE is set"))
    sha, problem = _probe_hub(hub_id)
    if problem:
        raise ValueError(_no_weights_message(model_name, folders, problem))
    return WeightsSource("hub", hub_id, sha)


def _hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(constants.HF_HUB_OFFLINE)  # the env var is also read at call time


def _probe_hub(hub_id: str) -> tuple[str | None, str | None]:
    """Asks the hub for the weights file; returns (sha256 or None, problem or None)."""
    problem = None
    for filename in HUB_FILENAMES:
        try:
            meta = get_hf_file_metadata(hf_hub_url(hub_id, filename), timeout=_HUB_PROBE_TIMEOUT_S)
        except HfHubHTTPError as err:  # the hub answered: this file is missing, try the next
            problem = f"hub answered {type(err).__name__} for {hub_id}"
            continue
        except Exception as err:  # any other failure (DNS, connect, timeout) means unreachable
            return None, f"Hugging Face hub unreachable ({type(err).__name__}: {err})"
        etag = (meta.etag or "").strip('"')
        is_sha = len(etag) == 64 and all(c in "0123456789abcdef" for c in etag)
        return (etag if is_sha else None), None  # LFS etags are the file's sha256
    return None, problem


def _no_weights_message(model_name: str, folders: list[Path], reason: str) -> str:
    arch, tag = split_model_name_tag(model_name)
    expected = f"{model_name}.safetensors" if tag else f"{arch}.<tag>.safetensors"
    where = ", ".join(str(f) for f in folders) or "none set"
    return (
        f"no ImageNet weights for '{model_name}' ({reason}). Provide them, then re-run:\n"
        f"  - put {expected} (timm key layout) in weights_dir or ${ENV_WEIGHTS_DIR} "
        f"(searched: {where});\n"
        "  - or point weights_dir at a Hugging Face cache (HF_HOME) that holds the model;\n"
        "  - or set weights to the path of a .safetensors/.pth file;\n"
        "  - or set weights: random to train from scratch on purpose."
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
