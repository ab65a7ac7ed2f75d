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


def _one_minus_r(n: int, sum_t: float, sum_b: float, sum_tt: float, sum_bb: float,
                 sum_tb: float) -> float:
    """1 - Pearson r from sums tallied by hand over n samples (t: template, b: beat)."""
    cov = sum_tb - sum_t * sum_b / n
    return 1 - cov / np.sqrt((sum_tt - sum_t**2 / n) * (sum_bb - sum_b**2 / n))


def test_each_feature_measures_its_own_region_against_hand_computed_values():
    """At 100 Hz with the beat at sample 25 of 65 the regions are samples [15, 35) (QRS),
    [0, 65) (beat), [0, 17) (P) and [35, 65) (ST-T). The template (the median of four copies and
    the odd beat) is zero but for a P spike 0.2 at 5, a QRS triangle 0.5, 1, 0.5 at 24-26 and a T
    spike 0.3 at 45, all at a gain of 2 that the unitless values must not see. The odd beat
    inverts the P spike, sharpens the QRS to a single 2.5 at 25 and adds a second T spike 0.3 at
    58, so every feature has its own value: a feature that reads another's region, another's
    column, or a region with a bound of the wrong sign (the P region reaching into the QRS, the
    ST-T region starting before it) is off."""
    fs, offset, length = 100, 25, 65
    tpl = np.zeros(length)
    tpl[5], tpl[24:27], tpl[45] = 0.2, (0.5, 1.0, 0.5), 0.3
    odd = np.zeros(length)
    odd[5], odd[25], odd[45], odd[58] = -0.2, 2.5, 0.3, 0.3
    feats = morphology.beat_features(2 * np.stack([tpl] * 4 + [odd]), offset, fs, PARAMS)
    expected = {
        "qrs_dissimilarity": _one_minus_r(20, 2.0, 2.5, 1.5, 6.25, 2.5),
        "beat_dissimilarity": _one_minus_r(65, 2.5, 2.9, 1.63, 6.47, 2.55),
        "p_dissimilarity": 2.0,  # r = -1
        "t_dissimilarity": _one_minus_r(30, 0.3, 0.6, 0.09, 0.18, 0.09),
        "qrs_amplitude_ratio": 2.5 / 1.0,
        "qrs_energy_ratio": 2.5**2 / 1.5,
        "qrs_slope_ratio": 2.5 / 0.5,
        "qrs_difference": np.sqrt((0.5**2 + 1.5**2 + 0.5**2) / 20) / 1.0,
        "beat_difference": np.sqrt((0.5**2 + 1.5**2 + 0.5**2 + 0.4**2 + 0.3**2) / 65) / 1.0,
    }
    assert tuple(expected) == FEATURES  # the documented column order
    np.testing.assert_allclose(feats[-1], list(expected.values()), rtol=1e-5)
    assert len({round(v, 4) for v in expected.values()}) == len(FEATURES)
    ratios = [COL[f] for f in ("qrs_amplitude_ratio", "qrs_energy_ratio", "qrs_slope_ratio")]
    np.testing.assert_allclose(feats[:4, ratios], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(feats[:4], ratios, axis=1), np.float32(FLOOR))


def test_a_flat_beat_or_region_counts_as_uncorrelated():
    """At 100 Hz, beat at 25 of 65: the template has +1 / -1 at 24 / 26 and nothing else, so its
    P and ST-T regions are flat: against them every beat's dissimilarity is 1 (r taken as 0).
    The odd beat has +-5e-10 there: sqrt(sum a^2 * sum b^2) = sqrt(5e-19 * 2) is exactly TINY,
    which still counts as flat, so its QRS and whole-beat dissimilarities are 1 too, though its
    shape is the template's. All windows zero: a flat template, every dissimilarity 1 and every
    ratio and difference at the floor."""
    fs, offset, length = 100, 25, 65
    tpl, odd = np.zeros(length), np.zeros(length)
    tpl[24], tpl[26] = 1.0, -1.0
    odd[24], odd[26] = 5e-10, -5e-10
    feats = morphology.beat_features(np.stack([tpl] * 4 + [odd]), offset, fs, PARAMS)
    np.testing.assert_allclose(feats[:4], np.tile([FLOOR, FLOOR, 1, 1, 1, 1, 1, FLOOR, FLOOR],
                                                  (4, 1)), rtol=1e-6)
    gap = 1 - 5e-10
    np.testing.assert_allclose(feats[4], [1, 1, 1, 1, FLOOR, FLOOR, FLOOR,
                                          np.sqrt(2 * gap**2 / 20) / 2,
                                          np.sqrt(2 * gap**2 / 65) / 2], rtol=1e-6)
    flat = morphology.beat_features(np.zeros((4, length), np.float32), offset, fs, PARAMS)
    np.testing.assert_allclose(flat, np.tile([1, 1, 1, 1] + [FLOOR] * 5, (4, 1)), rtol=1e-6)


def test_a_single_beat_is_its_own_template_and_no_beat_gives_no_rows():
    one = morphology.beat_features(_record(normal=1), OFFSET, FS, PARAMS)
    np.testing.assert_allclose(one, [[FLOOR] * 4 + [1.0] * 3 + [FLOOR] * 2], rtol=1e-6)
    none = morphology.beat_features(np.zeros((0, LENGTH), np.float32), OFFSET, FS, PARAMS)
    assert none.shape == (0, len(FEATURES)) and none.dtype == np.float32


def test_the_template_takes_at_most_template_beats_rows_first_and_last_included():
    """Ten windows of constant i^2 (i = 0..9), five samples each: 2 rows are 0 and 9 (median
    40.5), 1 row is row 0, 1000 rows are all ten (median (16 + 25) / 2)."""
    windows = (np.arange(10.0) ** 2)[:, None] * np.ones((1, 5))
    for max_beats, expected in ((2, 40.5), (1, 0.0), (1000, 20.5)):
        np.testing.assert_array_equal(morphology.template(windows, max_beats),
                                      np.full(5, expected))
    np.testing.assert_array_equal(morphology.template(windows[:1], 3), windows[0])
    with pytest.raises(ValueError, match=r"^a morphology template needs at least one beat "
                                         r"window$"):
        morphology.template(np.zeros((0, 5)), 3)


def test_a_window_too_short_on_one_side_is_refused_with_the_fix():
    """At 100 Hz with the beat at 25, 60 samples hold the QRS (15..35) but not the whole beat
    (0..65)."""
    message = ("morphology region beat (-0.25..+0.40 s) does not fit a window of 60 samples "
               "with the beat at 25; widen segment.beat_window_s to at least [0.25, 0.40]")
    with pytest.raises(ValueError) as error:
        morphology.beat_features(np.ones((3, 60)), 25, 100, PARAMS)
    assert str(error.value) == message


def test_the_meta_json_description():
    definition = "data_prep/beats/morphology.py: against the record's median beat, unitless"
    regions = {"qrs": [-0.10, 0.10], "beat": [-0.25, 0.40], "p": [-0.25, -0.08],
               "t": [0.10, 0.40]}
    for mode, features in (("beat", list(FEATURES)), ("rhythm", [])):
        assert morphology.describe(mode, PARAMS) == {
            "features": features, "params": {"enabled": True, "template_beats": 1000},
            "regions_s": regions, "definition": definition}
    off = MorphologyParams(enabled=False, template_beats=7)
    assert morphology.describe("beat", off)["features"] == []
    assert morphology.describe("beat", off)["params"] == {"enabled": False, "template_beats": 7}
