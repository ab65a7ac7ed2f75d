"""A DVC remote round trip, as docs/scale-out.md's "DVC remote" section describes it.

A tiny two-stage DVC project in a temporary git repository: `dvc repro`, `dvc push` to a
folder remote, a fresh `git clone`, `dvc pull`, and the clone has every output with nothing
to re-run. It uses the venv's dvc and git only; no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DVC = Path(sys.executable).with_name("dvc")
STAGES = {
    "make": {  # params -> a data file
        "cmd": f"{sys.executable} -c \"import yaml, pathlib; "
               "n = yaml.safe_load(open('params.yaml'))['make']['n']; "
               "pathlib.Path('data').mkdir(exist_ok=True); "
               "pathlib.Path('data/numbers.txt').write_text(' '.join(map(str, range(n))))\"",
        "params": ["make.n"],
        "outs": ["data/numbers.txt"],
    },
    "total": {  # data file -> a "model" output and a metrics file kept in git
        "cmd": f"{sys.executable} -c \"import json, pathlib; xs = [int(x) for x in "
               "pathlib.Path('data/numbers.txt').read_text().split()]; "
               "pathlib.Path('models').mkdir(exist_ok=True); "
               "pathlib.Path('models/total.txt').write_text(str(sum(xs))); "
               "pathlib.Path('metrics.json').write_text(json.dumps({'total': sum(xs)}))\"",
        "deps": ["data/numbers.txt"],
        "outs": ["models/total.txt"],
        "metrics": [{"metrics.json": {"cache": False}}],
    },
}


def _env(tmp_path: Path) -> dict[str, str]:
    """git identity and DVC's site cache inside the test folder; no analytics calls."""
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "site"),
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def _run(args: list[str | Path], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} failed ({done.returncode}):\n"
                    f"{done.stdout}\n{done.stderr}")
    return done.stdout


def _status(repo: Path, env: dict[str, str]) -> dict:
    return json.loads(_run([DVC, "status", "--json"], repo, env) or "{}")


def test_push_then_pull_in_a_fresh_clone_restores_every_output(tmp_path):
    env = _env(tmp_path)
    repo, remote, clone = tmp_path / "repo", tmp_path / "remote", tmp_path / "clone"
    repo.mkdir()
    _run(["git", "init", "-q", "-b", "main"], repo, env)
    _run([DVC, "init", "-q"], repo, env)
    (repo / "params.yaml").write_text(yaml.safe_dump({"make": {"n": 10}}))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": STAGES}, sort_keys=False))
    _run([DVC, "repro"], repo, env)
    assert (repo / "models" / "total.txt").read_text() == "45"
    _run([DVC, "remote", "add", "-d", "store", remote], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "pipeline, lock, remote"], repo, env)
    _run([DVC, "push"], repo, env)
    assert any(p.is_file() for p in remote.rglob("*")), "dvc push wrote nothing to the remote"

    _run(["git", "clone", "-q", repo, clone], tmp_path, env)
    assert not (clone / "models" / "total.txt").exists()  # outputs live in DVC, not git
    assert "total" in _status(clone, env)  # before the pull the stage looks out of date
    _run([DVC, "pull"], clone, env)

    assert _status(clone, env) == {}  # "Data and pipelines are up to date."
    for output in ("data/numbers.txt", "models/total.txt", "metrics.json"):
        assert (clone / output).read_text() == (repo / output).read_text()
    dry = _run([DVC, "repro", "--dry"], clone, env)
    assert "Running stage" not in dry  # nothing would run
