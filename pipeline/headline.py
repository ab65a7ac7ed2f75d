"""The few numbers to compare runs by: each evaluation's headline.json (the DVC metrics file)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.metrics import CORE_CLASSES


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
