"""Data-parallel training: per-rank sampling, and two gloo processes under torchrun against one.

The torchrun test trains `test_convnext` (LayerNorm only: no per-rank BatchNorm statistics) in
partial mode with the weighted loss, where two processes of half the global batch take the
same optimiser steps as one process: per-epoch metrics agree to float rounding (TOLERANCE).
It also interrupts the two-process run after its first epoch and checks that the restarted run
resumes into the same checkpoint and the same MLflow run, and that rank 1 wrote nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline import train
from pipeline.training import data, distributed
from pipeline.training.engine import WeightedCrossEntropy
from pipeline.training.run_folder import CHECKPOINT, HISTORY, METRICS, MODEL, RESOLVED
from tests.helpers import QUICK, committed_params
from tests.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = {"loss": 1e-4, "acc": 1e-6, "macro_f1": 1e-6}  # float32 sums in another order
DDP_RUN = {"backbones": ["test_convnext"], "freeze_modes": ["partial"], "trainable_groups": 1,
           "epochs": 3, "batch_size": 8, "lr": {"partial": 3e-3},
           "nproc": 2, "head_dropout": 0.0,  # dropout masks come from each rank's own stream
           "image_dropout": 0.0}


def _draws(sampler, batch: int | None, world: int) -> list[list[int]]:
    return [list(distributed.ShardedSampler(sampler, batch, r, world)) for r in range(world)]


def test_each_rank_takes_its_slice_of_every_global_batch_and_the_short_one_is_padded():
    assert _draws(range(12), 4, 2) == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]]
    ranks = _draws(range(10), 4, 2)  # last batch [8, 9] padded to [8, 9, 8, 9]
    assert ranks == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 8, 9]]
    ranks = _draws(range(9), 4, 2)  # last batch [8] padded to [8, 8, 8, 8]: BatchNorm needs 2
    assert ranks == [[0, 1, 4, 5, 8, 8], [2, 3, 6, 7, 8, 8]]
    assert [len(distributed.ShardedSampler(range(9), 4, r, 2)) for r in (0, 1)] == [6, 6]
    assert _draws(range(7), 6, 3) == [[0, 1, 6, 6], [2, 3, 6, 6], [4, 5, 6, 6]]
    assert _draws(range(3), 2, 2) == [[0, 2], [1, 2]]  # a local batch of 1: one image per rank
    assert _draws(range(5), None, 2) == [[0, 1, 2], [3, 4]]  # validation: contiguous blocks


@pytest.mark.parametrize("balanced", [False, True])
def test_ranks_together_draw_the_single_process_order(balanced):
    targets = np.array([0] * 30 + [1] * 6 + [2] * 4)
    gens = [torch.Generator() for _ in range(3)]
    samplers = [data.train_sampler(targets, balanced, g) for g in gens]
    for g in gens:
        g.manual_seed(7)  # the engine re-seeds every rank's generator identically per epoch
    single = list(samplers[0])
    slices = [list(distributed.ShardedSampler(samplers[r + 1], 8, r, 2)) for r in range(2)]
    merged = [i for b in range(5) for r in range(2) for i in slices[r][4 * b:4 * b + 4]]
    assert merged == single


def test_weighted_loss_averaged_over_ranks_is_the_global_batch_loss():
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 3), torch.tensor([0, 0, 0, 1, 2, 0, 1, 0])
    weight = torch.tensor([0.5, 2.0, 4.0])
    single = WeightedCrossEntropy(weight, 0.1)(logits, targets)
    halves = [slice(0, 4), slice(4, 8)]  # the ranks' slices; their weight sums differ
    sums = torch.stack([weight[targets[h]].sum() for h in halves])
    per_rank = [WeightedCrossEntropy(weight, 0.1, gather=lambda _: sums)(logits[h], targets[h])
                for h in halves]
    torch.testing.assert_close(sum(per_rank) / 2, single)  # DDP's average of the two


def test_without_torchrun_everything_is_one_process():
    assert distributed.ranks() == distributed.Ranks() and distributed.is_main()
    assert distributed.sharded_sampler(None, range(5), None) is None  # type: ignore[arg-type]
    x = torch.arange(6).view(3, 2)
    assert distributed.gather(x) is x and distributed.local_batch(7) == 7
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, torch.device("cpu")) is module


def test_train_restarts_under_torchrun_only_when_asked_and_not_yet_there(monkeypatch):
    command = distributed.torchrun_command(4, "pipeline.train", ["--params", "p.yaml"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           "4", "-m", "pipeline.train", "--params", "p.yaml"]

    def execv(*args):
        raise AssertionError(f"would exec {args}")

    monkeypatch.setattr(distributed.os, "execv", execv)
    distributed.relaunch_under_torchrun(1, "pipeline.train", [])  # one process: stays
    with pytest.raises(AssertionError, match=r"torch\.distributed\.run"):
        distributed.relaunch_under_torchrun(2, "pipeline.train", [])
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    distributed.relaunch_under_torchrun(2, "pipeline.train", [])  # already under torchrun


def _params(folder: Path, **train_overrides) -> Path:
    params = committed_params()
    params["train"] |= {**QUICK, **DDP_RUN, **train_overrides}
    params["tracking"] |= {"experiment": "test-ddp", "log_model": False}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _torchrun(params: Path, spec: Path, splits: Path, out: Path, env: dict, log: Path,
              freeze: str = "partial"):
    args = ["--params", params, "--backbone", "test_convnext", "--freeze", freeze,
            "--spectrograms", spec, "--splits", splits, "--out", out]
    command = [sys.executable, "-m", "pipeline.train", *args]  # train.nproc: 2 -> torchrun
    with log.open("ab") as fh:
        return subprocess.Popen([str(c) for c in command], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path) -> None:
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log.read_text()[-5000:]


def _interrupt_after_first_epoch(proc: subprocess.Popen, state: Path, log: Path) -> int:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
            proc.send_signal(signal.SIGTERM)  # as a scheduler's time limit: torchrun stops
            proc.wait(timeout=120)            # its workers where they are
            return json.loads(state.read_text())["epoch"]
        time.sleep(0.02)
    pytest.fail(f"no first-epoch checkpoint before the run ended:\n{log.read_text()[-5000:]}")


def test_two_gloo_processes_match_one_write_once_and_resume(tmp_path):
    from mlflow import MlflowClient

    spec, splits = write_synthetic(tmp_path, size=64)  # epochs long enough to interrupt
    params = _params(tmp_path)
    single = tmp_path / "single"
    train.run(train.load_section("train", train.TrainParams, params), "test_convnext",
              "partial", spec, splits, single)

    out, log = tmp_path / "ddp", tmp_path / "torchrun.log"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri,
           "OMP_NUM_THREADS": "1"}
    done = _interrupt_after_first_epoch(_torchrun(params, spec, splits, out, env, log),
                                        out / CHECKPOINT / "state.json", log)
    assert done < 3, "interrupted too late to test resuming"
    assert not (out / MODEL).exists()
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    _finish(_torchrun(params, spec, splits, out, env, log), log)
    assert f"resuming {out / CHECKPOINT} after epoch {done}" in log.read_text()

    expected = pd.read_csv(single / HISTORY)
    history = pd.read_csv(out / HISTORY)
    assert history["epoch"].tolist() == [1, 2, 3]
    for name, tol in TOLERANCE.items():
        for prefix in ("val_", "train_"):
            assert history[prefix + name].to_numpy() == pytest.approx(
                expected[prefix + name].to_numpy(), abs=tol), prefix + name
    assert history["lr"].tolist() == pytest.approx(expected["lr"].tolist())

    # one writer: one run folder, one checkpoint set, one MLflow run (resumed, finished)
    # (a SIGTERM mid-write may leave rank 0's ".history.csv.*.tmp": no handler runs `finally`)
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".tmp")) == sorted(
        [MODEL, HISTORY, METRICS, RESOLVED, CHECKPOINT,
         "mlflow_run.json"])
    kept = sorted(p.name for p in (out / CHECKPOINT).iterdir())
    assert len(kept) == 4 and kept[-1] == "state.json" and "module-e0003.safetensors" in kept
    assert json.loads((out / RESOLVED).read_text())["processes"] == 2
    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "test-ddp"]
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    logged = client.get_metric_history(run_id, "val_macro_f1")
    assert {2, 3} <= {m.step for m in logged}  # epoch 1 too, unless killed before logging it


def test_frozen_mode_shards_feature_extraction_and_trains_the_head_as_one_process(tmp_path):
    spec, splits = write_synthetic(tmp_path)
    stores = {name: tmp_path / f"{name}-store" for name in ("single", "ddp")}
    single, out, log = tmp_path / "single", tmp_path / "ddp", tmp_path / "torchrun.log"
    params = _params(tmp_path, freeze_modes=["frozen"], lr={"frozen": 1e-2},
                     feature_dtype="float32", feature_cache_dir=str(stores["single"]))
    train.run(train.load_section("train", train.TrainParams, params), "test_convnext",
              "frozen", spec, splits, single)
    params = _params(tmp_path, freeze_modes=["frozen"], lr={"frozen": 1e-2},
                     feature_dtype="float32", feature_cache_dir=str(stores["ddp"]))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    _finish(_torchrun(params, spec, splits, out, env, log, "frozen"), log)

    # the same store entries (same key: model, weights, images), shared out between the ranks
    [ddp_key] = stores["ddp"].iterdir()
    ddp_files = sorted(p.name for p in ddp_key.glob("*.features.npy"))
    assert ddp_files and ddp_files == sorted(
        p.name for p in (stores["single"] / ddp_key.name).glob("*.features.npy"))
    for name in ddp_files:
        assert np.load(ddp_key / name) == pytest.approx(
            np.load(stores["single"] / ddp_key.name / name), abs=1e-5), name
    expected, history = pd.read_csv(single / HISTORY), pd.read_csv(out / HISTORY)
    for name, tol in TOLERANCE.items():
        assert history["val_" + name].to_numpy() == pytest.approx(
            expected["val_" + name].to_numpy(), abs=tol), name
