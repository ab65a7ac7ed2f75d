"""signals: lead choice, resampling and sample mapping, filtering, NaN handling, windows."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.records import signals
from tests.synthetic import ecg_like


def test_choose_lead_by_preference_then_fallback() -> None:
    prefs = ["MLII", "II", "ECG"]
    assert signals.choose_lead(["V1", "ii", "MLII"], prefs, "first") == (2, False)
    assert signals.choose_lead(["V1", " II "], prefs, "skip") == (1, False)
    assert signals.choose_lead(["V1", "V5"], prefs, "first") == (0, True)
    assert signals.choose_lead(["V1", "V5"], prefs, "skip") == (None, True)
    with pytest.raises(ValueError, match="lead_fallback"):
        signals.choose_lead(["V1"], prefs, "last")


@pytest.mark.parametrize(("fs_in", "fs_out", "factor"), [
    (360, 250, (25, 36)), (128, 250, (125, 64)), (500, 250, (1, 2)), (250, 250, (1, 1)),
    (257, 250, (250, 257)), (128.0, 360, (45, 16)), (1000 / 3, 250, (3, 4)),
])
def test_rational_factor(fs_in: float, fs_out: float, factor: tuple[int, int]) -> None:
    assert signals.rational_factor(fs_in, fs_out) == factor


@pytest.mark.parametrize("fs_in", [128, 250, 257, 360, 500])
def test_resampled_spikes_land_on_mapped_samples(fs_in: int) -> None:
    n = 20 * fs_in
    beats = np.arange(fs_in // 2, n, round(0.83 * fs_in))
    y = signals.resample(ecg_like(n, fs_in, beats), fs_in, 250)
    assert y.shape[0] == signals.resampled_length(n, fs_in, 250) == int(np.ceil(n * 250 / fs_in))
    mapped = signals.map_samples(beats, fs_in, 250)
    np.testing.assert_array_equal(mapped, np.rint(beats * 250 / fs_in).astype(int))
    peaks = np.array([m - 5 + np.argmax(y[m - 5 : m + 6]) for m in mapped])
    assert np.abs(peaks - mapped).max() <= 1


def test_bandpass_is_zero_phase_and_removes_out_of_band() -> None:
    fs, n = 250, 5000
    t = np.arange(n) / fs
    spikes = ecg_like(n, fs, [1000, 2500, 4000])
    x = spikes + 2.0 + np.sin(2 * np.pi * 0.1 * t) + 0.5 * np.sin(2 * np.pi * 60 * t)
    y = signals.bandpass(x, fs, 0.5, 40.0, 4)
    for beat in (1000, 2500, 4000):
        assert beat - 10 + np.argmax(y[beat - 10 : beat + 11]) == beat
    mains = signals.bandpass(0.5 * np.sin(2 * np.pi * 60 * t), fs, 0.5, 40.0, 4)
    assert np.abs(mains[500:-500]).max() < 0.05  # 60 Hz down by more than 20 dB
    assert abs(y[200:-200].mean()) < 0.01
    with pytest.raises(ValueError, match="fs/2"):
        signals.bandpass(x, 64, 0.5, 40.0, 4)


def test_fill_nan_interpolates_and_masks() -> None:
    x = np.array([0.0, np.nan, np.nan, 3.0, np.nan])
    filled, mask = signals.fill_nan(x)
    np.testing.assert_allclose(filled, [0, 1, 2, 3, 3])
    assert mask.tolist() == [False, True, True, False, True]
    with pytest.raises(ValueError, match="NaN"):
        signals.fill_nan(np.full(4, np.nan))


def test_condition_keeps_nans_from_spreading_and_marks_them() -> None:
    fs_in, n = 360, 3600
    x = ecg_like(n, fs_in, np.arange(180, n, 300))
    x[1000:1036] = np.nan  # 0.1 s
    y, mask = signals.condition(x, fs_in, 250, (0.5, 40.0), 4)
    assert y.dtype == np.float32 and y.shape == mask.shape == (2500,)
    assert np.isfinite(y).all()
    marked = np.flatnonzero(mask)
    assert marked.min() in (694, 695) and marked.max() in (719, 720)  # 1000..1035 * 250/360


def test_window_starts_and_inside() -> None:
    assert signals.window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert signals.window_starts(3, 4, 1).size == 0
    assert signals.inside(np.array([-1, 0, 6, 7]), 4, 10).tolist() == [False, True, True, False]


def test_cut_windows_vectorised_with_edges() -> None:
    x = np.arange(20, dtype=np.float64)
    starts = np.array([-1, 0, 5, 16, 17])
    windows, kept = signals.cut_windows(x, starts, 4)
    assert kept.tolist() == [False, True, True, True, False]
    assert windows.dtype == np.float32 and windows.shape == (3, 4)
    np.testing.assert_array_equal(windows, [x[0:4], x[5:9], x[16:20]])
    empty, kept = signals.cut_windows(x[:3], np.array([0]), 4)
    assert empty.shape == (0, 4) and not kept.any()


def test_touches_marks_windows_containing_masked_samples() -> None:
    mask = np.zeros(20, dtype=bool)
    mask[10] = True
    assert signals.touches(mask, np.array([0, 6, 7, 10, 11]), 4).tolist() == [
        False, False, True, True, False]
