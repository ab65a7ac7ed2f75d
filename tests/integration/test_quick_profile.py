"""`make quick` leaves params.yaml as committed and re-runs only what changed.

Runs the Makefile's quick recipe on a tiny DVC project (one stage that records each run), with
the set-up prerequisite marked up to date (`make -o`), so nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARAMS = """# a comment DVC's rewrite would drop
train:
  backbones: [vgg16.tv_in1k]   # why
  freeze_modes: [frozen]
  max_per_class: {train: null, val: null}
  device: auto
export:
  parity_max_images: null
"""
DVC_YAML = """stages:
  s:
    cmd: echo run >> runs.txt && cp params.yaml out.txt
    params: [train, export]
    outs: [out.txt]
"""


def _run(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None,
                    reason="needs make and git")
def test_quick_restores_params_and_reruns_only_what_changed(tmp_path: Path) -> None:
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / ".gitignore").write_text("runs.txt\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "init"]):
        assert _run(tmp_path, *cmd).returncode == 0
    make = ["make", "-o", ".venv/.installed-stamp", "quick"]
    for _ in range(2):
        done = _run(tmp_path, *make)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (tmp_path / "params.yaml").read_text() == PARAMS
    assert (tmp_path / "runs.txt").read_text() == "run\n"  # the second run re-ran nothing
    assert "tf_mobilenetv3_small_100" in (tmp_path / "out.txt").read_text()
    shown = _run(tmp_path, "dvc", "exp", "show", "--csv")
    assert "cpu-quick" in shown.stdout and "tf_mobilenetv3_small_100" in shown.stdout
    # a failing run restores the file too
    (tmp_path / "dvc.yaml").write_text(DVC_YAML.replace("echo run", "exit 3; echo run"))
    assert _run(tmp_path, *make, "QUICK_EXTRA=-S train.device=cpu").returncode != 0
    assert (tmp_path / "params.yaml").read_text() == PARAMS
