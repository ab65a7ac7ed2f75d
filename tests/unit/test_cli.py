"""The one error style of the command lines: one clear line and exit 1, tracebacks with --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_prep.cli import run_main
from tests.helpers import REPO, committed_params


def _raise(error: Exception):
    def main(argv: list[str]) -> None:
        assert "--debug" not in argv  # stripped: the stage's own parser never sees it
        raise error
    return main


def test_user_error_is_one_line_and_exit_1(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        run_main(_raise(FileNotFoundError("data/x.csv: missing; run the split stage")), [])
    assert done.value.code == 1
    assert capsys.readouterr().err == "error: data/x.csv: missing; run the split stage\n"


def test_unexpected_error_says_how_to_see_the_traceback(capsys) -> None:
    with pytest.raises(SystemExit):
        run_main(_raise(TypeError("'NoneType' object is not subscriptable")), [])
    err = capsys.readouterr().err
    assert "unexpected TypeError" in err and "--debug" in err
    with pytest.raises(TypeError):
        run_main(_raise(TypeError("boom")), ["--debug"])


def test_stage_command_line_prints_one_line(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    data = committed_params()
    params.write_text(yaml.safe_dump({**data, "segmnet": {}}))
    command = [sys.executable, "-m", "data_prep.segment", "--params", str(params), "--raw",
               str(tmp_path), "--out", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "unknown section(s) 'segmnet' (did you mean segment?)" in done.stderr
    debug = subprocess.run([*command, "--debug"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
