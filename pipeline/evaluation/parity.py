"""The export stage's parity check: the ONNX bundle must reproduce evaluate's test probabilities.

Which test rows to check, their images and rhythm features as the data stages wrote them, and
the comparison that fails the export (naming the worst images) when the two disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.layout import INDEX, load_shard, read_index
from data_prep.layout import rhythm_matrix as data_rhythm


def parity_rows(predictions: pd.DataFrame, cap: int | None) -> pd.DataFrame:
    """The test rows to check: all, or `cap` spread evenly over them (so every record counts)."""
    test = predictions[predictions["split"] == "test"].reset_index(drop=True)
    if cap is None or len(test) <= cap:
        return test
    return test.iloc[np.linspace(0, len(test) - 1, cap).round().astype(int)].reset_index(drop=True)


def load_rhythm(spectrograms: Path, rows: pd.DataFrame, names: list[str]) -> np.ndarray:
    """float32 rhythm features (n, F) of (record, row) pairs, from the spectrogram index."""
    index = read_index(spectrograms / INDEX)
    joined = rows[["record", "row"]].merge(index, on=["record", "row"], how="left")
    return data_rhythm(joined, names, spectrograms / INDEX)


def load_images(spectrograms: Path, rows: pd.DataFrame) -> np.ndarray:
    """uint8 images (n, S, S) of (record, row) pairs, read from the spectrogram shards."""
    parts = np.empty(len(rows), dtype=object)
    for record, group in rows.groupby("record", sort=False):
        shard = load_shard(spectrograms, str(record))
        for i, image in zip(group.index, shard[group["row"].to_numpy()], strict=True):
            parts[i] = image
    return np.stack(parts.tolist()) if len(rows) else np.empty((0, 0, 0), dtype=np.uint8)


def check_parity(reference: pd.DataFrame, probs: np.ndarray, classes: list[str], atol: float,
                 source: Path) -> dict:
    """Compares ONNX probabilities with evaluate's; raises with the worst rows when off.

    Raises:
        ValueError: max |difference| > atol, naming the file, the worst images and the fixes.
    """
    expected = reference[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    diff = np.abs(probs.astype(np.float64) - expected)
    worst = float(diff.max()) if diff.size else 0.0
    agree = float(np.mean(probs.argmax(1) == expected.argmax(1))) if len(probs) else 1.0
    result = {"images": len(probs), "max_abs_diff": worst, "atol": atol, "argmax_agreement": agree}
    if worst > atol:
        order = np.argsort(-diff.max(axis=1))[:5]
        where = ", ".join(f"{reference['record'][i]} row {reference['row'][i]} "
                          f"({diff[i].max():.2e})" for i in order)
        raise ValueError(
            f"parity check failed: the ONNX bundle's test probabilities differ from {source} by "
            f"up to {worst:.3g} > export.parity_atol {atol:g} ({len(probs)} images; worst: "
            f"{where}). predictions.csv is stale or was edited (re-run dvc repro evaluate), or "
            "the model, spectrograms and report come from different runs.")
    return result
