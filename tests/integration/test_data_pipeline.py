"""fetch -> segment -> split -> spectrogram through `dvc repro`, on real mitdb records.

Runs the repository's own dvc.yaml in a temporary project, with the mirror given the way
offline users give it (ECG_PHYSIONET_MIRROR), on a handful of records to stay quick.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.helpers import REPO, write_committed_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DS1_PART = ["101", "106", "108", "109", "112", "114", "118"]
DS2_PART = ["100", "103", "105"]


def _dvc(project: Path, *args: str, env: dict) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), *args],
        cwd=project, env=env, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _set_params(project: Path, **sections: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, physionet_mirror: Path) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("project")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    write_committed_params(root / "params.yaml")
    for folder in ("configs", "data_prep"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "ECG_PHYSIONET_MIRROR": str(physionet_mirror),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    _dvc(root, "init", "--no-scm", "-q", env=env)
    _set_params(root, fetch={"records": DS1_PART + DS2_PART}, spectrogram={"workers": 2})
    _dvc(root, "repro", "split", "spectrogram", env=env)
    return root, env


def test_outputs_follow_the_stage_contracts(project: tuple[Path, dict]) -> None:
    root, _ = project
    raw = sorted(p.stem for p in (root / "data/raw/mitdb").glob("*.hea"))
    assert raw == sorted(DS1_PART + DS2_PART)

    segments = pd.read_csv(root / "data/segments/mitdb/index.csv", dtype={"record": str})
    images = pd.read_csv(root / "data/spectrograms/mitdb/index.csv", dtype={"record": str})
    assert len(images) == len(segments) > 15000
    shard = np.load(root / "data/spectrograms/mitdb/shards/100.npy", mmap_mode="r")
    assert shard.dtype == np.uint8
    assert shard.shape == ((images.record == "100").sum(), 224, 224)
    assert set(images.label) <= {"N", "S", "V", "F", "Q"}
    previews = (root / "data/spectrograms/mitdb/preview").glob("*.png")
    assert {p.stem for p in previews} == set(images.label)


def test_split_is_inter_patient(project: tuple[Path, dict]) -> None:
    root, _ = project
    assignment = pd.read_csv(root / "data/splits/mitdb/assignment.csv", dtype=str)
    splits = assignment.groupby("split").record.apply(set).to_dict()
    assert splits["test"] == set(DS2_PART)
    assert splits["train"] | splits["val"] == set(DS1_PART)
    assert not splits["train"] & splits["val"]
    assert assignment.groupby("subject").split.nunique().max() == 1
    summary = json.loads((root / "data/splits/mitdb/summary.json").read_text())
    assert summary["leakage"]["checked"] is True


def test_unchanged_pipeline_runs_nothing_and_a_spectrogram_param_reruns_only_spectrogram(
    project: tuple[Path, dict],
) -> None:
    root, env = project
    again = _dvc(root, "repro", "split", "spectrogram", env=env)
    # only `sources` (always run: it describes the mirror in well under a second) runs again
    assert [line for line in again.splitlines() if line.startswith("Running stage")] == [
        "Running stage 'sources':"]
    _set_params(root, spectrogram={"dynamic_range_db": 50.0})
    status = json.loads(_dvc(root, "status", "spectrogram", "--json", env=env))
    assert set(status) - {"sources"} == {"spectrogram"}  # sources: always run, never stale
