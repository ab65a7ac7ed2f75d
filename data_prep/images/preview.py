"""Pictures of the spectrogram images for people: a grid per class, optional PNG per image.

Grey images are shown grey; three-channel images (multires, two_lead) as RGB, channel 0 red.

Used by the spectrogram stage; reads finished shards, so previews never slow the workers.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.layout import atomic_path, load_shard

PREVIEW_SEED = 0  # fixed: the same tiles in every run, so previews diff cleanly


def safe_name(label: str) -> str:
    """A label as a file or folder name (rhythm labels may hold '(' or '/')."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", label) or "_"


def picture(image: np.ndarray) -> np.ndarray:
    """An image as PIL/matplotlib take it: grey (S, S) as is, channels (3, S, S) as RGB."""
    return image if image.ndim == 2 else np.moveaxis(image, 0, -1)


def write_pngs(folder: Path, record: str, images: np.ndarray,
               names: tuple[tuple[str, int], ...]) -> None:
    """One PNG per image as <folder>/<label>/<record>_<sample>.png (label, sample per row)."""
    from PIL import Image  # optional path

    for image, (label, sample) in zip(images, names, strict=True):
        target = folder / safe_name(label)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture(image)).save(target / f"{record}_{sample}.png")


def write_previews(out: Path, subdir: str, index: pd.DataFrame, classes: list[str],
                   extents: tuple[tuple[float, float], tuple[float, float]],
                   per_class: int) -> dict[str, str]:
    """A seeded grid of up to `per_class` images per class; returns class -> relative path.

    Args:
        out: Stage folder holding the shards; grids go to <out>/<subdir>/<class>.png.
        extents: ((first, last) column time in s, (bottom, top) row frequency in Hz).
    """
    written = {}
    for cls in classes:
        rows = index[index["label"] == cls]
        if rows.empty or per_class == 0:
            continue
        rng = np.random.default_rng(PREVIEW_SEED)  # per class: independent of other classes
        pick = np.sort(rng.choice(len(rows), size=min(per_class, len(rows)), replace=False))
        tiles = rows.iloc[pick]
        images = [load_shard(out, t.record)[t.row] for t in tiles.itertuples()]
        name = f"{subdir}/{safe_name(cls)}.png"
        _grid(out / name, cls, tiles, images, extents, total=len(rows))
        written[cls] = name
    return written


def _grid(path: Path, cls: str, tiles: pd.DataFrame, images: list[np.ndarray],
          extents: tuple[tuple[float, float], tuple[float, float]], total: int) -> None:
    """One class's grid PNG: tiles titled record/sample, time and frequency axes labelled."""
    from matplotlib.figure import Figure  # renders with Agg, no pyplot state

    k = len(images)
    ncols = math.ceil(math.sqrt(k))
    nrows = math.ceil(k / ncols)
    fig = Figure(figsize=(1.9 * ncols + 0.7, 1.9 * nrows + 0.9))
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    (t0, t1), (f0, f1) = extents
    height, width = images[0].shape[-2:]
    half_t = (t1 - t0) / (width - 1) / 2  # extent is pixel edges, not centres
    half_f = (f1 - f0) / (height - 1) / 2
    for ax, image, tile in zip(axes.flat, images, tiles.itertuples(), strict=False):
        ax.imshow(picture(image), cmap="gray", vmin=0, vmax=255, aspect="auto",
                  interpolation="nearest",
                  extent=(t0 - half_t, t1 + half_t, f0 - half_f, f1 + half_f))
        ax.set_title(f"{tile.record}/{tile.sample}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[k:]:
        ax.set_axis_off()
    # Fixed ticks on the shared axes: auto-locating ticks on every tile was most of the time.
    axes[0, 0].set_xticks([t for t in np.arange(0, t1 + 1e-9, 0.5 if t1 <= 4 else 2) if t >= t0])
    axes[0, 0].set_yticks([f for f in np.arange(0, f1 + 1e-9, 10 if f1 <= 60 else 50) if f >= f0])
    for col in range(ncols):  # x labels on the lowest filled tile of each column
        ax = axes[(k - 1 - col) // ncols, col] if col < k else None
        if ax is not None:
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("time (s)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("frequency (Hz)", fontsize=8)
    fig.suptitle(f"class {cls}: {k} of {total} images (record/sample, seeded choice)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
