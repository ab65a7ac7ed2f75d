"""Patient-grouped draws over a pool of subjects: a held-out share (test of a random split) and
the cross-validation folds of the training patients. Pure functions of (labels, subjects, seed)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

log = logging.getLogger(__name__)


def holdout_subjects(labels: pd.Series, subjects: pd.Series, fraction: float, seed: int,
                     locked: frozenset[str] = frozenset()) -> set[str]:
    """Picks about `fraction` of the segments, as whole subjects, with the class mix of the whole.

    Runs `StratifiedGroupKFold(n_splits=round(1/fraction), shuffle=True)` over the subjects
    not `locked` and keeps the fold whose class proportions are closest (L1) to the whole,
    preferring folds that leave every class present on the kept side.

    Args:
        labels: class of each segment.
        subjects: subject of each segment (aligned with `labels`).
        fraction: share to hold out.
        seed: shuffle seed.
        locked: subjects that must stay on the kept side.

    Returns:
        The held-out subjects.

    Raises:
        ValueError: fewer than two subjects can be drawn from.
    """
    free = ~subjects.isin(locked)
    y, groups = labels[free].to_numpy(), subjects[free].to_numpy()
    n_groups = len(set(groups))
    if n_groups < 2:
        raise ValueError(
            f"cannot hold out {fraction:.0%} of subjects: only {n_groups} subject(s) "
            f"{sorted(set(groups))} to draw from; add records to the split definition"
        )
    n_splits = min(max(2, round(1 / fraction)), n_groups)
    whole = labels.value_counts(normalize=True)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    best: tuple[tuple[bool, float], set[str]] | None = None
    with warnings.catch_warnings():  # rare classes (< n_splits members): handled below
        warnings.simplefilter("ignore", UserWarning)
        folds = [set(groups[held]) for _, held in cv.split(np.zeros(len(y)), y, groups)]
    for held in folds:
        out = subjects.isin(held)
        mix = labels[out].value_counts(normalize=True).reindex(whole.index, fill_value=0.0)
        key = (labels[~out].nunique() < len(whole), float((mix - whole).abs().sum()))
        if best is None or key < best[0]:
            best = (key, held)
    assert best is not None
    if best[0][0]:
        log.warning("no fold leaves every class on the kept side; held out %s", sorted(best[1]))
    return best[1]


def assign_folds(labels: pd.Series, subjects: pd.Series, k: int, seed: int,
                 required: list[str], locked: frozenset[str] = frozenset(),
                 tries: int = 30) -> dict[str, int]:
    """Puts the training subjects into `k` patient-grouped folds, each of which can validate.

    Model selection on a validation set without F beats cannot select for F. Among `tries`
    `StratifiedGroupKFold` draws (seeded from (seed, draw)) it keeps the one whose folds
    all hold every `required` class that the pool holds, with class mixes closest (L1) to the
    whole; with no such draw, the one missing the fewest (and says which). `locked` subjects
    (those that also have a test record) are in no fold (-1): they always train. Folds are
    numbered best first for a single validation fold: fold 0 leaves every class on the training
    side if any fold does (a class of one subject cannot be on both sides).

    Returns:
        subject -> fold (0..k-1, or -1 for locked subjects).

    Raises:
        ValueError: fewer than k subjects to spread over k folds.
    """
    free = ~subjects.isin(locked)
    y, groups = labels[free].to_numpy(), subjects[free].to_numpy()
    names = sorted(set(groups))
    if len(names) < k:
        raise ValueError(f"split.folds={k} needs at least {k} training subjects, found "
                         f"{len(names)} {names}; lower split.folds or add records")
    whole = labels[free].value_counts(normalize=True)
    needed = [c for c in required if c in set(y)]
    best: tuple[tuple[int, float], dict[str, int]] | None = None
    for draw in range(tries):
        state = int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=state)
        with warnings.catch_warnings():  # rare classes (< k members): scored below
            warnings.simplefilter("ignore", UserWarning)
            folds = [set(groups[held]) for _, held in cv.split(np.zeros(len(y)), y, groups)]
        scores = [_fold_score(labels[free], subjects[free].isin(held), needed, whole)
                  for held in folds]
        folds = [held for _, held in sorted(zip(scores, folds, strict=True),
                                            key=lambda pair: pair[0])]
        key = (sum(s[1] for s in scores), sum(s[2] for s in scores))
        if best is None or key < best[0]:
            best = (key, {s: f for f, held in enumerate(folds) for s in held})
    assert best is not None
    if best[0][0]:
        log.warning("no draw of %d folds puts every class of %s in each fold's validation "
                    "(%d class-fold gaps); macro-F1 misses those classes there", k, needed,
                    best[0][0])
    return {**dict.fromkeys(locked & set(subjects), -1), **best[1]}


def _fold_score(labels: pd.Series, held: pd.Series, needed: list[str],
                whole: pd.Series) -> tuple[int, int, float]:
    """(classes missing on the training side, required classes missing in validation, L1
    distance of the validation class mix from the whole): lower is a better validation fold."""
    kept, part = set(labels[~held]), labels[held]
    mix = part.value_counts(normalize=True).reindex(whole.index, fill_value=0.0)
    return (sum(c not in kept for c in whole.index), sum(c not in set(part) for c in needed),
            float((mix - whole).abs().sum()))
