"""Heads fitted over patient-grouped folds of the training patients, and their ensemble.

Validation on a handful of held-out patients misses whole classes (mitdb's default val fold of
the old single split had no F beat), so model selection was blind to them. The split stage now
puts the training patients into folds whose validation each holds every class
(`data_prep.beats.folds`). With `train.fold_ensemble`, one head is fitted per fold, on the other
folds' patients, and early-stopped on its own fold; the model averages the heads'
probabilities (`fusion.HeadEnsemble`). Every training beat is then predicted once by a head
that never saw its patient: these out-of-fold predictions are the run's validation result, over
all training patients rather than a few.

`calibrate_bias` fits a per-class log-prior shift on out-of-fold predictions (coordinate
search maximising the selection macro-F1): the class balance of a new patient population
differs from training, and a weighted loss only roughly corrects it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

BIAS_GRID = np.linspace(-4.0, 4.0, 33)  # log-prior shifts tried per class, 0.25 apart


@dataclass(frozen=True)
class Fold:
    """One fit: its name (for checkpoints and logs) and its train / validation rows."""

    name: str
    train: np.ndarray  # positions in the trainval frame
    val: np.ndarray


def make_folds(frame: pd.DataFrame, ensemble: bool) -> list[Fold]:
    """The fits of one run over the train+val rows of `frame` (columns split, fold).

    ensemble: one fit per fold (fold f validates, the others train); else one fit with the
    assignment's train / val split. Rows of patients in no fold (fold -1: they also have a test
    record) always train.
    """
    split = frame["split"].to_numpy()
    if not ensemble or "fold" not in frame.columns:
        return [Fold("single", np.flatnonzero(split == "train"), np.flatnonzero(split == "val"))]
    fold = frame["fold"].to_numpy()
    names = sorted(int(f) for f in set(fold) if f >= 0)
    if len(names) < 2:
        raise ValueError("train.fold_ensemble needs at least 2 folds in assignment.csv; "
                         "set split.folds >= 2 (dvc repro split) or fold_ensemble: false")
    return [Fold(f"fold{f}", np.flatnonzero(fold != f), np.flatnonzero(fold == f))
            for f in names]


def out_of_fold(folds: list[Fold], probs: list[np.ndarray], n: int) -> np.ndarray:
    """(n, K) probabilities: each validation row from the fit that held it out."""
    out = np.full((n, probs[0].shape[1]), np.nan, dtype=np.float32)
    for fold, p in zip(folds, probs, strict=True):
        out[fold.val] = p
    return out


def macro_f1(targets: np.ndarray, logp: np.ndarray, select: list[int]) -> float:
    return float(f1_score(targets, logp.argmax(1), labels=select, average="macro",
                          zero_division=0))


def class_f1(targets: np.ndarray, predicted: np.ndarray, select: list[int]) -> list[float]:
    """F1 of each class of `select`, in that order (0 for a class never predicted nor held)."""
    return [float(v) for v in f1_score(targets, predicted, labels=select, average=None,
                                       zero_division=0)]


def calibrate_bias(probs: np.ndarray, targets: np.ndarray, select: list[int],
                   rounds: int = 3) -> np.ndarray:
    """Per-class log-prior shifts (K,) that maximise macro-F1 over `select` on `probs`.

    Coordinate search over BIAS_GRID, a few rounds; classes outside `select` keep 0. Ties keep
    the smaller shift, so an uninformative class is not moved.
    """
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    bias = np.zeros(probs.shape[1])
    best = macro_f1(targets, logp, select)
    for _ in range(rounds):
        for c in select:
            for value in sorted(BIAS_GRID, key=abs):
                trial = bias.copy()
                trial[c] = value
                score = macro_f1(targets, logp + trial, select)
                if score > best + 1e-9:
                    best, bias = score, trial
    return bias


def calibration_gain(probs: np.ndarray, targets: np.ndarray, groups: np.ndarray,
                     select: list[int]) -> dict[str, float]:
    """Honest estimate of what calibration adds: fitted on half the patients, scored on the
    other half, both ways. Returns the mean macro-F1 without and with the fitted bias."""
    names = np.unique(groups)
    if names.size < 2:  # nothing to hold out: no honest estimate
        return {}
    half = np.isin(groups, names[::2])
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    plain, calibrated = [], []
    for fit_on in (half, ~half):
        bias = calibrate_bias(probs[fit_on], targets[fit_on], select)
        plain.append(macro_f1(targets[~fit_on], logp[~fit_on], select))
        calibrated.append(macro_f1(targets[~fit_on], logp[~fit_on] + bias, select))
    return {"uncalibrated": float(np.mean(plain)), "calibrated": float(np.mean(calibrated))}
