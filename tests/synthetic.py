"""Synthetic test data: WFDB records (wfdb.wrsamp / wfdb.wrann) and spectrogram folders.

The first lead of a record is a train of narrow Gaussian "QRS" spikes at the beat samples, so a
test can check that a window is centred on its beat after resampling and band-pass filtering.
`write_synthetic` writes a spectrogram folder and a split assignment (train/evaluate tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from data_prep.beats.rhythm import BEAT_FEATURES
from data_prep.layout import save_shard, write_index, write_json


def regular_beats(n_samples: int, fs: float, rr_s: float = 0.8, first_s: float = 1.5) -> np.ndarray:
    """Beat samples every `rr_s` seconds from `first_s`, inside the record."""
    return np.arange(round(first_s * fs), n_samples, round(rr_s * fs), dtype=np.int64)


def ecg_like(n_samples: int, fs: float, beats: Sequence[int], seed: int = 0) -> np.ndarray:
    """Spikes of 1 mV (sigma 12 ms) at `beats`, plus a little noise, in mV."""
    t = np.arange(n_samples)
    x = np.random.default_rng(seed).normal(0.0, 0.01, n_samples)
    for beat in beats:
        lo, hi = max(int(beat - 0.1 * fs), 0), min(int(beat + 0.1 * fs) + 1, n_samples)
        x[lo:hi] += np.exp(-0.5 * ((t[lo:hi] - beat) / (0.012 * fs)) ** 2)
    return x


def write_annotations(
    folder: Path,
    record: str,
    samples: Sequence[int],
    symbols: Sequence[str],
    aux_notes: Sequence[str] | None = None,
    extension: str = "atr",
) -> Path:
    """Writes an annotation file, sorted by sample, and returns its path."""
    order = np.argsort(np.asarray(samples), kind="stable")
    aux = list(aux_notes) if aux_notes is not None else [""] * len(samples)
    wfdb.wrann(record, extension, np.asarray(samples, dtype=np.int64)[order],
               np.asarray(symbols)[order], aux_note=[aux[i] for i in order],
               write_dir=str(folder))
    return Path(folder) / f"{record}.{extension}"


def write_record(
    folder: Path,
    record: str,
    *,
    fs: float = 360,
    seconds: float = 30.0,
    sig_names: Sequence[str] = ("MLII", "V1"),
    fmt: str = "16",
    beats: Sequence[int] | None = None,
    symbols: Sequence[str] | None = None,
    rhythm: Sequence[tuple[int, str]] = (),
    signal: np.ndarray | None = None,
    annotate: bool = True,
) -> np.ndarray:
    """Writes <folder>/<record>.hea/.dat (and .atr) and returns the beat samples used.

    Args:
        fs: sampling rate in Hz.
        seconds: record length.
        sig_names: lead names; lead 0 carries the spikes, the others a scaled copy.
        fmt: WFDB signal format ("16", "212", "80"...).
        beats: beat samples (default: regular beats every 0.8 s).
        symbols: beat symbols (default: all "N").
        rhythm: (sample, aux_note) rhythm annotations, written as "+" marks.
        signal: (n, leads) physical signal to write instead of the spikes (NaN allowed).
        annotate: write the annotation file at all.
    """
    n = round(seconds * fs)
    beats = regular_beats(n, fs) if beats is None else np.asarray(beats, dtype=np.int64)
    if signal is None:
        lead = ecg_like(n, fs, beats[beats < n])
        signal = np.column_stack([lead * (1.0 - 0.3 * i) for i in range(len(sig_names))])
    Path(folder).mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(record, fs=fs, units=["mV"] * len(sig_names), sig_name=list(sig_names),
                p_signal=signal, fmt=[fmt] * len(sig_names), write_dir=str(folder))
    if annotate:
        symbols = ["N"] * len(beats) if symbols is None else list(symbols)
        samples = [*beats.tolist(), *(s for s, _ in rhythm)]
        aux = [""] * len(beats) + [note for _, note in rhythm]
        write_annotations(folder, record, samples, [*symbols, *["+"] * len(rhythm)], aux)
    return beats


def write_records_file(folder: Path, records: Sequence[str]) -> None:
    """Writes the RECORDS listing of a database folder."""
    (Path(folder) / "RECORDS").write_text("".join(f"{r}\n" for r in records))


# ----------------------------------------------------------------- spectrogram folders

CLASSES = ["N", "S", "V"]
# record -> (split, images per class N/S/V)
RECORDS = {
    "100": ("train", (12, 3, 5)),
    "101": ("train", (10, 4, 4)),
    "102": ("val", (6, 2, 3)),
    "103": ("val", (5, 3, 2)),
    "104": ("test", (4, 2, 2)),
}



def synthetic_image(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 spectrogram-like image whose class is a band at a class-specific frequency."""
    img = rng.integers(0, 60, (size, size)).astype(np.uint8)
    band = slice((label * size) // 3, (label * size) // 3 + size // 4)
    img[band, :] = 200  # rows = frequency
    return img


def synthetic_rhythm(label: int, rng: np.random.Generator) -> dict[str, float]:
    """Plausible RR features of one beat (seconds and ratios), premature for class 1."""
    base = 0.8
    pre = base * (0.6 if label == 1 else 1.0) * rng.uniform(0.95, 1.05)
    values = {"rr_pre": pre, "rr_post": base, "rr_local": base, "rr_base": base,
              "rr_pre_ratio": pre / base, "rr_post_ratio": 1.0, "rr_local_ratio": 1.0,
              "rr_pre_local": pre / base}
    return {name: values[name] for name in BEAT_FEATURES}


def write_synthetic(
    root: Path, size: int = 32, records: dict | None = None, unassigned: str | None = "105"
) -> tuple[Path, Path]:
    """Writes data/spectrograms (shards, index.csv, meta.json) and data/splits/assignment.csv.

    Returns:
        (spectrogram folder, splits folder).
    """
    records = records or RECORDS
    spec, splits = root / "spectrograms", root / "splits"
    rng = np.random.default_rng(0)
    rows, assign = [], []
    for record, (split, counts) in {**records, **({unassigned: ("-", (2, 1, 1))}
                                                  if unassigned else {})}.items():
        labels = [c for c, n in zip(range(3), counts, strict=True) for _ in range(n)]
        rng.shuffle(labels)
        save_shard(spec, record, np.stack([synthetic_image(k, rng, size) for k in labels]))
        # rhythm as `data_prep.beats.rhythm` writes it: class 1 beats come early (rr_pre_ratio 0.6)
        rows += [{"record": record, "row": i, "sample": 100 * i, "label": CLASSES[k],
                  "symbol": CLASSES[k], **synthetic_rhythm(k, rng), "rr_status": ""}
                 for i, k in enumerate(labels)]
        if split != "-":
            assign.append({"record": record, "subject": f"s{record}", "split": split})
    write_index(spec / "index.csv", pd.DataFrame(rows))
    write_json(spec / "meta.json", {"classes": CLASSES, "image_size": size,
                                    "segments": {"rhythm": {"features": list(BEAT_FEATURES)}}})
    splits.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(assign).to_csv(splits / "assignment.csv", index=False)
    return spec, splits
