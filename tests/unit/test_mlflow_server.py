"""Train + evaluate CLIs against a real `mlflow server` on loopback, read back via MlflowClient.

One MLflow run per trained model: train opens it (params, tags, per-epoch metrics) and
writes its id to models/<run>/mlflow_run.json; evaluate completes the same run.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from pipeline import evaluate, train
from pipeline.tracking import mlflow_io, run_tracking
from pipeline.training import fitting
from tests.helpers import QUICK, committed_params, free_port
from tests.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "test-ecg-spectrogram"


def write_params(folder: Path, log_model: bool = False) -> Path:
    """The repository's params.yaml with quick train/evaluate settings and a test experiment."""
    params = committed_params()
    params["train"] |= {**QUICK, "backbones": ["test_resnet"], "freeze_modes": ["frozen"]}
    params["evaluate"] |= {"n_boot": 20, "device": "cpu", "batch_size": 16,
                           "splits": ["test", "val"]}
    params["tracking"] |= {"experiment": EXPERIMENT, "log_model": log_model}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def cli(params: Path, spec: Path, splits: Path, model: Path, report: Path) -> None:
    data = ["--spectrograms", str(spec), "--splits", str(splits)]
    train.main(["--params", str(params), "--backbone", "test_resnet", "--freeze", "frozen",
                *data, "--out", str(model)])
    evaluate.main(["--params", str(params), "--model", str(model), *data, "--out", str(report)])


def test_train_and_evaluate_log_one_run(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv(mlflow_io.URI_ENV, mlflow_server)
    monkeypatch.chdir(tmp_path)  # nothing may land in the repository (mlflow.db, mlruns)
    spec, splits = write_synthetic(tmp_path)
    params = write_params(tmp_path, log_model=True)
    model, report = tmp_path / "models" / "test_resnet-frozen", tmp_path / "reports" / "r"
    cli(params, spec, splits, model, report)

    saved = json.loads((model / run_tracking.RUN_FILE).read_text())
    run_id = saved["run_id"]
    config = json.loads((report / "details" / "evaluation_config.json").read_text())
    assert config["mlflow_run_id"] == run_id and saved["tracking_uri"] == mlflow_server
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "test_resnet-frozen"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert run.data.params["backbone"] == "test_resnet"
    assert run.data.params["params.epochs"] == "2"
    assert run.data.params["preprocessing.channels"] == "grey3"
    tags = run.data.tags
    assert tags["backbone"] == "test_resnet" and tags["freeze"] == "frozen"
    assert tags["weights"].startswith("random") and tags["device"] == "cpu"
    assert tags["evaluate.subset"] == "false"
    assert "examples (< 30)" in tags["caveats.test"]  # a few synthetic test images per class
    history = pd.read_csv(model / "history.csv")
    logged = client.get_metric_history(run_id, "val_macro_f1")
    assert [m.step for m in logged] == [1, 2]
    assert [m.value for m in logged] == pytest.approx(history["val_macro_f1"].tolist())
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(run.data.metrics)
    metrics = json.loads((report / "metrics.json").read_text())
    assert run.data.metrics["eval_test_macro_f1"] == pytest.approx(metrics["test"]["macro_f1"])
    assert run.data.metrics["eval_test_S_se_ci_low"] == pytest.approx(
        metrics["test"]["S"]["se_ci_low"])
    assert run.data.metrics["eval_val_balanced_accuracy"] == pytest.approx(
        metrics["val"]["balanced_accuracy"])
    assert run.data.metrics["best_val_macro_f1"] == pytest.approx(history["val_macro_f1"].max())
    artifacts = _artifacts(client, run_id)
    assert {"train/resolved_config.json", "train/history.csv", "config/evaluation_config.json",
            "evaluation/predictions.csv", "evaluation/metrics.json",
            "evaluation/details/classification_report_test.txt",
            "evaluation/details/classification_report_test.json",
            "evaluation/details/test/confusion_matrix.png",
            "evaluation/details/test/confusion_counts.csv",
            "evaluation/details/test/per_record.csv", "evaluation/details/val/roc.png"} <= artifacts
    models = client.search_logged_models([run.info.experiment_id])
    assert [m.source_run_id for m in models] == [run_id]

    train.main(["--params", str(params), "--backbone", "test_resnet", "--freeze", "frozen",
                "--spectrograms", str(spec), "--splits", str(splits), "--out", str(model)])
    assert json.loads((model / run_tracking.RUN_FILE).read_text())["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"  # same run, resumed and closed


def test_every_artifact_lands_in_the_servers_store_and_none_beside_the_client(
        mlflow_server, mlflow_server_artifacts, tmp_path, monkeypatch):
    """A shared server (--serve-artifacts): reports, plots, configs and the logged model are
    uploaded through it; the client's folder keeps only the stages' own outputs."""
    monkeypatch.setenv(mlflow_io.URI_ENV, mlflow_server)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    monkeypatch.chdir(client_dir)
    spec, splits = write_synthetic(client_dir)
    params = write_params(client_dir, log_model=True)
    model, report = client_dir / "models" / "m", client_dir / "reports" / "m"
    cli(params, spec, splits, model, report)

    run_id = json.loads((model / run_tracking.RUN_FILE).read_text())["run_id"]
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied, not a client path
    store = mlflow_server_artifacts
    run_store = store / urlparse(run.info.artifact_uri).path.lstrip("/")
    artifacts = _artifacts(client, run_id)
    assert {"train/history.csv", "evaluation/metrics.json",
            "evaluation/details/test/confusion_matrix.png"} <= artifacts
    missing = {a for a in artifacts if not (run_store / a).is_file()}
    assert not missing, f"listed by the run but not in the server's store {run_store}"
    [logged] = client.search_logged_models([run.info.experiment_id],
                                           filter_string=f"source_run_id = '{run_id}'")
    assert logged.artifact_location.startswith("mlflow-artifacts:/")
    model_store = store / urlparse(logged.artifact_location).path.lstrip("/")
    assert (model_store / "MLmodel").is_file() and (model_store / "data").is_dir()

    # the client folder holds its inputs, the stages' outputs and the local feature store
    # (frozen backbone features, a cache beside the data), nothing MLflow wrote
    assert {p.name for p in client_dir.iterdir()} == {
        "params.yaml", "spectrograms", "splits", "models", "reports", ".feature_store"}
    stray = [p for p in client_dir.rglob("*")
             if p.name in ("mlruns", "mlartifacts", "mlflow.db", "MLmodel")]
    assert not stray


def test_failed_train_marks_the_run_failed(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv(mlflow_io.URI_ENV, mlflow_server)
    monkeypatch.chdir(tmp_path)
    spec, splits = write_synthetic(tmp_path)

    def diverge(*args, **kwargs):
        raise RuntimeError("loss is NaN")

    monkeypatch.setattr(fitting, "fit_folds", diverge)
    out = tmp_path / "run"
    tracking_params = run_tracking.TrackingParams(experiment=EXPERIMENT, log_model=False)
    with pytest.raises(RuntimeError, match="NaN"):
        train.run(train.TrainParams.model_validate(
            {**committed_params()["train"], **QUICK}),
            "test_resnet", "frozen", spec, splits, out, tracking_params)
    run_id = json.loads((out / run_tracking.RUN_FILE).read_text())["run_id"]
    assert MlflowClient(mlflow_server).get_run(run_id).info.status == "FAILED"


def test_unreachable_server_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv(mlflow_io.URI_ENV, f"http://127.0.0.1:{free_port()}")
    spec, splits = write_synthetic(tmp_path)
    params = write_params(tmp_path)
    model = tmp_path / "models" / "m"
    with pytest.raises(mlflow_io.TrackingServerError, match="unset MLFLOW_TRACKING_URI"):
        train.main(["--params", str(params), "--backbone", "test_resnet", "--freeze", "frozen",
                    "--spectrograms", str(spec), "--splits", str(splits), "--out", str(model)])
    assert not model.exists()  # no model, no checkpoint, no features
    with pytest.raises(mlflow_io.TrackingServerError):
        evaluate.main(["--params", str(params), "--model", str(model), "--spectrograms",
                       str(spec), "--splits", str(splits), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found
