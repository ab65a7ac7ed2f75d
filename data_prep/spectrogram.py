"""Spectrogram stage: band-passed ECG segments -> square uint8 log-power STFT images.

Reads (written by `data_prep.segment`):
    <segments>/shards/<record>.npy   float32 (n, L) windows at fs
    <segments>/index.csv             record,row,sample,label,symbol (row = row in the shard)
    <segments>/meta.json             classes, fs, window_samples, label_mode, ...
Writes:
    <out>/shards/<record>.npy        uint8 (n, S, S), rows in the segment shard's order
    <out>/index.csv                  the segment index rows, unchanged
    <out>/meta.json                  classes, fs, STFT params, axis extents, orientation, scale
    <out>/preview/<class>.png        grid of example images per class, for people
    <out>/png/<class>/<record>_<sample>.png   one PNG per image, only if `export_png`

Image convention: row 0 is the highest kept frequency and the last row the lowest (low
frequencies at the bottom, as plotted); columns run forward in time from the first STFT frame
wholly inside the segment to the last (meta.json time_s); one grey channel.

With `--splits`, only records that the split stage assigned to train, val or test get images
(records it left out are logged and skipped).

Run: python -m data_prep.spectrogram --params params.yaml --segments data/segments \
        --splits data/splits --out data/spectrograms
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from scipy.signal import ShortTimeFFT, get_window
from tqdm import tqdm

from data_prep.cli import run_main
from data_prep.layout import (
    INDEX,
    META,
    SHARDS,
    load_shard,
    read_index,
    read_json,
    shard_path,
    shard_writer,
    write_index,
    write_json,
)
from data_prep.params import DEFAULT_PARAMS, StrictModel, load_section
from data_prep.preview import PREVIEW_SEED, write_pngs, write_previews

log = logging.getLogger(__name__)

# 128 segments per STFT call: the complex128 STFT of a chunk is ~55 MB at the default
# params, so a worker stays near 100 MB whatever the record length.
CHUNK = 128
RESIZE_BLOCK = 8


class SpectrogramParams(StrictModel):
    """The `spectrogram:` section of params.yaml (see the comments there)."""

    window: str
    nperseg: int = Field(ge=2)
    noverlap: int = Field(ge=0)
    nfft: int = Field(ge=2)
    fmin_hz: float = Field(ge=0)
    fmax_hz: float = Field(gt=0)
    dynamic_range_db: float = Field(gt=0)
    image_size: int = Field(ge=2)
    workers: int = Field(ge=0)
    export_png: bool
    preview_per_class: int = Field(ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> SpectrogramParams:
        if self.noverlap >= self.nperseg:
            raise ValueError(f"noverlap ({self.noverlap}) must be < nperseg ({self.nperseg})")
        if self.nfft < self.nperseg:
            raise ValueError(f"nfft ({self.nfft}) must be >= nperseg ({self.nperseg})")
        if self.fmin_hz >= self.fmax_hz:
            raise ValueError(f"fmin_hz ({self.fmin_hz}) must be < fmax_hz ({self.fmax_hz})")
        try:
            get_window(self.window, self.nperseg)
        except ValueError as err:
            raise ValueError(f"window '{self.window}': {err}; "
                             "use a scipy.signal.get_window name") from None
        return self

    @property
    def hop(self) -> int:
        return self.nperseg - self.noverlap


@dataclass(frozen=True)
class Plan:
    """Everything fixed by (params, fs, segment length): STFT, band, resize taps, extents."""

    sft: ShortTimeFFT
    first: int  # index of the first STFT slice kept (slice p is centred on sample p * hop)
    frames: int  # slices kept: only those whose window lies wholly inside the segment
    band: slice  # kept FFT bins
    freq_hz: tuple[float, float]  # (bottom row, top row) bin frequencies
    time_s: tuple[float, float]  # (first column, last column) frame centres
    col_taps: tuple[np.ndarray, np.ndarray]  # per output column: left frame, weight of right
    row_taps: tuple[np.ndarray, np.ndarray]  # per output row, top first: lower bin, weight


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-tap linear interpolation with aligned end points (= ndimage.zoom order=1)."""
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
    left = np.minimum(pos.astype(np.intp), n_in - 2)
    return left, (pos - left).astype(np.float32)


@functools.lru_cache(maxsize=16)
def plan(params: SpectrogramParams, fs: float, n_samples: int) -> Plan:
    """Builds (and caches) the STFT and resize plan; errors say which value to change."""
    if params.fmax_hz > fs / 2:
        raise ValueError(f"fmax_hz {params.fmax_hz} is above Nyquist ({fs / 2} Hz at fs={fs}); "
                         "lower spectrogram.fmax_hz or raise segment.target_fs")
    # float32 window: halves the FFT work against float64 (measured ~1.4x faster overall).
    win = get_window(params.window, params.nperseg).astype(np.float32)
    sft = ShortTimeFFT(win, hop=params.hop, fs=fs, mfft=params.nfft)
    # Frames that stick out of the segment would see a step to the zero padding: a bright
    # broadband column at each edge. Keep only frames wholly inside (as signal.spectrogram).
    first, stop = sft.lower_border_end[1], sft.upper_border_begin(n_samples)[1]
    if stop - first < 2:
        raise ValueError(f"segments of {n_samples} samples hold {max(stop - first, 0)} whole "
                         f"STFT frame(s) of nperseg={params.nperseg}; lower spectrogram.nperseg "
                         "or noverlap, or lengthen the segment windows")
    df = sft.delta_f
    k0, k1 = math.ceil(params.fmin_hz / df - 1e-9), math.floor(params.fmax_hz / df + 1e-9)
    if k1 - k0 < 1:
        raise ValueError(f"band [{params.fmin_hz}, {params.fmax_hz}] Hz holds {k1 - k0 + 1} FFT "
                         f"bin(s) of {df:.3g} Hz; widen the band or raise spectrogram.nfft")
    size = params.image_size
    rows, weights = _taps(k1 - k0 + 1, size)
    return Plan(sft=sft, first=first, frames=stop - first, band=slice(k0, k1 + 1),
                freq_hz=(k0 * df, k1 * df), time_s=(first * sft.delta_t, (stop - 1) * sft.delta_t),
                col_taps=_taps(stop - first, size),
                row_taps=(rows[::-1].copy(), weights[::-1].copy()))


def _resize(img: np.ndarray, p: Plan) -> np.ndarray:
    """(c, F, T) -> (c, S, S) bilinear, low frequencies moved to the last row.

    Hand-written on purpose. Measured at the default params on one core: ndimage.zoom
    (order=1) ~300 img/s; two interpolation matrices via matmul ~1-4k img/s single-threaded
    but 60-250 img/s when OpenBLAS threads compete with our worker processes. Two-tap gathers
    are plain elementwise numpy (~3.6k img/s in blocks of 8, no BLAS threads) and give the
    same bits whatever the chunking.
    """
    left, w = p.col_taps
    a, b = img[..., left], img[..., left + 1]
    b -= a
    b *= w
    a += b
    low, v = p.row_taps
    top, bottom = a[:, low + 1, :], a[:, low, :]
    top -= bottom
    top *= v[:, None]
    bottom += top
    return bottom


def _chunk_images(x: np.ndarray, p: Plan, dynamic_range_db: float, out: np.ndarray) -> None:
    """STFT log power of a (c, L) chunk, scaled per image to 0..255, resized into `out`."""
    z = p.sft.stft(x, p0=p.first, p1=p.first + p.frames, axis=-1)[:, p.band]  # (c, F, T) complex
    power = np.square(z.real, dtype=np.float32)
    power += np.square(z.imag, dtype=np.float32)
    peak = power.max(axis=(1, 2), keepdims=True)
    # A silent segment has peak 0: reference it to 1 so it maps to the floor (black), not NaN.
    peak = np.where(peak > 0, peak, np.float32(1))
    np.maximum(power, peak * np.float32(10 ** (-dynamic_range_db / 10)), out=power)
    np.log10(power, out=power)
    power -= np.log10(peak)  # log10 power re image max: [-range/10, 0]
    power *= np.float32(2550 / dynamic_range_db)
    power += np.float32(255)
    # Resize a few images at a time: the (b, S, S) float temporaries then stay in cache
    # (measured 3x faster than resizing all 128 at once, which is memory-bound).
    for i in range(0, len(power), RESIZE_BLOCK):
        img = _resize(power[i:i + RESIZE_BLOCK], p)
        np.clip(img, 0, 255, out=img)
        img += np.float32(0.5)  # round half up on the cast below
        np.copyto(out[i:i + RESIZE_BLOCK], img, casting="unsafe")


def iter_images(segments: np.ndarray, fs: float, params: SpectrogramParams,
                chunk_size: int = CHUNK) -> Iterator[np.ndarray]:
    """Yields uint8 (c, S, S) images for successive chunks of a (n, L) batch of segments.

    Each image depends on its own segment only: chunking never changes the result.
    """
    if segments.ndim != 2:
        raise ValueError(f"expected segments of shape (n, L), got {segments.shape}")
    p = plan(params, float(fs), segments.shape[1])
    size = params.image_size
    for start in range(0, len(segments), chunk_size):
        x = np.asarray(segments[start:start + chunk_size], dtype=np.float32)
        if not np.isfinite(x).all():
            bad = start + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise ValueError(f"segment row {bad} holds NaN/inf; fix the segment stage output")
        out = np.empty((len(x), size, size), dtype=np.uint8)
        _chunk_images(x, p, params.dynamic_range_db, out)
        yield out


def spectrogram_images(segments: np.ndarray, fs: float, params: SpectrogramParams,
                       chunk_size: int = CHUNK) -> np.ndarray:
    """Pure core: (n, L) float segments at `fs` Hz -> (n, S, S) uint8 spectrogram images.

    STFT (scipy ShortTimeFFT: window, nperseg, hop = nperseg - noverlap, mfft = nfft) over
    the frames wholly inside the segment; keeps bins in [fmin_hz, fmax_hz]; power in dB
    relative to the image's maximum, clipped at -dynamic_range_db, mapped linearly to
    0..255; bilinear resize to image_size squared; low frequencies at the bottom row.
    An all-zero segment gives an all-zero image.
    """
    segments = np.asarray(segments)  # a memmap stays a view: read chunk by chunk
    size = params.image_size
    out = np.empty((len(segments), size, size), dtype=np.uint8)
    start = 0
    for chunk in iter_images(segments, fs, params, chunk_size):
        out[start:start + len(chunk)] = chunk
        start += len(chunk)
    return out


def image_meta(params: SpectrogramParams, fs: float, n_samples: int) -> dict[str, Any]:
    """What a reader needs to interpret the images (and to reproduce them on new data)."""
    p = plan(params, float(fs), n_samples)
    size = params.image_size
    return {
        "fs": fs,
        "image_size": size,
        "window_samples": n_samples,
        "stft": {"window": params.window, "nperseg": params.nperseg, "noverlap": params.noverlap,
                 "hop": params.hop, "nfft": params.nfft, "fmin_hz": params.fmin_hz,
                 "fmax_hz": params.fmax_hz, "frames": p.frames,
                 "frequency_bins": p.band.stop - p.band.start,
                 "frame_centres": "first_column s, then every hop; whole frames only"},
        "frequency_hz": {"bottom_row": p.freq_hz[0], "top_row": p.freq_hz[1],
                         "bin_hz": p.sft.delta_f},
        "time_s": {"first_column": p.time_s[0], "last_column": p.time_s[1],
                   "frame_hop_s": p.sft.delta_t},
        "orientation": f"low frequency at the bottom row: row 0 = top_row Hz, row {size - 1} = "
                       f"bottom_row Hz; column 0 = first_column s, last column = last_column s; "
                       "linear axes, bilinear resize",
        "channels": 1,
        "channel_note": "grey, one channel; the model side decides replication or in_chans=1",
        "dtype": "uint8",
        "value_scale": {"unit": "dB re the image's maximum STFT power",
                        "dynamic_range_db": params.dynamic_range_db,
                        "mapping": f"uint8 = round(255 * (dB + {params.dynamic_range_db}) / "
                                   f"{params.dynamic_range_db}) clipped to 0..255",
                        "zero": f"-{params.dynamic_range_db} dB or below; all-zero segments",
                        "255": "the image's maximum"},
    }


# ---------------------------------------------------------------- run(): files in, files out

REQUIRED_COLUMNS = ("record", "row", "sample", "label", "symbol")
PREVIEW, PNG = "preview", "png"


@dataclass(frozen=True)
class _Task:
    """One record's work, small enough to pickle to a worker process."""

    record: str
    segments: Path
    out: Path
    params: SpectrogramParams
    fs: float
    png: tuple[tuple[str, int], ...] | None  # (label, sample) per shard row, if export_png


def _record_task(task: _Task) -> int:
    """Images of one record, streamed chunk by chunk into its shard (memory: one chunk)."""
    segments = load_shard(task.segments, task.record)  # mmap: read chunk by chunk
    size = task.params.image_size
    written = 0
    with shard_writer(task.out, task.record, (len(segments), size, size), np.uint8) as write:
        try:
            for chunk in iter_images(segments, task.fs, task.params):
                write(chunk)
                if task.png is not None:
                    names = task.png[written:written + len(chunk)]
                    write_pngs(task.out / PNG, task.record, chunk, names)
                written += len(chunk)
        except ValueError as err:
            path = shard_path(task.segments, task.record)
            raise ValueError(f"record {task.record} ({path}): {err}") from None
    return written


def _map_records(tasks: list[_Task], workers: int) -> None:
    """Runs the record tasks (in-process when one worker), with a progress bar."""
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    with tqdm(total=len(tasks), unit="record", desc="spectrogram") as bar:
        if workers <= 1:
            for task in tasks:
                _record_task(task)
                bar.update()
            return
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_record_task, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # fail fast, do not finish the queue
                raise


def _check_inputs(segments: Path, index: pd.DataFrame, seg_meta: dict) -> int:
    """Checks index, meta and shards agree; returns the segment length in samples."""
    if missing := [c for c in REQUIRED_COLUMNS if c not in index.columns]:
        raise ValueError(f"{segments / INDEX}: missing columns {missing}; re-run the segment stage")
    if missing := [k for k in ("classes", "fs") if k not in seg_meta]:
        raise ValueError(f"{segments / META}: missing keys {missing}; re-run the segment stage")
    if index.empty:
        raise ValueError(f"{segments / INDEX}: no segments; check the segment stage summary")
    widths = set()
    for record, rows in index.groupby("record", sort=False):
        shard = load_shard(segments, str(record))
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
    index = read_index(segments / INDEX)
    if splits is not None:
        index = assigned_only(index, splits / "assignment.csv")
    n_samples = _check_inputs(segments, index, seg_meta)
    fs = float(seg_meta["fs"])
    p = plan(params, fs, n_samples)  # fails on band/Nyquist before any worker starts
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
    _map_records(tasks, params.workers)
    write_index(out / INDEX, index)
    classes = [str(c) for c in seg_meta["classes"]]
    if unknown := sorted(set(index["label"]) - set(classes)):
        log.warning("labels %s not in meta.json classes %s: no preview", unknown, classes)
    meta = {"classes": classes, **image_meta(params, fs, n_samples), "n_images": len(index),
            "records": {r: len(g) for r, g in groups.items()},
            "preview": write_previews(out, PREVIEW, index, classes, (p.time_s, p.freq_hz),
                                      params.preview_per_class),
            "preview_seed": PREVIEW_SEED, "export_png": params.export_png, "segments": seg_meta}
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
