"""Stage `fetch` on a tiny synthetic mirror: copies, checksums, record selection, errors."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from pathlib import Path

import pytest

from data_prep import fetch
from data_prep.fetch import DatasetParams, FetchParams, run
from data_prep.records import checksums
from tests.helpers import committed_params

DB = "toydb"
FILES = {
    "r1.hea": b"r1 1 360 4\n",
    "r1.dat": b"\x00\x01\x02\x03",
    "r1.atr": b"atr-1",
    "r2.hea": b"r2 1 360 4\n",
    "r2.dat": b"\x04\x05\x06\x07",
    "r2.atr": b"atr-2",
    "r2.mat": b"mat-2",  # an extra file of one record is fetched too
    "r10.hea": b"r10 1 360 4\n",  # "r1.*" must not pick r10's files
    "r10.dat": b"\x08",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_mirror(root: Path, manifest_name: str = "SHA256SUMS", files: dict | None = None) -> Path:
    """Builds <root>/<DB>/ with RECORDS, a manifest and the record files; returns <root>."""
    db_dir = root / DB
    db_dir.mkdir(parents=True)
    contents = dict(FILES if files is None else files)
    contents["RECORDS"] = b"r1\nr2\nr10\n"
    for name, data in contents.items():
        (db_dir / name).write_bytes(data)
    lines = "".join(f"{_sha(data)}  {name}\n" for name, data in contents.items())
    (db_dir / manifest_name).write_text(lines)
    return root


def fetch_(mirror: Path | None, out: Path, env: dict | None = None, **params) -> dict:
    return run(DatasetParams(name=DB), FetchParams(mirror=mirror, **params), out, env=env or {})


def listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_copies_every_file_and_verifies(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    out = tmp_path / "raw"
    summary = fetch_(mirror, out)
    raw = out / DB
    assert listing(raw) == set(FILES) | {"RECORDS", "SHA256SUMS", "fetch.json"}
    for name, data in FILES.items():
        assert (raw / name).read_bytes() == data
        assert not (raw / name).is_symlink()
    assert (raw / "RECORDS").read_text() == "r1\nr2\nr10\n"
    assert summary["records"] == ["r1", "r2", "r10"]
    assert summary["files"] == len(FILES) + 1  # + RECORDS
    assert summary["verified"] == summary["files"]
    assert summary["bytes"] == sum(map(len, FILES.values())) + len(b"r1\nr2\nr10\n")
    assert summary["source"] == str(mirror)
    assert json.loads((raw / "fetch.json").read_text()) == summary  # all of one db in its folder
    assert listing(out) == {f"{DB}/{n}" for n in listing(raw)}  # no temp left


def test_record_selection_writes_subset_records_and_manifest(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror", manifest_name="SHA256SUMS.txt")
    out = tmp_path / "raw"
    summary = fetch_(mirror, out, records=["r2"])
    raw = out / DB
    assert listing(raw) == {"r2.hea", "r2.dat", "r2.atr", "r2.mat", "RECORDS", "SHA256SUMS.txt",
                            "fetch.json"}
    assert (raw / "RECORDS").read_text() == "r2\n"
    manifest = checksums.parse_manifest((raw / "SHA256SUMS.txt").read_text())
    assert manifest == {n: _sha(FILES[n]) for n in ("r2.hea", "r2.dat", "r2.atr", "r2.mat")}
    assert summary["records"] == ["r2"] and summary["verified"] == 4


def test_unknown_record_lists_available(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    with pytest.raises(ValueError, match=r"\['r3'\].*r1.*r2.*r10"):
        fetch_(mirror, tmp_path / "raw", records=["r1", "r3"])


def test_checksum_mismatch_names_file_and_leaves_nothing(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    (mirror / DB / "r2.dat").write_bytes(b"corrupted")
    out = tmp_path / "raw"
    with pytest.raises(ValueError, match=r"record r2, file r2\.dat.*corrupt"):
        fetch_(mirror, out)
    assert listing(out) == set()  # no half-written file, no staging folder
    assert list(out.iterdir()) == []


def test_failure_keeps_previous_good_fetch(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    out = tmp_path / "raw"
    fetch_(mirror, out)
    before = {n: (out / DB / n).read_bytes() for n in listing(out / DB)}
    (mirror / DB / "r1.atr").write_bytes(b"corrupted")
    with pytest.raises(ValueError, match=r"r1\.atr"):
        fetch_(mirror, out)
    assert {n: (out / DB / n).read_bytes() for n in listing(out / DB)} == before
    assert sorted(p.name for p in out.iterdir()) == [DB]


def test_no_verification_when_disabled(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    (mirror / DB / "r2.dat").write_bytes(b"corrupted")
    summary = fetch_(mirror, tmp_path / "raw", verify_checksums=False)
    assert summary["verified"] == 0
    assert (tmp_path / "raw" / DB / "r2.dat").read_bytes() == b"corrupted"


def test_files_missing_from_manifest_are_reported(tmp_path: Path, caplog) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    (mirror / DB / "r1.qrs").write_bytes(b"other annotator, not in the manifest")
    summary = fetch_(mirror, tmp_path / "raw")
    assert summary["unverified"] == ["r1.qrs"]
    assert summary["verified"] == summary["files"] - 1
    assert "r1.qrs" in caplog.text


def test_missing_mirror_names_path_and_layout(tmp_path: Path) -> None:
    where = re.escape(str(tmp_path / "nowhere" / DB))
    with pytest.raises(FileNotFoundError, match=rf"{where} not found.*<mirror>/{DB}/"):
        fetch_(tmp_path / "nowhere", tmp_path / "raw")


def test_mirror_pointing_at_database_folder_gets_a_hint(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    with pytest.raises(FileNotFoundError, match="parent folder"):
        fetch_(mirror / DB, tmp_path / "raw")


def test_params_mirror_wins_over_env_var(tmp_path: Path) -> None:
    good = make_mirror(tmp_path / "good")
    env = {fetch.ENV_MIRROR: str(tmp_path / "nowhere")}
    assert fetch_(good, tmp_path / "raw", env=env)["source"] == str(good)


def test_env_var_used_when_params_mirror_unset(tmp_path: Path) -> None:
    good = make_mirror(tmp_path / "good")
    summary = fetch_(None, tmp_path / "raw", env={fetch.ENV_MIRROR: str(good)})
    assert summary["source"] == str(good)
    assert (tmp_path / "raw" / DB / "r1.hea").is_file()


@pytest.fixture
def fake_wfdb_io(monkeypatch: pytest.MonkeyPatch):
    """Stands in for data_prep.records.wfdb_io; tests set `module.error` to make downloads fail."""
    module = types.ModuleType("data_prep.records.wfdb_io")
    module.error = None

    def download_file(db, version, filename, dest_dir):
        if module.error:
            raise module.error
        raise FileNotFoundError(filename)

    module.download_file = download_file
    module.download_records = download_file
    monkeypatch.setitem(sys.modules, "data_prep.records.wfdb_io", module)
    return module


@pytest.mark.parametrize("error", [ConnectionError("offline"), OSError("[Errno -3] DNS")])
def test_offline_without_mirror_is_one_clear_error(tmp_path: Path, fake_wfdb_io, error) -> None:
    class NewConnectionError(OSError):  # as urllib3 wraps a DNS failure
        pass

    if not isinstance(error, ConnectionError):
        error.__cause__ = NewConnectionError("name resolution")
    fake_wfdb_io.error = error
    with pytest.raises(ConnectionError) as info:
        fetch_(None, tmp_path / "raw")
    message = str(info.value)
    assert "fetch.mirror" in message and fetch.ENV_MIRROR in message
    assert f"<mirror>/{DB}/" in message and "physionet.org" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert list((tmp_path / "raw").iterdir()) == []


def test_non_network_download_error_propagates(tmp_path: Path, fake_wfdb_io) -> None:
    fake_wfdb_io.error = PermissionError("read-only destination")
    with pytest.raises(PermissionError):
        fetch_(None, tmp_path / "raw")


def test_download_path_verifies_like_a_mirror(tmp_path: Path, monkeypatch) -> None:
    source = make_mirror(tmp_path / "remote", manifest_name="SHA256SUMS.txt") / DB
    module = types.ModuleType("data_prep.records.wfdb_io")

    def download_file(db, version, filename, dest_dir):
        assert (db, version) == (DB, "1.0.0")
        return Path(fetch.shutil.copy(source / filename, dest_dir))

    def download_records(db, version, records, dest):
        for record in records:
            for path in source.glob(f"{record}.*"):
                fetch.shutil.copy(path, dest)

    module.download_file, module.download_records = download_file, download_records
    monkeypatch.setitem(sys.modules, "data_prep.records.wfdb_io", module)
    summary = fetch_(None, tmp_path / "raw", version="1.0.0", records=["r1"])
    assert summary["source"] == "physionet"
    assert summary["verified"] == 3 and summary["unverified"] == []
    assert listing(tmp_path / "raw" / DB) == {"r1.hea", "r1.dat", "r1.atr", "RECORDS",
                                              "SHA256SUMS.txt", "fetch.json"}


def test_stale_files_are_removed(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    out = tmp_path / "raw"
    fetch_(mirror, out)
    (out / DB / "stale.hea").write_text("from an earlier run")
    fetch_(mirror, out, records=["r1"])
    assert listing(out / DB) == {"r1.hea", "r1.dat", "r1.atr", "RECORDS", "SHA256SUMS",
                                 "fetch.json"}


def test_missing_header_names_record(tmp_path: Path) -> None:
    files = {k: v for k, v in FILES.items() if k != "r2.hea"}
    mirror = make_mirror(tmp_path / "mirror", files=files)
    with pytest.raises(FileNotFoundError, match=r"record r2: header .*r2\.hea"):
        fetch_(mirror, tmp_path / "raw")


def test_copy_file_never_leaves_partial_file(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src.dat"
    src.write_bytes(b"x" * 100)

    def broken_copy(a, b):
        Path(b).write_bytes(b"x" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(fetch.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        fetch.copy_file(src, tmp_path / "dst" / "src.dat")
    assert list((tmp_path / "dst").iterdir()) == []


def test_cli_reads_params(tmp_path: Path, monkeypatch) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    params = tmp_path / "params.yaml"
    params.write_text(
        f"dataset:\n  name: {DB}\nfetch:\n  mirror: {mirror}\n  version: null\n"
        "  records: [r1]\n  verify_checksums: true\n"
    )
    monkeypatch.delenv(fetch.ENV_MIRROR, raising=False)
    fetch.main(["--params", str(params), "--out", str(tmp_path / "raw")])
    assert json.loads((tmp_path / "raw" / DB / "fetch.json").read_text())["records"] == ["r1"]


def test_params_reject_unknown_keys() -> None:
    with pytest.raises(ValueError, match="mirrors"):
        fetch.parse_section({"fetch": {"mirrors": "x"}}, "fetch", FetchParams)


def test_repo_params_match_model() -> None:
    data = committed_params()
    assert fetch.parse_section(data, "fetch", FetchParams).verify_checksums is True
    assert fetch.parse_section(data, "dataset", DatasetParams).name == "mitdb"
