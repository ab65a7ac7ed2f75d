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
