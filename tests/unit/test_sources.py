"""The `sources` stage: its description changes exactly when what fetch would copy changes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from data_prep import sources

DB = "toydb"


def make_mirror(root: Path) -> Path:
    """<root>/<DB>/ with two records' files, RECORDS and SHA256SUMS; returns <root>."""
    db_dir = root / DB
    db_dir.mkdir(parents=True)
    files = {"r1.hea": b"r1 1 360 10\n", "r1.dat": b"\x00" * 20, "r2.hea": b"r2 1 360 10\n",
             "r2.dat": b"\x01" * 20, "RECORDS": b"r1\nr2\n"}
    for name, data in files.items():
        (db_dir / name).write_bytes(data)
    (db_dir / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items()))
    return root


def describe(mirror: Path | None, env: dict | None = None) -> dict:
    return sources.describe(DB, {"mirror": mirror, "version": None}, env or {})


def test_description_follows_the_mirror(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    first = describe(mirror)
    assert first["source"] == "mirror" and first["manifest"] == "SHA256SUMS"
    assert describe(mirror) == first  # stable when nothing changed
    db = mirror / DB
    (db / "RECORDS").write_text("r1\n")
    second = describe(mirror)
    assert second["records_sha256"] != first["records_sha256"]
    (db / "SHA256SUMS").write_text((db / "SHA256SUMS").read_text() + "\n")
    third = describe(mirror)
    assert third["manifest_sha256"] != second["manifest_sha256"]
    stat = (db / "r1.dat").stat()  # a file replaced in place, same size: its mtime moves
    os.utime(db / "r1.dat", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert describe(mirror)["listing_sha256"] != third["listing_sha256"]


def test_same_mirror_elsewhere_is_the_same_source(tmp_path: Path) -> None:
    a = make_mirror(tmp_path / "a")
    b = tmp_path / "b"
    (b / DB).mkdir(parents=True)
    for path in (a / DB).iterdir():
        (b / DB / path.name).write_bytes(path.read_bytes())
        stat = path.stat()
        os.utime(b / DB / path.name, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert describe(a) == describe(b)


def test_env_mirror_download_and_missing_folder(tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    assert describe(None, {"ECG_PHYSIONET_MIRROR": str(mirror)}) == describe(mirror)
    assert describe(None) == {"database": DB, "source": "physionet", "version": None}
    assert describe(tmp_path / "nowhere")["missing"] == f"<mirror>/{DB}"


def test_cli_writes_the_json(tmp_path: Path, monkeypatch) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    params = tmp_path / "params.yaml"
    params.write_text(f"dataset:\n  name: {DB}\nfetch:\n  mirror: {mirror}\n")
    monkeypatch.delenv("ECG_PHYSIONET_MIRROR", raising=False)
    sources.main(["--params", str(params), "--out", str(tmp_path / "out" / f"{DB}.json")])
    assert json.loads((tmp_path / "out" / f"{DB}.json").read_text()) == describe(mirror)
