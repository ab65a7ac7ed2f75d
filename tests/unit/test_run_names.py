"""Runs are kept apart by database: default folders, MLflow run names and registered names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_prep.params import parse_section
from pipeline import evaluate, export, train
from pipeline.tracking import run_tracking
from tests.helpers import committed_params


def test_run_name_carries_database_and_dvc_experiment() -> None:
    folder = Path("models/svdb/resnet18-frozen")
    assert run_tracking.run_name(folder, "svdb", env={}) == "svdb/resnet18-frozen"
    assert run_tracking.run_name(folder, "svdb", env={"DVC_EXP_NAME": "cpu-quick"}) == (
        "svdb/resnet18-frozen (cpu-quick)")
    assert run_tracking.run_name(folder, None, env={}) == "resnet18-frozen"


def test_registered_name_carries_database() -> None:
    params = parse_section(committed_params(), "export", export.ExportParams)
    name = params.registered_name
    assert run_tracking.registered_name(name, "svdb") == f"{name}-svdb"
    assert run_tracking.registered_name(name, None) == name


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    data = committed_params()
    data["dataset"]["name"] = "svdb"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _capture(monkeypatch: pytest.MonkeyPatch, module) -> list[tuple]:
    calls: list[tuple] = []
    monkeypatch.setattr(module, "run", lambda *args, **kwargs: calls.append(args))
    return calls


def test_cli_defaults_are_per_database(monkeypatch: pytest.MonkeyPatch, params_file: Path) -> None:
    calls = _capture(monkeypatch, train)
    train.main(["--params", str(params_file), "--backbone", "resnet18", "--freeze", "frozen"])
    assert calls[0][3:6] == (Path("data/spectrograms/svdb"), Path("data/splits/svdb"),
                             Path("models/svdb/resnet18-frozen"))
    calls = _capture(monkeypatch, evaluate)
    evaluate.main(["--params", str(params_file), "--model", "models/svdb/resnet18-frozen"])
    assert calls[0][2:5] == (Path("data/spectrograms/svdb"), Path("data/splits/svdb"),
                             Path("reports/svdb/resnet18-frozen"))
    calls = _capture(monkeypatch, export)
    export.main(["--params", str(params_file), "--model", "models/svdb/resnet18-frozen"])
    assert calls[0][2:] == (Path("reports/svdb/resnet18-frozen"), Path("data/segments/svdb"),
                            Path("data/spectrograms/svdb"),
                            Path("models/export/svdb/resnet18-frozen"), Path("data/splits/svdb"))
