"""The per-row features the model takes beside the image (its `rr` input), one home for the
segment stage and predict: the rhythm features (`data_prep.beats.rhythm`) and, for beats, the shape
against the record's own template (`data_prep.beats.morphology`), in that order.
"""

from __future__ import annotations

import numpy as np

from data_prep.beats import morphology, rhythm
from data_prep.beats.windows import SegmentParams


def names(params: SegmentParams) -> list[str]:
    """Every context feature, in the order of the index columns and the model's input."""
    return [*rhythm.feature_names(params.label_mode),
            *morphology.feature_names(params.label_mode, params.morphology)]


def describe(params: SegmentParams) -> dict:
    """meta.json's "rhythm" block (export copies it into the bundle): the features and how
    each is computed."""
    return {**rhythm.describe(params.label_mode, params.rhythm), "features": names(params),
            "morphology": morphology.describe(params.label_mode, params.morphology)}


def rhythm_rows(params: SegmentParams, times_s: np.ndarray, mapped: np.ndarray | None,
                starts: np.ndarray | None = None) -> np.ndarray:
    """Rhythm features per beat, from the beats in the label map (`mapped`; None: all), or
    per window of `starts` (target_fs samples), as the segment stage computes them."""
    if starts is not None:
        _, length, _ = params.geometry()
        fs = params.target_fs
        return rhythm.window_features(np.sort(times_s), starts / fs, length / fs,
                                      params.rhythm)[0]
    keep = np.ones(times_s.size, bool) if mapped is None else mapped
    return rhythm.mapped_beat_features(times_s, keep, params.rhythm)


def shape_features(params: SegmentParams, windows: np.ndarray,
                   template_mask: np.ndarray | None = None) -> np.ndarray:
    """(n, k) morphology features of one record's beat windows (k = 0 when off or not beats);
    the template is made of the windows where `template_mask` (None or none set: all)."""
    shape = morphology.feature_names(params.label_mode, params.morphology)
    if not shape:
        return np.zeros((windows.shape[0], 0), np.float32)
    rows = None if template_mask is None or not template_mask.any() else np.flatnonzero(
        template_mask)
    return morphology.beat_features(windows, params.geometry()[0], params.target_fs,
                                    params.morphology, rows)
