"""Adding a database, as a researcher does (issue 10 acceptance): a small synthetic 128 Hz
two-lead Holter database in a local mirror, its config written from configs/databases/
_template.yaml, run through fetch -> segment -> split -> spectrogram.

One record's header has a date wfdb rejects, one has annotations past its end. Every lost
beat is counted; the tolerant header reader recovers the date case; with strict headers the
losses exceed segment.max_skip_fraction and the stage fails with one line that names the
record, the file, the field and a fix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_prep import fetch, layout, segment, spectrogram, split
from data_prep.cli import run_main
from data_prep.params import DatasetParams
from data_prep.records.configs import load_database, load_label_map
from tests import odd_records
from tests.helpers import REPO, committed_params
from tests.synthetic import regular_beats, write_annotations, write_record, write_records_file

DB, FS, SECONDS = "holter", 128, 60
RECORDS = [f"rec0{i}" for i in range(1, 8)]  # the template's own record names
BAD_DATE, PAST_END, PAST_END_BEATS = "rec03", "rec04", 5
SYMBOLS = ["N", "N", "N", "V"]  # two classes, so that folds can stratify


def _write_mirror(mirror: Path) -> dict[str, int]:
    """<mirror>/holter/ as PhysioNet serves a database (RECORDS, SHA256SUMS.txt, records);
    returns the labelled annotations written per record."""
    folder = mirror / DB
    n = FS * SECONDS
    labelled = {}
    for i, record in enumerate(RECORDS):
        # beats 1.5 s from either end: no window crosses an edge, so every loss is one of ours
        beats = regular_beats(n - round(1.5 * FS), FS, rr_s=0.7 + 0.03 * i)
        if record == PAST_END:  # a few annotations after the last sample
            beats = np.concatenate([beats, n + 40 * np.arange(1, PAST_END_BEATS + 1)])
        symbols = [SYMBOLS[k % len(SYMBOLS)] for k in range(len(beats))]
        write_record(folder, record, fs=FS, seconds=SECONDS, sig_names=("ECG1", "ECG2"),
                     fmt="212", beats=beats, annotate=False)
        write_annotations(folder, record, beats, symbols)
        labelled[record] = len(beats)
    odd_records.spoil_date(folder / f"{BAD_DATE}.hea")
    write_records_file(folder, RECORDS)
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}"
            for p in sorted(folder.iterdir()) if p.is_file()]
    (folder / "SHA256SUMS.txt").write_text("\n".join(sums) + "\n")
    return labelled


def _config_from_template(configs: Path) -> Path:
    """<configs>/holter.yaml: the template copied and filled in, as docs/databases.md says."""
    text = (REPO / "configs/databases/_template.yaml").read_text()
    for old, new in (("name: mydb", f"name: {DB}"), ("default_split: random",
                                                     "default_split: published")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    configs.mkdir(parents=True)
    path = configs / f"{DB}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("newdb")
    labelled = _write_mirror(root / "mirror")
    configs = root / "configs" / "databases"  # the repository's layout: the CLI runs in root
    _config_from_template(configs)
    data = committed_params()
    data["dataset"] = {"name": DB}
    data["fetch"] |= {"mirror": str(root / "mirror")}
    aami = str(REPO / "configs/labels/aami.yaml")
    data["segment"] |= {"label_map": aami, "rhythm": data["segment"]["rhythm"] | {
        "beat_labels": aami}}
    # three training subjects (rec01+rec02 are one patient): three folds at most
    data["split"] |= {"definition": "default", "folds": 3, "require_in_val": ["N", "V"]}
    data["spectrogram"] |= {"image_size": 32, "workers": 1, "preview_per_class": 1}
    raw = root / "raw"
    fetched = fetch.run(DatasetParams(name=DB), fetch.FetchParams.model_validate(data["fetch"]),
                        raw, env={})
    return {"root": root, "raw": raw, "configs": configs, "data": data, "labelled": labelled,
            "fetched": fetched}


def _segment(database: dict, out: Path, **changes) -> dict:
    params = segment.SegmentParams.model_validate(database["data"]["segment"] | changes)
    return segment.run(params, DB, database["raw"], out, databases_dir=database["configs"],
                       workers=1)


def test_the_config_from_the_template_is_read(database) -> None:
    config = load_database(DB, database["configs"])
    assert config.configured and config.name == DB and config.leads == ["ECG1", "ECG2"]
    assert config.subjects == {"rec01": "patient-a", "rec02": "patient-a"}
    assert config.resolve_split("default") == "published" and "rec07" in config.exclude


def test_fetch_copies_and_verifies_every_record_from_the_mirror(database) -> None:
    fetched = database["fetched"]
    assert fetched["records"] == RECORDS and fetched["unverified"] == []
    assert fetched["verified"] == fetched["files"] == 3 * len(RECORDS) + 1  # + RECORDS
    assert (database["raw"] / DB / f"{BAD_DATE}.hea").read_text().splitlines()[0].endswith(
        "32/13/2020")


def test_tolerant_headers_recover_the_date_record_and_every_loss_is_counted(database) -> None:
    out = database["root"] / "segments"
    summary = _segment(database, out, tolerant_headers=True)
    assert layout.read_json(out / layout.SUMMARY) == summary
    assert summary["tolerated_headers"] == {BAD_DATE: ["base_time", "base_date"]}
    assert summary["records"]["skipped"] == {} and list(summary["records"]["excluded"]) == ["rec07"]
    assert summary["segments_skipped"] == {"annotation_past_end": PAST_END_BEATS}
    assert summary["per_record"][PAST_END]["skipped"] == {"annotation_past_end": PAST_END_BEATS}
    # nothing dropped uncounted: kept + skipped = every labelled annotation of the used records
    used = sum(n for r, n in database["labelled"].items() if r != "rec07")
    assert summary["kept_total"] + summary["skipped_total"] == used
    assert summary["kept_total"] == sum(p["kept"] for p in summary["per_record"].values())
    assert summary["skip_fraction"] <= summary["max_skip_fraction"] == 0.02
    meta = layout.read_json(out / layout.META)
    assert set(meta["leads"].values()) == {"ECG1"} and meta["fs"] == 250
    assert meta["classes"] == load_label_map(REPO / "configs/labels/aami.yaml").classes

    splits = database["root"] / "splits"
    done = split.run(DatasetParams(name=DB), split.SplitParams.model_validate(
        database["data"]["split"]), out, splits, database["configs"])
    assert done["definition"] == "published" and "warnings" not in done
    assignment = layout.read_index(splits / layout.ASSIGNMENT).set_index("record")
    assert sorted(assignment.index) == RECORDS[:6]  # rec07 excluded
    assert set(assignment.loc[["rec05", "rec06"], "split"]) == {"test"}
    assert assignment.loc["rec01", "subject"] == assignment.loc["rec02", "subject"] == "patient-a"
    assert assignment.loc["rec01", "split"] == assignment.loc["rec02", "split"]

    meta = spectrogram.run(spectrogram.SpectrogramParams.model_validate(
        database["data"]["spectrogram"]), out, database["root"] / "spectrograms", splits)
    assert meta["n_images"] == summary["kept_total"]


def test_strict_headers_count_the_date_record_and_fail_with_one_line(database, capsys,
                                                                     monkeypatch) -> None:
    out = database["root"] / "strict"
    with pytest.raises(ValueError):
        _segment(database, out)
    summary = layout.read_json(out / layout.SUMMARY)  # written before the stage fails
    lost = summary["records"]["skipped"][BAD_DATE]
    assert lost["reason"] == "unreadable_header" and "base_date" in lost["detail"]
    assert summary["segments_skipped"] == {"unreadable_header": database["labelled"][BAD_DATE],
                                           "annotation_past_end": PAST_END_BEATS}
    assert summary["skip_fraction"] > summary["max_skip_fraction"]
    assert not (out / layout.INDEX).exists()

    root = database["root"]  # the command line, as dvc.yaml runs it from the repository root
    (root / "params.yaml").write_text(yaml.safe_dump(database["data"]))
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit) as exit_:
        run_main(segment.main, ["--params", "params.yaml", "--raw", "raw", "--out", "strict",
                                "--workers", "1"])
    assert exit_.value.code == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith("error: ")
    for part in (BAD_DATE, f"{BAD_DATE}.hea", "base_date", "segment.tolerant_headers: true",
                 "max_skip_fraction"):
        assert part in message, part

