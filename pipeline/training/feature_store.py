"""A store of frozen-backbone features per spectrogram row, shared by train and evaluate.

A frozen backbone maps an image to the same features in every run that uses the same backbone,
weights, preprocessing and images. So each image's features are computed once, on demand, and
reused by every later run: another head, input choice, seed or fold, and evaluate on the test
split. A new head on all of mitdb then costs seconds instead of a pass of the CNN over 100k
images.

Layout: `<root>/<key>/<record>-<shard sha256>.features.npy` (n_rows, D), float32 or float16
(train.feature_dtype; float32 where a value overflows float16) beside
`<record>-<shard sha256>.done.npy` (n_rows,) bool, where `key` hashes the backbone, the weights'
sha256, the preprocessing spec and the dtype. The features follow the pixels: the image shard's
content hash (the spectrogram stage records it in meta.json; older outputs are hashed here) is
all that ties them to the data, so a new rhythm or shape feature, or a re-run of the image stage
that writes the same images, reuses every computed row. Only the rows a run asks for are
computed (under torchrun, each process computes its share of the records; every process then
reads them all); the mask is written after the features, so a killed run never leaves rows
marked done that hold nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from data_prep.layout import (
    META,
    SHARD_SHA256,
    atomic_path,
    load_shard,
    read_json,
    sha256_file,
    shard_path,
)
from pipeline.training import distributed
from pipeline.training.device import autocast, model_input
from pipeline.training.features import cache_key

log = logging.getLogger(__name__)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FeatureStore:
    """Features of one (backbone, weights, preprocessing, image set), computed on demand.

    Args:
        root: the store's folder (shared across runs: train.feature_cache_dir).
        identity: what the features depend on besides the images (backbone, weights sha256,
            preprocessing spec).
        feature_fn: frozen backbone, image batch -> pooled features; run in eval mode.
        prepare: uint8 images -> model input (`transforms.Preprocess`).
        device: where the backbone runs.
        batch_size: images per forward pass.
    """

    root: Path
    identity: dict
    feature_fn: FeatureFn
    prepare: torch.nn.Module
    device: torch.device
    batch_size: int = 128
    dtype: str = "float32"  # float16 halves disk and RAM but moves probabilities by ~1e-4

    def folder(self) -> Path:
        return self.root / cache_key(**self.identity, dtype=self.dtype)

    def rows(self, spectrograms: Path, frame: pd.DataFrame, desc: str = "features") -> np.ndarray:
        """Features of the frame's (record, row) images in frame order, computing missing ones."""
        files = _StoreFiles(self.folder(), spectrograms,
                            record_stems(spectrograms, frame["record"].astype(str).unique()),
                            self.dtype)
        todo = {}
        for record, group in frame.groupby("record", sort=False):
            feats, done = files.open(str(record))
            need = np.unique(group["row"].to_numpy()[~done[group["row"].to_numpy()]])
            if need.size:
                todo[str(record)] = need
        distributed.barrier()  # every process has listed what is missing before any writes
        if todo:  # data-parallel: each process computes its share of the records, then all read
            job = distributed.ranks()
            self._compute(files, dict(list(todo.items())[job.rank::job.world]), desc)
            distributed.barrier()
        out: list[np.ndarray] = []
        order: list[np.ndarray] = []
        for record, group in frame.groupby("record", sort=False):
            feats, _ = files.open(str(record))
            out.append(np.asarray(feats[group["row"].to_numpy()]))
            order.append(np.flatnonzero(frame["record"].to_numpy() == record))
        result = np.empty((len(frame), out[0].shape[1]), dtype=out[0].dtype) if out else \
            np.empty((0, 0), np.float16)
        for idx, values in zip(order, out, strict=True):
            result[idx] = values
        return result

    @torch.inference_mode()
    def _compute(self, files: _StoreFiles, todo: dict[str, np.ndarray], desc: str) -> None:
        self.prepare.to(self.device).eval()
        files.folder.mkdir(parents=True, exist_ok=True)
        total = sum(len(rows) for rows in todo.values())
        with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True) as bar:
            for record, rows in todo.items():
                images = load_shard(files.spectrograms, record, stage="spectrogram")
                parts = []
                for i in range(0, len(rows), self.batch_size):
                    batch = torch.from_numpy(np.asarray(images[rows[i:i + self.batch_size]]))
                    with autocast(self.device):
                        parts.append(self.feature_fn(model_input(batch, self.device,
                                                                 self.prepare)).float().cpu())
                    bar.update(len(batch))
                files.write(record, rows, torch.cat(parts).numpy(), images.shape[0])


@dataclass(frozen=True)
class _StoreFiles:
    """One `rows()` call's view of the store: its folder, the image stage it reads, each
    record's file stem (`record_stems`) and the features' dtype (train.feature_dtype)."""

    folder: Path
    spectrograms: Path
    stems: dict[str, str]
    dtype: str

    def paths(self, record: str) -> tuple[Path, Path]:
        stem = self.stems[record]
        return self.folder / f"{stem}.features.npy", self.folder / f"{stem}.done.npy"

    def open(self, record: str) -> tuple[np.ndarray, np.ndarray]:
        """The record's features (memory-mapped) and done mask; empty ones before any write."""
        feat_path, done_path = self.paths(record)
        if not done_path.is_file():
            n = load_shard(self.spectrograms, record, stage="spectrogram").shape[0]
            return np.zeros((n, 0), np.float16), np.zeros(n, dtype=bool)
        return np.load(feat_path, mmap_mode="r"), np.load(done_path)

    def write(self, record: str, rows: np.ndarray, values: np.ndarray, n_rows: int) -> None:
        """Adds `values` for `rows` to the record's files (features first, the mask last)."""
        feats, done = self.open(record)
        half = values.astype(np.float16) if self.dtype == "float16" else None
        dtype = np.float16 if half is not None and np.isfinite(half).all() else np.float32
        full = np.zeros((n_rows, values.shape[1]), dtype=dtype)
        if feats.shape[1] == values.shape[1]:
            full[done] = feats[done]
        full[rows] = values.astype(dtype)
        done = done.copy()
        done[rows] = True
        feat_path, done_path = self.paths(record)
        for path, array in ((feat_path, full), (done_path, done)):  # the mask last
            with atomic_path(path) as tmp, tmp.open("wb") as fh:
                np.save(fh, array)


def record_stems(spectrograms: Path, records: Iterable[object]) -> dict[str, str]:
    """record -> `<record>-<its image shard's sha256, 16 hex>`, the name of its store files.

    The spectrogram stage records each shard's hash in meta.json; a shard it did not (outputs
    of an older version) is hashed here, once per process while its size and mtime stay.
    """
    recorded = read_json(spectrograms / META).get(SHARD_SHA256, {})
    stems = {}
    for record in map(str, records):
        shard = shard_path(spectrograms, record)
        digest = recorded.get(record) or _hash_once(str(shard), *_size_mtime(shard))
        stems[record] = f"{record}-{digest[:16]}"
    return stems


def _size_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.cache
def _hash_once(path: str, size: int, mtime_ns: int) -> str:
    """A shard's sha256, computed once per (path, size, mtime): train asks for each split and
    fold, and an old image stage's shards add up to gigabytes."""
    return sha256_file(Path(path))
