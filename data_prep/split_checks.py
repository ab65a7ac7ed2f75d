"""What the split stage proves and reports about an assignment: no patient in two splits
(`check_leakage`) and the records, subjects and class counts of each split (`summarise`)."""

from __future__ import annotations

import logging

import pandas as pd

from data_prep.layout import SPLITS

log = logging.getLogger(__name__)


def check_leakage(assignment: pd.DataFrame, allowed: dict[str, str]) -> dict:
    """Proves no subject is in two splits, except those the definition allows (with a warning).

    Raises:
        ValueError: a subject not allowed to be shared is in two splits; names its records.
    """
    per_subject = assignment.groupby("subject").split.nunique()
    shared = sorted(per_subject[per_subject > 1].index)

    def where(s: str) -> str:
        rows = assignment[assignment.subject == s]
        return f"subject {s} (" + ", ".join(f"{r}: {p}" for r, p in zip(rows.record, rows.split,
                                                                         strict=True)) + ")"

    leaks = [s for s in shared if s not in allowed]
    if leaks:
        raise ValueError(
            "patient leakage: " + "; ".join(map(where, leaks)) + " in more than one split. "
            "Fix the record lists of the split definition, or, only to reproduce a published "
            "protocol, list the subject under its shared_subjects_allowed with the reason."
        )
    result = {"checked": True, "patient_disjoint": not shared, "shared_subjects": shared,
              "allowed": {s: allowed[s] for s in shared}}
    if shared:
        result["warning"] = ("NOT patient-disjoint: " + "; ".join(map(where, shared)) +
                             " in two splits, allowed by the split definition (see 'allowed')")
        log.warning(result["warning"])
    return result


def summarise(index: pd.DataFrame, assignment: pd.DataFrame, classes: list[str]) -> dict:
    """Records, subjects and per-class segment counts of each split, and of train+val."""
    split_of = dict(zip(assignment.record, assignment.split, strict=True))
    labels = index.assign(split=index.record.map(split_of)).dropna(subset=["split"])

    def counts(mask: pd.Series) -> dict[str, int]:
        found = labels.label[mask].value_counts()
        return {c: int(found.get(c, 0)) for c in classes}

    splits = {}
    for name in SPLITS:
        part = assignment[assignment.split == name]
        n = counts(labels.split == name)
        splits[name] = {"records": list(part.record), "subjects": sorted(set(part.subject)),
                        "counts": n, "total": sum(n.values())}
    fold_of = dict(zip(assignment.record, assignment["fold"], strict=True))
    folds = {int(f): {"records": sorted(r for r, g in fold_of.items() if g == f),
                      "counts": counts(labels.record.map(fold_of) == f)}
             for f in sorted(set(fold_of.values())) if f >= 0}
    return {"splits": splits, "trainval_counts": counts(labels.split.isin(["train", "val"])),
            "folds": folds}
