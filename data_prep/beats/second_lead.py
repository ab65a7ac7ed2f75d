"""The second lead of two-lead images (`spectrogram.image: two_lead`), shared by the segment
stage and predict so that both choose and cut it alike.

Choice: the first name of `segment.second_leads` that the record has, other than its first
lead (names match as `signals.choose_lead` matches them). There is no fallback to an unnamed
channel: a lead the model never saw in that channel would be a silent distribution shift. A
record with none of the names: `segment.second_lead_missing` "duplicate" uses its first lead
again (both lead channels then show the same lead; the stage counts these records in
summary.json `second_lead.duplicated`, predict notes it on every row), "skip" leaves the
record out (a skipped record, reason `missing_second_lead`).

Windows: the second lead is conditioned as the first (`windows.condition_and_cut`) and cut at
the first lead's window starts, so row i of both is the same time span. A window whose
second-lead samples are NaN or flat (`windows.flat_windows`) is left out and counted
(`second_lead_nan_samples`, `second_lead_flat` in the stage; status nan_samples / flat with
the note "second lead" in predict).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.beats.candidates import RecordSkip, Segments
from data_prep.beats.windows import SegmentParams, condition_and_cut, flat_windows
from data_prep.records import wfdb_io
from data_prep.records.signals import choose_lead

MISSING = "missing_second_lead"  # the skip reason of a record without a second lead ("skip")


def choose_second(sig_names: list[str | None] | tuple[str | None, ...], first: int,
                  preference: list[str]) -> int | None:
    """The channel of the second lead: the first of `preference` present other than the
    channel `first`; None when the record has none of them."""
    others = [name if i != first else None for i, name in enumerate(sig_names)]
    channel, _ = choose_lead(others, preference, "skip")
    return channel


def cut_second(x: np.ndarray, fs_in: float, starts: np.ndarray,
               params: SegmentParams) -> tuple[np.ndarray, np.ndarray]:
    """The second lead's windows at the first lead's window starts (target_fs samples).

    Args:
        x: the raw second lead at fs_in, physical units (NaN where invalid).
        fs_in: its sampling rate in Hz.
        starts: the window starts of the first lead's kept windows.
        params: the segment params.

    Returns:
        The (n_ok, length) float32 windows of the starts whose status is "", and per start its
        status: "" (usable), "nan_samples" or "flat" (in this lead).

    Raises:
        ValueError: the lead cannot be conditioned (see `windows.condition_and_cut`).
    """
    starts = np.asarray(starts, dtype=np.int64)
    _, length, _ = params.geometry()
    status = np.full(starts.size, "", dtype=object)
    if not starts.size:
        return np.empty((0, length), dtype=np.float32), status
    windows, clean = condition_and_cut(x, fs_in, starts, params)
    flat = flat_windows(x, fs_in, starts[clean], length, params.target_fs)
    status[~clean] = "nan_samples"
    status[np.flatnonzero(clean)[flat]] = "flat"
    return windows[~flat], status


def segment_windows(params: SegmentParams, record_dir: Path, header: wfdb_io.Header,
                    channel: int, seg: Segments, windows: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """The segment stage's two-lead step: both leads' windows at the kept starts.

    Rows whose second-lead window is unusable are dropped from `seg` (counted by reason) and
    from both window arrays.

    Returns:
        (first lead's windows, second lead's windows, the second lead's name, whether the first
        lead stands in for a missing second lead).

    Raises:
        RecordSkip: no second lead and second_lead_missing "skip", or the lead is unreadable.
    """
    record, lost = header.record, seg.sample.size
    second = choose_second(header.sig_names, channel, params.second_leads)
    if second is None:
        if params.second_lead_missing == "skip":
            raise RecordSkip(MISSING, lost, f"record {record} has leads {list(header.sig_names)}"
                             ", none of segment.second_leads besides its first; add one there "
                             "or set segment.second_lead_missing: duplicate")
        return windows, windows, header.sig_names[channel], True
    name = header.sig_names[second]
    try:
        x = wfdb_io.read_signal(record_dir, record, second, tolerant=params.tolerant_headers)
        windows2, status = cut_second(x, header.signal_fs(second), seg.start, params)
    except FileNotFoundError as err:
        raise RecordSkip("missing_signal", lost, str(err)) from None
    except ValueError as err:
        raise RecordSkip("signal_error", lost, f"record {record}, second lead {name}: {err}"
                         ) from None
    for reason in ("nan_samples", "flat"):
        if n := int(np.count_nonzero(status == reason)):
            seg.skipped[f"second_lead_{reason}"] += n
    seg.keep(status == "", None)
    return windows[status == ""], windows2, name, False


def both_leads(windows: np.ndarray, starts: np.ndarray, second: tuple[np.ndarray, float] | None,
               params: SegmentParams) -> tuple[list[np.ndarray], np.ndarray]:
    """Predict's two-lead step, as `segment_windows` for the stage.

    Args:
        windows: the first lead's usable windows, one per start.
        starts: their starts (target_fs samples).
        second: (raw second lead, its rate), or None: the first lead stands in for it
            (second_lead_missing "duplicate"; the caller has already refused "skip").
        params: the segment params.

    Returns:
        [first lead's windows, second lead's windows] of the starts whose second-lead status is
        "", and that status per start ("", "nan_samples" or "flat").
    """
    if second is None:
        return [windows, windows], np.full(len(starts), "", dtype=object)
    windows2, status = cut_second(second[0], second[1], starts, params)
    return [windows[status == ""], windows2], status
