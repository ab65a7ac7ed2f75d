"""Plots and DVC plot tables are written, non-empty and atomic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import metrics, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=600, p=[0.7, 0.2, 0.1])  # class Q (index 3) absent
    logits = rng.normal(size=(600, 4))
    logits[np.arange(600), y] += 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    records = np.repeat([f"r{i}" for i in range(6)], 100)
    ev = metrics.evaluate(y, probs, ["N", "S", "V", "Q"], records, n_boot=100)
    return ev, y, probs.argmax(axis=1)


def test_write_all_writes_every_file(case, tmp_path):
    ev, y, pred = case
    paths = plots.write_all(ev, y, pred, tmp_path / "reports")
    for name, path in paths.items():
        assert path.is_file() and path.stat().st_size > 0, name
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC, name
    leftovers = [p.name for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temporary files


def test_confusion_csv_is_one_row_per_segment(case, tmp_path):
    ev, y, pred = case
    path = plots.confusion_csv(y, pred, ev.class_names, tmp_path / "confusion.csv")
    table = pd.read_csv(path)
    assert list(table.columns) == ["actual", "predicted"] and len(table) == len(y)
    assert set(table.actual) <= {"N", "S", "V"}
    assert (table.actual == np.asarray(ev.class_names)[y]).all()


def test_curve_tables_round_trip(case, tmp_path):
    ev, _, _ = case
    roc = pd.read_csv(plots.table_csv(ev.roc, tmp_path / "roc.csv"))
    assert list(roc.columns) == ["class", "fpr", "tpr", "threshold"]
    assert set(roc["class"]) == {"N", "S", "V"}


def test_confusion_png_with_empty_row(tmp_path):
    counts = np.array([[5, 1], [0, 0]])  # second class has no true segments: NaN row
    path = plots.confusion_matrix_png(counts, ["N", "S"], tmp_path / "cm.png")
    assert path.read_bytes()[:8] == PNG_MAGIC

