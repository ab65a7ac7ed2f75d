"""Morphology features: each beat's shape against its record's median beat."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from data_prep.beats import context, morphology
from data_prep.beats.morphology import FEATURES, FLOOR, MorphologyParams
from data_prep.beats.windows import SegmentParams
from tests.helpers import committed_params

FS, OFFSET, LENGTH = 250, 313, 625
PARAMS = MorphologyParams(enabled=True, template_beats=1000)
COL = {name: i for i, name in enumerate(FEATURES)}


def _beat(width_s: float = 0.03, amplitude: float = 1.0, p_wave: float = 0.15) -> np.ndarray:
    """A QRS (Gaussian of `width_s`) at OFFSET, a P wave 160 ms before, a T wave 250 ms after."""
    t = (np.arange(LENGTH) - OFFSET) / FS
    return (amplitude * np.exp(-0.5 * (t / width_s) ** 2)
            + p_wave * np.exp(-0.5 * ((t + 0.16) / 0.025) ** 2)
            + 0.3 * np.exp(-0.5 * ((t - 0.25) / 0.05) ** 2))


def _record(*odd: np.ndarray, normal: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    beats = [_beat() + 0.005 * rng.standard_normal(LENGTH) for _ in range(normal)]
    return np.stack([*beats, *odd]).astype(np.float32)


def test_a_typical_beat_matches_its_template():
    feats = morphology.beat_features(_record(), OFFSET, FS, PARAMS)
    assert feats.shape == (50, len(FEATURES)) and feats.dtype == np.float32
    assert (feats[:, COL["qrs_dissimilarity"]] < 0.01).all()
    for ratio in ("qrs_amplitude_ratio", "qrs_energy_ratio", "qrs_slope_ratio"):
        np.testing.assert_allclose(feats[:, COL[ratio]], 1.0, atol=0.25)  # slope: noise
    assert (feats >= FLOOR).all() and np.isfinite(feats).all()


def test_a_wide_ventricular_beat_departs_in_its_qrs():
    feats = morphology.beat_features(_record(_beat(width_s=0.07, amplitude=2.0)), OFFSET, FS,
                                     PARAMS)
    odd, typical = feats[-1], np.median(feats[:-1], axis=0)
    assert odd[COL["qrs_dissimilarity"]] > 10 * typical[COL["qrs_dissimilarity"]]
    # twice as tall, but wide: +-100 ms around the fiducial still hold 36 % of its peak
    expected = 2 * (1 - np.exp(-0.5 * (0.1 / 0.07) ** 2))
    assert odd[COL["qrs_amplitude_ratio"]] == pytest.approx(expected, rel=0.05)
    assert odd[COL["qrs_difference"]] > 0.5 > typical[COL["qrs_difference"]]


def test_a_beat_without_its_p_wave_departs_in_the_p_region_only():
    feats = morphology.beat_features(_record(_beat(p_wave=0.0)), OFFSET, FS, PARAMS)
    odd, typical = feats[-1], np.median(feats[:-1], axis=0)
    assert odd[COL["p_dissimilarity"]] > 5 * typical[COL["p_dissimilarity"]]
    assert odd[COL["qrs_dissimilarity"]] < 0.01


def test_gain_does_not_change_the_features():
    """One scale for every patient: a record recorded at twice the gain gives the same values."""
    record = _record(_beat(width_s=0.07))
    np.testing.assert_allclose(morphology.beat_features(2 * record, OFFSET, FS, PARAMS),
                               morphology.beat_features(record, OFFSET, FS, PARAMS), rtol=1e-4)


def test_the_template_is_made_of_the_rows_given_and_spread_over_the_record():
    record = _record(*[_beat(width_s=0.07)] * 200)  # most beats ventricular
    all_rows = morphology.beat_features(record, OFFSET, FS, PARAMS)
    normal_only = morphology.beat_features(record, OFFSET, FS, PARAMS, np.arange(50))
    assert all_rows[0, COL["qrs_dissimilarity"]] > 0.05  # the template is a ventricular beat
    assert normal_only[0, COL["qrs_dissimilarity"]] < 0.01
    few = MorphologyParams(enabled=True, template_beats=3)  # rows 0, 124 and 249
    np.testing.assert_allclose(morphology.template(record, 3), record[[0, 124, 249]].astype(
        np.float64)[1], atol=0.05)
    assert morphology.beat_features(record, OFFSET, FS, few).shape == (250, len(FEATURES))


def test_a_flat_template_gives_finite_values():
    feats = morphology.beat_features(np.zeros((4, LENGTH), np.float32), OFFSET, FS, PARAMS)
    assert np.isfinite(feats).all() and (feats >= FLOOR).all()


def test_segment_params_refuse_windows_shorter_than_the_regions():
    data = committed_params()["segment"]
    with pytest.raises(ValidationError, match="beat_window_s to at least"):
        SegmentParams.model_validate({**data, "beat_window_s": [0.2, 0.4],
                                      "morphology": {"enabled": True, "template_beats": 10}})
    off = {**data, "beat_window_s": [0.2, 0.4],
           "morphology": {"enabled": False, "template_beats": 10}}
    assert context.names(SegmentParams.model_validate(off)) == list(context.rhythm.BEAT_FEATURES)


def test_context_lists_rhythm_then_morphology_in_beat_mode_only():
    data = committed_params()["segment"] | {"morphology": {"enabled": True, "template_beats": 9}}
    beat = SegmentParams.model_validate(data)
    assert context.names(beat) == [*context.rhythm.BEAT_FEATURES, *FEATURES]
    windows = SegmentParams.model_validate({**data, "label_mode": "rhythm"})
    assert context.names(windows) == list(context.rhythm.WINDOW_FEATURES)
    assert context.shape_features(windows, np.zeros((3, 2500), np.float32)).shape == (3, 0)
    assert context.describe(beat)["morphology"]["features"] == list(FEATURES)
