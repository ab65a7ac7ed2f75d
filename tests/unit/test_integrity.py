"""Damaged artefacts (issue 11): every file a stage or predict loads fails with its path and
the stage that makes it; evaluate never spoils a finished MLflow run; export checks the
tracking server first and leaves no half-written folder behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_prep import layout
from pipeline import evaluate, export, predict
from pipeline.runtime import bundle
from pipeline.tracking import mlflow_io, run_tracking
from tests.helpers import export_params, free_port
from tests.tiny_pipeline import stage_params


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_shard_names_the_file_and_the_stage(built, tmp_path):
    spectrograms = tmp_path / "spectrograms"
    shutil.copytree(built["spectrograms"], spectrograms)
    shard = layout.shard_path(spectrograms, "r3")
    _truncate(shard)
    with pytest.raises(ValueError, match=rf"{shard}: truncated .*re-run the spectrogram stage"):
        layout.load_shard(spectrograms, "r3")
    with pytest.raises(ValueError, match=r"re-run the segment stage"):
        layout.load_shard(spectrograms, "r3", stage="segment")


def test_failed_evaluate_keeps_a_finished_run_finished(built, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sqlite store writes its artifacts to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(mlflow_io.URI_ENV, uri)
    model, spectrograms = tmp_path / "model", tmp_path / "spectrograms"
    shutil.copytree(built["model"], model)
    shutil.copytree(built["spectrograms"], spectrograms)
    run_id = mlflow_io.start_run("unit", "evaluated", source_tags=False)
    mlflow_io.end_run(run_id, "FINISHED")  # as an earlier, successful evaluate left it
    (model / run_tracking.RUN_FILE).write_text(json.dumps({"run_id": run_id}))
    shard = layout.shard_path(spectrograms, "r3")
    _truncate(shard)
    params = evaluate.EvaluateParams.model_validate(
        {**stage_params()["evaluate"], "n_boot": 5, "device": "cpu", "num_workers": 0})
    tracking_params = run_tracking.TrackingParams(experiment="unit", log_model=False)
    with pytest.raises(ValueError, match=rf"{shard}: truncated"):
        evaluate.run(params, model, spectrograms, built["splits"], tmp_path / "reports",
                     tracking_params)
    run = mlflow_io._client(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "truncated" in run.data.tags["last_error"]


def test_truncated_weights_name_the_file(built, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(built["model"], model)
    _truncate(model / "model.safetensors")
    with pytest.raises(ValueError, match=rf"{model / 'model.safetensors'}: damaged weights .*"
                                         r"re-run the train stage"):
        evaluate.load_model(model)


def test_altered_onnx_is_refused(built, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(built["bundle"], folder)
    onnx = folder / bundle.MODEL_ONNX
    data = bytearray(onnx.read_bytes())
    data[-100] ^= 0xFF  # still parseable by onnxruntime: a weight changed
    onnx.write_bytes(bytes(data))
    with pytest.raises(bundle.BundleFormatError, match=rf"{onnx}: sha256 .* differs .*re-export"):
        predict.load_bundle(folder)


def test_truncated_bundle_json_names_the_file(built, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(built["bundle"], folder)
    _truncate(folder / bundle.BUNDLE_JSON)
    with pytest.raises(bundle.BundleFormatError, match=rf"{folder / 'bundle.json'}: not valid "
                                                       r"JSON .*re-export"):
        predict.load_bundle(folder)


def test_export_checks_the_tracking_server_first(built, tmp_path, monkeypatch):
    monkeypatch.setenv(mlflow_io.URI_ENV, f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(export, "recorded_preprocessing",
                        lambda *a: pytest.fail("work before the check"))
    out = tmp_path / "export" / "run"
    with pytest.raises(mlflow_io.TrackingServerError, match="unreachable"):
        export.run(export_params(register_model=True), built["model"], built["reports"],
                   built["segments"], built["spectrograms"], out, built["splits"])
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_export_removes_what_an_interrupted_export_left(built, tmp_path):
    out = tmp_path / "export" / "run"
    stale = out.parent / ".run.k1ll3d"
    (stale / "partial").mkdir(parents=True)
    (stale / "partial" / "model.onnx").write_bytes(b"half")
    other = out.parent / ".other.abc"
    other.mkdir()
    export.run(export_params(), built["model"], built["reports"], built["segments"],
               built["spectrograms"], out, built["splits"])
    assert sorted(p.name for p in out.parent.iterdir()) == [".other.abc", "run"]
