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
from pathlib import Path

import pandas as pd
from pydantic import Field, model_validator

from data_prep.beats.folds import assign_folds, holdout_subjects
from data_prep.cli import run_main
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
from data_prep.records.configs import (
    DATABASES_DIR,
    NO_CONFIG_WARNING,
    DatabaseConfig,
    SplitDefinition,
    load_database,
)

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


def _definition(config: DatabaseConfig, name: str) -> SplitDefinition:
    if name not in config.splits:
        available = [*config.splits, RANDOM, "default"]
        raise ValueError(
            f"split.definition '{name}' unknown; available: {available} (named splits live "
            "under `splits:` in configs/databases/<db>.yaml). Fix split.definition in params.yaml."
        )
    return config.splits[name]


def check_leakage(assignment: pd.DataFrame, allowed: dict[str, str]) -> dict:
    """Proves no subject is in two splits, except those the definition allows (with a warning).

    Raises:
        ValueError: a subject not allowed to be shared is in two splits; names its records.
    """
    per_subject = assignment.groupby("subject").split.nunique()
    shared = sorted(per_subject[per_subject > 1].index)

    def where(s: str) -> str:
        rows = assignment[assignment.subject == s]
        return f"subject {s} (" + ", ".join(f"{r}: {p}" for r, p in zip(rows.record, rows.split,
                                                                         strict=True)) + ")"

    leaks = [s for s in shared if s not in allowed]
    if leaks:
        raise ValueError(
            "patient leakage: " + "; ".join(map(where, leaks)) + " in more than one split. "
            "Fix the record lists of the split definition, or, only to reproduce a published "
            "protocol, list the subject under its shared_subjects_allowed with the reason."
        )
    result = {"checked": True, "patient_disjoint": not shared, "shared_subjects": shared,
              "allowed": {s: allowed[s] for s in shared}}
    if shared:
        result["warning"] = ("NOT patient-disjoint: " + "; ".join(map(where, shared)) +
                             " in two splits, allowed by the split definition (see 'allowed')")
        log.warning(result["warning"])
    return result


def summarise(index: pd.DataFrame, assignment: pd.DataFrame, classes: list[str]) -> dict:
    """Records, subjects and per-class segment counts of each split, and of train+val."""
    split_of = dict(zip(assignment.record, assignment.split, strict=True))
    labels = index.assign(split=index.record.map(split_of)).dropna(subset=["split"])

    def counts(mask: pd.Series) -> dict[str, int]:
        found = labels.label[mask].value_counts()
        return {c: int(found.get(c, 0)) for c in classes}

    splits = {}
    for name in SPLITS:
        part = assignment[assignment.split == name]
        n = counts(labels.split == name)
        splits[name] = {"records": list(part.record), "subjects": sorted(set(part.subject)),
                        "counts": n, "total": sum(n.values())}
    fold_of = dict(zip(assignment.record, assignment["fold"], strict=True))
    folds = {str(f): {"records": sorted(r for r, g in fold_of.items() if g == f),
                      "counts": counts(labels.record.map(fold_of) == f)}
             for f in sorted(set(fold_of.values())) if f >= 0}  # str keys, as in the JSON
    return {"splits": splits, "trainval_counts": counts(labels.split.isin(["train", "val"])),
            "folds": folds}


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
    run_main(main)
