"""Stage `split`: assigns every record, whole subjects at a time, to train, val or test.

Reads `dataset.name` and the `split:` section of params.yaml, `<segments>/index.csv` (one row
per segment: record, row, sample, label, symbol), `<segments>/meta.json` (ordered `classes`)
and `configs/databases/<db>.yaml` (`subjects`: record -> subject; `exclude`; named `splits`).

A named definition (e.g. mitdb `de_chazal`) fixes the test records; validation subjects are
drawn from its `trainval` subjects only, by a seeded, class-stratified, subject-grouped split
(`StratifiedGroupKFold`, one fold held out). Subjects that also have a record in test stay in
train, so model selection never sees a test subject. `random` draws test subjects the same
way first. Then no subject may be in two splits: the check is explicit, and fails unless the
definition lists the subject under `shared_subjects_allowed` (the published de Chazal lists
put 201 and 202, one patient, on both sides), in which case the summary carries a warning.

Writes `<out>/assignment.csv` (record, subject, split) and `<out>/summary.json` (records,
subjects and class counts per split, leakage check, records left out and why).

Run: `python -m data_prep.split --params params.yaml --segments data/segments --out data/splits`
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from sklearn.model_selection import StratifiedGroupKFold

from data_prep.configs import (
    DATABASES_DIR,
    NO_CONFIG_WARNING,
    DatabaseConfig,
    SplitDefinition,
    load_database,
)
from data_prep.layout import (
    ASSIGNMENT,
    ASSIGNMENT_COLUMNS,
    INDEX,
    META,
    SPLITS,
    SUMMARY,
    read_index,
    read_json,
    write_index,
    write_json,
)
from data_prep.params import (
    DEFAULT_PARAMS,
    DatasetParams,
    StrictModel,
    parse_section,
    read_yaml,
)
from data_prep.split_checks import check_leakage, summarise

log = logging.getLogger(__name__)

RANDOM = "random"

class SplitParams(StrictModel):
    """The `split:` section of params.yaml (see the comments there)."""

    definition: str
    folds: int = Field(ge=2)
    val_fold: int = Field(ge=0)
    require_in_val: list[str]
    test_fraction: float = Field(gt=0, lt=1)
    seed: int

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        if self.val_fold >= self.folds:
            raise ValueError(f"val_fold {self.val_fold} must be < folds {self.folds}")
        return self


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


def assign(
    index: pd.DataFrame, config: DatabaseConfig, params: SplitParams
) -> tuple[pd.DataFrame, dict[str, str], list[str]]:
    """Assigns each record of the index to a split.

    Returns:
        The assignment (record, subject, split), the records left out with the reason, and
        the definition's records absent from the index.

    Raises:
        ValueError: unknown definition, or a record in both trainval and test.
    """
    name = params.definition
    records = sorted(index.record.unique())
    subject = {r: config.subjects.get(r, r) for r in records}
    rows = index.assign(subject=index.record.map(subject))
    if name == RANDOM:
        left_out = {r: f"excluded: {config.exclude[r]}" for r in records if r in config.exclude}
        rows = rows[~rows.record.isin(left_out)]
        test = holdout_subjects(rows.label, rows.subject, params.test_fraction, params.seed)
        test_records = set(rows.record[rows.subject.isin(test)])
        trainval, absent = sorted(set(rows.record) - test_records), []
    else:
        definition = _definition(config, name)
        clash = sorted(set(definition.trainval) & set(definition.test))
        if clash:
            raise ValueError(f"split '{name}': records {clash} are in both trainval and test")
        listed = set(definition.trainval) | set(definition.test)
        left_out = {r: config.exclude.get(r, f"in neither trainval nor test of '{name}'")
                    for r in records if r not in listed}
        test_records = set(definition.test) & set(records)
        trainval = [r for r in records if r in set(definition.trainval)]
        absent = sorted(listed - set(records))
    pool = rows[rows.record.isin(trainval)]
    locked = frozenset(subject[r] for r in test_records)  # shared with test: never validated on
    fold_of = assign_folds(pool.label, pool.subject, params.folds, params.seed,
                           params.require_in_val, locked)
    fold = {r: -1 if r in test_records else fold_of.get(subject[r], -1)
            for r in test_records | set(trainval)}
    split = {r: "test" if r in test_records else "val" if f == params.val_fold else "train"
             for r, f in fold.items()}
    ordered = sorted(split.items(), key=lambda item: (SPLITS.index(item[1]), item[0]))
    assignment = pd.DataFrame([(r, subject[r], s, fold[r]) for r, s in ordered],
                              columns=list(ASSIGNMENT_COLUMNS))
    return assignment, left_out, absent


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


def _definition(config: DatabaseConfig, name: str) -> SplitDefinition:
    if name not in config.splits:
        available = [*config.splits, RANDOM, "default"]
        raise ValueError(
            f"split.definition '{name}' unknown; available: {available} (named splits live "
            "under `splits:` in configs/databases/<db>.yaml). Fix split.definition in params.yaml."
        )
    return config.splits[name]


def run(dataset: DatasetParams, params: SplitParams, segments: Path, out: Path,
        config_dir: Path = DATABASES_DIR) -> dict:
    """Splits the segments' records, writes assignment.csv and summary.json, returns the summary."""
    index = read_index(segments / INDEX)
    classes = list(read_json(segments / META)["classes"])
    unknown = sorted(set(index.label) - set(classes))
    if unknown:
        raise ValueError(f"{segments / INDEX}: labels {unknown} not in meta.json classes "
                         f"{classes}; re-run the segment stage")
    config = load_database(dataset.name, config_dir)
    if (definition := config.resolve_split(params.definition)) != params.definition:
        log.info("split.definition '%s' -> '%s'", params.definition, definition)
        params = params.model_copy(update={"definition": definition})
    assignment, left_out, absent = assign(index, config, params)
    named = config.splits.get(params.definition)  # None for "random"
    leakage = check_leakage(assignment, named.shared_subjects_allowed if named else {})
    if left_out:
        log.info("left out: %s", left_out)
    if absent:
        log.warning("%d records of '%s' are not in the index: %s", len(absent), params.definition,
                    absent)
    summary = {"definition": params.definition, "seed": params.seed,
               **summarise(index, assignment, classes), "leakage": leakage,
               "left_out": left_out, "not_in_index": absent}
    if not config.configured:  # said again where people read the split: its summary
        summary["warnings"] = [NO_CONFIG_WARNING.format(path=config_dir / f"{dataset.name}.yaml")]
        log.warning(summary["warnings"][0])
    write_index(out / ASSIGNMENT, assignment)
    write_json(out / SUMMARY, summary)
    for name in SPLITS:
        part = summary["splits"][name]
        log.info("%s: %d records, %d segments %s", name, len(part["records"]), part["total"],
                 part["counts"])
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml")
    parser.add_argument("--segments", type=Path, required=True, help="segment stage folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. data/splits")
    parser.add_argument("--configs", type=Path, default=DATABASES_DIR, help="database configs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = read_yaml(args.params)
    run(parse_section(data, "dataset", DatasetParams, str(args.params)),
        parse_section(data, "split", SplitParams, str(args.params)),
        args.segments, args.out, args.configs)


if __name__ == "__main__":
    main()
