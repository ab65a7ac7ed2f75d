"""Spectrogram datasets, class balancing and data loaders for the model-side stages.

Reads the spectrogram stage's folder (`index.csv`, `meta.json`, `shards/<record>.npy`, uint8
(n, H, W), memory-mapped) and the split stage's `assignment.csv` (record, subject, split).
Images stay uint8 until they reach the device (4x less host-to-device traffic); the model
input is built there by `pipeline.training.transforms`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from data_prep.layout import (
    ASSIGNMENT,
    INDEX,
    META,
    SPLITS,
    load_shard,
    read_index,
    read_json,
    shard_path,
)

log = logging.getLogger(__name__)



def read_meta(spectrograms: Path) -> dict:
    """The spectrogram stage's meta.json, checked for the keys training needs."""
    path = spectrograms / META
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the spectrogram stage (dvc repro)")
    meta = read_json(path)
    for key in ("classes", "image_size"):
        if key not in meta:
            raise ValueError(f"{path}: no '{key}'; re-run the spectrogram stage")
    return meta


def load_split_index(spectrograms: Path, splits: Path, classes: list[str]) -> pd.DataFrame:
    """Joins the image index with the record -> split assignment.

    Args:
        spectrograms: the spectrogram stage's folder.
        splits: the split stage's folder (holds assignment.csv).
        classes: ordered class names; `target` is the position of `label` in it.

    Returns:
        One row per image: record, row, label, target, subject, split. Images of records the
        assignment leaves out (e.g. paced records) are dropped and counted in the log.
    """
    index_path, assign_path = spectrograms / INDEX, splits / ASSIGNMENT
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path}: missing; run the spectrogram stage (dvc repro)")
    if not assign_path.is_file():
        raise FileNotFoundError(f"{assign_path}: missing; run the split stage (dvc repro split)")
    index = read_index(index_path)
    assign = pd.read_csv(assign_path, dtype={"record": str, "subject": str})
    missing = {"record", "split"} - set(assign.columns)
    if missing:
        raise ValueError(f"{assign_path}: no columns {sorted(missing)}; re-run the split stage")
    if assign["record"].duplicated().any():
        dup = assign.loc[assign["record"].duplicated(), "record"].tolist()[:5]
        raise ValueError(f"{assign_path}: records assigned twice {dup}; re-run the split stage")
    bad = set(assign["split"]) - set(SPLITS)
    if bad:
        raise ValueError(f"{assign_path}: unknown splits {sorted(bad)}; expected {SPLITS}")
    unknown = set(index["label"]) - set(classes)
    if unknown:
        raise ValueError(f"{index_path}: labels {sorted(unknown)} not in meta.json {classes}")
    cols = ["record", "split"] + [c for c in ("subject", "fold") if c in assign.columns]
    frame = index.merge(assign[cols], on="record", how="inner", validate="many_to_one")
    dropped = len(index) - len(frame)
    if dropped:
        log.info("%d images of records without a split assignment left out", dropped)
    frame["target"] = frame["label"].map({c: i for i, c in enumerate(classes)}).astype("int64")
    return frame.reset_index(drop=True)


def cap_per_class(
    frame: pd.DataFrame, max_per_class: Mapping[Any, int | None], seed: int
) -> pd.DataFrame:
    """Keeps at most `max_per_class[split]` images per class in each capped split.

    A split that is missing or maps to None keeps all its images.
    The draw is seeded (same seed, same subset) and the original row order is kept, so a capped
    run is reproducible and reads the shards in order.
    """
    if not any(v is not None for v in max_per_class.values()):
        return frame
    parts = []
    for split, group in frame.groupby("split", sort=False):
        cap = max_per_class.get(str(split))
        if cap is None:
            parts.append(group)
            continue
        for _, cls in group.groupby("label", sort=True):
            parts.append(cls.sample(n=cap, random_state=seed) if len(cls) > cap else cls)
    capped = pd.concat(parts).sort_index()
    log.info("per-class cap %s: %d of %d images kept", dict(max_per_class), len(capped), len(frame))
    return capped


def split_frame(frame: pd.DataFrame, split: str, source: Path) -> pd.DataFrame:
    """The rows of one split; an empty split is an error that names the assignment file."""
    part = frame[frame["split"] == split].reset_index(drop=True)
    if part.empty:
        raise ValueError(
            f"{source / ASSIGNMENT}: the '{split}' split has no images; check the split stage "
            "(params split.*) and that its records have spectrograms"
        )
    return part


def class_weights(
    targets: np.ndarray, num_classes: int, power: float = 1.0, cap: float | None = None
) -> torch.Tensor:
    """Tempered inverse-frequency weights, normalised so the weighted mean over samples is 1.

    Plain inverse frequency ("balanced", power 1) gives mitdb's 6 training Q beats ~6000x the
    weight of an N beat: the loss is then about a handful of beats and training collapses.
    `power` < 1 tempers it (0.5: inverse square root) and `cap` bounds the ratio of the largest
    to the smallest weight. Classes absent from `targets` get weight 0 (no loss terms anyway).
    """
    present = np.unique(targets)
    counts = np.bincount(targets, minlength=num_classes)[present].astype(np.float64)
    raw = (1.0 / counts) ** power
    if cap is not None:
        raw = np.minimum(raw, cap * raw.min())
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = raw / (raw * counts).sum() * counts.sum()  # sample-weighted mean 1
    return torch.tensor(weights, dtype=torch.float32)


def balanced_sampler(targets: np.ndarray, generator: torch.Generator) -> WeightedRandomSampler:
    """Draws every class equally often (with replacement), one epoch = len(targets) draws."""
    counts = np.bincount(targets)
    sample_weights = 1.0 / counts[targets]
    return WeightedRandomSampler(
        torch.as_tensor(sample_weights, dtype=torch.double),  # type: ignore[arg-type]  # accepted
        num_samples=len(targets),
        replacement=True,
        generator=generator,
    )


class SpectrogramDataset(Dataset):
    """Images of one split as uint8 (H, W) or (C, H, W) tensors with int64 targets, read from
    mmap shards; with `rr` also each row's rhythm features: items (image, rr, target)."""

    def __init__(self, spectrograms: Path, frame: pd.DataFrame, rr: np.ndarray | None = None):
        self.spectrograms = spectrograms
        self.records = frame["record"].to_numpy(dtype=object)
        self.rows = frame["row"].to_numpy(dtype=np.int64)
        self.targets = frame["target"].to_numpy(dtype=np.int64)
        self.rr = None if rr is None else torch.from_numpy(np.asarray(rr, dtype=np.float32))
        self._shards: dict[str, np.ndarray] = {}
        for record in dict.fromkeys(self.records):  # fail now, not in a worker mid-epoch
            if not shard_path(spectrograms, record).is_file():
                path = shard_path(spectrograms, record)
                raise FileNotFoundError(f"{path}: shard missing; re-run the spectrogram stage")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple:
        record = self.records[i]
        shard = self._shards.get(record)
        if shard is None:
            shard = load_shard(self.spectrograms, record, mmap=True, stage="spectrogram")
            self._shards[record] = shard
        image = torch.from_numpy(np.array(shard[self.rows[i]]))
        if self.rr is None:
            return image, int(self.targets[i])
        return image, self.rr[i], int(self.targets[i])

    def __getstate__(self) -> dict:
        # workers open their own memory maps
        return {**self.__dict__, "_shards": {}}


def resolve_workers(num_workers: int | None, device: torch.device) -> int:
    """Explicit value, else: on CUDA enough workers to keep the GPU fed; on CPU none (the
    main process decodes faster than extra processes competing with the model for cores)."""
    if num_workers is not None:
        return num_workers
    if device.type == "cuda":
        return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 4)
    return 0


def seed_worker(worker_id: int) -> None:
    """Seeds numpy and random in a loader worker from the per-worker torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 (seeds legacy global users, e.g. third-party code)
    random.seed(seed)


def train_sampler(
    targets: np.ndarray, balanced: bool, generator: torch.Generator
) -> RandomSampler | WeightedRandomSampler:
    """Shuffling sampler (class-balanced if asked) driven by `generator` alone.

    The training engine re-seeds `generator` at every epoch, so an epoch's order depends only
    on (seed, epoch) and a resumed run sees the same batches as an uninterrupted one.
    """
    if balanced:
        return balanced_sampler(targets, generator)
    return RandomSampler(range(len(targets)), generator=generator)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    seed: int,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    batch_index: bool = False,
) -> DataLoader:
    """A DataLoader with pinned memory and persistent workers on CUDA, plain on CPU.

    Args:
        dataset: map-style dataset.
        batch_size: images per batch.
        device: where the batches go (pinned memory only for CUDA).
        seed: seeds the loader's own generator, used only for the workers' base seeds; the
            order comes from `sampler` (sequential when None).
        sampler: index sampler, e.g. from `train_sampler`.
        num_workers: loader processes.
        batch_index: index the dataset with whole index lists (a `TensorDataset` then gathers a
            batch in one vectorised call instead of stacking single items).
    """
    if sampler is None:  # map-style datasets have a length
        sampler = SequentialSampler(range(len(dataset)))  # type: ignore[arg-type]
    cuda = device.type == "cuda"
    loader_batch: int | None = batch_size
    if batch_index:  # the sampler yields whole batches of indices
        sampler, loader_batch = BatchSampler(sampler, batch_size, drop_last=False), None
    return DataLoader(
        dataset,
        batch_size=loader_batch,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=cuda,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
