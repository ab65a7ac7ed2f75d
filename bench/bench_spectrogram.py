"""Benchmark: spectrogram images per second on one core, ours vs the tutorial recipe.

Ours: `data_prep.images.stft.spectrogram_images`, batched STFT -> uint8 arrays in memory.
Baseline, measured in the same run on the same segments: one matplotlib figure per segment
(`plt.specgram` with the same window, nperseg, noverlap and nfft, figure 224x224 px, band
limited to [fmin, fmax], axes off), `savefig` to a PNG in a temporary folder, `close`.
Both run in this single process. Prints a table and the ratio (target: ours >= 20x).

Run: python -m bench.bench_spectrogram [--n 4000] [--n-baseline 60]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend
import numpy as np
from scipy.signal import get_window

from data_prep.images.stft import SpectrogramParams, plan, spectrogram_images
from data_prep.params import load_section

log = logging.getLogger("bench.spectrogram")
FS = 250.0
WINDOW_S = 2.5  # mitdb beat windows: 1.25 s either side, 625 samples at 250 Hz


def ecg_like(n: int, seed: int = 0) -> np.ndarray:
    """(n, 625) float32 beat-centred windows: P, QRS, T bumps at ~60-100 bpm, some wide
    ventricular-like QRS, baseline wander and noise (roughly what the segment stage yields)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(WINDOW_S * FS)) / FS
    out = np.empty((n, t.size), np.float32)
    for i in range(n):
        rr = rng.uniform(0.6, 1.0)
        wide = rng.random() < 0.15
        x = 0.02 * rng.standard_normal(t.size)
        x += 0.05 * np.sin(2 * np.pi * 0.3 * t + rng.random() * 6)  # baseline wander
        for beat in (-2, -1, 0, 1, 2):
            c = WINDOW_S / 2 + beat * rr + rng.normal(0, 0.02)
            qrs_w = 0.04 if wide and beat == 0 else 0.012
            x += 1.2 * np.exp(-(((t - c) / qrs_w) ** 2))
            x += 0.15 * np.exp(-(((t - c + 0.18) / 0.03) ** 2))  # P wave
            x += 0.3 * np.exp(-(((t - c - 0.3) / 0.06) ** 2))  # T wave
        out[i] = x - x.mean()
    return out


def _timed(fn, *args) -> tuple[float, float]:
    """(wall, CPU) seconds. CPU time of this one process is the per-core cost, and it is
    less disturbed than wall time when other jobs share the machine's cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def ours(segments: np.ndarray, params: SpectrogramParams) -> None:
    images = spectrogram_images(segments, FS, params)
    assert images.shape == (len(segments), params.image_size, params.image_size)


def baseline(segments: np.ndarray, params: SpectrogramParams, folder: Path) -> None:
    """The usual tutorial recipe: one figure, specgram and PNG per segment."""
    size_in = params.image_size / 100  # inches at 100 dpi -> image_size pixels
    window = get_window(params.window, params.nperseg)
    for i, x in enumerate(segments):
        fig = plt.figure(figsize=(size_in, size_in), dpi=100)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.specgram(x, NFFT=params.nperseg, Fs=FS, noverlap=params.noverlap, pad_to=params.nfft,
                    window=window, cmap="gray")
        ax.set_ylim(params.fmin_hz, params.fmax_hz)
        ax.set_axis_off()
        fig.savefig(folder / f"{i}.png", dpi=100)
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_spectrogram", description=__doc__)
    parser.add_argument("--n", type=int, default=4000, help="segments for ours")
    parser.add_argument("--n-baseline", type=int, default=60, help="segments for the baseline")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = load_section("spectrogram", SpectrogramParams, args.params)
    segments = ecg_like(max(args.n, args.n_baseline))
    p = plan(params, FS, segments.shape[1])
    log.info("%d-sample segments at %g Hz -> %d STFT frames x %d bins -> %dx%d uint8",
             segments.shape[1], FS, p.frames, p.band.stop - p.band.start,
             params.image_size, params.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        baseline(segments[:2], params, Path(tmp))  # warm-up: imports, font cache
        ours(segments[:64], params)
        t_base = _timed(baseline, segments[:args.n_baseline], params, Path(tmp))
        png_kb = sum(f.stat().st_size for f in Path(tmp).glob("*.png")) / args.n_baseline / 1e3
    t_ours = _timed(ours, segments[:args.n], params)
    rows = [("baseline: plt.specgram + savefig PNG", args.n_baseline, *t_base),
            ("ours: spectrogram_images (uint8)", args.n, *t_ours)]
    log.info("\n%-38s %7s %8s %8s %12s %12s", "method (1 process)", "images", "wall s", "CPU s",
             "img/s wall", "img/s CPU")
    for name, n, wall, cpu in rows:
        log.info("%-38s %7d %8.2f %8.2f %12.1f %12.1f", name, n, wall, cpu, n / wall, n / cpu)
    ratio_wall = (args.n / t_ours[0]) / (args.n_baseline / t_base[0])
    ratio_cpu = (args.n / t_ours[1]) / (args.n_baseline / t_base[1])
    log.info("ratio ours/baseline: %.1fx per CPU second, %.1fx wall (target >= 20x); "
             "baseline PNG ~%.1f kB/image", ratio_cpu, ratio_wall, png_kb)


if __name__ == "__main__":
    main()
