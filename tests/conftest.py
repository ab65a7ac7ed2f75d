"""Shared fixtures. Real data and weights live in ../shared beside the checkout.

Integration tests use them; under CI=true a missing ../shared is a failure, not a skip.
`mlflow_server` starts a real MLflow tracking server on loopback once per session; `folders`
writes a synthetic spectrogram folder and split; `built` runs the tiny synthetic pipeline
(tests/tiny_pipeline.py) once per session. Tests marked `slow` (the real-data integration
tests) are left out of the fast loop `pytest -m "not slow"`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import REPO, free_port
from tests.synthetic import write_synthetic

SHARED = Path(os.environ.get("ECG_SHARED_DIR", REPO.parent / "shared"))
MLFLOW = Path(sys.executable).with_name("mlflow")
SERVER_START_S = 90.0
SERVER_ARTIFACTS = "artifacts"  # running_mlflow_server's artifact store, under its root


def _require(path: Path) -> Path:
    if path.exists():
        return path
    message = f"{path} not found: integration tests need ../shared (or ECG_SHARED_DIR)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def physionet_mirror() -> Path:
    """The local PhysioNet mirror (<mirror>/<db>/), as users of offline clusters configure it."""
    return _require(SHARED / "data" / "physionet" / "mitdb").parent


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """Folder of real ImageNet weights as <model>.<tag>.safetensors files."""
    return _require(SHARED / "weights")


@contextmanager
def running_mlflow_server(root: Path, timeout: float = SERVER_START_S) -> Iterator[str]:
    """Runs `mlflow server` on a free loopback port until the block ends; yields its URL.

    Set up as a shared server is (docs/scale-out.md, "Shared MLflow server"): a database backend and
    `--serve-artifacts`, so clients upload every artifact through the server's HTTP API into
    `root/artifacts` (SERVER_ARTIFACTS) and write nothing beside themselves.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--serve-artifacts", "--artifacts-destination", str(root / SERVER_ARTIFACTS)]
    # The server's background job runner starts seven worker processes that only slow the
    # start; tracking needs none of them.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = root / "server.log"
    with log_path.open("wb") as log_file:
        # Own process group: the server forks workers, and all of them must go at the end.
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                  cwd=root, env=env, start_new_session=True)
    try:
        _wait_healthy(url, server, log_path, timeout)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _wait_healthy(url: str, server: subprocess.Popen, log_path: Path, timeout: float) -> None:
    from pipeline.tracking import (
        mlflow_io,  # here: importing mlflow costs seconds in every test run
    )

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log_path.read_text()[-3000:]
            pytest.fail(f"mlflow server exited ({server.returncode}):\n{tail}")
        try:
            mlflow_io.check_tracking_server(url, timeout=1.0)
            return
        except mlflow_io.TrackingServerError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def mlflow_server_root(tmp_path_factory) -> Path:
    """The folder of the session's MLflow server: mlflow.db, artifacts/, server.log."""
    return tmp_path_factory.mktemp("mlflow_server")


@pytest.fixture(scope="session")
def mlflow_server_artifacts(mlflow_server_root) -> Path:
    """The artifact store (--artifacts-destination) of the session's MLflow server."""
    return mlflow_server_root / SERVER_ARTIFACTS


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_root) -> Iterator[str]:
    """URL of a real MLflow tracking server on loopback, for the whole session."""
    with running_mlflow_server(mlflow_server_root) as url:
        yield url


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread: no OpenMP oversubscription when xdist runs two
    test processes on CI's two cores. Only where a test module already imported torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(spectrogram folder, splits folder) of `tests.synthetic.write_synthetic`."""
    return write_synthetic(tmp_path)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of the tiny pipeline's folders, from raw records to the export bundle."""
    import torch

    from tests.tiny_pipeline import build_pipeline

    torch.set_num_threads(1)  # tiny model: one thread is fastest on busy CI cores
    return build_pipeline(tmp_path_factory.getbasetemp() / "export_pipeline")
