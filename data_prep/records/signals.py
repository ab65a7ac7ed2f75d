"""Pure signal functions for the segment stage: lead choice, NaN handling, resampling, filtering
and window cutting. Arrays in, arrays out; no file I/O, no wfdb.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal as sps

FALLBACKS = ("first", "skip")


def choose_lead(
    sig_names: list[str | None] | tuple[str | None, ...], preferences: list[str], fallback: str
) -> tuple[int | None, bool]:
    """Picks the channel to use: the first name of `preferences` that the record has.

    Names match case-insensitively, ignoring surrounding spaces; a signal without a name
    (None) matches nothing. When none is present,
    `fallback` decides: "first" takes channel 0 (the caller counts it as a fallback), "skip"
    returns no channel so the caller skips the record.

    Returns:
        The channel index (None to skip) and whether the fallback was used.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"lead_fallback '{fallback}' unknown; use one of {FALLBACKS}")
    present = [(name or "").strip().casefold() for name in sig_names]
    for wanted in preferences:
        if wanted.strip() and wanted.strip().casefold() in present:
            return present.index(wanted.strip().casefold()), False
    if fallback == "first" and present:
        return 0, True
    return None, True


def rational_factor(fs_in: float, fs_out: float) -> tuple[int, int]:
    """Returns (up, down) with fs_out / fs_in = up / down in lowest terms.

    Rates like 128.0 or 1000/3 Hz arrive as floats; limiting the denominator recovers the
    intended fraction instead of a huge exact binary one.
    """
    ratio = Fraction(fs_out).limit_denominator(1000) / Fraction(fs_in).limit_denominator(1000)
    return ratio.numerator, ratio.denominator


def resampled_length(n_samples: int, fs_in: float, fs_out: float) -> int:
    """Number of samples `resample` returns for `n_samples` input samples."""
    up, down = rational_factor(fs_in, fs_out)
    return -(-n_samples * up // down)


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along axis 0; sample 0 keeps time 0 (no delay)."""
    up, down = rational_factor(fs_in, fs_out)
    if up == down:
        return np.asarray(x, dtype=np.float64)
    return sps.resample_poly(x, up, down, axis=0)


def map_samples(samples: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Maps sample indices at fs_in to the nearest index at fs_out (same time origin)."""
    up, down = rational_factor(fs_in, fs_out)
    return np.rint(np.asarray(samples, dtype=np.float64) * up / down).astype(np.int64)


def fill_nan(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolates NaN samples so that filters do not spread them.

    Returns:
        The filled signal and the boolean mask of the samples that were NaN.

    Raises:
        ValueError: every sample is NaN (nothing to interpolate from).
    """
    mask = np.isnan(x)
    if not mask.any():
        return x, mask
    if mask.all():
        raise ValueError("every sample is NaN")
    idx = np.arange(x.size)
    filled = x.copy()
    filled[mask] = np.interp(idx[mask], idx[~mask], x[~mask])
    return filled, mask


def resample_mask(mask: np.ndarray, fs_in: float, fs_out: float, n_out: int) -> np.ndarray:
    """Marks every output sample within one input sample of a masked input sample."""
    if not mask.any():
        return np.zeros(n_out, dtype=bool)
    t_out = np.arange(n_out) * (fs_in / fs_out)
    return np.interp(t_out, np.arange(mask.size), mask.astype(np.float64)) > 0


def bandpass(x: np.ndarray, fs: float, low_hz: float, high_hz: float, order: int) -> np.ndarray:
    """Zero-phase Butterworth band-pass (second-order sections, forward-backward)."""
    if not 0 < low_hz < high_hz < fs / 2:
        raise ValueError(f"band-pass {low_hz}-{high_hz} Hz needs 0 < low < high < fs/2 = {fs / 2}")
    sos = sps.butter(order, [low_hz, high_hz], btype="bandpass", fs=fs, output="sos")
    return sps.sosfiltfilt(sos, x, axis=0)


def condition(
    x: np.ndarray, fs_in: float, fs_out: float, band_hz: tuple[float, float], order: int
) -> tuple[np.ndarray, np.ndarray]:
    """NaN fill, resampling to fs_out and band-pass, as the segment stage applies them.

    Returns:
        The float32 signal at fs_out and the mask of its samples that derive from NaNs.
    """
    filled, nan_mask = fill_nan(np.asarray(x, dtype=np.float64))
    resampled = resample(filled, fs_in, fs_out)
    mask = resample_mask(nan_mask, fs_in, fs_out, resampled.shape[0])
    return bandpass(resampled, fs_out, *band_hz, order).astype(np.float32), mask


def window_starts(n_samples: int, length: int, stride: int) -> np.ndarray:
    """Starts of the fixed windows of `length` that fit in `n_samples`, every `stride`."""
    return np.arange(0, max(n_samples - length + 1, 0), stride, dtype=np.int64)


def inside(starts: np.ndarray, length: int, n_samples: int) -> np.ndarray:
    """Which windows [start, start + length) lie entirely inside the record."""
    starts = np.asarray(starts, dtype=np.int64)
    return (starts >= 0) & (starts + length <= n_samples)


def cut_windows(x: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts the windows [start, start + length) out of a 1-D signal, vectorised.

    Returns:
        The (n_kept, length) float32 windows and the boolean mask over `starts` of the windows
        kept; the others cross a record edge and were dropped.
    """
    kept = inside(starts, length, x.shape[0])
    if x.shape[0] < length:
        return np.empty((0, length), dtype=np.float32), kept
    view = sliding_window_view(np.asarray(x, dtype=np.float32), length)
    return view[np.asarray(starts, dtype=np.int64)[kept]], kept


def touches(mask: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Which in-record windows [start, start + length) contain a masked sample."""
    counts = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    starts = np.asarray(starts, dtype=np.int64)
    return counts[starts + length] - counts[starts] > 0
