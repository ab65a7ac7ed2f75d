"""An evaluation's report folder (`reports/<run>/`, written by evaluate, read by export).

    predictions.csv        split,record,row,sample,label,pred,prob_<class>... (PREDICTIONS)
    headline.json          {split: a few headline numbers}, the DVC metrics file (HEADLINE)
    metrics.json           {split: metrics tree}, every metric and the caveats; not a DVC
                           metric, so `dvc metrics show` / `dvc exp show` stay narrow (METRICS)
    confusion_test.csv     actual,predicted per test image, DVC's confusion template (CONFUSION)
    details/               reports, figures, tables, evaluation_config.json, notes.md (DETAILS)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PREDICTIONS, METRICS, CONFUSION, DETAILS = (
    "predictions.csv", "metrics.json", "confusion_test.csv", "details")
HEADLINE = "headline.json"
CONFIG, NOTES = "evaluation_config.json", "notes.md"  # in details/
BASE_COLUMNS = ("split", "record", "row", "sample", "label", "pred")
FLOAT_FORMAT = "%.9g"  # 9 significant digits: every float32 survives the CSV round trip exactly


def predictions_frame(
    split: str, frame: pd.DataFrame, probs: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    """The predictions.csv rows of one split (columns `BASE_COLUMNS` then prob_<class>)."""
    table = frame[["record", "row", "sample", "label"]].reset_index(drop=True)
    table.insert(0, "split", split)
    table["pred"] = np.asarray(classes)[probs.argmax(axis=1)]
    probs = probs.astype(np.float32)
    for i, name in enumerate(classes):
        table[f"prob_{name}"] = probs[:, i]
    return table


def read_predictions(path: Path) -> pd.DataFrame:
    """predictions.csv with string records/labels and float32 probabilities, as written."""
    table = pd.read_csv(path, dtype={"split": str, "record": str, "label": str, "pred": str},
                        keep_default_na=False)
    probs = [c for c in table.columns if c.startswith("prob_")]
    return table.astype(dict.fromkeys(probs, np.float32))
