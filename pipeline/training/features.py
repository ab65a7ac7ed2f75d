"""Run fingerprints and batched backbone feature extraction.

`data_fingerprint` and `cache_key` identify what a run saw (resume decisions, the run's
fingerprint); `extract_features` runs a frozen backbone over a loader (the GPU benchmark and
tests). Frozen-mode training and evaluation read features from `pipeline.training.feature_store`."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from data_prep.layout import ASSIGNMENT, INDEX, META, SHARD_SHA256, SHARDS
from pipeline.training.device import autocast, model_input

log = logging.getLogger(__name__)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def data_fingerprint(spectrograms: Path, splits: Path, frame: pd.DataFrame) -> str:
    """Hash of the data a run sees: meta, index, split assignment, shard files and the rows used.

    A shard whose sha256 the spectrogram stage recorded is covered by meta.json, so a re-run of
    the image stage that writes the same pixels keeps the fingerprint (and the run resumes).
    Shards of older outputs, with no recorded hash, are identified by name, size and
    modification time rather than read in full (tens of GB for large databases); a touched but
    unchanged one only costs a recomputation.
    """
    digest = hashlib.sha256()
    meta = (spectrograms / META).read_bytes()
    for blob in (meta, (spectrograms / INDEX).read_bytes(), (splits / ASSIGNMENT).read_bytes()):
        digest.update(blob)
    recorded = json.loads(meta).get(SHARD_SHA256, {})
    for shard in sorted((spectrograms / SHARDS).glob("*.npy")):
        if shard.stem in recorded:
            continue
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
