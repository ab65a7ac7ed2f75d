"""The few numbers to compare runs by: each evaluation's headline.json (the DVC metrics file)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.evaluation.metrics import CORE_CLASSES


def headline(tree: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """The few numbers to compare runs by (`dvc metrics show`, `dvc exp show`).

    AAMI classes: accuracy, the 4-class macro-F1 over N, S, V and F (the EC57 classes; Q, a
    handful of beats, would swing it; F1 from the full confusion, so a beat predicted Q is a
    miss), and Se, +P, F1 of S and V. Other label sets: accuracy, macro-F1 and each class's F1.
    """
    out: dict[str, Any] = {"accuracy": tree.get("accuracy")}
    if set(CORE_CLASSES) <= set(class_names):
        out |= {key: tree.get(key) for key in ("macro_f1_nsvf", "macro_f1_nsvf_ci_low",
                                                 "macro_f1_nsvf_ci_high")}
        for name in ("S", "V"):
            out |= {f"{name}_{stat}": tree[name][stat] for stat in ("se", "ppv", "f1")}
    else:
        out["macro_f1"] = tree.get("macro_f1")
        out |= {f"{name}_f1": tree[name]["f1"] for name in class_names}
    return out


def macro_f1_text(tree: dict[str, Any]) -> str:
    """The macro-F1 of a metrics tree for a log line, naming the classes it averages as
    headline.json does: "N/S/V/F macro-F1 0.6320 (over N/S/V/F/Q 0.5144)"."""
    classes = "/".join(k for k, v in tree.items() if isinstance(v, dict) and "f1" in v)
    every = f"macro-F1 over {classes} {tree['macro_f1']:.4f}"
    core = tree.get("macro_f1_nsvf")
    if core is None or core != core:  # None or NaN: not an AAMI label set
        return every
    return f"{'/'.join(CORE_CLASSES)} macro-F1 {core:.4f} (over {classes} {tree['macro_f1']:.4f})"
