"""MLflow tracking against a local sqlite store and a real `mlflow server` on loopback.

`mlflow_server` (tests/conftest.py) starts a real server (sqlite backend, proxied artifacts)
in a temporary folder once per session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.tracking import mlflow_io, provenance
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    # One store per module: creating an mlflow sqlite database takes seconds.
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def uri(store_dir, monkeypatch) -> str:
    """A sqlite store, set through the environment as users do.

    The working directory moves too: a sqlite store puts artifacts in ./mlruns.
    """
    monkeypatch.chdir(store_dir)
    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    monkeypatch.setenv(mlflow_io.URI_ENV, uri)
    return uri


def test_uri_resolution(monkeypatch):
    monkeypatch.delenv(mlflow_io.URI_ENV, raising=False)
    assert mlflow_io.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv(mlflow_io.URI_ENV, "http://example:5000")
    assert mlflow_io.tracking_uri() == "http://example:5000"
    assert mlflow_io.tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_flatten_params():
    long = "x" * 7000
    flat = mlflow_io.flatten_params(
        {"train": {"lr": 1e-3, "freeze": "partial", "band": [0.5, 40.0], "w": None}, "v": long}
    )
    assert flat["train.lr"] == "0.001" and flat["train.freeze"] == "partial"
    assert flat["train.band"] == "[0.5, 40.0]" and flat["train.w"] == "null"
    assert len(flat["v"]) == 6000 and flat["v"].endswith("...")


def test_source_info(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  spectrogram:\n    cmd: x\n    outs:\n"
        "    - path: data/spectrograms\n      hash: md5\n      md5: abc123.dir\n"
        "    - path: reports/x.json\n      md5: def\n"
    )
    assert provenance.dvc_data_version(lock) == {"data/spectrograms": "abc123.dir"}
    assert provenance.dvc_data_version(tmp_path / "none.lock") == {}
    assert provenance.git_commit(tmp_path) is None
    commit = provenance.git_commit(REPO)
    assert commit is None or len(commit) == 40
    assert provenance.source_info(tmp_path, lock) == {"dvc.data/spectrograms": "abc123.dir"}


def test_run_lifecycle_sqlite(uri, tmp_path):
    run_id = mlflow_io.start_run("unit", "r1", {"train": {"epochs": 2}}, {"stage": "train"})
    for epoch, loss in enumerate([0.9, 0.5]):
        mlflow_io.log_epoch_metrics(run_id, {"train_loss": loss, "val": {"macro_f1": 0.4}}, epoch)
    mlflow_io.log_final_metrics(run_id, {"test": {"macro_f1": 0.5, "S": {"se": 0.7, "ppv": None}}})
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(b"png")
    mlflow_io.log_artifacts(run_id, tmp_path / "plots", "plots")
    mlflow_io.end_run(run_id)

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"train.epochs": "2"}
    assert run.data.metrics == {"train_loss": 0.5, "val_macro_f1": 0.4,
                                "test_macro_f1": 0.5, "test_S_se": 0.7}
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0, 1]
    assert run.data.tags["stage"] == "train"
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/a.png"]


def test_resume_in_another_process(uri):
    run_id = mlflow_io.start_run("unit", "train-then-evaluate", source_tags=False)
    code = (
        "import sys; from pipeline.tracking import mlflow_io as t; r = sys.argv[1]; "
        "t.resume_run(r); t.log_final_metrics(r, {'test': {'accuracy': 0.9}}); t.end_run(r)"
    )
    subprocess.run([sys.executable, "-c", code, run_id], cwd=REPO, check=True, timeout=120,
                   env={**os.environ, mlflow_io.URI_ENV: uri})
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"test_accuracy": 0.9}


def test_errors_name_the_fix(uri):
    with pytest.raises(ValueError, match="same MLFLOW_TRACKING_URI"):
        mlflow_io.resume_run("0" * 32)
    run_id = mlflow_io.start_run("unit", "fails", source_tags=False)
    with pytest.raises(RuntimeError), mlflow_io.fail_on_error(run_id):
        raise RuntimeError("training diverged")
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    with pytest.raises(FileNotFoundError, match="no such file"):
        mlflow_io.log_artifacts(run_id, Path("/nonexistent/plot.png"))
    with pytest.raises(ValueError, match="FINISHED"):
        mlflow_io.end_run(run_id, "DONE")


def test_pytorch_model_signature_and_registry(uri):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    run_id = mlflow_io.start_run("unit", "with-model", source_tags=False)
    example = np.zeros((2, 3, 2, 2), dtype=np.float32)
    model_uri = mlflow_io.log_pytorch_model(run_id, model, example)
    version = mlflow_io.register_model(run_id, "model", "ecg-unit", alias="champion")
    client = MlflowClient(uri)
    assert client.get_model_version_by_alias("ecg-unit", "champion").version == int(version)
    assert client.get_logged_model(model_uri.removeprefix("models:/")).source_run_id == run_id
    signature = mlflow.models.get_model_info(model_uri).signature
    assert signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 2, 2)
    assert signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3)


def test_unreachable_server_fails_fast():
    url = f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens
    start = time.monotonic()
    with pytest.raises(mlflow_io.TrackingServerError, match="unset MLFLOW_TRACKING_URI") as err:
        mlflow_io.check_tracking_server(url)
    assert url in str(err.value) and time.monotonic() - start < 5
    mlflow_io.check_tracking_server("sqlite:///mlflow.db")  # local stores need no server


def test_real_server_round_trip(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.setenv(mlflow_io.URI_ENV, mlflow_server)
    mlflow_io.check_tracking_server()
    run_id = mlflow_io.start_run("server", "r1", {"model": {"name": "resnet18"}}, {"k": "v"})
    mlflow_io.log_epoch_metrics(run_id, {"val_macro_f1": 0.3}, epoch=0)
    mlflow_io.log_final_metrics(run_id, {"test": {"V": {"se": 0.8}}})
    report = tmp_path / "classification_report.txt"
    report.write_text("precision recall\n")
    mlflow_io.log_artifacts(run_id, [report], "reports")
    mlflow_io.end_run(run_id)

    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model.name": "resnet18"} and run.data.tags["k"] == "v"
    assert run.data.metrics == {"val_macro_f1": 0.3, "test_V_se": 0.8}
    assert [a.path for a in client.list_artifacts(run_id, "reports")] == [
        "reports/classification_report.txt"
    ]
    local = client.download_artifacts(run_id, "reports/classification_report.txt", str(tmp_path))
    assert Path(local).read_text() == "precision recall\n"
