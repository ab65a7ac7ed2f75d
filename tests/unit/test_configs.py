"""Database configs (the template, mitdb), label maps and what a database without a config does."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from wfdb.io.annotation import ann_label_table

from data_prep import layout, segment, split
from data_prep.beats.candidates import Segments
from data_prep.params import DatasetParams, parse_section
from data_prep.records.configs import DatabaseConfig, load_database, load_label_map
from tests.helpers import REPO, committed_params
from tests.synthetic import regular_beats, write_record, write_records_file

DATABASES = REPO / "configs" / "databases"
LABELS = REPO / "configs" / "labels"


def test_template_parses_and_names_every_key() -> None:
    data = yaml.safe_load((DATABASES / "_template.yaml").read_text())
    config = parse_section({"database": data}, "database", DatabaseConfig)
    assert set(data) == set(DatabaseConfig.model_fields) - {"configured"}
    assert config.default_split == "random" and config.label_modes == ["beat"]
    with pytest.raises(ValueError, match="templates"):
        load_database("_template", DATABASES)


def test_unknown_key_and_unknown_default_split_fail(tmp_path: Path) -> None:
    (tmp_path / "db.yaml").write_text("lead: [ECG1]\n")
    with pytest.raises(ValueError, match="lead"):
        load_database("db", tmp_path)
    (tmp_path / "db.yaml").write_text("default_split: ds\nsplits: {}\n")
    with pytest.raises(ValueError, match="default_split 'ds'"):
        load_database("db", tmp_path)
    (tmp_path / "db.yaml").write_text("configured: false\n")
    with pytest.raises(ValueError, match="configured"):
        load_database("db", tmp_path)


def test_mitdb_config_and_default_split() -> None:
    mitdb = load_database("mitdb", DATABASES)
    assert mitdb.configured and mitdb.resolve_split("default") == "de_chazal"
    assert mitdb.resolve_split("random") == "random" and mitdb.leads[0] == "MLII"
    assert DatabaseConfig().resolve_split("default") == "random"
    assert not DatabaseConfig().configured


def test_aami_map_covers_every_wfdb_annotation_code() -> None:
    aami = load_label_map(LABELS / "aami.yaml")
    symbols = {s for s in ann_label_table.symbol if s.strip()}
    assert symbols <= set(aami.map) | set(aami.ignore), symbols - set(aami.map) - set(aami.ignore)
    assert {aami.map[s] for s in "BnrF?"} == {"N", "V", "F", "Q"}
    assert [aami.map[s] for s in "Bnr?"] == ["N", "N", "V", "Q"]
    assert "x" in aami.ignore and "!" in aami.ignore  # no QRS / flutter wave: not beats


AAMI = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}  # DESIGN.md section 3
NON_BEATS = ["+", "~", "|", '"', "!", "[", "]", "x"]


def test_aami_map_gives_every_ec57_symbol_its_class_and_drops_non_beats() -> None:
    """Every symbol EC57 names keeps its class through the loader and the segment stage's
    labelling (escape beats e and j are N, not S; E is V), and rhythm, quality and flutter marks
    are dropped as non-beats rather than labelled or counted as unknown."""
    aami = load_label_map(LABELS / "aami.yaml")
    assert aami.classes == ["N", "S", "V", "F", "Q"]
    expected = {symbol: c for c, symbols in AAMI.items() for symbol in symbols}
    assert len(expected) == 15
    assert {s: aami.map.get(s) for s in expected} == expected
    assert not set(NON_BEATS) & set(aami.map) and set(NON_BEATS) <= set(aami.ignore)
    symbols = np.array([*expected, *NON_BEATS])
    candidates = Segments(np.arange(symbols.size), np.arange(symbols.size), symbols)
    candidates.apply_map(aami, "unknown_symbol")
    assert dict(zip(candidates.symbol, candidates.label, strict=True)) == expected
    assert candidates.non_beat == Counter(NON_BEATS)
    assert not candidates.unknown and not candidates.skipped


def test_challenge_map_and_every_shipped_map_parse() -> None:
    challenge = load_label_map(LABELS / "challenge2017.yaml")
    assert challenge.classes == ["N", "AF", "O", "Noisy"]
    assert challenge.map == {"N": "N", "A": "AF", "O": "O", "~": "Noisy"}
    for path in LABELS.glob("*.yaml"):
        assert load_label_map(path).classes


def _db(tmp_path: Path, sig_names: tuple[str, str] = ("MLII", "V1")) -> Path:
    fs, seconds = 250, 20.0
    folder = tmp_path / "raw" / "newdb"
    for record in ("a1", "a2", "b1", "b2", "c1"):
        beats = regular_beats(int(fs * seconds), fs)
        write_record(folder, record, fs=fs, seconds=seconds, sig_names=sig_names, beats=beats,
                     symbols=["N"] * len(beats))
    write_records_file(folder, ["a1", "a2", "b1", "b2", "c1"])
    return tmp_path / "raw"


def _segment_params(**overrides: object) -> segment.SegmentParams:
    section = committed_params()["segment"] | {"label_map": str(LABELS / "aami.yaml"),
                                               "max_skip_fraction": 0.2}
    return segment.SegmentParams.model_validate(section | overrides)


def test_database_leads_are_tried_before_the_fallback(tmp_path: Path) -> None:
    raw = _db(tmp_path, sig_names=("CH1", "CH2"))
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "newdb.yaml").write_text("leads: [CH2]\nlabel_modes: [beat]\n")
    segment.run(_segment_params(), "newdb", raw, tmp_path / "seg", databases_dir=configs,
                workers=1)
    meta = json.loads((tmp_path / "seg" / layout.META).read_text())
    assert set(meta["leads"].values()) == {"CH2"}  # not CH1, the first channel
    with pytest.raises(ValueError, match=r"label_mode 'rhythm'.*\['beat'\]"):
        segment.run(_segment_params(label_mode="rhythm", label_map=str(LABELS / "rhythm.yaml")),
                    "newdb", raw, tmp_path / "seg2", databases_dir=configs, workers=1)


def test_without_config_each_record_is_its_own_subject_loudly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = _db(tmp_path)
    empty = tmp_path / "no-configs"
    empty.mkdir()
    caplog.set_level(logging.WARNING)
    segment.run(_segment_params(), "newdb", raw, tmp_path / "seg", databases_dir=empty, workers=1)
    # half the records get a V beat, so the stratified split has two classes
    index = layout.read_index(tmp_path / "seg" / layout.INDEX)
    index.loc[index.record.isin(["a2", "b2"]) & (index.row % 3 == 0), "label"] = "V"
    layout.write_index(tmp_path / "seg" / layout.INDEX, index)
    summary = split.run(DatasetParams(name="newdb"),
                        split.SplitParams(definition="default", folds=2, val_fold=0,
                                          require_in_val=["N"], test_fraction=0.2, seed=1),
                        tmp_path / "seg", tmp_path / "splits", empty)
    assert summary["definition"] == "random"
    assert "EACH RECORD IS TAKEN AS ITS OWN SUBJECT" in summary["warnings"][0]
    written = json.loads((tmp_path / "splits" / "summary.json").read_text())
    assert written["warnings"] == summary["warnings"]
    assignment = pd.read_csv(tmp_path / "splits" / "assignment.csv", dtype=str)
    assert np.array_equal(assignment.record, assignment.subject)
    assert sum("EACH RECORD IS TAKEN AS ITS OWN SUBJECT" in r.message for r in caplog.records) >= 2
