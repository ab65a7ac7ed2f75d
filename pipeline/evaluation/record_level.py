"""Record-level results from window-level probabilities (label modes "record" and "rhythm").

Rule: a record's class probabilities are the mean of its windows' probabilities, and its
predicted class their argmax (ties: the first class in the label map's order). The mean is the
simplest rule that uses every window alike; a few confident noisy windows cannot flip a record
the way a vote on window argmaxes can tie or flicker. A record is scored only when all its
windows carry one label (always in record mode; in rhythm mode, a record whose rhythm changes
is left out and counted), as the challenge datasets label each record once.

Scores, as the PhysioNet/CinC challenges report them: per class F1 = 2 TP / (2 TP + FP + FN)
over records, and the challenge-style mean F1 over the classes present in the truth (the 2017
challenge averaged N, A and O only: its noise class counted as a class but not in the mean;
compute that from `per_class` when you need it). Plain numpy and pandas: the torch-free
`pipeline.predict` uses the same aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

RECORD_LABEL_MODES = ("record", "rhythm")


def aggregate(windows: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Mean window probabilities per record.

    Args:
        windows: one row per window with `record`, `prob_<class>` columns and, when known,
            `label` (the window's true class).
        classes: class names in probability-column order.

    Returns:
        One row per record (in order of first appearance): record, n_windows, prob_<class>
        (means), pred (argmax) and, with labels, label (the record's single label, or None when
        its windows disagree).
    """
    columns = [f"prob_{c}" for c in classes]
    grouped = windows.groupby("record", sort=False)
    table = grouped[columns].mean()
    table.insert(0, "n_windows", grouped.size())
    table["pred"] = np.asarray(classes)[table[columns].to_numpy().argmax(axis=1)]
    if "label" in windows:
        labels = grouped["label"].agg(lambda s: s.iloc[0] if s.nunique() == 1 else None)
        table["label"] = labels
    return table.reset_index()


def scores(records: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class F1 (with support, Se, +P) and the mean F1 over records with one label."""
    scored = records[records["label"].notna()]
    per_class: dict[str, dict[str, Any]] = {}
    for name in classes:
        truth, pred = scored["label"] == name, scored["pred"] == name
        tp, fp = int((truth & pred).sum()), int((~truth & pred).sum())
        fn = int((truth & ~pred).sum())
        per_class[name] = {"support": int(truth.sum()), "tp": tp, "fp": fp, "fn": fn,
                           "se": _ratio(tp, tp + fn), "ppv": _ratio(tp, tp + fp),
                           "f1": _ratio(2 * tp, 2 * tp + fp + fn)}
    present = [c for c in classes if per_class[c]["support"] > 0]
    f1s = [per_class[c]["f1"] for c in present]
    return {
        "rule": "mean of window probabilities per record, argmax",
        "n_records": len(scored),
        "mixed_label_records": int(records["label"].isna().sum()),
        "accuracy": _ratio(int((scored["label"] == scored["pred"]).sum()), len(scored)),
        "mean_f1": float(np.mean(f1s)) if f1s else None,
        "mean_f1_classes": present,
        **per_class,
    }


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None
