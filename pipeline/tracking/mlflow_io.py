"""MLflow tracking: the only module of the project that imports mlflow.

Runs are addressed by id through `MlflowClient`, never through mlflow's "active run": the
train stage opens a run and stores its id in its output folder, the evaluate stage (another
process) reopens that id and completes it, and nothing depends on global state.

The store is `uri` when given, else `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the
working directory (`pipeline.tracking.server`, which needs no mlflow). Call
`check_tracking_server` before training: a down server otherwise surfaces only after training,
through mlflow's minutes-long HTTP retries.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from pipeline.evaluation.metrics import flatten_metrics, nan_to_none
from pipeline.tracking.provenance import source_info
from pipeline.tracking.server import (  # noqa: F401 (re-exported: the stages' one entry point)
    DEFAULT_URI,
    URI_ENV,
    TrackingServerError,
    check_tracking_server,
    tracking_uri,
)

log = logging.getLogger(__name__)

END_STATUSES = ("FINISHED", "FAILED", "KILLED")


def start_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    *,
    source_tags: bool = True,
    uri: str | None = None,
) -> str:
    """Creates a run (and its experiment if new) and returns its id.

    Args:
        experiment: Experiment name.
        run_name: Display name of the run.
        params: Nested params (e.g. the resolved config), logged as dotted keys.
        tags: Extra tags; they override the source tags.
        source_tags: Also tag the git commit and the DVC data hashes (`source_info`).
        uri: Tracking URI (see `tracking_uri`).
    """
    client = _client(uri)
    run = client.create_run(_experiment_id(client, experiment), run_name=run_name)
    all_tags = {**(source_info() if source_tags else {}), **(tags or {})}
    _log_batch(client, run.info.run_id, params=flatten_params(params or {}), tags=all_tags)
    log.info("MLflow run %s (%s) in experiment '%s' at %s",
             run.info.run_id, run_name, experiment, tracking_uri(uri))
    return run.info.run_id


def resume_run(run_id: str, *, uri: str | None = None) -> str:
    """Reopens a run created by another process (marks it RUNNING again if it had ended).

    Returns:
        The status it had (FINISHED, FAILED, RUNNING...), for `fail_on_error`.
    """
    client = _client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ValueError(
            f"MLflow run {run_id} not found at {tracking_uri(uri)}; evaluate must use the same "
            f"{URI_ENV} as train did (or re-run train)"
        ) from err
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    return str(run.info.status)


def end_run(run_id: str, status: str = "FINISHED", *, uri: str | None = None) -> None:
    """Ends a run as FINISHED, FAILED or KILLED."""
    if status not in END_STATUSES:
        raise ValueError(f"run status '{status}' is not one of {END_STATUSES}")
    _client(uri).set_terminated(run_id, status=status)


@contextmanager
def fail_on_error(run_id: str, *, uri: str | None = None,
                  previous_status: str | None = None) -> Iterator[None]:
    """Marks the run FAILED if the block raises (then re-raises), so no run stays RUNNING.

    A run that was FINISHED before the block reopened it (`previous_status`, from
    `resume_run`) keeps what it finished with: it ends FINISHED again and the error goes into
    its `last_error` tag, so a failed re-run never spoils an earlier complete one.
    """
    try:
        yield
    except BaseException as err:
        if previous_status == "FINISHED":
            set_tags(run_id, {"last_error": f"{type(err).__name__}: {err}"[:4000]}, uri=uri)
            end_run(run_id, "FINISHED", uri=uri)
        else:
            end_run(run_id, "FAILED", uri=uri)
        raise


def log_epoch_metrics(
    run_id: str, metrics: Mapping[str, Any], epoch: int, *, uri: str | None = None
) -> None:
    """Logs one epoch's (possibly nested) metrics with `step=epoch`: names `val_macro_f1`..."""
    _log_batch(_client(uri), run_id, metrics=_metrics(metrics, step=epoch))


def log_final_metrics(run_id: str, metrics: Mapping[str, Any], *, uri: str | None = None) -> None:
    """Logs final scalars; nested keys join with "_" (`{"test": {"S": {"se": x}}}` -> test_S_se).

    Undefined values (None, NaN) are left out (with a log line) rather than logged as
    NaN: metrics.json keeps them as null.
    """
    _log_batch(_client(uri), run_id, metrics=_metrics(metrics, step=0))


def set_tags(run_id: str, tags: Mapping[str, Any], *, uri: str | None = None) -> None:
    """Sets (or overwrites) tags of a run."""
    _log_batch(_client(uri), run_id, tags=tags)


def log_artifacts(
    run_id: str,
    paths: Path | Sequence[Path],
    artifact_path: str | None = None,
    *,
    uri: str | None = None,
) -> None:
    """Uploads files and/or folders (a folder's contents) under `artifact_path` of the run."""
    client = _client(uri)
    for path in [paths] if isinstance(paths, str | Path) else paths:
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path)
        elif path.is_file():
            client.log_artifact(run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder to log to MLflow")


def log_pytorch_model(
    run_id: str,
    model: Any,
    input_example: np.ndarray,
    name: str = "model",
    pip_requirements: Sequence[str] | None = None,
    serialization_format: str = "pt2",
    *,
    uri: str | None = None,
) -> str:
    """Logs a torch model with a signature inferred from `input_example` and its output.

    Optional and slow (the network is traced and uploaded). "pt2" (`torch.export`, mlflow 3's
    default) loads without unpickling code; use "pickle" for a model that does not trace.
    Requirements default to the running torch (and timm) versions: mlflow's own inference
    starts a subprocess.

    Returns:
        The logged model's URI (`models:/<model_id>`).
    """
    import torch  # here, not at the top: the rest of this module works without torch

    model.eval()
    with torch.no_grad():
        output = model(torch.as_tensor(input_example)).detach().cpu().numpy()
    signature = mlflow.models.infer_signature(input_example, output)
    # The flavour API reads the global URI and files the model under the global experiment
    # (not the run's), where `register_model("runs:/...")` would not find it.
    mlflow.set_tracking_uri(tracking_uri(uri))
    mlflow.set_experiment(experiment_id=_client(uri).get_run(run_id).info.experiment_id)
    info = mlflow.pytorch.log_model(
        model, name=name, signature=signature, input_example=input_example, run_id=run_id,
        pip_requirements=list(pip_requirements or _torch_requirements()),
        serialization_format=serialization_format,
    )
    return info.model_uri


def register_model(
    run_id: str, artifact_path: str, name: str, alias: str | None = None, *, uri: str | None = None
) -> str:
    """Registers the run's logged model `artifact_path` as a new version of `name`.

    Returns:
        The new version number; `alias` (e.g. "champion") is moved onto it when given.

    Raises:
        ValueError: MLflow refused (no such logged model, registry unavailable), with its reason.
    """
    client = _client(uri)
    mlflow.set_tracking_uri(tracking_uri(uri))
    mlflow.set_registry_uri(tracking_uri(uri))
    try:
        version = mlflow.register_model(f"runs:/{run_id}/{artifact_path}", name).version
        if alias:
            client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as err:
        raise ValueError(f"MLflow could not register runs:/{run_id}/{artifact_path} as {name}: "
                         f"{err.message}") from err
    return str(version)


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested params -> dotted keys with string values cut to mlflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in flatten_metrics(_plain(params), sep=".").items():
        text = value if isinstance(value, str) else json.dumps(nan_to_none(value), default=str)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            log.warning("param %s cut to %d characters for MLflow", key, MAX_PARAM_VAL_LENGTH)
            text = text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
        flat[key] = text
    return flat


def _no_telemetry() -> None:
    """No usage telemetry unless asked for (MLFLOW_DISABLE_TELEMETRY=false): clinical clusters
    are often air-gapped and research runs should not call out. mlflow reads it at each event;
    set when the first client is made, not at import (importing must not change the env)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@lru_cache(maxsize=8)
def _cached_client(uri: str) -> MlflowClient:
    _no_telemetry()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _client(uri: str | None) -> MlflowClient:
    return _cached_client(tracking_uri(uri))


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process created it in between
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _metrics(metrics: Mapping[str, Any], step: int) -> list[Metric]:
    now = int(time.time() * 1000)
    entities, skipped = [], []
    for key, value in flatten_metrics(dict(metrics)).items():
        number = nan_to_none(value)
        if isinstance(number, int | float) and not isinstance(number, bool):
            entities.append(Metric(_key(key), float(number), now, step))
        else:
            skipped.append(key)
    if skipped:
        log.info("not logged to MLflow (undefined or not numeric): %s", ", ".join(skipped))
    return entities


def _log_batch(
    client: MlflowClient,
    run_id: str,
    metrics: Sequence[Metric] = (),
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> None:
    """log_batch in chunks within mlflow's per-request limits."""
    params_ = [Param(_key(k), v) for k, v in (params or {}).items()]
    tags_ = [RunTag(_key(k), str(v)) for k, v in (tags or {}).items() if v is not None]
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
    for i in range(0, len(params_), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=params_[i : i + MAX_PARAMS_TAGS_PER_BATCH])
    for i in range(0, len(tags_), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=tags_[i : i + MAX_PARAMS_TAGS_PER_BATCH])


def _key(key: str) -> str:
    """mlflow keys allow letters, digits, _ - . space / only; anything else becomes _."""
    clean = re.sub(r"[^\w\-. /]", "_", key)
    if len(clean) > MAX_ENTITY_KEY_LENGTH:
        raise ValueError(f"key '{key}' is longer than MLflow's {MAX_ENTITY_KEY_LENGTH} characters")
    return clean


def _plain(obj: Any) -> Any:
    """Config objects (pydantic models, dataclasses' dicts) -> plain nested dicts."""
    if hasattr(obj, "model_dump"):
        return _plain(obj.model_dump(mode="json"))
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


def _torch_requirements() -> list[str]:
    import torch

    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    try:
        import timm

        requirements.append(f"timm=={timm.__version__}")
    except ImportError:
        pass
    return requirements
