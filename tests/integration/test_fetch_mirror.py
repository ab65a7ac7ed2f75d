"""Stage `fetch` on the real mitdb mirror (../shared), two records."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from data_prep.fetch import DatasetParams, FetchParams, run
from data_prep.records.checksums import parse_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fetch_two_mitdb_records_from_mirror(physionet_mirror: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    params = FetchParams(mirror=physionet_mirror, records=["100", "201"])
    summary = run(DatasetParams(name="mitdb"), params, out, env={})

    raw = out / "mitdb"
    expected = {f"{r}.{ext}" for r in ("100", "201") for ext in ("hea", "dat", "atr")}
    assert {p.name for p in raw.iterdir()} == expected | {"RECORDS", "SHA256SUMS", "fetch.json"}
    assert (raw / "RECORDS").read_text().split() == ["100", "201"]
    assert summary["files"] == summary["verified"] == 6
    assert summary["unverified"] == []
    source = parse_manifest((physionet_mirror / "mitdb" / "SHA256SUMS").read_text())
    for name in expected:
        assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == source[name]
    assert summary["bytes"] == sum((raw / n).stat().st_size for n in expected)
