"""Mutation score of the cores that decide results (`make mutation`; not in CI: minutes a core).

Each core is mutated by mutmut (>= 3.8) in a scratch copy of the working tree
(`.mutation/<core>/`, gitignored) against its own fast unit tests only, so a mutant counts as
killed only when the tests written for that core catch it. Surviving mutants that cannot change
behaviour are listed with their reason in bench/mutation_equivalent.toml and left out:

    score = killed / (mutants - equivalent)        (timeouts count as killed)

Prints one row per core and the survivors to read, and writes `.mutation/summary.json`.

    python -m bench.mutation                    # every core
    python -m bench.mutation --core rhythm fusion
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".mutation"
EQUIVALENT = REPO / "bench" / "mutation_equivalent.toml"
# core -> (modules to mutate, the unit tests written for them)
CORES: dict[str, tuple[list[str], list[str]]] = {
    "rhythm": (["data_prep/beats/rhythm.py"], ["tests/unit/test_rhythm.py"]),
    "morphology": (["data_prep/beats/morphology.py"], ["tests/unit/test_morphology.py"]),
    "split": (["data_prep/beats/folds.py", "data_prep/split.py"], ["tests/unit/test_split.py"]),
    "windows": (["data_prep/beats/windows.py", "data_prep/beats/candidates.py"],
                ["tests/unit/test_segment.py", "tests/unit/test_segment_odd.py"]),
    "stft": (["data_prep/images/stft.py"], ["tests/unit/test_spectrogram.py"]),
    "metrics": (["pipeline/evaluation/metrics.py"], ["tests/unit/test_metrics.py"]),
    "record_level": (["pipeline/evaluation/record_level.py"],
                     ["tests/unit/test_record_level.py"]),
    "fusion": (["pipeline/training/fusion.py", "pipeline/training/fitting.py",
                "pipeline/training/rhythm_prior.py"],
               ["tests/unit/test_fusion.py", "tests/unit/test_rhythm_prior.py"]),
    "predict": (["pipeline/runtime/predict.py", "pipeline/runtime/predict_table.py",
                 "pipeline/runtime/predict_records.py"], ["tests/unit/test_predict.py"]),
}
KILLED = {"killed", "timeout", "caught by type check"}
SKIP = {".git", ".venv", ".mutation", "data", "models", "reports", "mlruns", ".dvc"}


def scratch_copy(core: str) -> Path:
    """The working tree (tracked and untracked, not ignored) copied for one core's run, with
    a [tool.mutmut] section naming that core's modules and tests."""
    folder = WORK / core
    shutil.rmtree(folder, ignore_errors=True)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        source = REPO / name
        if source.is_file() and name.split("/")[0] not in SKIP:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    modules, tests = CORES[core]
    settings = {"source_paths": ["data_prep", "pipeline"], "only_mutate": modules,
                "pytest_add_cli_args_test_selection": tests,
                "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "no:xdist", "-m",
                                        "not slow"],
                "also_copy": ["configs", "params.yaml", "dvc.yaml", "bench"],
                "process_isolation": "forkserver",  # torch is not fork-safe once imported
                "use_git_change_detection": False}
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    with (folder / "pyproject.toml").open("a") as file:
        file.write("\n".join(lines) + "\n")
    return folder


def run_core(core: str, jobs: int) -> dict[str, str]:
    """mutant name -> status, from `mutmut run` then `mutmut results --all true`."""
    folder = scratch_copy(core)
    mutmut = [sys.executable, "-m", "mutmut"]
    env = {**os.environ, "PYTHONPATH": str(folder)}
    subprocess.run([*mutmut, "run", "--max-children", str(jobs)], cwd=folder, env=env,
                   check=True)
    listing = subprocess.run([*mutmut, "results", "--all", "true"], cwd=folder, env=env,
                             capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^\s+(\S+): (.+)$", listing, re.MULTILINE))


def score(core: str, statuses: dict[str, str], equivalent: dict[str, str]) -> dict:
    killed = sum(s in KILLED for s in statuses.values())
    equal = sorted(n for n, s in statuses.items() if n in equivalent and s not in KILLED)
    counted = len(statuses) - len(equal)
    survivors = sorted((n for n, s in statuses.items() if s not in KILLED and n not in equivalent),
                       key=lambda n: (n.rsplit("__mutmut_", 1)[0], int(n.rsplit("_", 1)[1])))
    return {"core": core, "mutants": len(statuses), "killed": killed, "equivalent": len(equal),
            "score": killed / counted if counted else float("nan"), "survivors": survivors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--core", nargs="+", choices=sorted(CORES), default=sorted(CORES))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    equivalent = tomllib.loads(EQUIVALENT.read_text()) if EQUIVALENT.is_file() else {}
    rows = []
    for core in args.core:
        start = time.perf_counter()
        row = score(core, run_core(core, args.jobs), equivalent.get(core, {}))
        row["seconds"] = round(time.perf_counter() - start)
        rows.append(row)
        print(f"{core:13s} {row['killed']:5d} killed of {row['mutants']:5d} "
              f"({row['equivalent']} equivalent): {row['score']:.1%} in {row['seconds']} s",
              flush=True)
        for name in row["survivors"]:
            print(f"    survived: {name}   (python -m mutmut show {name}, in {WORK / core})")
    WORK.mkdir(exist_ok=True)
    (WORK / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
