"""Synthetic WFDB records for tests, written with wfdb.wrsamp / wfdb.wrann into a temporary folder.

The first lead is a train of narrow Gaussian "QRS" spikes at the beat samples, so a test can
check that a window is centred on its beat after resampling and band-pass filtering.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import wfdb


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
