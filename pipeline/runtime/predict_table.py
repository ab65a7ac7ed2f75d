"""The table `pipeline.predict` returns: its columns, record-level problem rows and the check
that logs what was not classified (no torch, like predict)."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

BASE = ("record", "lead", "sample", "time_s", "beat_source", "symbol", "label", "status", "note",
        "pred")


def columns(classes: list[str]) -> list[str]:
    """The table's columns: BASE, then prob_<class> in class order."""
    return [*BASE, *(f"prob_{c}" for c in classes)]


def finish(table: pd.DataFrame, classes: list[str], label_mode: str) -> pd.DataFrame:
    """The classified rows of one record in column order; logs the rows left unclassified."""
    bad = Counter(table.loc[table["status"] != "ok", "status"])
    if bad:
        log.warning("record %s: %d of %d %s not classified (%s)", table["record"].iat[0],
                    sum(bad.values()), len(table), "beats" if label_mode == "beat" else
                    "windows", ", ".join(f"{k}: {n}" for k, n in bad.items()))
    return table.astype({"sample": "Int64"})[columns(classes)]


def problem(record: str, status: str, note: str, classes: list[str]) -> pd.DataFrame:
    """One record-level row: nothing of this record was classified (logged as a warning)."""
    log.warning("record %s not classified (%s): %s", record, status, note)
    row = {c: "" for c in BASE} | {"record": record, "status": status, "note": note,
                                   "sample": pd.NA, "time_s": np.nan}
    row |= {f"prob_{c}": np.float32(np.nan) for c in classes}
    return pd.DataFrame([row]).astype({"sample": "Int64"})[columns(classes)]
