"""Metrics and report files of a predictions table: what evaluate writes into reports/<run>/.

The evaluate stage and the cross-database command (`pipeline.cross_evaluate`) both call these,
so a model scored on another database gets exactly the metrics, intervals, caveats, figures
and tables of its own test split. Torch-free (numpy, pandas, scikit-learn, matplotlib); the
folder's file names are `pipeline.evaluation.report_folder`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.layout import atomic_path, write_json
from pipeline.evaluation import plots, record_level
from pipeline.evaluation.headline import headline
from pipeline.evaluation.metrics import Evaluation, evaluate, nan_to_none
from pipeline.evaluation.report_folder import CONFUSION, DETAILS, HEADLINE, METRICS


def evaluate_predictions(
    predictions: pd.DataFrame, classes: list[str], n_boot: int, seed: int, unit: str = "record"
) -> dict[str, Evaluation]:
    """Every metric of each split in a predictions table (the pure core of the stage).

    Args:
        unit: the column whose values the bootstrap resamples (records, or subjects when one
            person gave several records); it is also the unit of the per-record table.
    """
    index = {c: i for i, c in enumerate(classes)}
    columns = [f"prob_{c}" for c in classes]
    results = {}
    for split, part in predictions.groupby("split", sort=False):
        probs = part[columns].to_numpy(dtype=np.float32)
        results[str(split)] = evaluate(part["label"].map(index).to_numpy(), probs, classes,
                                       part[unit].to_numpy(), n_boot=n_boot, seed=seed)
    return results


def write_reports(
    results: dict[str, Evaluation], predictions: pd.DataFrame, out: Path,
    available: dict[str, int], by_record: bool = False,
) -> dict:
    """Per split: classification reports, figures and tables; then metrics.json. `by_record`
    (record and rhythm modes) adds record-level results (`pipeline.evaluation.record_level`)."""
    metrics = {}
    for split, ev in results.items():
        part = predictions[predictions["split"] == split]
        index = {c: i for i, c in enumerate(ev.class_names)}
        y_true, y_pred = part["label"].map(index).to_numpy(), part["pred"].map(index).to_numpy()
        folder = out / DETAILS / split
        plots.write_all(ev, y_true, y_pred, folder)
        if split == "test":
            plots.confusion_csv(y_true, y_pred, ev.class_names, out / CONFUSION)
        for name, matrix in (("confusion_counts", ev.counts), ("confusion_normalised",
                                                                ev.normalised)):
            table = pd.DataFrame(matrix, index=pd.Index(ev.class_names, name="actual"),
                                 columns=ev.class_names)
            plots.table_csv(table.reset_index(), folder / f"{name}.csv")
        with atomic_path(out / DETAILS / f"classification_report_{split}.txt") as tmp:
            tmp.write_text(ev.report_text)
        write_json(out / DETAILS / f"classification_report_{split}.json",
                   nan_to_none(ev.report_dict))
        # a capped (quick-profile) evaluation must never pass for the full split's result
        metrics[split] = {**nan_to_none(ev.metrics_tree()), "subset": len(part) < available[split],
                          "n_available": available[split], "caveats": list(ev.notes)}
        if by_record:
            records = record_level.aggregate(part, ev.class_names)
            plots.table_csv(records, folder / "record_predictions.csv")
            metrics[split]["record_level"] = record_level.scores(records, ev.class_names)
    write_json(out / METRICS, metrics)
    write_json(out / HEADLINE, {split: nan_to_none(headline_of(tree, results[split].class_names))
                                for split, tree in metrics.items()})
    return metrics


def headline_of(tree: dict, classes: list[str]) -> dict:
    """`metrics.headline`, plus the record-level mean F1 in record and rhythm modes."""
    by_record = tree.get("record_level")
    return headline(tree, classes) | ({"record_mean_f1": by_record["mean_f1"]} if by_record else {})
