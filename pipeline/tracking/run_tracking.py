"""Glue between the model-side stages and MLflow: one MLflow run per trained model.

The train stage opens the run and writes its id to `models/<run>/mlflow_run.json`; a
resumed train (same folder, same fingerprint, same store) reopens that run instead of
starting another. The evaluate stage reopens the run by that id, adds the test results and
closes it; the export stage registers the model and attaches the bundle. The stages call this
module only; everything MLflow-specific goes through `pipeline.tracking.mlflow_io` (the only
module that imports mlflow); this module holds the `tracking:` params and the run-id file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field

from data_prep.layout import read_json, write_json
from data_prep.params import StrictModel, load_section, read_yaml
from pipeline.tracking import mlflow_io
from pipeline.tracking.mlflow_io import check_tracking_server
from pipeline.training.run_folder import RUN_FILE

log = logging.getLogger(__name__)

__all__ = ["RUN_FILE", "TrackingParams", "check_tracking_server", "cross_evaluation_run",
           "evaluation_run", "load_tracking", "log_cross_evaluation", "read_run_file",
           "register_bundle", "registered_name", "run_name", "train_run"]
DVC_EXP_NAME = "DVC_EXP_NAME"  # set by `dvc exp run` for every stage command


class TrackingParams(StrictModel):
    """The shared `tracking:` section of params.yaml (the comments there say why)."""

    experiment: str = Field(min_length=1)
    log_model: bool


def load_tracking(path: Path) -> TrackingParams | None:
    """The `tracking:` section of a params file; None (MLflow off, said in the log) when the
    file has none, e.g. a one-stage params file written for a test or a quick experiment."""
    if "tracking" not in read_yaml(path):
        log.warning("%s has no 'tracking:' section: this run is not logged to MLflow", path)
        return None
    return load_section("tracking", TrackingParams, path)


def public_uri(uri: str) -> str:
    """The tracking URI without user:password, fit to be written into a run folder."""
    parts = urlparse(uri)
    if parts.username or parts.password:
        port = f":{parts.port}" if parts.port else ""
        return parts._replace(netloc=f"{parts.hostname or ''}{port}").geturl()
    return uri


def read_run_file(folder: Path) -> dict[str, Any]:
    """The train stage's `mlflow_run.json` of a run folder.

    Raises:
        FileNotFoundError: the folder was trained without tracking; names the fix.
    """
    path = folder / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing, so there is no MLflow run to add the evaluation to; re-run "
            f"the train stage for this model (dvc repro, or python -m pipeline.train ... "
            f"--out {folder})"
        )
    return read_json(path)


def _reusable_run(folder: Path, fingerprint: str, experiment: str) -> str | None:
    """The run id of an earlier, interrupted or finished train of the same run, if any."""
    path = folder / RUN_FILE
    if not path.is_file():
        return None
    saved = read_json(path)
    same = (saved.get("fingerprint") == fingerprint and saved.get("experiment") == experiment
            and saved.get("tracking_uri") == public_uri(mlflow_io.tracking_uri()))
    if not same:
        log.info("%s belongs to another configuration or store: starting a new MLflow run", path)
        return None
    try:
        mlflow_io.resume_run(saved["run_id"])
    except ValueError as err:  # deleted from the store since
        log.warning("%s; starting a new MLflow run", err)
        return None
    log.info("resuming MLflow run %s from %s", saved["run_id"], path)
    return str(saved["run_id"])


def run_name(folder: Path, database: str | None, env: Mapping[str, str] = os.environ) -> str:
    """`<db>/<backbone>-<freeze>`, with ` (<experiment>)` inside `dvc exp run` (DVC_EXP_NAME)."""
    name = f"{database}/{folder.name}" if database else folder.name
    return f"{name} ({env[DVC_EXP_NAME]})" if env.get(DVC_EXP_NAME) else name


@contextmanager
def train_run(
    params: TrackingParams,
    folder: Path,
    fingerprint: str,
    run_params: Mapping[str, Any],
    tags: Mapping[str, Any],
    database: str | None = None,
) -> Iterator[str]:
    """Opens (or reopens) the MLflow run of one train folder for the duration of training.

    The run id is written to `folder/mlflow_run.json` at once, so an interrupted train
    resumes into the same run. The run ends FINISHED when the block completes (evaluate
    reopens it) and FAILED when it raises.

    Args:
        params: the `tracking:` section.
        folder: the train stage's output folder; its name is in the run name (`run_name`).
        fingerprint: the train fingerprint; a run is reused only for the same one.
        run_params: nested params logged as dotted keys (train params, resolved config).
        tags: tags of the run (backbone, freeze mode, weights, device...).
        database: the data's database, in the run name and the `database` tag.

    Yields:
        The run id.
    """
    run_id = _reusable_run(folder, fingerprint, params.experiment)
    if run_id is None:
        name = run_name(folder, database)
        tags = {**tags, "database": database, "dvc.experiment": os.environ.get(DVC_EXP_NAME)}
        run_id = mlflow_io.start_run(params.experiment, name, run_params, tags)
        write_json(folder / RUN_FILE, {
            "run_id": run_id, "experiment": params.experiment, "run_name": name,
            "tracking_uri": public_uri(mlflow_io.tracking_uri()), "fingerprint": fingerprint,
        })
    with mlflow_io.fail_on_error(run_id):
        yield run_id
    mlflow_io.end_run(run_id, "FINISHED")


def epoch_logger(run_id: str):
    """An `on_epoch_end` callback that logs the newest history row with step = epoch."""

    def log_epoch(history: list[dict[str, float]]) -> None:
        row = dict(history[-1])
        epoch = int(row.pop("epoch"))
        mlflow_io.log_epoch_metrics(run_id, row, epoch)

    return log_epoch


def log_epoch(run_id: str, metrics: Mapping[str, Any], epoch: int) -> None:
    """One epoch's metrics (names as given, e.g. fold-prefixed) with step = epoch."""
    mlflow_io.log_epoch_metrics(run_id, metrics, epoch)


def log_train_outputs(run_id: str, metrics: Mapping[str, Any], files: list[Path]) -> None:
    """Final train scalars (best epoch, best val macro-F1...) and the files behind them."""
    mlflow_io.log_final_metrics(run_id, metrics)
    mlflow_io.log_artifacts(run_id, files, "train")


def log_evaluation(
    run_id: str,
    out: Path,
    metrics: Mapping[str, Any],
    tags: Mapping[str, Any],
    config_files: list[Path],
    preview: Path,
    model: Any | None = None,
    input_example: Any | None = None,
) -> None:
    """Adds an evaluation to the model's run: metrics, reports, previews, tags, model.

    Args:
        run_id: the run train opened.
        out: the evaluate stage's report folder, logged whole under "evaluation/".
        metrics: `{split: metrics tree}`; logged as eval_test_macro_f1,
            eval_test_S_se_ci_low, eval_val_macro_f1... (the prefix keeps them apart from
            train's per-epoch val_macro_f1 curve)
        tags: evaluate settings (subset, device, precision...).
        config_files: resolved configs, logged under "config/".
        preview: the spectrogram stage's preview grids (skipped when absent).
        model: a module from uint8 images to probabilities, logged with a signature
            inferred from `input_example` (slow: traced and uploaded); None skips it.
        input_example: uint8 images (B, H, W) for the model's signature.
    """
    mlflow_io.log_final_metrics(run_id, {"eval": metrics})
    mlflow_io.set_tags(run_id, tags)
    mlflow_io.log_artifacts(run_id, out, "evaluation")
    mlflow_io.log_artifacts(run_id, config_files, "config")
    if preview.is_dir():
        mlflow_io.log_artifacts(run_id, preview, "preview")
    else:
        log.info("%s: no preview grids to log", preview)
    if model is not None and input_example is not None:
        uri = mlflow_io.log_pytorch_model(run_id, model, input_example)
        log.info("logged the model to MLflow as %s", uri)


@contextmanager
def evaluation_run(params: TrackingParams | None, folder: Path) -> Iterator[str | None]:
    """Reopens the MLflow run train opened for `folder` (its mlflow_run.json) around an
    evaluation: FINISHED when the block completes, FAILED when it raises, except that a run an
    earlier evaluation FINISHED stays FINISHED (the error in its `last_error` tag). Yields the
    run id, or None without tracking (`params` None)."""
    if params is None:
        yield None
        return
    check_tracking_server()  # fail before minutes of inference, not after
    run_id = str(read_run_file(folder)["run_id"])
    previous = mlflow_io.resume_run(run_id)
    with mlflow_io.fail_on_error(run_id, previous_status=previous):
        yield run_id
    mlflow_io.end_run(run_id, "FINISHED")


def registered_name(name: str, database: str | None) -> str:
    """`export.registered_name` + "-<db>": each database's models are versioned apart."""
    return f"{name}-{database}" if database else name


def register_bundle(folder: Path, bundle_dir: Path, name: str, alias: str | None) -> str:
    """Attaches an export bundle to the model's run and registers the model evaluate logged
    (artifact "model") as a new version of `name`, with `alias`; returns the version.

    Raises:
        FileNotFoundError: the model folder has no mlflow_run.json.
        ValueError: MLflow could not register the model, naming the fixes.
    """
    run_id = str(read_run_file(folder)["run_id"])
    mlflow_io.log_artifacts(run_id, bundle_dir, "bundle")
    try:
        version = mlflow_io.register_model(run_id, "model", name, alias)
    except ValueError as err:
        raise ValueError(
            f"cannot register the model of MLflow run {run_id} ({folder}): {err}. Set "
            "mlflow_io.log_model: true and re-run evaluate, or set export.register_model: false "
            f"(the bundle {bundle_dir} is complete without it)") from err
    mlflow_io.set_tags(run_id, {"export.bundle": str(bundle_dir),
                               "export.registered": f"{name}/{version}"})
    log.info("registered %s version %s (alias %s)", name, version, alias)
    return version


@contextmanager
def cross_evaluation_run(params: TrackingParams, name: str, run_params: Mapping[str, Any],
                         tags: Mapping[str, Any]) -> Iterator[str]:
    """A new MLflow run for one cross-database evaluation (`pipeline.cross_evaluate`), in the
    project's experiment beside the training runs: FINISHED when the block completes, FAILED
    when it raises. Yields the run id."""
    check_tracking_server()  # fail before minutes of inference, not after
    run_id = mlflow_io.start_run(params.experiment, name, run_params, tags)
    with mlflow_io.fail_on_error(run_id):
        yield run_id
    mlflow_io.end_run(run_id, "FINISHED")


def log_cross_evaluation(run_id: str, out: Path, metrics: Mapping[str, Any]) -> None:
    """Metrics as evaluate logs them (eval_<split>_macro_f1, ...) and the report folder."""
    mlflow_io.log_final_metrics(run_id, {"eval": metrics})
    mlflow_io.log_artifacts(run_id, out, "evaluation")
