"""With the repository's dvc.yaml, a changed mirror re-runs fetch and an unchanged one does not.

A tiny DVC project (no git) runs the real `sources` and `fetch` stages on a synthetic mirror
named by ECG_PHYSIONET_MIRROR, as an offline cluster would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, committed_params
from tests.synthetic import write_record, write_records_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DB = "synthdb"


def _dvc(project: Path, env: dict, *args: str) -> str:
    done = subprocess.run([str(Path(sys.executable).with_name("dvc")), *args], cwd=project,
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _write_manifest(db_dir: Path) -> None:
    files = sorted(p for p in db_dir.iterdir() if p.name != "SHA256SUMS")
    (db_dir / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files))


@pytest.fixture()
def project(tmp_path: Path) -> tuple[Path, dict, Path]:
    mirror_db = tmp_path / "mirror" / DB
    for record in ("r1", "r2"):
        write_record(mirror_db, record, seconds=5)
    write_records_file(mirror_db, ["r1", "r2"])
    _write_manifest(mirror_db)
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "data_prep", root / "data_prep",
                    ignore=shutil.ignore_patterns("__pycache__"))
    params = committed_params()
    params["dataset"]["name"] = DB
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "ECG_PHYSIONET_MIRROR": str(tmp_path / "mirror"),
           "PYTHONPATH": str(root),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    _dvc(root, env, "init", "--no-scm", "-q")
    return root, env, mirror_db


def test_changed_mirror_reruns_fetch_unchanged_does_not(project) -> None:
    root, env, mirror_db = project
    assert "Running stage 'fetch'" in _dvc(root, env, "repro", "fetch")
    assert (root / "data" / "raw" / DB / "r2.hea").is_file()
    again = _dvc(root, env, "repro", "fetch")
    assert "Running stage 'sources'" in again and "Running stage 'fetch'" not in again
    assert "fetch" not in json.loads(_dvc(root, env, "status", "fetch", "--json"))

    write_record(mirror_db, "r3", seconds=5)  # the mirror gains a record
    write_records_file(mirror_db, ["r1", "r2", "r3"])
    _write_manifest(mirror_db)
    _dvc(root, env, "repro", "sources")
    status = json.loads(_dvc(root, env, "status", "fetch", "--json"))
    assert status["fetch"] == [{"changed deps": {f"data/raw/{DB}.sources.json": "modified"}}]
    assert "Running stage 'fetch'" in _dvc(root, env, "repro", "fetch")
    assert (root / "data" / "raw" / DB / "r3.hea").is_file()
