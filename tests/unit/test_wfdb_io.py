"""wfdb_io: reading synthetic records, the errors for bad files, downloads without a network."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests

from data_prep import layout
from data_prep.records import wfdb_io
from tests.synthetic import write_annotations, write_record, write_records_file


@pytest.mark.parametrize("fmt", ["16", "212", "80"])
def test_reads_header_and_signal_of_each_format(tmp_path: Path, fmt: str) -> None:
    signal = np.column_stack([np.sin(np.arange(1000) / 15), np.cos(np.arange(1000) / 15)])
    signal[100:104, 0] = np.nan
    write_record(tmp_path, "r1", fs=257, sig_names=("II", "V5"), fmt=fmt, signal=signal,
                 annotate=False)
    header = wfdb_io.read_header(tmp_path, "r1")
    assert (header.fs, header.n_samples, header.sig_names) == (257.0, 1000, ("II", "V5"))
    assert header.files == ("r1.dat",)
    x = wfdb_io.read_signal(tmp_path, "r1", 1)
    np.testing.assert_allclose(x, signal[:, 1], atol=0.01)
    nan = np.isnan(wfdb_io.read_signal(tmp_path, "r1", 0))
    assert nan.sum() == 4 and nan[100:104].all()


def test_annotations_strip_trailing_nul(tmp_path: Path) -> None:
    write_annotations(tmp_path, "r1", [5, 20, 40], ["+", "N", "+"], ["(AFIB\x00", "", "(N\x00\x00"])
    ann = wfdb_io.read_annotations(tmp_path, "r1", "atr")
    assert ann.sample.tolist() == [5, 20, 40]
    assert ann.symbol.tolist() == ["+", "N", "+"]
    assert ann.aux_note.tolist() == ["(AFIB", "", "(N"]


def test_list_records_uses_records_file_then_headers(tmp_path: Path) -> None:
    for name in ("b", "a"):
        write_record(tmp_path, name, seconds=2, annotate=False)
    assert layout.list_records(tmp_path) == ["a", "b"]
    write_records_file(tmp_path, ["b"])
    assert layout.list_records(tmp_path) == ["b"]
    with pytest.raises(FileNotFoundError, match="fetch"):
        layout.list_records(tmp_path / "empty")


def test_missing_dat_names_record_file_and_fix(tmp_path: Path) -> None:
    write_record(tmp_path, "r1", seconds=2, annotate=False)
    (tmp_path / "r1.dat").unlink()
    with pytest.raises(FileNotFoundError, match=r"record r1: .*r1\.dat not found; re-run fetch"):
        wfdb_io.read_signal(tmp_path, "r1", 0)


@pytest.mark.parametrize("fmt", ["16", "212"])
def test_truncated_dat_is_a_value_error(tmp_path: Path, fmt: str) -> None:
    write_record(tmp_path, "r1", seconds=2, fmt=fmt, annotate=False)
    dat = tmp_path / "r1.dat"
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 2 - 1])
    with pytest.raises(ValueError, match=r"record r1: cannot read .*r1\.dat"):
        wfdb_io.read_signal(tmp_path, "r1", 0)


def test_unparsable_header_is_a_value_error(tmp_path: Path) -> None:
    (tmp_path / "bad.hea").write_text("this is not a header\n")
    with pytest.raises(ValueError, match=r"record bad: cannot read .*bad\.hea"):
        wfdb_io.read_header(tmp_path, "bad")
    with pytest.raises(FileNotFoundError, match=r"record nope: .*nope\.hea not found"):
        wfdb_io.read_header(tmp_path, "nope")


def test_missing_annotation_file_names_annotator(tmp_path: Path) -> None:
    write_record(tmp_path, "r1", seconds=2, annotate=False)
    with pytest.raises(FileNotFoundError, match=r"record r1: .*r1\.qrs not found.*annotator"):
        wfdb_io.read_annotations(tmp_path, "r1", "qrs")
    (tmp_path / "r1.atr").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match=r"record r1: cannot read .*r1\.atr"):
        wfdb_io.read_annotations(tmp_path, "r1", "atr")


def _offline(*_: object, **__: object) -> None:
    raise requests.exceptions.ConnectionError("Failed to resolve 'physionet.org'")


def test_download_without_network_is_a_connection_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("wfdb.io.download.get_version", _offline)
    monkeypatch.setattr("wfdb.io.download.dl_full_file", _offline)
    with pytest.raises(ConnectionError, match=r"cannot reach physionet\.org for 'mitdb'"):
        wfdb_io.download_file("mitdb", None, "RECORDS", tmp_path)
    with pytest.raises(ConnectionError, match="mirror"):
        wfdb_io.download_records("mitdb", "1.0.0", ["100"], tmp_path)
    assert not list(tmp_path.iterdir())


def _serve(server: Path) -> Callable[[str, str], None]:
    """A stand-in for wfdb's downloader that copies from a local folder (404 when absent)."""
    from wfdb.io._url import NetFileNotFoundError

    def dl_full_file(url: str, local: str) -> None:
        source = server / url.split("/mitdb/1.0.0/", 1)[1]
        if not source.is_file():
            raise NetFileNotFoundError(f"404 {url}", url=url, status_code=404)
        shutil.copy(source, local)

    return dl_full_file


def test_download_records_fetches_header_signal_and_annotations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, dest = tmp_path / "server", tmp_path / "dest"
    write_record(server, "100", seconds=2)
    write_record(server, "101", seconds=2, annotate=False)
    monkeypatch.setattr("wfdb.io.download.dl_full_file", _serve(server))
    monkeypatch.setattr("wfdb.io.download.get_annotators", lambda *_: ["atr"])
    wfdb_io.download_records("mitdb", "1.0.0", ["100", "101"], dest)
    assert sorted(p.name for p in dest.iterdir()) == ["100.atr", "100.dat", "100.hea",
                                                       "101.dat", "101.hea"]
    assert (dest / "100.dat").read_bytes() == (server / "100.dat").read_bytes()
    with pytest.raises(FileNotFoundError, match=r"serves no SHA256SUMS\.txt"):
        wfdb_io.download_file("mitdb", "1.0.0", "SHA256SUMS.txt", dest)
