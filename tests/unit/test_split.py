"""Stage `split` on synthetic segment indexes: subject grouping, leakage check, stratification."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from data_prep import split
from data_prep.beats import folds
from data_prep.layout import write_index, write_json
from data_prep.records.configs import load_database
from data_prep.split import DatasetParams, SplitParams, run
from tests.helpers import committed_params

CLASSES = ["N", "S", "V", "F", "Q"]
DB = "toydb"
TRAINVAL = [f"1{i:02d}" for i in range(12)] + ["201"]
TEST = [f"3{i:02d}" for i in range(6)] + ["202"]


def counts_for(record: str) -> dict[str, int]:
    """Mostly N, some S and V everywhere; F only in 105 and 300 (rare, one subject per side)."""
    n = 40 + 7 * (int(record) % 5)
    return {"N": n, "S": 3 + int(record) % 3, "V": 2 + int(record) % 4,
            "F": 5 if record in ("105", "300") else 0}


def make_segments(folder: Path, records: list[str], classes: list[str] = CLASSES,
                  counts: Callable[[str], dict[str, int]] = counts_for) -> pd.DataFrame:
    rows = [(r, label) for r in records for label, n in counts(r).items() for _ in range(n)]
    index = pd.DataFrame(rows, columns=["record", "label"])
    index.insert(1, "row", index.groupby("record").cumcount())
    index.insert(2, "sample", index.row * 300)
    index["symbol"] = index.label
    write_index(folder / "index.csv", index)
    write_json(folder / "meta.json", {"classes": classes})
    return index


def make_config(folder: Path, allowed: bool = True, **extra) -> Path:
    definition = {"trainval": TRAINVAL, "test": TEST}
    if allowed:
        definition["shared_subjects_allowed"] = {"201+202": "published lists"}
    config = {"name": DB, "subjects": {"201": "201+202", "202": "201+202"},
              "exclude": {"199": "paced"}, "splits": {"ds": definition}, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{DB}.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    make_segments(tmp_path / "segments", [*TRAINVAL, *TEST, "199", "400"])
    return {"segments": tmp_path / "segments", "configs": make_config(tmp_path / "configs"),
            "out": tmp_path / "splits"}


def split_(tree: dict[str, Path], definition: str = "ds", seed: int = 42, **kw) -> dict:
    params = SplitParams(definition=definition, folds=kw.pop("folds", 4), val_fold=0,
                         require_in_val=kw.pop("require", ["N", "S", "V", "F"]),
                         test_fraction=kw.pop("test", 0.25), seed=seed)
    return run(DatasetParams(name=DB), params, tree["segments"], tree["out"], tree["configs"])


def assignment(tree: dict[str, Path]) -> pd.DataFrame:
    return pd.read_csv(tree["out"] / "assignment.csv", dtype=str)


def records_of(frame: pd.DataFrame, name: str) -> set[str]:
    return set(frame.record[frame.split == name])


def test_named_definition_draws_val_from_trainval_only(tree) -> None:
    split_(tree)
    frame = assignment(tree)
    assert records_of(frame, "test") == set(TEST)
    assert records_of(frame, "train") | records_of(frame, "val") == set(TRAINVAL)
    assert records_of(frame, "val") and not records_of(frame, "val") & set(TEST)


def test_allowed_shared_subject_is_reported_with_a_warning(tree, caplog) -> None:
    summary = split_(tree)
    frame = assignment(tree)
    assert frame.set_index("record").loc[["201", "202"], "subject"].tolist() == ["201+202"] * 2
    # the subject shared with test stays in train: validation never sees a test patient
    for seed in range(8):
        split_(tree, seed=seed)
        assert assignment(tree).set_index("record").loc["201", "split"] == "train"
    leakage = summary["leakage"]
    assert leakage["checked"] is True and leakage["patient_disjoint"] is False
    assert leakage["shared_subjects"] == ["201+202"]
    assert leakage["allowed"] == {"201+202": "published lists"}
    assert "201: train" in leakage["warning"] and "202: test" in leakage["warning"]
    assert "NOT patient-disjoint" in caplog.text


def test_disallowed_overlap_raises_naming_subject_and_records(tmp_path, tree) -> None:
    tree["configs"] = make_config(tmp_path / "strict", allowed=False)
    with pytest.raises(ValueError, match=r"leakage: subject 201\+202 \(201: train, 202: test\)"):
        split_(tree)
    assert not (tree["out"] / "summary.json").exists()


@pytest.mark.parametrize("definition", ["ds", "random"])
@pytest.mark.parametrize("seed", range(6))
def test_no_subject_in_two_splits_except_allowed(tree, definition, seed) -> None:
    split_(tree, definition, seed=seed)
    per_subject = assignment(tree).groupby("subject").split.nunique()
    shared = set(per_subject[per_subject > 1].index)
    assert shared == ({"201+202"} if definition == "ds" else set())


@pytest.mark.parametrize("seed", range(8))
def test_stratification_keeps_every_class_in_train(tree, seed) -> None:
    # F lives in one trainval subject only (105): a fold holding it out would empty train of F
    summary = split_(tree, seed=seed)
    assert all(n > 0 for c, n in summary["splits"]["train"]["counts"].items() if c != "Q")
    assert "105" in summary["splits"]["train"]["records"]


def test_holdout_prefers_closest_class_mix() -> None:
    labels = pd.Series(["N"] * 60 + ["S"] * 20 + ["N"] * 20)
    subjects = pd.Series(["a"] * 20 + ["b"] * 20 + ["c"] * 20 + ["d"] * 20 + ["e"] * 20)
    # subject d is all S: holding it out alone would take every S out of train
    held = folds.holdout_subjects(labels, subjects, 0.2, seed=0)
    assert len(held) == 1 and "d" not in held


@pytest.mark.parametrize("seed", range(3))
def test_holdout_keeps_a_class_on_the_kept_side_over_a_closer_mix(seed) -> None:
    # c has the mix closest to the whole but holds the only F beat: it must stay in train
    spec = {"a": {"N": 90, "S": 10}, "b": {"N": 70, "S": 30}, "c": {"N": 80, "S": 20, "F": 1},
            "d": {"N": 85, "S": 15}, "e": {"N": 75, "S": 25}}
    rows = pd.DataFrame([(s, c) for s, mix in spec.items() for c, n in mix.items()
                         for _ in range(n)], columns=["subject", "label"])
    held = folds.holdout_subjects(rows.label, rows.subject, 0.2, seed=seed)
    assert len(held) == 1 and "c" not in held
    no_f = rows[rows.label != "F"]  # without F, c (mix equal to the whole) is the closest
    assert folds.holdout_subjects(no_f.label, no_f.subject, 0.2, seed=seed) == {"c"}
    # a locked subject (one with a test record) is never held out, however close its mix
    locked = folds.holdout_subjects(no_f.label, no_f.subject, 0.2, seed, frozenset({"c"}))
    assert len(locked) == 1 and "c" not in locked


def test_holdout_needs_two_subjects() -> None:
    with pytest.raises(ValueError, match=r"only 1 subject\(s\) \['a'\]"):
        folds.holdout_subjects(pd.Series(["N", "S"]), pd.Series(["a", "a"]), 0.2, seed=0)


def test_same_seed_same_split_other_seeds_differ(tree) -> None:
    split_(tree, seed=7)
    first = assignment(tree)
    split_(tree, seed=7)
    pd.testing.assert_frame_equal(first, assignment(tree))
    # the search keeps the best of its seeded draws (which may agree across seeds); single
    # draws must differ with the seed
    index = make_segments(tree["segments"], TRAINVAL)
    draws = {tuple(sorted(folds.assign_folds(index.label, index.record, 3, seed, ["N"],
                                             tries=1).items())) for seed in range(5)}
    assert len(draws) > 1


def test_every_fold_validates_every_class_it_can(tree) -> None:
    summary = split_(tree, folds=3, require=["N", "S", "V"])
    folds = summary["folds"]
    assert sorted(folds) == ["0", "1", "2"]  # JSON keys
    for fold in folds.values():
        assert all(fold["counts"][c] > 0 for c in ("N", "S", "V"))
    frame = assignment(tree)
    assert set(frame.fold[frame.split == "test"]) == {"-1"}
    assert set(frame.record[frame.fold == "0"]) == records_of(frame, "val")
    # patients stay whole: a subject's records share one fold
    trainval = frame[frame.split != "test"]
    assert (trainval.groupby("subject").fold.nunique() == 1).all()


def test_random_definition(tree) -> None:
    summary = split_(tree, "random", test=0.25)
    frame = assignment(tree)
    assert summary["left_out"] == {"199": "excluded: paced"}
    assert set(frame.record) == {*TRAINVAL, *TEST, "400"}
    assert all(records_of(frame, s) for s in split.SPLITS)
    # 201 and 202 are one subject: always on the same side
    assert frame.set_index("record").loc["201", "split"] == frame.set_index("record").loc["202",
                                                                                          "split"]
    total = sum(summary["splits"][s]["total"] for s in split.SPLITS)
    assert 0.1 < summary["splits"]["test"]["total"] / total < 0.4
    assert summary["leakage"]["patient_disjoint"] is True and "warning" not in summary["leakage"]


def test_unknown_definition_lists_available(tree) -> None:
    with pytest.raises(ValueError) as caught:
        split_(tree, "nope")
    assert str(caught.value) == (
        "split.definition 'nope' unknown; available: ['ds', 'random', 'default'] (named splits "
        "live under `splits:` in configs/databases/<db>.yaml). Fix split.definition in "
        "params.yaml.")


def test_record_in_both_lists_raises(tmp_path, tree) -> None:
    config = make_config(tmp_path / "bad")
    data = yaml.safe_load((config / f"{DB}.yaml").read_text())
    data["splits"]["ds"]["test"].append("100")
    (config / f"{DB}.yaml").write_text(yaml.safe_dump(data))
    tree["configs"] = config
    with pytest.raises(ValueError, match=r"\['100'\] are in both trainval and test"):
        split_(tree)


def test_output_format(tree) -> None:
    index = pd.read_csv(tree["segments"] / "index.csv", dtype={"record": str})
    summary = split_(tree)
    frame = assignment(tree)
    assert list(frame.columns) == ["record", "subject", "split", "fold"]
    assert set(frame.split) == set(split.SPLITS)
    assert frame.split.map(split.SPLITS.index).is_monotonic_increasing  # train, val, test
    assert json.loads((tree["out"] / "summary.json").read_text()) == summary
    assert sorted(tree["out"].iterdir()) == [tree["out"] / "assignment.csv",
                                             tree["out"] / "summary.json"]
    assert summary["definition"] == "ds" and summary["seed"] == 42
    for name in split.SPLITS:
        part = summary["splits"][name]
        assert list(part["counts"]) == CLASSES  # every class, meta order, zeros included
        assert part["total"] == sum(part["counts"].values())
        assert part["records"] == sorted(records_of(frame, name))
        expected = index[index.record.isin(part["records"])].label.value_counts()
        assert part["counts"] == {c: int(expected.get(c, 0)) for c in CLASSES}
    assert summary["splits"]["test"]["counts"]["Q"] == 0
    train, val = summary["splits"]["train"]["counts"], summary["splits"]["val"]["counts"]
    assert summary["trainval_counts"] == {c: train[c] + val[c] for c in CLASSES}
    # 199 (excluded) and 400 (in neither list) are left out, with the reason
    assert summary["left_out"] == {"199": "paced", "400": "in neither trainval nor test of 'ds'"}
    assert summary["not_in_index"] == []


def test_definition_records_missing_from_index_are_reported(tmp_path, tree) -> None:
    tree["segments"] = tmp_path / "partial"
    make_segments(tree["segments"], [r for r in TRAINVAL + TEST if r not in ("110", "301")])
    assert split_(tree)["not_in_index"] == ["110", "301"]


def test_without_config_every_record_is_its_own_subject(tmp_path, tree) -> None:
    tree["configs"] = tmp_path / "empty"
    split_(tree, "random")
    frame = assignment(tree)
    assert (frame.record == frame.subject).all() and "199" in set(frame.record)
    with pytest.raises(ValueError, match=r"available: \['random', 'default'\]"):
        split_(tree, "ds")


def test_labels_outside_meta_classes_raise(tmp_path, tree) -> None:
    tree["segments"] = tmp_path / "odd"
    make_segments(tree["segments"], TRAINVAL + TEST, classes=["N", "S", "V"])
    with pytest.raises(ValueError, match=r"labels \['F'\] not in meta.json"):
        split_(tree)


def test_cli(tree, tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"dataset:\n  name: {DB}\nsplit:\n  definition: ds\n  folds: 3\n"
                      "  val_fold: 0\n  require_in_val: [N]\n  test_fraction: 0.2\n  seed: 1\n")
    split.main(["--params", str(params), "--segments", str(tree["segments"]),
                "--out", str(tree["out"]), "--configs", str(tree["configs"])])
    assert json.loads((tree["out"] / "summary.json").read_text())["seed"] == 1


def test_repo_params_and_mitdb_config_parse() -> None:
    root = Path(__file__).resolve().parents[2]
    params = split.parse_section(committed_params(), "split", SplitParams)
    config = load_database("mitdb", root / "configs" / "databases")
    assert params.definition in config.splits
    strict, published = config.splits["de_chazal_strict"], config.splits["de_chazal"]
    assert len(published.trainval) == len(published.test) == 22
    assert set(published.test) - set(strict.test) == {"202"}
    assert config.subjects["201"] == config.subjects["202"]
    assert set(config.exclude) == {"102", "104", "107", "217"}


# Patients of two or three records with differing class mixes. s3 and s4 also have a record in
# the definition's test list (locked: they train, never validate); s10 and s11 are test-only.
# Among the free subjects S lives in four (s1 s5 s7 s9), V in six, F in three (s2 s7 s9): three
# folds can each validate N, S, V and F, but a fold that happens to hold two F patients cannot.
FAMILY = {
    "500": ("s1", "trainval", {"N": 40, "S": 6}),
    "501": ("s1", "trainval", {"N": 30, "V": 5}),
    "510": ("s2", "trainval", {"N": 50, "V": 4}),
    "511": ("s2", "trainval", {"N": 20}),
    "512": ("s2", "trainval", {"N": 25, "F": 3}),
    "520": ("s3", "trainval", {"N": 45, "S": 8, "F": 2}),
    "521": ("s3", "test", {"N": 40, "S": 3}),
    "530": ("s4", "trainval", {"N": 35, "V": 9}),
    "531": ("s4", "trainval", {"N": 30, "F": 4}),
    "532": ("s4", "test", {"N": 50}),
    "540": ("s5", "trainval", {"N": 60, "S": 2}),
    "541": ("s5", "trainval", {"N": 20, "V": 3}),
    "550": ("s6", "trainval", {"N": 55, "V": 6}),
    "560": ("s7", "trainval", {"N": 40, "S": 4}),
    "561": ("s7", "trainval", {"N": 30, "F": 2}),
    "570": ("s8", "trainval", {"N": 45, "V": 2}),
    "580": ("s9", "trainval", {"N": 35, "F": 5}),
    "581": ("s9", "trainval", {"N": 25, "S": 3, "V": 2}),
    "600": ("s10", "test", {"N": 50, "S": 5}),
    "601": ("s10", "test", {"N": 40, "V": 5}),
    "610": ("s11", "test", {"N": 60, "F": 1}),
}
LOCKED = {"s3", "s4"}
FAMILY_FOLDS = 3


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family")
    make_segments(root / "segments", list(FAMILY), counts=lambda r: FAMILY[r][2])
    side = {s: [r for r, (_, where, _) in FAMILY.items() if where == s]
            for s in ("trainval", "test")}
    config = {"name": DB, "subjects": {r: subject for r, (subject, _, _) in FAMILY.items()},
              "splits": {"ds": {**side, "shared_subjects_allowed": dict.fromkeys(
                  sorted(LOCKED), "a record on each side")}}}
    (root / "configs").mkdir()
    (root / "configs" / f"{DB}.yaml").write_text(yaml.safe_dump(config))
    return {"segments": root / "segments", "configs": root / "configs"}


def check_folds_follow_patients(frame: pd.DataFrame, locked: set[str]) -> None:
    """Folds are sets of whole patients: one fold per subject, -1 for test and locked subjects,
    every fold non-empty, validation (fold 0) exactly the fold-0 records, and no fold's
    validation patient among the patients it trains on."""
    frame = frame.assign(fold=frame.fold.astype(int))
    assert (frame.groupby("subject").fold.nunique() == 1).all(), frame.sort_values("subject")
    assert (frame.groupby("subject").split.nunique()[sorted(set(frame.subject) - locked)]
            == 1).all()
    if locked:
        assert set(frame.fold[frame.subject.isin(locked)]) == {-1}
        assert set(frame.split[frame.subject.isin(locked)]) == {"train", "test"}
    assert set(frame.fold[frame.split == "test"]) == {-1}
    trainval = frame[frame.split != "test"]
    assert set(trainval.fold) - {-1} == set(range(FAMILY_FOLDS))
    assert set(trainval.record[trainval.fold == 0]) == set(frame.record[frame.split == "val"])
    for f in range(FAMILY_FOLDS):
        held = set(trainval.subject[trainval.fold == f])
        assert held and not held & set(trainval.subject[trainval.fold != f])
        assert not held & (locked | set(frame.subject[frame.split == "test"]))


@pytest.mark.parametrize("seed", range(4))
def test_folds_keep_multi_record_patients_whole_and_locked_ones_out(family, tmp_path,
                                                                     seed) -> None:
    summary = split_({**family, "out": tmp_path}, seed=seed, folds=FAMILY_FOLDS)
    frame = assignment({"out": tmp_path})
    assert dict(zip(frame.record, frame.subject, strict=True)) == {
        r: subject for r, (subject, _, _) in FAMILY.items()}
    assert records_of(frame, "test") == {r for r, v in FAMILY.items() if v[1] == "test"}
    check_folds_follow_patients(frame, LOCKED)
    # each of the three folds can hold N, S, V and F in its validation, so each must
    for fold in summary["folds"].values():
        assert all(fold["counts"][c] > 0 for c in ("N", "S", "V", "F")), summary["folds"]
    assert summary["leakage"]["shared_subjects"] == sorted(LOCKED)


@pytest.mark.parametrize("seed", range(3))
def test_random_split_keeps_multi_record_patients_whole(family, tmp_path, seed) -> None:
    split_({**family, "out": tmp_path}, "random", seed=seed, folds=FAMILY_FOLDS, test=0.25)
    frame = assignment({"out": tmp_path})
    check_folds_follow_patients(frame, set())
    assert (frame.groupby("subject").split.nunique() == 1).all()


@pytest.mark.parametrize("seed", range(4))
def test_assign_folds_groups_by_subject_and_leaves_locked_subjects_out(family, seed) -> None:
    index = pd.read_csv(family["segments"] / "index.csv", dtype={"record": str})
    index = index[index.record.map(lambda r: FAMILY[r][1] == "trainval")]
    subjects = index.record.map(lambda r: FAMILY[r][0])
    fold_of = folds.assign_folds(index.label, subjects, FAMILY_FOLDS, seed,
                                 ["N", "S", "V", "F"], frozenset(LOCKED))
    assert set(fold_of) == set(subjects)
    assert {s for s, f in fold_of.items() if f == -1} == LOCKED
    assert set(fold_of.values()) == {-1, *range(FAMILY_FOLDS)}
    fold = subjects.map(fold_of)
    for f in range(FAMILY_FOLDS):
        assert set(index.label[fold == f]) == {"N", "S", "V", "F"}
    # fold 0, the single validation fold, leaves every class on the training side
    assert set(index.label[fold != 0]) == {"N", "S", "V", "F"}
    # a locked subject is never held out of training, however its mix compares
    held = folds.holdout_subjects(index.label, subjects, 0.3, seed, frozenset(LOCKED))
    assert held and not held & LOCKED and held < set(subjects)


def leak_frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame([(r, s, p, 0) for r, s, p in rows],
                        columns=["record", "subject", "split", "fold"])


def test_leakage_message_names_every_leaking_subject_and_its_records() -> None:
    frame = leak_frame([("r1", "sA", "train"), ("r5", "sC", "train"), ("r3", "sB", "val"),
                        ("r2", "sA", "test"), ("r4", "sB", "test")])
    with pytest.raises(ValueError) as caught:
        split.check_leakage(frame, {})
    assert str(caught.value) == (
        "patient leakage: subject sA (r1: train, r2: test); subject sB (r3: val, r4: test) in "
        "more than one split. Fix the record lists of the split definition, or, only to "
        "reproduce a published protocol, list the subject under its shared_subjects_allowed "
        "with the reason.")
    # allowing only one of the two is not enough: the other is still named
    with pytest.raises(ValueError, match=r"^patient leakage: subject sB \(r3: val, r4: test\) in"):
        split.check_leakage(frame, {"sA": "published"})
    result = split.check_leakage(frame, {"sA": "published", "sB": "same patient", "sC": "x"})
    assert result == {
        "checked": True, "patient_disjoint": False, "shared_subjects": ["sA", "sB"],
        "allowed": {"sA": "published", "sB": "same patient"},
        "warning": "NOT patient-disjoint: subject sA (r1: train, r2: test); subject sB (r3: val, "
                   "r4: test) in two splits, allowed by the split definition (see 'allowed')"}


def test_summarise_counts_splits_and_folds() -> None:
    index = pd.DataFrame({"record": ["r1"] * 4 + ["r2"] * 3 + ["r3"] * 3 + ["r4"] + ["r5"] * 4,
                          "label": list("NNNS") + list("NNV") + list("NSS") + ["N"] + list("VVVV")})
    frame = pd.DataFrame([("r1", "s1", "train", 1), ("r4", "s2", "train", 2),
                          ("r2", "s3", "val", 0), ("r3", "s4", "test", -1)],
                         columns=["record", "subject", "split", "fold"])
    classes = ["N", "S", "V", "F"]
    counts = dict.fromkeys(classes, 0)
    # r5 is in no split (left out): its four V count nowhere
    assert split.summarise(index, frame, classes) == {
        "splits": {
            "train": {"records": ["r1", "r4"], "subjects": ["s1", "s2"],
                      "counts": {**counts, "N": 4, "S": 1}, "total": 5},
            "val": {"records": ["r2"], "subjects": ["s3"],
                    "counts": {**counts, "N": 2, "V": 1}, "total": 3},
            "test": {"records": ["r3"], "subjects": ["s4"],
                     "counts": {**counts, "N": 1, "S": 2}, "total": 3}},
        "trainval_counts": {**counts, "N": 6, "S": 1, "V": 1},
        "folds": {"0": {"records": ["r2"], "counts": {**counts, "N": 2, "V": 1}},
                  "1": {"records": ["r1"], "counts": {**counts, "N": 3, "S": 1}},
                  "2": {"records": ["r4"], "counts": {**counts, "N": 1}}}}


def write_params(path: Path, definition: str = "ds", **split_extra) -> Path:
    section = {"definition": definition, "folds": 3, "val_fold": 0, "require_in_val": ["N"],
               "test_fraction": 0.25, "seed": 1, **split_extra}
    path.write_text(yaml.safe_dump({"dataset": {"name": DB}, "split": section}))
    return path


def test_cli_help_describes_the_stage_and_its_options(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as caught:
        split.main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert ("\nStage `split`: assigns every record, whole subjects at a time, to train, val or "
            "test.\n") in out
    for option, text in [("--params PARAMS", "params.yaml"),
                         ("--segments SEGMENTS", "segment stage folder"),
                         ("--out OUT", "output folder, e.g. data/splits"),
                         ("--configs CONFIGS", "database configs")]:
        assert re.search(rf"\n  {option} +{re.escape(text)}\n", out), (option, out)


@pytest.mark.parametrize(("given", "missing"), [("--out", "--segments"), ("--segments", "--out")])
def test_cli_requires_segments_and_out(capsys, tmp_path, given, missing) -> None:
    with pytest.raises(SystemExit) as caught:
        split.main([given, str(tmp_path)])
    assert caught.value.code == 2
    assert f"error: the following arguments are required: {missing}\n" in capsys.readouterr().err


@pytest.mark.parametrize(("section", "problem"), [("dataset", "name: Field required"),
                                                  ("split", "folds: Input should be greater")])
def test_cli_errors_name_the_params_file(tree, tmp_path, section, problem) -> None:
    params = write_params(tmp_path / "my-params.yaml", folds=1)
    if section == "dataset":
        params.write_text(params.read_text().replace(f"name: {DB}", "{}"))
    with pytest.raises(ValueError) as caught:
        split.main(["--params", str(params), "--segments", str(tree["segments"]),
                    "--out", str(tree["out"])])
    assert str(caught.value).startswith(f"{params} [{section}]: {problem}"), caught.value


def test_cli_defaults_read_params_and_configs_from_the_working_folder(tree, tmp_path, capsys,
                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", "random")  # no configs/databases/toydb.yaml here
    root = logging.getLogger()
    handlers, level = root.handlers, root.level
    root.handlers = []  # main configures logging only where nothing has yet
    root.setLevel(logging.WARNING)
    try:
        split.main(["--segments", str(tree["segments"]), "--out", str(tree["out"])])
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers = handlers
        root.setLevel(level)
    summary = json.loads((tree["out"] / "summary.json").read_text())
    assert summary["definition"] == "random" and summary["seed"] == 1
    assert summary["warnings"] == [
        "configs/databases/toydb.yaml not found: EACH RECORD IS TAKEN AS ITS OWN SUBJECT (records "
        "of one patient can land in two splits unseen), no records are excluded and only "
        "split.definition 'random' or 'default' works. Copy configs/databases/_template.yaml to "
        "configs/databases/toydb.yaml and fill it in."]
    err = capsys.readouterr().err.splitlines()
    assert f"WARNING data_prep.split: {summary['warnings'][0]}" in err
    for name in split.SPLITS:
        part = summary["splits"][name]
        assert (f"INFO data_prep.split: {name}: {len(part['records'])} records, {part['total']} "
                f"segments {part['counts']}") in err


def holdout(spec: dict[str, dict[str, int]], fraction: float, seed: int) -> set[str]:
    rows = pd.DataFrame([(s, c) for s, counts in spec.items() for c, n in counts.items()
                         for _ in range(n)], columns=["subject", "label"])
    return folds.holdout_subjects(rows.label, rows.subject, fraction, seed)


def test_holdout_keeps_the_subject_closest_to_the_whole_mix(caplog) -> None:
    # a quarter of four subjects: each subject is a fold. The whole is N .7, S .2, V .1 (400).
    # L1 from the whole: a (no V) .05 + .05 + .1 = .2; b .35; c .15; d .42: c, though a would
    # win were its missing V not counted.
    spec = {"a": {"N": 75, "S": 25}, "b": {"N": 100, "S": 3, "V": 17},
            "c": {"N": 56, "S": 22, "V": 2}, "d": {"N": 49, "S": 30, "V": 21}}
    with caplog.at_level(logging.WARNING, logger="data_prep.beats.folds"):
        assert [holdout(spec, 0.25, seed) for seed in range(3)] == [{"c"}] * 3
    assert caplog.records == []  # every class stays on the kept side
    # c made far from the whole (.4), b .45, d .4: a, missing V, is closest (.2) and held out
    spec = {"a": {"N": 75, "S": 25}, "b": {"N": 120, "S": 5, "V": 5},
            "c": {"N": 40, "S": 30, "V": 10}, "d": {"N": 45, "S": 20, "V": 25}}
    assert [holdout(spec, 0.25, seed) for seed in range(3)] == [{"a"}] * 3


def test_holdout_fraction_sets_the_number_of_folds() -> None:
    # half of six like subjects: two folds of three (not three of two, nor singletons)
    spec = {s: {"N": 20, "S": 4} for s in "abcdef"}
    assert all(len(holdout(spec, 0.5, seed)) == 3 for seed in range(4))


def test_holdout_is_seeded_and_breaks_ties_by_the_first_fold() -> None:
    spec = {f"s{i:02d}": {"N": 20 + i, "S": 2 + i % 3, "V": 1 + i % 4} for i in range(20)}
    draws = [holdout(spec, 0.25, seed) for seed in (0, 1, 0, 1, 0)]
    assert draws[0] == draws[2] == draws[4] and draws[1] == draws[3] and draws[0] != draws[1]
    # four subjects of one mix are all at distance 0: the first fold sklearn yields is kept
    like = {s: {"N": 20, "S": 4} for s in "abcd"}
    rows = pd.DataFrame([(s, c) for s, counts in like.items() for c, n in counts.items()
                         for _ in range(n)], columns=["subject", "label"])
    for seed in range(4):
        cv = folds.StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed)
        _, first = next(cv.split(rows, rows.label, rows.subject))
        assert holdout(like, 0.25, seed) == set(rows.subject.iloc[first])


def test_holdout_of_two_subjects_warns_when_a_class_leaves_the_kept_side(caplog) -> None:
    # a holds every S, b every V: either choice empties a class from the kept side. Whole
    # N .667, S .167, V .167; held out a: L1 .667, b: .333, so b.
    spec = {"a": {"N": 10, "S": 10}, "b": {"N": 30, "V": 10}}
    with caplog.at_level(logging.WARNING, logger="data_prep.beats.folds"):
        assert holdout(spec, 0.5, 0) == {"b"}
    assert caplog.messages == ["no fold leaves every class on the kept side; held out ['b']"]
    with pytest.raises(ValueError, match=r"only 1 subject\(s\) \['a'\] to draw from"):
        holdout({"a": spec["a"]}, 0.5, 0)
