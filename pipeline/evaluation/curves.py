"""Per-class curves and calibration of a classifier's probabilities (tables for the plots).

One-vs-rest ROC and precision-recall points (scikit-learn) for the classes present, and the
top-label reliability bins with the expected calibration error. Undefined values are NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)


def calibration(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> tuple[float, pd.DataFrame]:
    """Top-label expected calibration error and reliability-diagram bins.

    Hand-written because sklearn's `calibration_curve` is binary and drops empty bins
    without returning their counts, which the ECE weighting needs.

    Returns:
        ECE (sum over bins of |accuracy - confidence| weighted by the bin's share) and one
        row per bin: lower, upper, count, confidence, accuracy (NaN when empty), gap.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lower, upper]; a confidence of exactly 0 goes to the first bin.
    idx = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(idx, minlength=n_bins)
    mean_conf = safe_div(np.bincount(idx, confidence, n_bins), count)
    accuracy = safe_div(np.bincount(idx, correct, n_bins), count)
    gap = accuracy - mean_conf
    ece = float(np.nansum(count / max(len(y_true), 1) * np.abs(gap)))
    bins = pd.DataFrame(
        {"lower": edges[:-1], "upper": edges[1:], "count": count,
         "confidence": mean_conf, "accuracy": accuracy, "gap": gap}
    )
    return ece, bins


def roc_points(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """One-vs-rest ROC curve points per class present in y_true (class, fpr, tpr, threshold)."""
    frames = []
    for i, name in present_classes(y_true, class_names):
        fpr, tpr, thr = roc_curve(y_true == i, probs[:, i])
        frames.append(pd.DataFrame({"class": name, "fpr": fpr, "tpr": tpr, "threshold": thr}))
    return _concat(frames, ["class", "fpr", "tpr", "threshold"])


def pr_points(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """One-vs-rest precision-recall points per class present in y_true."""
    frames = []
    for i, name in present_classes(y_true, class_names):
        precision, recall, thr = precision_recall_curve(
            y_true == i, probs[:, i], drop_intermediate=True
        )
        # sklearn returns one threshold fewer than points (the last point has none).
        thr = np.append(thr, np.nan)
        frames.append(pd.DataFrame(
            {"class": name, "recall": recall, "precision": precision, "threshold": thr}
        ))
    return _concat(frames, ["class", "recall", "precision", "threshold"])


def present_classes(y_true: np.ndarray, class_names: Sequence[str]) -> list[tuple[int, str]]:
    present = set(np.unique(y_true).tolist())
    return [(i, name) for i, name in enumerate(class_names) if i in present]


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (undefined, not 0)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def auc_ap(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], notes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest ROC-AUC and average precision per class; NaN (with a note) if undefined.

    Per class rather than `roc_auc_score(multi_class="ovr")`, which fails outright when a
    class is missing from y_true (common: Q beats in a small test set).
    """
    auc, ap = np.full(len(class_names), np.nan), np.full(len(class_names), np.nan)
    present = dict(present_classes(y_true, class_names))
    for i, name in enumerate(class_names):
        if i not in present:
            notes.append(f"class {name}: no segments in y_true; Se, AUC and AP undefined (NaN)")
        elif present.keys() == {i}:
            notes.append(f"class {name}: the only class in y_true; AUC undefined (NaN)")
        else:
            auc[i] = roc_auc_score(y_true == i, probs[:, i])
            ap[i] = average_precision_score(y_true == i, probs[:, i])
    return auc, ap
