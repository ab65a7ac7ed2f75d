"""Which pretrained weights a model starts from: local files, a Hugging Face cache, or the hub.

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
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError
from timm.models import get_pretrained_cfg, split_model_name_tag

from data_prep.layout import sha256_file

log = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "ECG_WEIGHTS_DIR"
FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # timm's hub loader prefers the first
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
    arch, tag = split_name(model_name)
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
            return WeightsSource("file", str(found), sha256_file(found))
    return _hub_source(model_name, hub_id, folders)


def split_name(model_name: str) -> tuple[str, str]:
    arch, tag = split_model_name_tag(model_name)
    if not timm.is_model(arch):
        near = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
        raise ValueError(f"unknown timm model '{arch}'; did you mean: {', '.join(near) or 'none'}"
                         " (timm.list_models() lists every name)")
    return arch, tag


def known_cfg(model_name: str) -> Any:
    try:
        return get_pretrained_cfg(model_name)
    except RuntimeError:  # timm raises for a tag it does not know
        return None


def _hub_id(model_name: str) -> str | None:
    return getattr(known_cfg(model_name), "hf_hub_id", None)


def _explicit_file(path: Path) -> WeightsSource:
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} not found; give an existing {'/'.join(FILE_SUFFIXES)} file, "
            "or weights: imagenet / random"
        )
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(f"{path}: weights files must end in {', '.join(FILE_SUFFIXES)}")
    return WeightsSource("file", str(path.resolve()), sha256_file(path))


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
        return WeightsSource("hub", hub_id, sha256_file(cached))
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


