"""Spectrogram stage: band-passed ECG segments -> square uint8 log-power STFT images.

Reads (written by `data_prep.segment`):
    <segments>/shards/<record>.npy   float32 (n, L) windows at fs
    <segments>/index.csv             record,row,sample,label,symbol (row = row in the shard)
    <segments>/meta.json             classes, fs, window_samples, label_mode, ...
    <segments>/second_lead/shards/<record>.npy   the second lead's windows (image two_lead)
Writes:
    <out>/shards/<record>.npy        uint8 (n, S, S) grey, or (n, 3, S, S) for the multi-channel
                                     image kinds (`data_prep.images.channels`); rows in the segment
                                     shard's order
    <out>/index.csv                  the segment index rows, unchanged
    <out>/meta.json                  classes, fs, STFT params, axis extents, orientation, scale,
                                     each shard's sha256 (`shard_sha256`)
    <out>/preview/<class>.png        grid of example images per class, for people
    <out>/png/<class>/<record>_<sample>.png   one PNG per image, only if `export_png`

Images come from the STFT core `data_prep.images.stft` (its docstring gives the image convention);
`spectrogram.image` chooses what goes in the channels (`data_prep.images.channels`).
Beat segments use the section's own STFT keys; the longer windows of rhythm and record modes use
`spectrogram.windows` (segments meta.json `label_mode` says which). meta.json `params` holds the
image params used (export copies them into the bundle for predict), `stft_keys` which keys.

With `--splits`, only records that the split stage assigned to train, val or test get images
(records it left out are logged and skipped).

Run: python -m data_prep.spectrogram --params params.yaml --segments data/segments \
        --splits data/splits --out data/spectrograms
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_prep.cli import run_main
from data_prep.images import channels
from data_prep.images.preview import PREVIEW_SEED, write_pngs, write_previews
from data_prep.images.stft import SpectrogramParams, plan
from data_prep.layout import (
    ASSIGNMENT,
    INDEX,
    META,
    PNG,
    PREVIEW,
    SECOND_LEAD,
    SEGMENT_COLUMNS,
    SEGMENTS_META,
    SHARD_SHA256,
    SHARDS,
    load_shard,
    read_index,
    read_json,
    shard_path,
    shard_writer,
    write_index,
    write_json,
)
from data_prep.params import DEFAULT_PARAMS, load_section

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- run(): files in, files out



@dataclass(frozen=True)
class _Task:
    """One record's work, small enough to pickle to a worker process."""

    record: str
    segments: Path
    out: Path
    params: SpectrogramParams
    fs: float
    png: tuple[tuple[str, int], ...] | None  # (label, sample) per shard row, if export_png


def _record_task(task: _Task) -> str:
    """Images of one record, streamed chunk by chunk into its shard (memory: one chunk).

    Returns the shard's sha256: features computed from these pixels stay valid whatever else
    changes upstream (rhythm features, a re-run that writes the same images)."""
    leads = [load_shard(folder, task.record)  # mmap: read chunk by chunk
             for folder in _lead_folders(task.segments, task.params)]
    shape = (len(leads[0]), *channels.image_shape(task.params))
    written, digest = 0, hashlib.sha256()
    with shard_writer(task.out, task.record, shape, np.uint8, digest) as write:
        try:
            for chunk in channels.iter_kind_images(leads, task.fs, task.params):
                write(chunk)
                if task.png is not None:
                    names = task.png[written:written + len(chunk)]
                    write_pngs(task.out / PNG, task.record, chunk, names)
                written += len(chunk)
        except ValueError as err:
            path = shard_path(task.segments, task.record)
            raise ValueError(f"record {task.record} ({path}): {err}") from None
    return digest.hexdigest()


def _lead_folders(segments: Path, params: SpectrogramParams) -> list[Path]:
    """The segment folders holding each lead's shards that the image kind reads."""
    return [segments, segments / SECOND_LEAD][:channels.leads_needed(params)]


def _map_records(tasks: list[_Task], workers: int) -> dict[str, str]:
    """Runs the record tasks (in-process when one worker), with a progress bar.

    Returns record -> its shard's sha256."""
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    digests = {}
    with tqdm(total=len(tasks), unit="record", desc="spectrogram") as bar:
        if workers <= 1:
            for task in tasks:
                digests[task.record] = _record_task(task)
                bar.update()
            return digests
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_record_task, task): task.record for task in tasks}
            try:
                for future in as_completed(futures):
                    digests[futures[future]] = future.result()
                    bar.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # fail fast, do not finish the queue
                raise
    return digests


def _check_second(segments: Path, record: str, shape: tuple[int, ...]) -> None:
    """The second lead's shard must hold the same windows as the first's."""
    path = shard_path(segments / SECOND_LEAD, record)
    if not path.is_file() or load_shard(segments / SECOND_LEAD, record).shape != shape:
        raise ValueError(f"record {record}: {path} is missing or its shape differs from "
                         f"{shard_path(segments, record)} {shape}; re-run the segment stage")


def _check_inputs(segments: Path, index: pd.DataFrame, seg_meta: dict,
                  params: SpectrogramParams) -> int:
    """Checks index, meta and shards agree; returns the segment length in samples."""
    second = None
    if channels.leads_needed(params) > 1:
        second = seg_meta.get(SECOND_LEAD)
        if not second:
            raise ValueError(f"spectrogram.image '{params.image}' needs a second lead, but "
                             f"{segments / META} records none; set segment.second_leads (mitdb: "
                             "[V1, V2, V5, V4]) and re-run the segment stage, or choose another "
                             "spectrogram.image")
    if missing := [c for c in SEGMENT_COLUMNS if c not in index.columns]:
        raise ValueError(f"{segments / INDEX}: missing columns {missing}; re-run the segment stage")
    if missing := [k for k in ("classes", "fs") if k not in seg_meta]:
        raise ValueError(f"{segments / META}: missing keys {missing}; re-run the segment stage")
    if index.empty:
        raise ValueError(f"{segments / INDEX}: no segments; check the segment stage summary")
    widths = set()
    for record, rows in index.groupby("record", sort=False):
        shard = load_shard(segments, str(record))
        if second is not None:
            _check_second(segments, str(record), shard.shape)
        n = shard.shape[0] if shard.ndim == 2 else -1
        if n != len(rows) or not np.array_equal(np.sort(rows["row"].to_numpy()), np.arange(n)):
            raise ValueError(
                f"record {record}: {shard_path(segments, str(record))} has shape {shard.shape} "
                f"but {segments / INDEX} lists {len(rows)} rows; each shard row must appear once "
                "(rows 0..n-1); re-run the segment stage (dvc repro segment)")
        widths.add(shard.shape[1])
    expected = seg_meta.get("window_samples")
    if len(widths) != 1 or (expected is not None and widths != {int(expected)}):
        raise ValueError(f"{segments}: segment lengths {sorted(widths)} differ from each other or "
                         f"from meta.json window_samples={expected}; re-run the segment stage")
    return widths.pop()


def _extents(described: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """((first, last) column time in s, (bottom, top) row frequency in Hz) of the images."""
    time_s, freq = described["time_s"], described["frequency_hz"]
    return ((time_s["first_column"], time_s["last_column"]),
            (freq["bottom_row"], freq["top_row"]))


def _stft_keys(label_mode: str) -> str:
    """The params keys that set the STFT of `label_mode` images (`SpectrogramParams`)."""
    return "spectrogram" if label_mode == "beat" else "spectrogram.windows"


def _label_mode(seg_meta: dict, segments: Path) -> str:
    """The segments' label mode: it chooses the STFT keys (`SpectrogramParams.for_label_mode`)."""
    mode = seg_meta.get("label_mode")
    if mode not in ("beat", "rhythm", "record"):
        raise ValueError(f"{segments / META}: label_mode {mode!r} is not beat, rhythm or record; "
                         "re-run the segment stage")
    return str(mode)


def _warn_if_squeezed(params: SpectrogramParams, fs: float, n_samples: int,
                      label_mode: str) -> None:
    """The resize reads two frames per column: with many more frames than columns, most frames
    (and a narrow QRS between two read frames) never reach the image."""
    frames, size = plan(params, fs, n_samples).frames, params.image_size
    if frames > 2 * size:
        log.warning("%d STFT frames per %s window for %d image columns: most frames are skipped "
                    "by the resize; raise the hop (%s.nperseg - noverlap) to about %d samples",
                    frames, label_mode, size, _stft_keys(label_mode),
                    round(params.hop * frames / size))


def assigned_only(index: pd.DataFrame, assignment: Path) -> pd.DataFrame:
    """The index rows of records the split stage assigned (assignment.csv: record,subject,split)."""
    assigned = set(read_index(assignment)["record"])
    if left := sorted(set(index["record"]) - assigned):
        log.info("no images for %d records the split left out: %s", len(left), ", ".join(left))
    return index[index["record"].isin(assigned)].reset_index(drop=True)


def run(params: SpectrogramParams, segments: Path, out: Path,
        splits: Path | None = None) -> dict[str, Any]:
    """Writes the stage's shards, index, meta and previews (module docstring); returns meta."""
    seg_meta = read_json(segments / META)
    label_mode = _label_mode(seg_meta, segments)
    params = params.for_label_mode(label_mode)  # beat STFT keys, or spectrogram.windows
    index = read_index(segments / INDEX)
    if splits is not None:
        index = assigned_only(index, splits / ASSIGNMENT)
    n_samples = _check_inputs(segments, index, seg_meta, params)
    fs = float(seg_meta["fs"])
    # fails on band/Nyquist/window lengths before any worker starts
    described = channels.describe(params, fs, n_samples)
    _warn_if_squeezed(params, fs, n_samples, label_mode)
    if out.resolve() == segments.resolve():
        raise ValueError(f"--out {out} is the segments folder; pass another folder")
    for stale in (SHARDS, PREVIEW, PNG):  # a previous run's records must not linger
        shutil.rmtree(out / stale, ignore_errors=True)
    groups = {str(r): g.sort_values("row") for r, g in index.groupby("record", sort=False)}
    tasks = [_Task(record, segments, out, params, fs,
                   tuple(zip(g["label"], g["sample"].astype(int), strict=True))
                   if params.export_png else None)
             for record, g in sorted(groups.items(), key=lambda kv: -len(kv[1]))]  # big first
    log.info("%d segments of %d records -> %dx%d images", len(index), len(tasks),
             params.image_size, params.image_size)
    digests = _map_records(tasks, params.workers)
    write_index(out / INDEX, index)
    classes = [str(c) for c in seg_meta["classes"]]
    if unknown := sorted(set(index["label"]) - set(classes)):
        log.warning("labels %s not in meta.json classes %s: no preview", unknown, classes)
    meta = {"classes": classes, **described, "n_images": len(index),
            "records": {r: len(g) for r, g in groups.items()},
            "preview": write_previews(out, PREVIEW, index, classes, _extents(described),
                                      params.preview_per_class),
            "preview_seed": PREVIEW_SEED, "export_png": params.export_png,
            "params": params.image_params().recorded(), SEGMENTS_META: seg_meta}
    meta["stft_keys"] = _stft_keys(label_mode)  # which params.yaml keys made `params`
    meta[SHARD_SHA256] = dict(sorted(digests.items()))
    write_json(out / META, meta)
    log.info("wrote %d images to %s", len(index), out)
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.spectrogram",
                                     description="ECG segments -> uint8 spectrogram images")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml")
    parser.add_argument("--segments", type=Path, required=True, help="segment stage folder")
    parser.add_argument("--splits", type=Path, help="split stage folder: only assigned records")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(load_section("spectrogram", SpectrogramParams, args.params), args.segments, args.out,
        args.splits)


if __name__ == "__main__":
    run_main(main)
