"""RR features on synthetic beat trains with known intervals."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.beats import rhythm
from data_prep.beats.rhythm import BEAT_FEATURES, WINDOW_FEATURES, RhythmParams

PARAMS = RhythmParams(beat_labels="configs/labels/aami.yaml", local_beats=10, baseline_s=300.0,
                      min_rr_s=0.2, max_rr_s=3.0, fallback_rr_s=0.8)
COL = {name: i for i, name in enumerate(BEAT_FEATURES)}
WCOL = {name: i for i, name in enumerate(WINDOW_FEATURES)}


def feats(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rhythm.beat_features(np.asarray(times, dtype=float), PARAMS)


def test_regular_rhythm_has_unit_ratios_and_edges_marked():
    times = np.arange(100) * 0.8
    x, status = feats(times)
    assert x.shape == (100, len(BEAT_FEATURES)) and x.dtype == np.float32
    inner = x[1:-1]
    np.testing.assert_allclose(inner[:, COL["rr_pre"]], 0.8, rtol=1e-6)
    np.testing.assert_allclose(inner[:, COL["rr_base"]], 0.8, rtol=1e-6)
    for ratio in ("rr_pre_ratio", "rr_post_ratio", "rr_local_ratio", "rr_pre_local"):
        np.testing.assert_allclose(x[:, COL[ratio]], 1.0, rtol=1e-6)
    assert status[0] == rhythm.EDGE and status[-1] == rhythm.EDGE
    assert (status[1:-1] == "").all()


def test_premature_beat_then_compensatory_pause():
    rr = np.full(40, 1.0)
    rr[20], rr[21] = 0.6, 1.4  # beat 21 comes early, beat 22 after a compensatory pause
    times = np.r_[0.0, np.cumsum(rr)]
    x, status = feats(times)
    premature = x[21]
    assert premature[COL["rr_pre"]] == pytest.approx(0.6)
    assert premature[COL["rr_post"]] == pytest.approx(1.4)
    assert premature[COL["rr_pre_ratio"]] == pytest.approx(0.6, rel=0.02)  # base stays ~1 s
    assert premature[COL["rr_pre_local"]] == pytest.approx(0.6, rel=0.01)  # local: 10 x 1.0 s
    after = x[22]
    assert after[COL["rr_pre_ratio"]] == pytest.approx(1.4, rel=0.02)
    # the local mean of beat 22 includes the short interval: 9 x 1.0 s and 0.6 s
    assert after[COL["rr_local"]] == pytest.approx(0.96, abs=1e-4)
    assert (status[1:-1] == "").all()


def test_baseline_follows_the_patient_over_minutes():
    slow, fast = np.full(600, 1.0), np.full(1200, 0.5)  # 10 min at 60 bpm, 10 min at 120 bpm
    times = np.r_[0.0, np.cumsum(np.r_[slow, fast])]
    x, _ = feats(times)
    assert x[100, COL["rr_base"]] == pytest.approx(1.0, abs=0.01)
    assert x[-100, COL["rr_base"]] == pytest.approx(0.5, abs=0.01)


def test_gap_is_left_out_and_gets_a_defined_value():
    rr = np.full(30, 0.8)
    rr[15] = 12.0  # annotations missing for 12 s (noise, lead off)
    times = np.r_[0.0, np.cumsum(rr)]
    x, status = feats(times)
    assert np.isfinite(x).all()
    assert status[15] == rhythm.GAP and status[16] == rhythm.GAP
    assert x[16, COL["rr_pre"]] == pytest.approx(0.8)  # the local mean, not 12 s
    assert x[20, COL["rr_base"]] == pytest.approx(0.8)  # the gap is not part of the baseline


def test_degenerate_records_never_give_nan():
    for times in ([5.0], [1.0, 1.0, 1.0], [0.0, 10.0, 20.0]):
        x, status = feats(np.array(times))
        assert np.isfinite(x).all()
        assert (status != "").all()
    x, status = feats(np.array([0.0, 10.0, 20.0]))
    assert x[1, COL["rr_pre"]] == pytest.approx(PARAMS.fallback_rr_s)
    assert (status == rhythm.NO_RHYTHM).all()
    empty, _ = feats(np.array([]))
    assert empty.shape == (0, len(BEAT_FEATURES))


def test_unsorted_times_are_refused():
    with pytest.raises(ValueError, match="ascending"):
        feats(np.array([1.0, 0.5, 2.0]))


def test_window_statistics_match_a_hand_computation():
    rr = np.array([0.8, 0.9, 0.7, 0.8, 0.8] * 8)
    times = np.r_[0.0, np.cumsum(rr)]
    x, status = rhythm.window_features(times, np.array([0.0]), 4.0, PARAMS)
    inside = times[times < 4.0]
    r = np.diff(inside)
    d = np.abs(np.diff(r))
    assert status[0] == ""
    assert x[0, WCOL["rr_mean"]] == pytest.approx(r.mean())
    assert x[0, WCOL["rr_sdnn"]] == pytest.approx(r.std())
    assert x[0, WCOL["rr_rmssd"]] == pytest.approx(np.sqrt(np.mean(d**2)))
    assert x[0, WCOL["rr_pnn50"]] == pytest.approx(np.mean(d > 0.05))
    assert x[0, WCOL["rr_beats_per_s"]] == pytest.approx(inside.size / 4.0)


def test_window_without_beats_is_marked():
    times = np.arange(10) * 0.8
    x, status = rhythm.window_features(times, np.array([0.0, 100.0]), 4.0, PARAMS)
    assert status[0] == "" and status[1] == rhythm.FEW_BEATS
    assert x[1, WCOL["rr_mean"]] == pytest.approx(0.8) and x[1, WCOL["rr_beats_per_s"]] == 0


def test_every_feature_of_a_hand_made_train():
    """Intervals 1.5, 1.25 x 3, 0.5, 1.5, 0.75, 2.75 s (beats at 0, 1.5, 2.75, 4, 5.25, 5.75,
    7.25, 8, 10.75 s); local: 3 intervals, baseline: intervals whose midpoint is within 3.625 s.
    Beat 5 (5.75 s, premature) has rr_pre 0.5, rr_post 1.5, rr_local 1.25 (intervals 1-3) and a
    baseline over intervals 1-7 whose midpoints 2.125 and 9.375 lie exactly on its bounds
    (9.25 / 7 s), so pre, post, local and baseline, and each ratio, differ. Beat 1 has no
    interval before its rr_pre: its local is its baseline over intervals 0-3 (5.25 / 4 s), not
    the record's mean (10.75 / 8 s)."""
    params = PARAMS.model_copy(update={"local_beats": 3, "baseline_s": 3.625})
    times = np.r_[0.0, np.cumsum([1.5, 1.25, 1.25, 1.25, 0.5, 1.5, 0.75, 2.75])]
    x, status = rhythm.beat_features(times, params)
    base = 9.25 / 7
    expected = {"rr_pre": 0.5, "rr_post": 1.5, "rr_local": 1.25, "rr_base": base,
                "rr_pre_ratio": 0.5 / base, "rr_post_ratio": 1.5 / base,
                "rr_local_ratio": 1.25 / base, "rr_pre_local": 0.5 / 1.25}
    assert tuple(expected) == BEAT_FEATURES  # the documented column order
    np.testing.assert_allclose(x[5], list(expected.values()), rtol=1e-6)
    base = 5.25 / 4
    np.testing.assert_allclose(x[1], [1.5, 1.25, base, base, 1.5 / base, 1.25 / base, 1.0,
                                      1.5 / base], rtol=1e-6)
    assert (status[1:-1] == "").all()


def test_a_gap_falls_back_to_the_local_rhythm_not_the_baseline():
    """Intervals 1, 1, 1, 0.5, 0.5, then a 5 s gap, then 1, 1 s (baseline: all valid, 6 / 7 s).
    Beat 5, before the gap, has no rr_post: it takes its local mean of intervals 1-3 (2.5 / 3 s);
    beat 6, after it, has no rr_pre: it takes its local mean of intervals 2-4 (2 / 3 s)."""
    times = np.r_[0.0, np.cumsum([1.0, 1.0, 1.0, 0.5, 0.5, 5.0, 1.0, 1.0])]
    x, status = rhythm.beat_features(times, PARAMS.model_copy(update={"local_beats": 3}))
    assert status[5] == status[6] == rhythm.GAP
    np.testing.assert_allclose(x[5, [COL["rr_pre"], COL["rr_post"], COL["rr_local"]]],
                               [0.5, 2.5 / 3, 2.5 / 3], rtol=1e-6)
    np.testing.assert_allclose(x[6, [COL["rr_pre"], COL["rr_post"], COL["rr_local"]]],
                               [2 / 3, 1.0, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(x[5:7, COL["rr_base"]], 6 / 7, rtol=1e-6)


def test_interval_limits_are_inclusive():
    """Intervals of exactly min_rr_s and max_rr_s (0.25 s and 3 s, exact in binary) are
    intervals of the rhythm, per beat and per window."""
    params = PARAMS.model_copy(update={"min_rr_s": 0.25, "max_rr_s": 3.0})
    times = np.array([0.0, 0.25, 0.5, 3.5, 6.5, 6.75])  # 0.25, 0.25, 3, 3, 0.25 s
    x, status = rhythm.beat_features(times, params)
    assert (status[1:-1] == "").all()
    assert x[3, COL["rr_pre"]] == 3.0 and x[3, COL["rr_post"]] == 3.0
    np.testing.assert_allclose(x[:, COL["rr_base"]], 6.75 / 5, rtol=1e-6)
    w, wstatus = rhythm.window_features(times, np.array([0.0]), 7.0, params)
    assert wstatus[0] == ""
    np.testing.assert_allclose(w[0, [WCOL["rr_mean"], WCOL["rr_mean_ratio"]]], [1.35, 1.0],
                               rtol=1e-6)


def test_a_local_mean_of_a_single_interval_is_measured():
    """local_beats 1: the local rhythm of a beat is the one interval before its rr_pre.
    Intervals 1, 1.5, 0.5, 1 s: beat 3 has rr_pre 0.5, rr_post 1, rr_local 1.5 and the
    baseline of all four (4 / 4 s)."""
    times = np.array([0.0, 1.0, 2.5, 3.0, 4.0])
    x, status = rhythm.beat_features(times, PARAMS.model_copy(update={"local_beats": 1}))
    np.testing.assert_allclose(x[3], [0.5, 1.0, 1.5, 1.0, 0.5, 1.0, 1.5, 0.5 / 1.5], rtol=1e-6)
    assert status[3] == ""


def test_a_beat_without_intervals_near_it_takes_the_record_mean_as_baseline():
    """baseline_s 1: beat 4 (13 s) sits between two 10 s gaps, no interval midpoint within
    +-1 s of it. Its baseline is the mean of the record's valid intervals (1, 1, 1, 1, 0.5:
    0.9 s), not fallback_rr_s; its missing rr_pre and rr_post take its local mean (intervals
    0-2, 1 s)."""
    times = np.array([0.0, 1.0, 2.0, 3.0, 13.0, 23.0, 24.0, 24.5])
    x, status = rhythm.beat_features(times, PARAMS.model_copy(update={"baseline_s": 1.0}))
    np.testing.assert_allclose(x[4], [1.0, 1.0, 1.0, 0.9, 1 / 0.9, 1 / 0.9, 1 / 0.9, 1.0],
                               rtol=1e-6)
    assert status[4] == rhythm.GAP


def test_times_out_of_order_or_not_1d_are_refused_with_the_message():
    message = r"^beat times must be a 1-d ascending array$"
    for times in ([1.0, 0.5], [[0.0, 1.0], [2.0, 3.0]]):
        with pytest.raises(ValueError, match=message):
            feats(np.array(times))


def test_no_beats_give_empty_typed_outputs():
    x, status = feats(np.array([]))
    assert x.shape == (0, len(BEAT_FEATURES)) and x.dtype == np.float32
    assert status.shape == (0,) and status.dtype == object


def test_float32_times_give_the_features_of_the_same_values_in_float64():
    """Times read from a float32 column: arithmetic stays in float64, so a 40 min record gives
    bit for bit the features of the same times as float64 (float32 sums would drift)."""
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.5, 1.2, 2500)).astype(np.float32)
    expected, expected_status = rhythm.beat_features(times.astype(np.float64), PARAMS)
    x, status = rhythm.beat_features(times, PARAMS)
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(status, expected_status)
    starts = np.arange(0.0, 1800.0, 5.0)
    expected, _ = rhythm.window_features(times.astype(np.float64), starts, 10.0, PARAMS)
    np.testing.assert_array_equal(rhythm.window_features(times, starts, 10.0, PARAMS)[0],
                                  expected)


def test_float32_window_starts_end_where_the_float64_value_ends():
    """A start of float32(1020.3) = 1020.29998779296875 s and 10 s end at 1030.2999877929688 s
    (float64); in float32 the sum would round up to 1030.300048828125 s and take in the beat at
    1030.30002 s. Beats every 0.5 s from 1020.5 s: 19 of them, then that one outside."""
    times = np.r_[1020.5 + 0.5 * np.arange(19), 1030.30002]
    start32 = np.array([1020.3], dtype=np.float32)
    x, status = rhythm.window_features(times, start32, 10.0, PARAMS)
    np.testing.assert_array_equal(
        x, rhythm.window_features(times, start32.astype(np.float64), 10.0, PARAMS)[0])
    assert x[0, WCOL["rr_beats_per_s"]] == pytest.approx(1.9)
    assert status[0] == ""


def test_window_rows_measured_and_few_beats_in_any_order():
    """Beats at 0, 0.8, 1.8, 2.4, 3 s (intervals 0.8, 1, 0.6, 0.6; record baseline 0.75 s).
    The window [0, 2) holds two intervals, 0.8 and 1 s: mean 0.9, sd 0.1, RMSSD 0.2, pNN50 1,
    0.9 / 0.75 of the baseline, 3 beats in 2 s. A window with no interval (after a window of
    that kind too) gets the record's baseline, no variability and ratio 1."""
    times = np.array([0.0, 0.8, 1.8, 2.4, 3.0])
    x, status = rhythm.window_features(times, np.array([100.0, 0.0, 2.9]), 2.0, PARAMS)
    assert x.dtype == np.float32
    assert list(status) == [rhythm.FEW_BEATS, "", rhythm.FEW_BEATS]
    np.testing.assert_allclose(x[1], [0.9, 0.1, 0.2, 1.0, 0.9 / 0.75, 1.5], rtol=1e-6)
    np.testing.assert_allclose(x[0], [0.75, 0.0, 0.0, 0.0, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(x[2], [0.75, 0.0, 0.0, 0.0, 1.0, 0.5], rtol=1e-6)


def test_window_statistics_leave_out_intervals_outside_the_limits():
    """A 10 s gap inside the window is not an interval of the rhythm: the four 0.8 s intervals
    around it give mean 0.8 and no variability."""
    times = np.array([0.0, 0.8, 1.6, 11.6, 12.4, 13.2])
    x, status = rhythm.window_features(times, np.array([0.0]), 14.0, PARAMS)
    assert status[0] == ""
    np.testing.assert_allclose(x[0], [0.8, 0.0, 0.0, 0.0, 1.0, 6 / 14], rtol=1e-6, atol=1e-7)


def test_a_record_without_any_valid_interval_uses_the_fallback():
    x, status = rhythm.window_features(np.array([0.0, 10.0, 20.0]), np.array([0.0]), 30.0,
                                       PARAMS)
    assert status[0] == rhythm.FEW_BEATS
    np.testing.assert_allclose(x[0], [PARAMS.fallback_rr_s, 0.0, 0.0, 0.0, 1.0, 0.1],
                               rtol=1e-6)


def test_pnn50_counts_differences_greater_than_50_ms_only():
    """A fast rhythm (a small animal's, min_rr_s 0.05): intervals 0.075 and 0.125 s differ by
    exactly 0.05 s in float64, which is not > 50 ms."""
    params = PARAMS.model_copy(update={"min_rr_s": 0.05})
    x, _ = rhythm.window_features(np.array([0.0, 0.075, 0.2]), np.array([0.0]), 1.0, params)
    np.testing.assert_allclose(x[0, [WCOL["rr_mean"], WCOL["rr_sdnn"], WCOL["rr_rmssd"]]],
                               [0.1, 0.025, 0.05], rtol=1e-6)
    assert x[0, WCOL["rr_pnn50"]] == 0.0


def test_mapped_features_come_from_the_mapped_beats_and_the_rest_from_all():
    """Beats at 0, 1, 2, 2.5, 3.5, 4.5 s given out of order; the one at 2.5 s is not in the
    label map. The mapped beats' intervals are 1, 1, 1.5, 1 (baseline 4.5 / 4 s): the beat at
    2 s has rr_pre 1, rr_post 1.5, local 1 (interval 0); the last one has no rr_post and takes
    its local mean (intervals 0-2, 3.5 / 3 s). The unmapped beat gets its features among all
    beats (intervals 1, 1, 0.5, 1, 1; baseline 0.9 s): rr_pre 0.5, rr_post 1, local 1."""
    times = np.array([2.5, 0.0, 3.5, 1.0, 4.5, 2.0])
    mapped = np.array([False, True, True, True, True, True])
    x = rhythm.mapped_beat_features(times, mapped, PARAMS)
    assert x.shape == (6, len(BEAT_FEATURES)) and x.dtype == np.float32
    base = 4.5 / 4
    np.testing.assert_allclose(x[5], [1.0, 1.5, 1.0, base, 1 / base, 1.5 / base, 1 / base,
                                      1.0], rtol=1e-6)
    local = 3.5 / 3
    np.testing.assert_allclose(x[4], [1.0, local, local, base, 1 / base, local / base,
                                      local / base, 1 / local], rtol=1e-6)
    np.testing.assert_allclose(x[0], [0.5, 1.0, 1.0, 0.9, 0.5 / 0.9, 1 / 0.9, 1 / 0.9, 0.5],
                               rtol=1e-6)


def test_mapped_features_keep_the_input_order_of_a_double_annotation():
    """Two beats at 2 s (a double annotation), given in descending time order: as the segment
    stage's stable sort, the one listed first takes the earlier place, so its rr_post is the
    0 s interval (invalid: its local mean 1 s) and the other's rr_post is 1.2 s."""
    times = np.array([4.2, 3.2, 2.0, 2.0, 1.0, 0.0])
    x = rhythm.mapped_beat_features(times, np.ones(6, bool), PARAMS)
    np.testing.assert_allclose(x[[2, 3]][:, [COL["rr_pre"], COL["rr_post"]]],
                               [[1.0, 1.0], [1.0, 1.2]], rtol=1e-6)


def test_feature_names_and_the_meta_json_description_per_label_mode():
    assert rhythm.feature_names("beat") == BEAT_FEATURES
    assert rhythm.feature_names("rhythm") == rhythm.feature_names("record") == WINDOW_FEATURES
    params = {"beat_labels": "configs/labels/aami.yaml", "local_beats": 10, "baseline_s": 300.0,
              "min_rr_s": 0.2, "max_rr_s": 3.0, "fallback_rr_s": 0.8}
    definition = "data_prep/beats/rhythm.py: seconds for rr_* intervals, ratios unitless"
    for mode, features, beats_from in (("beat", BEAT_FEATURES, "annotations"),
                                       ("rhythm", WINDOW_FEATURES, "annotations"),
                                       ("record", WINDOW_FEATURES, "detector (XQRS)")):
        assert rhythm.describe(mode, PARAMS) == {
            "features": list(features), "status_column": "rr_status", "beats_from": beats_from,
            "params": params, "definition": definition}
