"""Shared fixtures. Real data and weights live in ../shared beside the checkout.

Integration tests use them; under CI=true a missing ../shared is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ECG_SHARED_DIR", REPO.parent / "shared"))


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
