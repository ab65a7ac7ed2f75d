"""Backbone features computed once, cached on disk, for training a head on a frozen backbone.

With the backbone frozen (weights and BatchNorm statistics fixed), every image's features are
the same at every epoch, so they are computed once (eval mode, no grad, bf16 autocast on CUDA)
and the head trains on them: an epoch then costs a few matrix products instead of a pass of
the CNN over every image.

Cache layout: `<cache_dir>/<key>/<split>.features.npy` (float16 by default) and
`<split>.targets.npy`, where `key` hashes the model name, the weights' sha256, the feature cut
(pre_logits), the preprocessing spec and the data version (see `data_fingerprint`). A changed
input gives a new key; nothing stale is ever read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from data_prep.layout import ASSIGNMENT, INDEX, META, SHARDS, atomic_path
from pipeline.data import make_loader
from pipeline.device import autocast, model_input

log = logging.getLogger(__name__)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def data_fingerprint(spectrograms: Path, splits: Path, frame: pd.DataFrame) -> str:
    """Hash of the data a run sees: meta, index, split assignment, shard files and the rows used.

    Shards are identified by name, size and modification time rather than read in full (tens
    of GB for large databases); a touched but unchanged shard only costs a recomputation.
    """
    digest = hashlib.sha256()
    for path in (spectrograms / META, spectrograms / INDEX, splits / ASSIGNMENT):
        digest.update(path.read_bytes())
    for shard in sorted((spectrograms / SHARDS).glob("*.npy")):
        stat = shard.stat()
        digest.update(f"{shard.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    rows = frame[["split", "record", "row"]].astype(str).agg(":".join, axis=1)
    digest.update("\n".join(rows).encode())
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """Short stable hash of JSON-serialisable parts (model, weights sha, spec, data version)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@torch.no_grad()
def extract_features(
    feature_fn: FeatureFn,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    prepare: torch.nn.Module,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs `feature_fn` over every batch, in eval mode; returns float32 CPU features, targets.

    The caller puts the backbone in eval mode (frozen BatchNorm); `prepare` turns uint8 images
    into the model input exactly as in training.
    """
    prepare.to(device).eval()
    feats, targets = [], []
    for x, y in tqdm(loader, desc=desc, dynamic_ncols=True):
        with autocast(device):
            out = feature_fn(model_input(x, device, prepare))
        feats.append(out.float().cpu())
        targets.append(y)
    return torch.cat(feats), torch.cat(targets)


def cache_files(folder: Path, split: str) -> tuple[Path, Path]:
    """The features and targets files of one split in a cache folder."""
    return folder / f"{split}.features.npy", folder / f"{split}.targets.npy"


def is_cached(folder: Path, split: str) -> bool:
    """Whether a split's cache entry is complete (features are written last)."""
    return all(path.is_file() for path in cache_files(folder, split))


def cached_features(
    folder: Path,
    split: str,
    compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    dtype: str = "float16",
) -> TensorDataset:
    """Loads `<folder>/<split>.*.npy`, or computes and writes them first.

    Args:
        folder: the cache folder of one key.
        split: "train", "val" or "test".
        compute: returns (features, targets) when the cache is empty.
        dtype: storage dtype; float16 halves disk and RAM, float32 is exact.

    Returns:
        A `TensorDataset` of (features, targets), features in the storage dtype (float16 halves
        RAM and host-to-device traffic; `device.model_input` casts batches to float32).
    """
    feat_path, target_path = cache_files(folder, split)
    if is_cached(folder, split):
        log.info("cached %s features: %s", split, feat_path)
        feats = np.load(feat_path)
        targets = np.load(target_path)
    else:
        computed, computed_targets = compute()
        feats, targets = _storable(computed.numpy(), dtype), computed_targets.numpy()
        # targets first: features are the file whose presence marks a complete entry
        for path, array in ((target_path, targets), (feat_path, feats)):
            with atomic_path(path) as tmp, tmp.open("wb") as fh:
                np.save(fh, array)
        log.info("wrote %s features %s (%s) to %s", split, feats.shape, feats.dtype, feat_path)
    return TensorDataset(torch.from_numpy(feats), torch.from_numpy(targets))


def _storable(feats: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return feats.astype(np.float32)
    if dtype != "float16":
        raise ValueError(f"feature dtype must be float16 or float32, got {dtype!r}")
    half = feats.astype(np.float16)
    if not np.isfinite(half).all():  # activations beyond float16's 65504: keep full precision
        log.warning("features overflow float16; caching them as float32")
        return feats.astype(np.float32)
    return half


def feature_datasets(
    feature_fn: FeatureFn,
    images: dict[str, Dataset],
    folder: Path,
    device: torch.device,
    preprocess: torch.nn.Module,
    batch_size: int,
    workers: int,
    dtype: str = "float16",
) -> dict[str, TensorDataset]:
    """Cached feature datasets per split, extracted from the image datasets on a cache miss.

    Args:
        feature_fn: frozen backbone (`freeze.feature_extractor`), model in eval mode on `device`.
        images: image dataset per split (uint8 images, int targets).
        folder: this key's cache folder.
        device: where the backbone runs.
        preprocess: uint8 -> model input (`transforms.Preprocess`).
        batch_size: images per extraction batch.
        workers: loader processes for reading the images.
        dtype: cache storage dtype.
    """

    def compute(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        loader = make_loader(images[split], batch_size, device, seed=0, num_workers=workers)
        return extract_features(feature_fn, loader, device, preprocess, desc=f"{split} features")

    return {s: cached_features(folder, s, partial(compute, s), dtype) for s in images}
