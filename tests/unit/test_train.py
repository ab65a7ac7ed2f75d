"""Train stage end to end on a synthetic spectrogram folder, params, CLI and input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from data_prep.params import parse_section
from pipeline import train
from pipeline.training import run_folder
from tests.helpers import QUICK, committed_params, make_params
from tests.synthetic import CLASSES, write_synthetic

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_parse_and_dvc_stage_tracks_every_run_param():
    params = parse_section(committed_params(), "train", train.TrainParams)
    assert params.backbones == ["vgg16.tv_in1k"] and params.freeze_modes == ["frozen"]
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    tracked = {p.removeprefix("train.") for p in stage["params"]}
    assert tracked == set(train.TrainParams.model_fields) - set(train.MATRIX_KEYS)
    assert "data/spectrograms/${dataset.name}" in stage["deps"]
    assert "data/splits/${dataset.name}/assignment.csv" in stage["deps"]
    assert "--out models/${dataset.name}/${item.backbone}-${item.freeze}" in stage["cmd"]


def test_params_reject_unknown_keys_and_missing_lr():
    with pytest.raises(ValueError, match="lr_typo"):
        make_params(lr_typo=1.0)
    with pytest.raises(ValueError, match="no value for freeze modes"):
        make_params(freeze_modes=["frozen", "full"], lr={"frozen": 1e-3})


@pytest.mark.parametrize("freeze", ["frozen", "full"])
def test_run_writes_all_outputs(tmp_path, folders, freeze):
    spec, splits = folders
    store = tmp_path / "store"
    params = make_params(max_per_class={"train": 6}, lr={"frozen": 1e-2, "full": 1e-3},
                         feature_cache_dir=str(store), rr_lda_weight=0.0)  # validation = history
    out = tmp_path / "run"
    metrics = train.run(params, "test_resnet", freeze, spec, splits, out)

    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == list(train.HISTORY_COLUMNS)
    assert history["epoch"].tolist() == [1, 2]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["best_val_macro_f1"] == history["val_macro_f1"].max()
    assert metrics["trainval_images"] == 6 + 6 + 6 + 11 + 5 + 5
    assert metrics["val_images"] == 11 + 5 + 5
    resolved = json.loads((out / "resolved_config.json").read_text())
    assert resolved["classes"] == CLASSES and resolved["freeze"] == freeze
    assert resolved["model"]["rr_lda_weight"] == 0.0  # heads alone: nothing mixed in
    assert resolved["preprocessing"]["channels"] == "grey3"
    assert len(resolved["preprocessing"]["mean"]) == 3
    assert resolved["preprocessing"]["crop_pct"] == 1
    assert resolved["weights"]["kind"] == "random" and resolved["cached_features"] == (
        freeze == "frozen")
    assert resolved["versions"]["torch"] == torch.__version__
    assert resolved["freeze_report"]["mode"] == freeze
    assert resolved["counts"]["train"] == {"N": 6, "S": 6, "V": 6}
    # frozen: backbone features of exactly the trained rows, in the shared store
    stored = sum(np.load(p).sum() for p in store.glob("*/*.done.npy"))
    assert stored == (6 + 6 + 6 + 11 + 5 + 5 if freeze == "frozen" else 0)
    assert resolved["model"]["inputs"] == "image+rr" and resolved["model"]["heads"] == 1

    model, _, _ = run_folder.load_model(out)  # strict load of the fused network
    assert set(load_file(out / "model.safetensors")) == set(model.state_dict())

    again = train.run(params, "test_resnet", freeze, spec, splits, out)  # finished: resumes, no-op
    assert {k: v for k, v in again.items() if k != "train_seconds"} == {
        k: v for k, v in metrics.items() if k != "train_seconds"}


def test_cli_runs_the_stage(tmp_path, folders):
    spec, splits = folders
    section = {**committed_params()["train"], **QUICK, "epochs": 1,
               "channels": "in_chans1", "imbalance": "balanced_sampler"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": section}))
    out = tmp_path / "models" / "run"
    train.main(["--params", str(tmp_path / "params.yaml"), "--backbone", "test_resnet",
                "--freeze", "partial", "--spectrograms", str(spec), "--splits", str(splits),
                "--out", str(out)])
    resolved = json.loads((out / "resolved_config.json").read_text())
    assert resolved["preprocessing"]["in_chans"] == 1 and resolved["freeze"] == "partial"
    assert (out / "model.safetensors").is_file()


def test_bad_inputs_fail_early_with_the_fix(tmp_path, folders):
    spec, splits = folders
    params = make_params()
    with pytest.raises(FileNotFoundError, match=r"meta\.json: missing; run the spectrogram"):
        train.run(params, "test_resnet", "frozen", tmp_path / "none", splits, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match=r"assignment\.csv: missing; run the split"):
        train.run(params, "test_resnet", "frozen", spec, tmp_path / "none", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match=r"no-such\.safetensors"):
        train.run(make_params(weights=str(tmp_path / "no-such.safetensors")), "test_resnet",
                  "frozen", spec, splits, tmp_path / "o")
    with pytest.raises(ValueError, match="cache_features=false"):
        train.run(make_params(augment={"time_mask": 8, "freq_mask": 0, "num_masks": 1}),
                  "test_resnet", "frozen", spec, splits, tmp_path / "o")
    empty_val = write_synthetic(tmp_path / "noval", records={"100": ("train", (3, 3, 3))})
    with pytest.raises(ValueError, match="'val' split has no images"):
        train.run(params, "test_resnet", "frozen", *empty_val, tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written before the inputs are valid


def test_code_version_covers_every_module_train_imports(tmp_path, monkeypatch):
    """A checkpoint resumes only under the same code: the digest follows train's imports (the
    head, the feature store, the rhythm columns), not a hand-kept list."""
    from pipeline.tracking import provenance
    assert {"pipeline.training.fusion", "pipeline.training.feature_store", "pipeline.training.cv",
            "data_prep.layout"} <= provenance.closure("pipeline.train")
    before = provenance.code_digest("pipeline.train")
    fake = tmp_path / "pipeline" / "fusion.py"
    fake.parent.mkdir()
    fake.write_text(provenance.module_path("pipeline.training.fusion").read_text() + "# changed\n")
    real = provenance.module_path
    monkeypatch.setattr(provenance, "module_path",
                        lambda name: fake if name == "pipeline.training.fusion" else real(name))
    assert provenance.code_digest("pipeline.train") != before
