"""Evaluation figures (PNG) and the CSV tables behind DVC's plot templates.

Figures are built with `matplotlib.figure.Figure` rather than pyplot: no global figure
state, nothing to close, and PNGs render with the Agg canvas on headless machines. Every
file is written atomically (`layout.atomic_path`), so an interrupted stage leaves no
half-written plot for DVC to cache.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

from data_prep.layout import atomic_path
from pipeline.evaluation.metrics import Evaluation, row_normalise

log = logging.getLogger(__name__)

DPI = 120


def save_figure(fig: Figure, path: Path) -> Path:
    """Writes `fig` as a PNG atomically and returns the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def confusion_matrix_png(counts: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Confusion matrix side by side as counts and row-normalised (recall per true class).

    A class with no true segments has an empty row; its normalised cells read "nan".
    """
    size = 2.5 + 0.6 * len(class_names)
    fig = Figure(figsize=(2 * size + 1, size))
    ax_counts, ax_norm = fig.subplots(1, 2)
    labels = list(class_names)
    ConfusionMatrixDisplay(np.asarray(counts), display_labels=labels).plot(
        ax=ax_counts, values_format="d", cmap="Blues", colorbar=False
    )
    ax_counts.set_title("counts")
    normalised = row_normalise(np.asarray(counts))
    # sklearn's cell text assumes finite values (NaN breaks its text-colour threshold), so
    # the normalised cells are annotated here, "n/a" for a class with no true segments.
    ConfusionMatrixDisplay(normalised, display_labels=labels).plot(
        ax=ax_norm, include_values=False, cmap="Blues", colorbar=False,
        im_kw={"vmin": 0, "vmax": 1},
    )
    for (row, col), value in np.ndenumerate(normalised):
        text = "n/a" if np.isnan(value) else f"{value:.2f}"
        colour = "white" if value > 0.5 else "black"
        ax_norm.text(col, row, text, ha="center", va="center", color=colour)
    ax_norm.set_title("row-normalised (sensitivity on the diagonal)")
    return save_figure(fig, path)


def roc_png(points: pd.DataFrame, auc: Mapping[str, float], path: Path) -> Path:
    """One-vs-rest ROC curves, one line per class, AUC in the legend."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for i, (name, curve) in enumerate(points.groupby("class", sort=False)):
        RocCurveDisplay(fpr=curve.fpr.to_numpy(), tpr=curve.tpr.to_numpy(),
                        roc_auc=_finite(auc.get(str(name))), name=str(name)).plot(
            ax=ax, plot_chance_level=i == 0
        )
    ax.set_title("ROC, one class vs rest")
    return save_figure(fig, path)


def pr_png(points: pd.DataFrame, ap: Mapping[str, float], path: Path) -> Path:
    """One-vs-rest precision-recall curves, average precision in the legend."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for name, curve in points.groupby("class", sort=False):
        PrecisionRecallDisplay(precision=curve.precision.to_numpy(),
                               recall=curve.recall.to_numpy(),
                               average_precision=_finite(ap.get(str(name))), name=str(name)).plot(
            ax=ax
        )
    ax.set_title("precision-recall, one class vs rest")
    return save_figure(fig, path)


def reliability_png(bins: pd.DataFrame, ece: float, path: Path) -> Path:
    """Reliability diagram (accuracy per confidence bin vs the diagonal) over bin counts.

    Hand-drawn bars: sklearn's `CalibrationDisplay` is binary and draws no bin counts.
    """
    fig = Figure(figsize=(5.5, 6.5))
    ax, ax_count = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    width = (bins.upper - bins.lower).to_numpy()
    ax.bar(bins.lower, bins.accuracy.fillna(0), width=width, align="edge",
           edgecolor="black", label="accuracy")
    ax.bar(bins.lower, bins.gap.fillna(0), bottom=bins.confidence.fillna(0), width=width,
           align="edge", fill=False, edgecolor="red", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(ylabel="accuracy", title=f"reliability (top label), ECE = {ece:.3f}", ylim=(0, 1))
    ax.legend(loc="upper left")
    ax_count.bar(bins.lower, bins["count"], width=width, align="edge", edgecolor="black")
    ax_count.set(xlabel="confidence", ylabel="segments", yscale="log", xlim=(0, 1))
    return save_figure(fig, path)


def confusion_csv(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], path: Path
) -> Path:
    """One row per segment (columns actual, predicted) for DVC's `confusion` templates."""
    names = np.asarray(class_names)
    table = pd.DataFrame(
        {"actual": names[np.asarray(y_true)], "predicted": names[np.asarray(y_pred)]}
    )
    return table_csv(table, path)


def table_csv(table: pd.DataFrame, path: Path) -> Path:
    """Writes a table (ROC/PR points, per-record results, bins) as CSV atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def write_all(
    evaluation: Evaluation, y_true: np.ndarray, y_pred: np.ndarray, folder: Path
) -> dict[str, Path]:
    """Writes every figure and table of one evaluation into `folder`; returns them by name."""
    ev, folder = evaluation, Path(folder)
    per_class = ev.per_class
    paths = {
        "confusion_matrix": confusion_matrix_png(ev.counts, ev.class_names,
                                                 folder / "confusion_matrix.png"),
        "roc": roc_png(ev.roc, per_class.auc.to_dict(), folder / "roc.png"),
        "pr": pr_png(ev.pr, per_class.ap.to_dict(), folder / "pr.png"),
        "reliability": reliability_png(ev.reliability, ev.summary["ece"],
                                       folder / "reliability.png"),
        "confusion_csv": confusion_csv(y_true, y_pred, ev.class_names, folder / "confusion.csv"),
        "roc_csv": table_csv(ev.roc, folder / "roc.csv"),
        "pr_csv": table_csv(ev.pr, folder / "pr.csv"),
        "reliability_csv": table_csv(ev.reliability, folder / "reliability.csv"),
        "per_record_csv": table_csv(ev.per_record, folder / "per_record.csv"),
        "per_class_csv": table_csv(ev.per_class.reset_index(), folder / "per_class.csv"),
    }
    log.info("wrote %d plots and tables to %s", len(paths), folder)
    return paths


def _finite(value: float | None) -> float | None:
    """sklearn displays print "nan" in legends; None leaves the AUC out instead."""
    return None if value is None or not np.isfinite(value) else float(value)
