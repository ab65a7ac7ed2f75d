"""Predict over every odd record the tests can build (issue 11): no uncaught exception, one
row per record at least, each with a status, the right answer where there is one, and one
clear line (no traceback) from the command line unless --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import predict
from tests import odd_records
from tests.helpers import REPO
from tests.synthetic import write_record, write_records_file

STATUSES = {"ok", "record_edge", "annotation_past_end", "nan_samples", "flat",
            "shorter_than_window", "no_beats", "all_nan", "signal_error", "record_error"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_record(folder, "good", seconds=20)
    for name, build in odd_records.ODD_RECORDS.items():
        build(folder, name)
    write_records_file(folder, ["good", *odd_records.ODD_RECORDS])
    return folder


@pytest.fixture(scope="module")
def table(built, corpus) -> pd.DataFrame:
    return predict.load_bundle(built["bundle"]).predict_folder(corpus)


def _status(table: pd.DataFrame, record: str) -> set[str]:
    return set(table.loc[table["record"] == record, "status"])


def _note(table: pd.DataFrame, record: str) -> str:
    return " ".join(table.loc[table["record"] == record, "note"])


def test_every_record_has_rows_with_a_known_status(table, corpus) -> None:
    assert set(table["record"]) == {"good", *odd_records.ODD_RECORDS}
    assert set(table["status"]) <= STATUSES
    ok = table[table["status"] == "ok"]
    assert np.allclose(ok.filter(like="prob_").sum(axis=1), 1, atol=1e-5)


def test_odd_but_valid_records_are_classified_at_the_right_beats(table) -> None:
    good = table[(table["record"] == "good") & (table["status"] == "ok")]
    for record in ("multiseg", "annfs", "hz1000", "hz128", "multirate"):
        assert "ok" in _status(table, record), (record, _note(table, record))
    for record in ("multiseg", "annfs"):  # the same beats as the good record, same times
        ok = table[(table["record"] == record) & (table["status"] == "ok")]
        np.testing.assert_allclose(ok["time_s"].to_numpy(), good["time_s"].to_numpy(), atol=0.01)
    rate = table[(table["record"] == "multirate") & (table["status"] == "ok")]
    assert (rate["beat_source"] == "annotation").all()
    assert np.allclose(np.diff(rate["time_s"]), 0.8, atol=0.01)  # beats every 0.8 s, in time


def test_detector_finds_the_beats_of_a_1000_hz_record(built, tmp_path) -> None:
    odd_records.at_1000_hz(tmp_path, "k")
    table = predict.load_bundle(built["bundle"]).predict_record(tmp_path / "k", annotator=None)
    assert (table["beat_source"] == "detector").all()
    assert len(table) == len(odd_records.regular_beats(20 * 1000, 1000))


def test_bad_records_are_reported_with_their_cause(table) -> None:
    assert _status(table, "truncann") == {"record_error"}
    assert "truncated" in _note(table, "truncann") and "truncann.atr" in _note(table, "truncann")
    assert "--annotator none" in _note(table, "truncann")
    assert _status(table, "baddate") == {"record_error"}
    assert "base_date" in _note(table, "baddate") and "fetch" not in _note(table, "baddate")
    assert _status(table, "nodesc") == {"record_error"}
    assert "sig0" in _note(table, "nodesc") and "--lead" in _note(table, "nodesc")
    assert _status(table, "nanonly") == {"all_nan"}
    assert _status(table, "short") == {"shorter_than_window"}
    assert _status(table, "flat") <= {"flat", "no_beats", "record_edge"}


def test_an_unexpected_error_is_one_record_error_row(built, corpus, monkeypatch) -> None:
    bundle = predict.load_bundle(built["bundle"])
    real = bundle.predict_record

    def odd(path, *args, **kwargs):
        if Path(path).name == "hz128":
            raise TypeError("'NoneType' object is not subscriptable")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(bundle, "predict_record", odd)
    table = bundle.predict_folder(corpus)
    assert _status(table, "hz128") == {"record_error"}
    assert "unexpected TypeError" in _note(table, "hz128")
    assert "ok" in _status(table, "good")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.predict", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_over_the_corpus_writes_every_record_without_traceback(built, corpus,
                                                                   tmp_path) -> None:
    out = tmp_path / "p.csv"
    done = _cli("--bundle", str(built["bundle"]), str(corpus), str(corpus / "truncann"),
                "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    table = pd.read_csv(out, dtype={"record": str}, keep_default_na=False)
    assert set(table["record"]) == {"good", *odd_records.ODD_RECORDS}
    single = table[table["record"] == "truncann"]
    assert len(single) == 2 and set(single["status"]) == {"record_error"}  # folder + single


def test_cli_exits_non_zero_with_one_line_when_nothing_is_classified(built, corpus,
                                                                     tmp_path) -> None:
    out = tmp_path / "p.csv"
    done = _cli("--bundle", str(built["bundle"]), str(corpus / "baddate"),
                str(corpus / "missing"), "--out", str(out))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: nothing classified in 2")
    assert set(pd.read_csv(out, dtype={"record": str})["status"]) == {"record_error"}
    debug = _cli("--bundle", str(built["bundle"]), str(corpus / "baddate"), "--out", str(out),
                 "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    broken = _cli("--bundle", str(tmp_path), str(corpus), "--out", str(out))
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "no bundle.json" in broken.stderr
