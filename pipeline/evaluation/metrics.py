"""Evaluation metrics for segment-level classifiers, reported the way AAMI EC57 asks.

Pure functions: label and probability arrays in, dicts and DataFrames out. scikit-learn
computes the report, curves, AUCs and log-loss; the confusion-matrix rates are written out
here because they are also needed vectorised over bootstrap draws (see `_rates`).

Undefined values (0/0, a class absent from the test set) are NaN in arrays and tables and
`None` in JSON (`nan_to_none`), never 0. Confidence intervals resample whole records
(patients), not beats: beats of one patient are correlated, so a beat-level bootstrap gives
intervals that are far too narrow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    classification_report,
    log_loss,
)

from pipeline.evaluation.curves import auc_ap, calibration, pr_points, roc_points, safe_div

SUMMARY_STATS = ("accuracy", "macro_f1", "balanced_accuracy", "macro_f1_nsvf")
CLASS_STATS = ("se", "ppv", "f1")
# The field's headline average: N, S, V, F (Q has 7 test beats in mitdb's DS2, which estimate
# nothing; a 5-class macro-F1 is dominated by that noise). NaN when a database lacks them.
CORE_CLASSES = ("N", "S", "V", "F")
# Fewer test examples than this in a class: its Se/+P/F1 and intervals are flagged as unreliable
# (30: below it one example moves Se by more than 3 points and a bootstrap over a few records
# collapses to intervals like [0, 0]).
TINY_SUPPORT = 30


@dataclass
class Evaluation:
    """Everything computed for one split; see `evaluate` for the meaning of each field."""

    class_names: list[str]
    counts: np.ndarray
    normalised: np.ndarray
    summary: dict[str, float]
    per_class: pd.DataFrame
    per_record: pd.DataFrame
    report_text: str
    report_dict: dict[str, Any]
    roc: pd.DataFrame
    pr: pd.DataFrame
    reliability: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def metrics_tree(self) -> dict[str, Any]:
        """Summary scalars plus one sub-dict per class (`{"macro_f1": .., "S": {"se": ..}}`)."""
        tree: dict[str, Any] = {k: _scalar(v) for k, v in self.summary.items()}
        columns = self.per_class.to_dict(orient="dict")  # keeps each column's dtype
        for name in self.per_class.index:
            tree[str(name)] = {stat: _scalar(col[name]) for stat, col in columns.items()}
        return tree


def evaluate(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    records: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
    alpha: float = 0.05,
) -> Evaluation:
    """Computes every metric of one split from predicted class probabilities.

    Args:
        y_true: True class indices, shape (n,).
        probs: Class probabilities (softmax output), shape (n, K).
        class_names: K class names, in index order.
        records: Record (patient) of each segment, shape (n,); the bootstrap unit.
        n_boot: Bootstrap draws for the confidence intervals (0 disables them).
        seed: Seed of the bootstrap.
        n_bins: Equal-width confidence bins of the calibration error.
        alpha: 1 - confidence level of the intervals.

    Returns:
        The evaluation; `summary` holds accuracy, macro_f1, balanced_accuracy (each with
        `_ci_low`/`_ci_high`), macro_auc, ece, log_loss, n_segments, n_records; `per_class`
        holds support, predicted, tp, fp, fn, tn, se, ppv, fpr, f1, auc, ap and se/ppv CIs.
    """
    y_true, probs, records = _validate(y_true, probs, class_names, records)
    k = len(class_names)
    y_pred = probs.argmax(axis=1)
    record_names, codes = np.unique(records, return_inverse=True)
    per_record_cm = record_confusions(y_true, y_pred, codes, len(record_names), k)
    counts = per_record_cm.sum(axis=0)
    core = [list(class_names).index(c) for c in CORE_CLASSES if c in class_names]
    core = core if len(core) == len(CORE_CLASSES) else []
    rates = _rates(counts, core)
    notes: list[str] = []
    auc, ap = auc_ap(y_true, probs, class_names, notes)
    per_class = pd.DataFrame(
        {
            "support": counts.sum(axis=1), "predicted": counts.sum(axis=0),
            **{key: rates[key].astype(np.int64) for key in ("tp", "fp", "fn", "tn")},
            **{key: rates[key] for key in ("se", "ppv", "fpr", "f1")},
            "auc": auc, "ap": ap,
        },
        index=pd.Index(list(class_names), name="class"),
    )
    summary = {stat: float(rates[stat]) for stat in SUMMARY_STATS}
    summary["macro_auc"] = float(_nanmean(auc))
    ece, reliability = calibration(y_true, probs, n_bins)
    # Rows renormalised for log_loss only: float32 softmax sums to 1 within ~1e-7, which
    # sklearn warns about; ranking metrics keep the raw scores (renormalising breaks ties).
    unit = probs / probs.sum(axis=1, keepdims=True)
    summary |= {"ece": ece, "log_loss": float(log_loss(y_true, unit, labels=list(range(k))))}
    summary |= {"n_segments": len(y_true), "n_records": len(record_names)}
    if n_boot > 0:
        intervals = bootstrap_intervals(per_record_cm, n_boot, seed, alpha, core)
        for stat in SUMMARY_STATS:
            summary[f"{stat}_ci_low"], summary[f"{stat}_ci_high"] = map(float, intervals[stat])
        for stat in CLASS_STATS:
            per_class[f"{stat}_ci_low"], per_class[f"{stat}_ci_high"] = intervals[stat]
    notes += tiny_support_caveats(per_class["support"])
    text, report = _report(y_true, y_pred, class_names)
    if notes:  # the report people read first says what not to trust
        text += "\nCaveats:\n" + "".join(f"- {note}\n" for note in notes)
        report["caveats"] = list(notes)
    return Evaluation(
        class_names=list(class_names), counts=counts, normalised=row_normalise(counts),
        summary=summary, per_class=per_class,
        per_record=per_record_table(per_record_cm, record_names, class_names),
        report_text=text, report_dict=report, roc=roc_points(y_true, probs, class_names),
        pr=pr_points(y_true, probs, class_names), reliability=reliability, notes=notes,
    )


def tiny_support_caveats(support: pd.Series, limit: int = TINY_SUPPORT) -> list[str]:
    """A caveat for each class with 1 to `limit - 1` examples (0 has its own note)."""
    return [f"class {name}: only {int(n)} examples (< {limit}): its Se, +P, F1 and their "
            "intervals rest on too few examples to be reliable"
            for name, n in support.items() if 0 < n < limit]


def record_confusions(
    y_true: np.ndarray, y_pred: np.ndarray, codes: np.ndarray, n_records: int, k: int
) -> np.ndarray:
    """One K x K confusion matrix (rows true, columns predicted) per record, (R, K, K)."""
    flat = (codes * k + y_true) * k + y_pred
    return np.bincount(flat, minlength=n_records * k * k).reshape(n_records, k, k)


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Rows divided by their sums; a class with no segments keeps a NaN row.

    Written by hand because sklearn's `normalize="true"` turns empty rows into 0.
    """
    return safe_div(counts, counts.sum(axis=-1, keepdims=True))


def _rates(cm: np.ndarray, core: list[int] | None = None) -> dict[str, np.ndarray]:
    """EC57 rates from confusion matrices (..., K, K), vectorised over leading axes.

    Se = TP/(TP+FN), +P (ppv) = TP/(TP+FP), FPR = FP/(FP+TN), F1 = 2TP/(2TP+FP+FN).
    Macro-F1 and balanced accuracy average the defined classes, which matches sklearn's
    `zero_division=np.nan` (a class absent from y_true but predicted has F1 = 0 and counts).
    """
    cm = cm.astype(float)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    total = cm.sum(axis=(-2, -1))
    fp, fn = predicted - tp, support - tp
    tn = total[..., None] - tp - fp - fn
    se, f1 = safe_div(tp, support), safe_div(2 * tp, 2 * tp + fp + fn)
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn, "se": se, "ppv": safe_div(tp, predicted),
        "fpr": safe_div(fp, fp + tn), "f1": f1, "accuracy": safe_div(tp.sum(axis=-1), total),
        "macro_f1": _nanmean(f1, axis=-1), "balanced_accuracy": _nanmean(se, axis=-1),
        # N, S, V, F average (CORE_CLASSES; `core` their indices), NaN without them
        "macro_f1_nsvf": (_nanmean(f1[..., core], axis=-1) if core
                          else np.full(f1.shape[:-1], np.nan)),
    }


def bootstrap_intervals(
    per_record_cm: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
    core: list[int] | None = None,
) -> dict[str, np.ndarray]:
    """Percentile intervals from resampling records (patients) with replacement.

    Hand-written rather than `scipy.stats.bootstrap` or a loop over sklearn calls: each draw
    is a weighted sum of the precomputed per-record confusion matrices, so all draws are one
    matrix product and 1000 draws take milliseconds.

    Returns:
        For each of accuracy, macro_f1, balanced_accuracy: array [low, high]; for se and ppv:
        array (2, K). NaN where a rate is undefined in every draw.
    """
    n_records, k, _ = per_record_cm.shape
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_records, size=(n_boot, n_records))
    offsets = (np.arange(n_boot)[:, None] * n_records + draws).ravel()
    weights = np.bincount(offsets, minlength=n_boot * n_records).reshape(n_boot, n_records)
    cms = (weights @ per_record_cm.reshape(n_records, k * k)).reshape(n_boot, k, k)
    rates = _rates(cms, core or [])
    quantiles = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    with warnings.catch_warnings():  # all-NaN columns (class never seen) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            stat: np.nanpercentile(rates[stat], quantiles, axis=0)
            for stat in (*SUMMARY_STATS, *CLASS_STATS)
        }


def per_record_table(
    per_record_cm: np.ndarray, record_names: np.ndarray, class_names: Sequence[str]
) -> pd.DataFrame:
    """EC57-style per-record results: beats, true counts, accuracy, Se and +P per class."""
    rates = _rates(per_record_cm)
    table = pd.DataFrame({"record": record_names.astype(str), "n": per_record_cm.sum(axis=(1, 2))})
    support = per_record_cm.sum(axis=2)
    for i, name in enumerate(class_names):
        table[f"n_{name}"] = support[:, i]
    table["accuracy"] = rates["accuracy"]
    for i, name in enumerate(class_names):
        table[f"{name}_se"], table[f"{name}_ppv"] = rates["se"][:, i], rates["ppv"][:, i]
    return table


def flatten_metrics(tree: dict[str, Any], sep: str = "_", prefix: str = "") -> dict[str, Any]:
    """Flattens nested metrics: `{"test": {"S": {"se": x}}}` -> `{"test_S_se": x}`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat |= flatten_metrics(value, sep, name)
        else:
            flat[name] = value
    return flat


def nan_to_none(obj: Any) -> Any:
    """Makes metrics JSON-safe: NaN/inf -> None, numpy scalars and arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [nan_to_none(v) for v in obj]
    value = _scalar(obj)
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _validate(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], records: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true, probs, records = np.asarray(y_true), np.asarray(probs, float), np.asarray(records)
    k = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probs has shape {probs.shape}; expected (n, {k}), one column a class")
    if not len(y_true) == len(probs) == len(records):
        raise ValueError(
            f"lengths differ: y_true {len(y_true)}, probs {len(probs)}, records {len(records)}"
        )
    if len(y_true) == 0:
        raise ValueError("no segments to evaluate; check the split's test records")
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(f"y_true must hold class indices 0..{k - 1}")
    sums = probs.sum(axis=1)
    if not np.isfinite(probs).all() or probs.min() < 0 or np.abs(sums - 1).max() > 1e-3:
        raise ValueError("probs must be in [0, 1] with rows summing to 1; pass softmax outputs")
    return y_true.astype(np.int64), probs, records.astype(str)


def _report(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    kwargs = {"labels": list(range(len(class_names))), "target_names": list(class_names),
              "zero_division": np.nan}
    text = classification_report(y_true, y_pred, digits=3, **kwargs)
    return text, classification_report(y_true, y_pred, output_dict=True, **kwargs)


def _nanmean(values: np.ndarray, axis: int | None = None) -> Any:
    with warnings.catch_warnings():  # mean of nothing defined is NaN, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
