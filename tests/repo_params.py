"""The repository's committed params.yaml, for tests that build on its defaults.

`dvc exp run -S ...` (the CPU quick profile, any experiment) writes its overrides into the
workspace's params.yaml, so a test that read the workspace file would test the last experiment,
not the defaults. Tests read the file as committed (`git show HEAD:params.yaml`); outside a git
checkout (an unpacked sdist) the working file is the committed one.
`tests/unit/test_params.py` checks that the workspace file, whatever its values, still parses.
"""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def committed_params_text() -> str:
    """params.yaml as committed at HEAD (the working file when there is no git checkout)."""
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
    return copy.deepcopy(_parsed())


@functools.cache
def _parsed() -> dict:
    return yaml.safe_load(committed_params_text())


def write_committed_params(path: Path) -> Path:
    """Writes the committed params.yaml, comments included, to `path`."""
    path.write_text(committed_params_text())
    return path
