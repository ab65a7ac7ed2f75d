"""wfdb_io on the odd records real databases hold (issue 11): each is read correctly or
refused with an error that names the record, the file, the field and a fix that works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep.records import signals, wfdb_files, wfdb_io
from tests import odd_records
from tests.synthetic import ecg_like, regular_beats


def test_signals_without_description_get_a_name(tmp_path: Path) -> None:
    odd_records.no_description(tmp_path, "r")
    header = wfdb_io.read_header(tmp_path, "r")
    assert header.sig_names == ("sig0", "sig1")
    assert signals.choose_lead(header.sig_names, ["MLII"], "first") == (0, True)
    assert signals.choose_lead([None, "V1"], ["V1"], "skip") == (1, False)  # type: ignore[list-item]


def test_multi_segment_record_has_lead_names_and_reads_across_segments(tmp_path: Path) -> None:
    odd_records.multi_segment(tmp_path, "m")
    header = wfdb_io.read_header(tmp_path, "m")
    assert header.sig_names == ("MLII", "V1")
    assert (header.fs, header.n_samples) == (360.0, 7200)
    assert set(header.files) == {"m_1.dat", "m_2.dat"}
    x = wfdb_io.read_signal(tmp_path, "m", 1)
    whole = ecg_like(7200, 360, regular_beats(7200, 360))
    np.testing.assert_allclose(x, 0.7 * whole, atol=0.01)


def test_several_samples_per_frame_are_read_at_the_signal_rate(tmp_path: Path) -> None:
    beats = odd_records.multi_frame(tmp_path, "f", ecg_per_frame=2)
    header = wfdb_io.read_header(tmp_path, "f")
    assert (header.fs, header.signal_fs(0), header.signal_fs(1)) == (100.0, 200.0, 100.0)
    ecg = wfdb_io.read_signal(tmp_path, "f", 0)
    assert ecg.size == 2 * header.n_samples == 4000
    peaks = 2 * beats  # frame -> ECG sample: the spikes sit there at 200 Hz
    assert (ecg[peaks] > 0.9).all()
    assert wfdb_io.read_signal(tmp_path, "f", 1).size == header.n_samples


def test_detector_runs_at_its_own_rate_on_a_1000_hz_record() -> None:
    fs = 1000
    beats = regular_beats(30 * fs, fs)
    found = wfdb_io.detect_qrs(ecg_like(30 * fs, fs, beats), fs)
    assert found.size == beats.size
    assert np.abs(found - beats).max() <= 0.05 * fs  # mapped back to the record's rate


def test_annotation_file_at_its_own_rate_is_mapped_to_the_record_rate(tmp_path: Path) -> None:
    beats = odd_records.annotations_at_other_fs(tmp_path, "a", ann_fs=1000)
    ann = wfdb_io.read_annotations(tmp_path, "a", "atr")
    assert np.abs(ann.sample - beats).max() <= 1


def test_truncated_annotation_file_is_an_error(tmp_path: Path) -> None:
    odd_records.truncated_annotations(tmp_path, "t")
    with pytest.raises(ValueError, match=r"record t: cannot read .*t\.atr.*end-of-file marker.*"
                                         r"truncated after \d+ annotations.*re-run fetch"):
        wfdb_io.read_annotations(tmp_path, "t", "atr")


def test_complete_annotation_files_pass_the_end_marker_check(tmp_path: Path) -> None:
    from tests.synthetic import write_annotations  # aux notes of odd and even length, SKIPs

    path = write_annotations(tmp_path, "r", [5, 100_000, 100_020], ["+", "N", "+"],
                             ["(AFIB\x00", "", "(N"])
    assert wfdb_files.annotation_complete(path)
    path.write_bytes(path.read_bytes()[:-2])
    assert not wfdb_files.annotation_complete(path)


def test_unparsable_date_names_field_and_tolerance_reads_it(tmp_path: Path) -> None:
    odd_records.unparsable_date(tmp_path, "d")
    with pytest.raises(ValueError) as err:
        wfdb_io.read_header(tmp_path, "d")
    message = str(err.value)
    assert "record d" in message and "d.hea" in message and "base_date" in message
    assert "tolerant_headers: true" in message and "fetch" not in message
    header = wfdb_io.read_header(tmp_path, "d", tolerant=True)
    assert header.dropped == ("base_time", "base_date") and header.sig_names == ("MLII", "V1")
    assert wfdb_io.read_signal(tmp_path, "d", 0, tolerant=True).size == header.n_samples
    assert wfdb_io.read_annotations(tmp_path, "d", "atr", tolerant=True).sample.size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.atr", "d.dat", "d.hea"]


def test_tolerance_does_not_hide_other_header_problems(tmp_path: Path) -> None:
    (tmp_path / "bad.hea").write_text("this is not a header\n")
    with pytest.raises(ValueError, match=r"record bad: cannot read .*bad\.hea: its record line"):
        wfdb_io.read_header(tmp_path, "bad", tolerant=True)
