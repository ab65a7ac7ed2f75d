"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import functools
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# train params for tiny CPU runs: random weights, two short epochs
QUICK = {"weights": "random", "epochs": 2, "batch_size": 8, "device": "cpu", "warmup_epochs": 0.5}


@functools.cache
def committed_params_text() -> str:
    """params.yaml as committed at HEAD (`git show HEAD:params.yaml`).

    `dvc exp run -S ...` (the CPU quick profile, any experiment) writes its overrides into the
    workspace's params.yaml, so tests that build on the defaults read the committed file, not
    the last experiment's leftovers. Outside a git checkout (an unpacked sdist) the working file
    is the committed one. tests/unit/test_params.py checks that the workspace file still parses.
    """
    try:
        done = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO,
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:  # no git executable
        done = None
    if done is not None and done.returncode == 0 and done.stdout.strip():
        return done.stdout
    return (REPO / "params.yaml").read_text()


def committed_params() -> dict:
    """The committed params as a fresh dict (callers may change it)."""
    return yaml.safe_load(committed_params_text())


def write_committed_params(path: Path) -> Path:
    """Writes the committed params.yaml, comments included, to `path`."""
    path.write_text(committed_params_text())
    return path


def make_params(**overrides: Any):
    """The committed train params with QUICK and test overrides (so params.yaml is tested)."""
    from pipeline import train  # here: torch is imported only by the tests that train

    section = committed_params()["train"]
    return train.TrainParams.model_validate({**section, **QUICK, **overrides})


def segment_params(**overrides: Any):
    """The committed segment params with the AAMI map and test overrides."""
    from data_prep.beats.windows import SegmentParams

    section = committed_params()["segment"]
    aami = str(REPO / "configs" / "labels" / "aami.yaml")
    return SegmentParams.model_validate({**section, "label_map": aami, **overrides})


def export_params(**overrides: Any):
    """The tiny pipeline's export params with test overrides."""
    from pipeline import export
    from tests.tiny_pipeline import stage_params

    return export.ExportParams.model_validate({**stage_params()["export"], **overrides})


def free_port() -> int:
    """A loopback port that was free a moment ago (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
