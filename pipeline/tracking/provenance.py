"""Where a run's code and data come from: git commit and DVC output hashes.

Used by tracking (MLflow tags), export (the bundle's versions) and train (the code version a
checkpoint must match to be resumed); needs neither mlflow nor torch.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
from functools import cache
from pathlib import Path

import yaml

GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the key mlflow's UI shows as "Source version"
REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("data_prep", "pipeline")


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


def module_path(name: str) -> Path:
    """The source file of a project module or package (its __init__.py)."""
    folder = REPO / name.replace(".", "/")
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


@cache
def imports(name: str) -> frozenset[str]:
    """Every module `name` imports anywhere in its source (lazy imports included), as dotted
    names; `from pkg import mod` counts as pkg.mod (not pkg) when mod is a project module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module_path(name).read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            submodules = {f"{node.module}.{a.name}" for a in node.names
                          if module_path(f"{node.module}.{a.name}").is_file()}
            found |= submodules if len(submodules) == len(node.names) else {node.module}
            found |= submodules
    return frozenset(found)


def project_imports(name: str, packages: bool = True) -> set[str]:
    """The project modules `name` imports; with `packages` also every package above them,
    whose __init__.py Python runs first (the import graph without them has no cycles)."""
    found = {m for m in imports(name) if m.split(".")[0] in PACKAGES and module_path(m).is_file()}
    if packages:
        found |= {m.rsplit(".", k)[0] for m in found for k in range(1, m.count(".") + 1)}
    return found


def closure(name: str) -> set[str]:
    """`name` and every project module it imports, directly or not."""
    seen, todo = set(), [name]
    while todo:
        if (current := todo.pop()) not in seen:
            seen.add(current)
            todo.extend(project_imports(current))
    return seen


def code_digest(name: str) -> str:
    """sha256 over the source of `name` and every project module it imports: the code a
    result depends on, found from the imports rather than a hand-kept list."""
    digest = hashlib.sha256()
    for module in sorted(closure(name)):
        digest.update(module.encode() + b"\0" + module_path(module).read_bytes())
    return digest.hexdigest()
