"""segment on odd records (issues 10 and 11): read right, or skipped, counted and named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep import layout, segment
from tests import odd_records
from tests.helpers import segment_params as make_params
from tests.synthetic import write_record, write_records_file


def _db(tmp_path: Path, builders: dict[str, object]) -> Path:
    folder = tmp_path / "raw" / "synth"
    folder.mkdir(parents=True)
    for name, build in builders.items():
        build(folder, name)  # type: ignore[operator]
    write_records_file(folder, list(builders))
    return tmp_path / "raw"


def _good(folder: Path, name: str) -> np.ndarray:
    return write_record(folder, name, seconds=20)


def test_odd_records_are_read_with_their_leads_and_rates(tmp_path: Path) -> None:
    raw = _db(tmp_path, {"good": _good, "nodesc": odd_records.no_description,
                         "multiseg": odd_records.multi_segment,
                         "multirate": odd_records.multi_frame,
                         "annfs": odd_records.annotations_at_other_fs})
    params = make_params(leads=["MLII", "ECG"], max_skip_fraction=0.2)
    summary = segment.run(params, "synth", raw, tmp_path / "out", workers=1)
    assert summary["records"]["skipped"] == {}
    assert summary["lead_fallbacks"] == {"nodesc": "sig0"}
    per_record = summary["per_record"]
    assert per_record["multiseg"]["kept"] == per_record["good"]["kept"]
    assert per_record["annfs"]["kept"] == per_record["good"]["kept"]
    assert per_record["annfs"]["skipped"] == per_record["good"]["skipped"]
    offset = params.geometry()[0]
    for record in ("good", "multiseg", "multirate", "annfs"):
        shard = layout.load_shard(tmp_path / "out", record)  # each beat's spike at the centre
        assert (shard[:, offset] > shard[:, offset - 12]).all(), record
        assert (shard[:, offset] > shard[:, offset + 12]).all(), record
        assert shard[:, offset].min() > 0.5, record  # at full height: read at the ECG's rate


def test_truncated_annotations_skip_the_record_counting_its_beats(tmp_path: Path) -> None:
    raw = _db(tmp_path, {"good": _good, "truncann": odd_records.truncated_annotations})
    summary = segment.run(make_params(max_skip_fraction=0.9), "synth", raw, tmp_path / "out",
                          workers=1)
    skip = summary["records"]["skipped"]["truncann"]
    assert skip["reason"] == "unreadable_annotations"
    assert "truncated" in skip["detail"] and "truncann.atr" in skip["detail"]


def test_unreadable_header_counts_its_annotated_beats_and_names_the_field(tmp_path: Path) -> None:
    raw = _db(tmp_path, {"good": _good, "baddate": odd_records.unparsable_date})
    out = tmp_path / "out"
    summary = segment.run(make_params(max_skip_fraction=0.9), "synth", raw, out, workers=1)
    skip = summary["records"]["skipped"]["baddate"]
    assert skip["reason"] == "unreadable_header"
    assert "base_date" in skip["detail"] and "tolerant_headers" in skip["detail"]
    assert "fetch" not in skip["detail"]
    n_beats = len(odd_records.regular_beats(20 * 360, 360))
    assert summary["segments_skipped"]["unreadable_header"] == n_beats
    with pytest.raises(ValueError, match="baddate"):  # half the beats lost: over the limit
        segment.run(make_params(max_skip_fraction=0.2), "synth", raw, out, workers=1)


def test_header_without_readable_annotations_counts_one(tmp_path: Path) -> None:
    raw = _db(tmp_path, {"good": _good, "baddate": odd_records.unparsable_date})
    (raw / "synth" / "baddate.atr").unlink()
    summary = segment.run(make_params(max_skip_fraction=0.9), "synth", raw, tmp_path / "out",
                          workers=1)
    assert summary["segments_skipped"]["unreadable_header"] == 1
    assert "counted as 1" in summary["records"]["skipped"]["baddate"]["detail"]


def test_tolerant_headers_recover_the_date_case_and_say_so(tmp_path: Path) -> None:
    raw = _db(tmp_path, {"good": _good, "baddate": odd_records.unparsable_date})
    params = make_params(max_skip_fraction=0.2, tolerant_headers=True)
    summary = segment.run(params, "synth", raw, tmp_path / "out", workers=1)
    assert summary["records"]["skipped"] == {}
    assert summary["tolerated_headers"] == {"baddate": ["base_time", "base_date"]}
    assert summary["per_record"]["baddate"] == summary["per_record"]["good"]


def test_record_without_signals_does_not_suggest_the_fallback_it_has(tmp_path: Path) -> None:
    raw = _db(tmp_path, {"good": _good})
    folder = raw / "synth"
    write_record(folder, "empty", seconds=20)
    (folder / "empty.hea").write_text("empty 0 360 7200\n")
    write_records_file(folder, ["good", "empty"])
    summary = segment.run(make_params(max_skip_fraction=0.9, lead_fallback="first"), "synth",
                          raw, tmp_path / "out", workers=1)
    detail = summary["records"]["skipped"]["empty"]["detail"]
    assert "lead_fallback" not in detail and "no signal" in detail


def test_an_unforeseen_error_names_the_record(tmp_path: Path, monkeypatch) -> None:
    raw = _db(tmp_path, {"good": _good})

    def crash(*_: object) -> None:
        raise AttributeError("'NoneType' object has no attribute 'strip'")

    monkeypatch.setattr(segment.signals, "choose_lead", crash)
    with pytest.raises(RuntimeError, match=r"record good: unexpected AttributeError"):
        segment.run(make_params(), "synth", raw, tmp_path / "out", workers=1)
