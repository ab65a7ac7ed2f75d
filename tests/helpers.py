"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# train params for tiny CPU runs: random weights, two short epochs
QUICK = {"weights": "random", "epochs": 2, "batch_size": 8, "device": "cpu", "warmup_epochs": 0.5}


def make_params(**overrides: Any):
    """The repository's train params with QUICK and test overrides (so params.yaml is tested)."""
    from data_prep.params import read_yaml
    from pipeline import train  # here: torch is imported only by the tests that train

    section = read_yaml(REPO / "params.yaml")["train"]
    return train.TrainParams.model_validate({**section, **QUICK, **overrides})


def segment_params(**overrides: Any):
    """The repository's segment params with the AAMI map and test overrides."""
    from data_prep.params import read_yaml
    from data_prep.windows import SegmentParams

    section = read_yaml(REPO / "params.yaml")["segment"]
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
