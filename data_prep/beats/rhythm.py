"""Rhythm (RR-interval) features from beat positions, shared by the segment stage and predict.

A beat image does not know the patient's own baseline heart rate, which is what separates most
supraventricular premature (S) beats from normal ones. These features give the classifier that
context (de Chazal et al. 2004 and every strong inter-patient result since use them). They need
beat times only: the reference annotations in the segment stage, the annotations or the QRS
detector in `pipeline.predict` - the same function computes both, so training and prediction see
the same numbers.

Per beat (`beat_features`, seconds or ratios):
    rr_pre, rr_post     interval to the previous / next beat
    rr_local            mean of the `local_beats` intervals before rr_pre (the local rhythm)
    rr_base             mean interval within +-`baseline_s` of the beat (the patient's baseline)
    rr_pre_ratio, rr_post_ratio, rr_local_ratio   the three above divided by rr_base
    rr_pre_local        rr_pre / rr_local (prematurity against the local rhythm)
Per window (`window_features`, rhythm and record modes):
    rr_mean, rr_sdnn, rr_rmssd, rr_pnn50 (fraction of successive differences > 50 ms),
    rr_mean_ratio (rr_mean / the record's baseline), rr_beats_per_s

Intervals outside [min_rr_s, max_rr_s] (a missed beat, a gap in the annotations, a double
annotation) are not intervals of the rhythm: they are left out of every mean. A beat whose own
previous or next interval is missing (record edge, gap) gets a defined value instead - the local
mean, else the baseline, else `fallback_rr_s` - and a status saying why, which the caller counts.
The model input never holds NaN.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from data_prep.params import StrictModel

BEAT_FEATURES = ("rr_pre", "rr_post", "rr_local", "rr_base", "rr_pre_ratio", "rr_post_ratio",
                 "rr_local_ratio", "rr_pre_local")
WINDOW_FEATURES = ("rr_mean", "rr_sdnn", "rr_rmssd", "rr_pnn50", "rr_mean_ratio",
                   "rr_beats_per_s")
STATUS = "rr_status"  # index column: "" when every interval of the beat/window was measured
EDGE, GAP, NO_RHYTHM, FEW_BEATS = "rr_edge", "rr_gap", "rr_no_rhythm", "rr_few_beats"


class RhythmParams(StrictModel):
    """The `segment.rhythm:` section of params.yaml (see the comments there)."""

    beat_labels: str
    local_beats: int = Field(ge=1)
    baseline_s: float = Field(gt=0)
    min_rr_s: float = Field(gt=0)
    max_rr_s: float = Field(gt=0)
    fallback_rr_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> RhythmParams:
        if not self.min_rr_s < self.fallback_rr_s < self.max_rr_s:
            raise ValueError("rhythm needs min_rr_s < fallback_rr_s < max_rr_s")
        return self


def _valid_intervals(times: np.ndarray, params: RhythmParams) -> tuple[np.ndarray, np.ndarray]:
    rr = np.diff(times)
    return rr, (rr >= params.min_rr_s) & (rr <= params.max_rr_s)


def _windowed_mean(values: np.ndarray, valid: np.ndarray, lo: np.ndarray,
                   hi: np.ndarray) -> np.ndarray:
    """Mean of the valid values[lo:hi] per row (NaN where none), by cumulative sums: O(n)."""
    total = np.r_[0.0, np.cumsum(np.where(valid, values, 0.0))]
    count = np.r_[0, np.cumsum(valid)]
    n = count[hi] - count[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (total[hi] - total[lo]) / np.maximum(n, 1), np.nan)


def _first_finite(*candidates: np.ndarray) -> np.ndarray:
    out = candidates[0].copy()
    for candidate in candidates[1:]:
        out = np.where(np.isfinite(out), out, candidate)
    return out


def beat_features(times_s: np.ndarray, params: RhythmParams) -> tuple[np.ndarray, np.ndarray]:
    """RR features of every beat of one record.

    Args:
        times_s: beat times in seconds, ascending (every beat of the record, also those that are
            not classified, e.g. beats at the record edges: they still bound an interval).
        params: interval limits, local and baseline spans.

    Returns:
        float32 (n, len(BEAT_FEATURES)) features in BEAT_FEATURES order, finite everywhere, and
        per beat its status: "" (measured), EDGE (first/last beat), GAP (an interval outside
        [min_rr_s, max_rr_s]) or NO_RHYTHM (no valid interval in the record at all).
    """
    t = np.asarray(times_s, dtype=np.float64)
    if t.ndim != 1 or (t.size > 1 and np.any(np.diff(t) < 0)):
        raise ValueError("beat times must be a 1-d ascending array")
    n = t.size
    if n == 0:
        return np.empty((0, len(BEAT_FEATURES)), np.float32), np.empty(0, dtype=object)
    rr, valid = _valid_intervals(t, params)
    pre, post = np.full(n, np.nan), np.full(n, np.nan)
    pre[1:], post[:-1] = np.where(valid, rr, np.nan), np.where(valid, rr, np.nan)
    idx = np.arange(n)  # interval j lies between beats j and j + 1; beat i's previous is i - 1
    previous = np.maximum(idx - 1, 0)  # intervals before rr_pre: j < i - 1
    local = _windowed_mean(rr, valid, np.maximum(previous - params.local_beats, 0), previous)
    middle = (t[:-1] + t[1:]) / 2
    lo = np.searchsorted(middle, t - params.baseline_s, side="left")
    hi = np.searchsorted(middle, t + params.baseline_s, side="right")
    record_mean = rr[valid].mean() if valid.any() else params.fallback_rr_s
    base = _first_finite(_windowed_mean(rr, valid, lo, hi), np.full(n, record_mean))
    local = _first_finite(local, base)
    status = np.full(n, "", dtype=object)
    status[np.isnan(pre) | np.isnan(post)] = GAP
    status[[0, n - 1]] = EDGE
    if not valid.any():
        status[:] = NO_RHYTHM
    pre, post = _first_finite(pre, local), _first_finite(post, local)
    feats = np.stack([pre, post, local, base, pre / base, post / base, local / base,
                      pre / local], axis=1)
    return feats.astype(np.float32), status


def mapped_beat_features(times_s: np.ndarray, mapped: np.ndarray,
                         params: RhythmParams) -> np.ndarray:
    """Per beat (any order) its features as the segment stage computes them: from the beats in
    the label map (`mapped`) only, as the stage drops the others before computing; the beats
    outside it (which the stage never keeps) get features from all beats."""
    t = np.asarray(times_s, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    feats = np.zeros((t.size, len(BEAT_FEATURES)), np.float32)
    if not mapped.all():
        feats[order] = beat_features(t[order], params)[0]
    sub = order[mapped[order]]
    feats[sub] = beat_features(t[sub], params)[0]
    return feats


def window_features(times_s: np.ndarray, starts_s: np.ndarray, length_s: float,
                    params: RhythmParams) -> tuple[np.ndarray, np.ndarray]:
    """RR statistics of fixed windows [start, start + length) from the record's beat times.

    Only intervals with both beats inside the window and within [min_rr_s, max_rr_s] count.
    A window with fewer than two such intervals gets the record's baseline as mean, zero
    variability and status FEW_BEATS.

    Returns:
        float32 (n_windows, len(WINDOW_FEATURES)) in WINDOW_FEATURES order, and the statuses.
    """
    t = np.sort(np.asarray(times_s, dtype=np.float64))
    starts = np.asarray(starts_s, dtype=np.float64)
    rr, valid = _valid_intervals(t, params)
    base = rr[valid].mean() if valid.any() else params.fallback_rr_s
    lo = np.searchsorted(t, starts, side="left")
    hi = np.searchsorted(t, starts + length_s, side="left")
    feats = np.zeros((starts.size, len(WINDOW_FEATURES)), dtype=np.float64)
    status = np.full(starts.size, "", dtype=object)
    for w in range(starts.size):  # windows are seconds long: a few hundred per record
        r = rr[lo[w]:max(hi[w] - 1, lo[w])]
        r = r[(r >= params.min_rr_s) & (r <= params.max_rr_s)]
        beats_per_s = (hi[w] - lo[w]) / length_s
        if r.size < 2:
            feats[w] = (base, 0.0, 0.0, 0.0, 1.0, beats_per_s)
            status[w] = FEW_BEATS
            continue
        diffs = np.abs(np.diff(r))
        feats[w] = (r.mean(), r.std(), np.sqrt(np.mean(diffs**2)), np.mean(diffs > 0.05),
                    r.mean() / base, beats_per_s)
    return feats.astype(np.float32), status


def feature_names(label_mode: str) -> tuple[str, ...]:
    """The rhythm columns of the segment index: per beat in beat mode, per window otherwise."""
    return BEAT_FEATURES if label_mode == "beat" else WINDOW_FEATURES


def describe(label_mode: str, params: RhythmParams) -> dict:
    """What the segment stage records in meta.json (and export copies into the bundle)."""
    return {"features": list(feature_names(label_mode)), "status_column": STATUS,
            "beats_from": "detector (XQRS)" if label_mode == "record" else "annotations",
            "params": params.model_dump(mode="json"),
            "definition": "data_prep/beats/rhythm.py: seconds for rr_* intervals, ratios unitless"}
