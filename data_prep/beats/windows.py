"""The segment geometry and window cutting, shared by the segment stage and predict.

`SegmentParams` is the `segment:` section of params.yaml (its `geometry()` gives the window
offset, length and stride); `condition_and_cut`, `cut_beats` and `cut_fixed` condition one raw
lead and cut its windows exactly as the stage does; `flat_windows` is the signal-quality rule
(lead off or saturated) that both the stage and predict apply.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from data_prep.beats import morphology
from data_prep.beats.morphology import MorphologyParams
from data_prep.beats.rhythm import RhythmParams
from data_prep.params import StrictModel
from data_prep.records import signals

# Lead-off and saturation show as a raw value that does not change: a window is "flat" when at
# least FLAT_FRACTION of it lies in constant stretches of FLAT_RUN_S or longer. A real ECG is
# never constant to the last ADC bit for 0.2 s (mitdb: 5 uV per step, noise larger than that).
FLAT_RUN_S, FLAT_FRACTION = 0.2, 0.5


class SegmentParams(StrictModel):
    """The `segment:` section of params.yaml (see the comments there)."""

    label_mode: Literal["beat", "rhythm", "record"]
    label_map: str
    annotator: str | None
    reference_csv: str | None
    leads: list[str]
    lead_fallback: Literal["first", "skip"]
    target_fs: PositiveInt
    bandpass_hz: tuple[PositiveFloat, PositiveFloat]
    filter_order: int = Field(ge=1, le=10)
    beat_window_s: tuple[float, float]
    window_s: PositiveFloat
    window_stride_s: PositiveFloat
    max_skip_fraction: float = Field(ge=0.0, le=1.0)
    tolerant_headers: bool = False
    rhythm: RhythmParams
    # beat shape against the record's median beat (data_prep.beats.morphology); off in bundles older
    # than it, which hold no morphology section
    morphology: MorphologyParams = MorphologyParams(enabled=False, template_beats=1000)
    # two-lead images (data_prep.beats.second_lead): [] keeps one lead, as before
    second_leads: list[str] = Field(default_factory=list)
    second_lead_missing: Literal["duplicate", "skip"] = "duplicate"

    @model_validator(mode="after")
    def _consistent(self) -> SegmentParams:
        low, high = self.bandpass_hz
        if not low < high < self.target_fs / 2:
            raise ValueError(f"bandpass_hz needs low < high < target_fs/2 = {self.target_fs / 2}")
        if min(self.beat_window_s) < 0 or sum(self.beat_window_s) <= 0:
            raise ValueError("beat_window_s: [before, after] must be >= 0 with a positive sum")
        before, after = morphology.REGIONS_S["beat"]
        if (self.morphology.enabled and self.label_mode == "beat"
                and (self.beat_window_s[0] < -before or self.beat_window_s[1] < after)):
            raise ValueError(f"morphology compares beats from {before} to +{after} s; set "
                             f"beat_window_s to at least [{-before}, {after}] or "
                             "morphology.enabled: false")
        if self.label_mode == "record" and not self.reference_csv:
            raise ValueError("label_mode 'record' needs reference_csv (a 'record,label' CSV)")
        return self

    def recorded(self) -> dict:
        """The params as meta.json and bundles record them (one lead: without the second-lead
        keys, so a one-lead meta.json is the same as before they existed)."""
        skip = set() if self.second_leads else {"second_leads", "second_lead_missing"}
        return self.model_dump(mode="json", exclude=skip)

    def geometry(self) -> tuple[int, int, int]:
        """(offset, length, stride) of the windows, in samples at target_fs."""
        fs = self.target_fs
        if self.label_mode == "beat":  # half up: 1.25 s at 250 Hz is 313 + 312 = 625 samples
            before, after = self.beat_window_s
            return math.floor(before * fs + 0.5), math.floor((before + after) * fs + 0.5), 1
        return 0, round(self.window_s * fs), max(round(self.window_stride_s * fs), 1)


# ----------------------------------------------------------------------------- cutting


def condition_and_cut(x: np.ndarray, fs_in: float, starts: np.ndarray,
                      params: SegmentParams) -> tuple[np.ndarray, np.ndarray]:
    """Conditions one raw lead and cuts its windows, exactly as the stage does.

    NaN fill, resampling to target_fs and band-pass (`signals.condition`), then the windows
    [start, start + length) of the segment geometry; windows touching NaN-derived samples are
    left out.

    Args:
        x: the raw lead at fs_in, physical units (NaN where invalid).
        fs_in: its sampling rate in Hz.
        starts: window starts in target_fs samples, every window inside the record.
        params: the segment params.

    Returns:
        The (n_clean, length) float32 windows and the mask over `starts` of those kept.

    Raises:
        ValueError: the lead cannot be conditioned (all NaN, shorter than the filter padding).
    """
    y, nan_mask = signals.condition(x, fs_in, params.target_fs, params.bandpass_hz,
                                    params.filter_order)
    _, length, _ = params.geometry()
    starts = np.asarray(starts, dtype=np.int64)
    assert signals.inside(starts, length, y.shape[0]).all(), "starts must lie inside the record"
    clean = ~signals.touches(nan_mask, starts, length)
    windows, _ = signals.cut_windows(y, starts[clean], length)
    return windows, clean


def cut_beats(x: np.ndarray, fs_in: float, beats: np.ndarray,
              params: SegmentParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beat-mode windows of one raw lead from (signal, fs, beat samples), as the stage cuts them.

    Args:
        x: the raw lead at fs_in.
        fs_in: its sampling rate in Hz.
        beats: beat samples at fs_in (annotations or a detector's).
        params: the segment params (beat_window_s, target_fs, band-pass...).

    Returns:
        The (n_ok, length) float32 windows of the beats whose status is "", the beats' centre
        samples at target_fs, and per beat its status: "" (cut) or the reason the stage counts
        it as skipped ("annotation_past_end", "record_edge", "nan_samples").

    Raises:
        ValueError: the lead cannot be conditioned (see `condition_and_cut`).
    """
    beats = np.asarray(beats, dtype=np.int64)
    offset, length, _ = params.geometry()
    sample = signals.map_samples(beats, fs_in, params.target_fs)
    start = sample - offset
    n_out = signals.resampled_length(x.shape[0], fs_in, params.target_fs)
    status = np.full(beats.size, "", dtype=object)
    status[(beats < 0) | (beats >= x.shape[0])] = "annotation_past_end"
    status[(status == "") & ~signals.inside(start, length, n_out)] = "record_edge"
    ok = np.flatnonzero(status == "")
    windows, clean = condition_and_cut(x, fs_in, start[ok], params)
    status[ok[~clean]] = "nan_samples"
    return windows, sample, status


def cut_fixed(x: np.ndarray, fs_in: float,
              params: SegmentParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rhythm/record-mode windows (window_s every window_stride_s) of one raw lead.

    Returns:
        As `cut_beats`: the windows with status "", the window starts at target_fs and the
        per-window status ("" or "nan_samples"); no window when the lead is shorter than one.
    """
    _, length, stride = params.geometry()
    n_out = signals.resampled_length(x.shape[0], fs_in, params.target_fs)
    starts = signals.window_starts(n_out, length, stride)
    status = np.full(starts.size, "", dtype=object)
    if not starts.size:
        return np.empty((0, length), dtype=np.float32), starts, status
    windows, clean = condition_and_cut(x, fs_in, starts, params)
    status[~clean] = "nan_samples"
    return windows, starts, status


def signal_quality() -> dict[str, float | str]:
    """The signal-quality rule as the segment stage records it in meta.json (and bundles)."""
    return {"flat_run_s": FLAT_RUN_S, "flat_fraction": FLAT_FRACTION,
            "rule": "a window is 'flat' (skipped) when at least flat_fraction of it lies in "
                    "runs of one unchanged raw value lasting flat_run_s or longer"}


def flat_windows(x: np.ndarray, fs: float, starts: np.ndarray, length: int, target_fs: float
                 ) -> np.ndarray:
    """Which windows (starts at target_fs) lie mostly in constant stretches of the raw lead."""
    if not starts.size:
        return np.zeros(0, dtype=bool)
    change = np.flatnonzero(np.diff(x) != 0) + 1
    runs = np.diff(np.r_[0, change, x.size])
    in_run = np.repeat(runs >= max(round(FLAT_RUN_S * fs), 2), runs)
    n_out = signals.resampled_length(x.size, fs, target_fs)
    counts = np.r_[0, np.cumsum(signals.resample_mask(in_run, fs, target_fs, n_out))]
    return counts[starts + length] - counts[starts] >= FLAT_FRACTION * length
