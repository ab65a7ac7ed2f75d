"""Where a run's code and data come from: git commit and DVC output hashes.

Used by tracking (MLflow tags) and export (the bundle's versions); needs neither mlflow nor torch.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the key mlflow's UI shows as "Source version"


def source_info(repo: Path | None = None, lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """Tags naming the code and data of a run: git commit and DVC output hashes."""
    tags = {f"dvc.{path}": md5 for path, md5 in dvc_data_version(lock).items()}
    commit = git_commit(repo)
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    return tags


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD's commit hash, or None outside a git checkout (or without git)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def dvc_data_version(lock: Path = Path("dvc.lock"), prefix: str = "data/") -> dict[str, str]:
    """md5 of each DVC output under `prefix` recorded in dvc.lock; {} when there is none."""
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {
        out["path"]: out.get("md5") or out.get("hash") or ""
        for stage in stages.values()
        for out in stage.get("outs", [])
        if str(out.get("path", "")).startswith(prefix)
    }
