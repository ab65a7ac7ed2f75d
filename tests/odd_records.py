"""Odd WFDB records real databases hold, each built with wfdb in a temporary folder.

Every builder writes one record named `name` into `folder` (ECG-like spikes on the first lead,
regular "N" beats in <name>.atr unless said otherwise) and returns the beat samples at the
record's frame rate. `ODD_RECORDS` lists them all for the robustness corpus test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import wfdb

from tests.synthetic import ecg_like, regular_beats, write_annotations, write_record

FS = 360


def no_description(folder: Path, name: str) -> np.ndarray:
    """Signal lines without a description: wfdb gives the leads no name (None)."""
    beats = write_record(folder, name, seconds=20)
    header = Path(folder) / f"{name}.hea"
    lines = header.read_text().splitlines()
    lines[1:] = [" ".join(line.split()[:-1]) for line in lines[1:] if line.strip()]
    header.write_text("\n".join(lines) + "\n")
    return beats


def multi_segment(folder: Path, name: str) -> np.ndarray:
    """A master header over two fixed-layout segments (<name>_1, <name>_2) of 10 s each."""
    n = 20 * FS
    beats = regular_beats(n, FS)
    lead = ecg_like(n, FS, beats)
    signal = np.column_stack([lead, 0.7 * lead])
    for i, part in enumerate((signal[: n // 2], signal[n // 2:]), start=1):
        wfdb.wrsamp(f"{name}_{i}", fs=FS, units=["mV", "mV"], sig_name=["MLII", "V1"],
                    p_signal=part, fmt=["16", "16"], write_dir=str(folder))
    (Path(folder) / f"{name}.hea").write_text(
        f"{name}/2 2 {FS} {n}\n{name}_1 {n // 2}\n{name}_2 {n - n // 2}\n")
    write_annotations(folder, name, beats, ["N"] * len(beats))
    return beats


def multi_frame(folder: Path, name: str, ecg_per_frame: int = 2) -> np.ndarray:
    """The ECG at `ecg_per_frame` samples per frame (e.g. 200 Hz at a 100 Hz frame rate) beside
    a respiration signal at the frame rate; annotations count frames."""
    frame_fs, seconds = 100, 20
    ecg_fs = frame_fs * ecg_per_frame
    ecg_beats = regular_beats(seconds * ecg_fs, ecg_fs)
    ecg = ecg_like(seconds * ecg_fs, ecg_fs, ecg_beats)
    resp = np.sin(np.arange(seconds * frame_fs) / frame_fs)
    rec = wfdb.Record(record_name=name, fs=frame_fs, n_sig=2, sig_len=seconds * frame_fs,
                      e_p_signal=[ecg, resp], sig_name=["ECG", "RESP"], units=["mV", "mV"],
                      fmt=["16", "16"], samps_per_frame=[ecg_per_frame, 1])
    rec.set_d_features(do_adc=True, expanded=True)
    rec.set_defaults()
    rec.wrsamp(expanded=True, write_dir=str(folder))
    beats = ecg_beats // ecg_per_frame
    write_annotations(folder, name, beats, ["N"] * len(beats))
    return beats


def annotations_at_other_fs(folder: Path, name: str, ann_fs: int = 1000) -> np.ndarray:
    """A 360 Hz record whose annotation file carries its own time resolution (1000 Hz)."""
    beats = write_record(folder, name, seconds=20, annotate=False)
    wfdb.wrann(name, "atr", np.rint(beats * ann_fs / FS).astype(np.int64),
               np.array(["N"] * len(beats)), fs=ann_fs, write_dir=str(folder))
    return beats


def truncated_annotations(folder: Path, name: str) -> np.ndarray:
    """An annotation file cut in half (an even number of bytes, so wfdb reads it silently)."""
    beats = write_record(folder, name, seconds=20)
    atr = Path(folder) / f"{name}.atr"
    data = atr.read_bytes()
    atr.write_bytes(data[: len(data) // 4 * 2])
    return beats


def spoil_date(header: Path) -> None:
    """Appends a time and a date wfdb rejects (day 32, month 13) to a header's record line."""
    lines = header.read_text().splitlines()
    lines[0] += " 10:00:00 32/13/2020"
    header.write_text("\n".join(lines) + "\n")


def unparsable_date(folder: Path, name: str) -> np.ndarray:
    """A record line whose date field wfdb rejects (day 32, month 13)."""
    beats = write_record(folder, name, seconds=20)
    spoil_date(Path(folder) / f"{name}.hea")
    return beats


def nan_only(folder: Path, name: str) -> np.ndarray:
    """Every sample the format's invalid value (wfdb reads NaN); wrsamp cannot scale all-NaN."""
    wfdb.wrsamp(name, fs=FS, units=["mV", "mV"], sig_name=["MLII", "V1"],
                d_signal=np.full((20 * FS, 2), -32768, dtype=np.int16), fmt=["16", "16"],
                adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(folder))
    beats = regular_beats(20 * FS, FS)
    write_annotations(folder, name, beats, ["N"] * len(beats))
    return beats


def flat(folder: Path, name: str) -> np.ndarray:
    return write_record(folder, name, seconds=20, signal=np.full((20 * FS, 2), 0.25))


def very_short(folder: Path, name: str) -> np.ndarray:
    """Half a second: shorter than any window."""
    return write_record(folder, name, seconds=0.5, beats=[90])


def at_1000_hz(folder: Path, name: str) -> np.ndarray:
    return write_record(folder, name, fs=1000, seconds=20)


def at_128_hz(folder: Path, name: str) -> np.ndarray:
    return write_record(folder, name, fs=128, seconds=20)


ODD_RECORDS: dict[str, Callable[[Path, str], np.ndarray]] = {
    "nodesc": no_description, "multiseg": multi_segment, "multirate": multi_frame,
    "annfs": annotations_at_other_fs, "truncann": truncated_annotations,
    "baddate": unparsable_date, "nanonly": nan_only, "flat": flat, "short": very_short,
    "hz1000": at_1000_hz, "hz128": at_128_hz,
}
