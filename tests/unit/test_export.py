"""Export stage on the tiny pipeline (`built`, tests/tiny_pipeline.py): bundle, parity, format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from data_prep.beats import morphology, rhythm
from data_prep.layout import load_shard, read_index, sha256_file
from data_prep.params import parse_section
from pipeline import export
from pipeline.evaluation import parity
from pipeline.runtime import bundle, onnx_runner
from pipeline.training.run_folder import ImageClassifier, load_model
from tests.helpers import committed_params, export_params

REPO = Path(__file__).resolve().parents[2]


def _rerun(built: dict[str, Path], reports: Path, out: Path, **overrides) -> dict:
    return export.run(export_params(**overrides), built["model"], reports, built["segments"],
                      built["spectrograms"], out, built["splits"])


def test_run_writes_a_complete_bundle(built):
    folder = built["bundle"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [bundle.BUNDLE_JSON, bundle.MODEL_ONNX, bundle.MODEL_CARD])
    meta = json.loads((folder / bundle.BUNDLE_JSON).read_text())
    assert meta["bundle_format"] == bundle.format_for("grey") == 2  # grey bundles: as before
    assert meta["classes"] == ["N", "S", "V", "F", "Q"]
    assert meta["label_map"]["map"]["V"] == "V" and "+" in meta["label_map"]["ignore"]
    pre = meta["preprocessing"]
    assert pre["segment"]["target_fs"] == 250 and pre["window"]["window_samples"] == 625
    assert pre["spectrogram"]["nperseg"] == 32 and pre["image"]["orientation"]
    # what the data stages recorded, not params.yaml: image keys only, the annotator resolved
    assert "workers" not in pre["spectrogram"] and pre["segment"]["annotator"] == "atr"
    assert pre["signal_quality"]["flat_run_s"] == 0.2  # the rule the segment stage applied
    assert pre["spectrogram"]["dynamic_range_db"] == pre["image"]["value_scale"]["dynamic_range_db"]
    assert pre["model_input"]["channels"] == "grey3" and len(pre["model_input"]["mean"]) == 3
    assert meta["model"]["sha256"] == sha256_file(folder / bundle.MODEL_ONNX)
    assert meta["model"]["input"]["dtype"] == "uint8" and meta["model"]["opset"] == 20
    assert "se_ci_low" in meta["metrics"]["test"]["N"]
    assert set(meta["versions"]) >= {"package", "torch", "timm", "onnx", "opset"}
    assert "git_commit" in meta["provenance"] and "dvc" in meta["provenance"]
    test_rows = pd.read_csv(built["reports"] / "predictions.csv").query("split == 'test'")
    # evaluate ran the head on stored backbone features, the bundle runs the whole network:
    # float32 rounding only (export.parity_atol)
    assert meta["parity"]["images"] == len(test_rows) and meta["parity"]["max_abs_diff"] < 1e-4
    context = [*rhythm.BEAT_FEATURES, *morphology.FEATURES]  # segment.morphology: on
    assert meta["model"]["rr_input"]["features"] == context
    assert meta["preprocessing"]["rhythm"]["features"] == context
    assert meta["preprocessing"]["rhythm"]["morphology"]["features"] == list(morphology.FEATURES)
    card = (folder / bundle.MODEL_CARD).read_text()
    assert "NOT a medical device" in card and "| V |" in card and "load_bundle" in card
    assert (f"{len(rhythm.BEAT_FEATURES)} RR features from the beat times "
            "(data_prep/beats/rhythm.py), "
            f"{len(morphology.FEATURES)} of each beat") in card
    # the committed default: the ONNX graph (parity above) carries the rhythm discriminant
    assert meta["model"]["architecture"]["rr_lda_weight"] == 0.25
    assert "mixed with a linear discriminant on log RR features (weight 0.25)" in card
    caveats = meta["metrics"]["test"]["caveats"]  # a few test beats per class: all flagged
    assert caveats and all(c in card for c in caveats) and "Caveats:\n" in card


def test_onnx_matches_torch_for_any_batch_size(built):
    model, preprocess, _ = load_model(built["model"])
    net = ImageClassifier(preprocess, model, with_logits=True).eval()
    session = onnx_runner.onnx_session(built["bundle"] / bundle.MODEL_ONNX)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32), dtype=np.uint8)
    rr = rng.uniform(0.4, 1.6, (5, len(rhythm.BEAT_FEATURES) + len(morphology.FEATURES)))
    rr = rr.astype(np.float32)
    with torch.no_grad():
        probs, logits = (t.numpy() for t in net(torch.from_numpy(images), torch.from_numpy(rr)))
    onnx_probs, onnx_logits = session.run(None, {"images": images, "rr": rr})
    np.testing.assert_allclose(onnx_probs, probs, atol=1e-6)
    np.testing.assert_allclose(onnx_logits, logits, rtol=1e-4, atol=1e-4)
    assert onnx_runner.run_probs(session, images, rr, 5, batch_size=2).shape == (5, 5)
    np.testing.assert_array_equal(onnx_runner.run_probs(session, images, rr, 5, batch_size=2),
                                  onnx_runner.run_probs(session, images, rr, 5))
    assert onnx_runner.run_probs(session, images[:0], rr[:0], 5).shape == (0, 5)
    # the rhythm input matters: other RR features, other probabilities
    assert not np.allclose(onnx_runner.run_probs(session, images, rr * 0.5, 5), onnx_probs)


def test_parity_check_fails_on_tampered_predictions(built, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(built["reports"], reports)
    table = pd.read_csv(reports / "predictions.csv", dtype={"record": str})
    row = table.index[table["split"] == "test"][3]
    table["prob_N"] = table["prob_N"].astype(float)  # a confident tiny model: 0s and 1s
    table.loc[row, "prob_N"] += 0.01
    table.to_csv(reports / "predictions.csv", index=False)
    out = tmp_path / "bundle"
    with pytest.raises(ValueError, match=r"parity check failed.*r3 row .*dvc repro evaluate"):
        _rerun(built, reports, out)
    assert not out.exists() and not list(tmp_path.glob(".bundle.*"))  # no half-written bundle


def test_parity_cap_checks_a_spread_subset(built, tmp_path):
    meta = _rerun(built, built["reports"], tmp_path / "bundle", parity_max_images=4)
    assert meta["parity"]["images"] == 4
    rows = parity.parity_rows(pd.DataFrame({"split": ["test"] * 10, "x": range(10)}), 4)
    assert rows["x"].tolist() == [0, 3, 6, 9]


def test_parity_inputs_are_the_stage_rows_of_each_pair_in_order(built):
    """The parity check's images and rhythm features are those the stages wrote for each
    (record, row) pair, in the pairs' order and in the model's feature order. The tiny model
    gives every beat P(V) = 1, so the parity check itself would not notice rows or columns
    taken in another order."""
    rows = pd.DataFrame({"record": ["r3", "r1", "r3", "r1", "r3"], "row": [7, 2, 0, 30, 7]})
    names = ["rr_post", "qrs_dissimilarity", "rr_pre"]
    images = parity.load_images(built["spectrograms"], rows)
    rr = parity.load_rhythm(built["spectrograms"], rows, names)
    index = read_index(built["spectrograms"] / "index.csv").set_index(["record", "row"])
    assert images.shape == (5, 32, 32) and images.dtype == np.uint8 and rr.shape == (5, 3)
    for i, (record, row) in enumerate(zip(rows["record"], rows["row"], strict=True)):
        np.testing.assert_array_equal(images[i], load_shard(built["spectrograms"], record)[row])
        np.testing.assert_array_equal(rr[i], index.loc[(record, row), names].to_numpy(np.float32))
    assert not np.array_equal(images[0], images[2]) and not np.array_equal(rr[0], rr[2])


def test_registering_is_separate_from_the_bundle(built, tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(FileNotFoundError, match=r"mlflow_run\.json: missing"):
        _rerun(built, built["reports"], out, register_model=True)
    assert (out / bundle.BUNDLE_JSON).is_file()  # written before registering was tried


@pytest.mark.parametrize("key", ["nperseg", "dynamic_range_db"])
def test_images_made_with_other_params_fail(built, tmp_path, key):
    spectrograms = tmp_path / "spectrograms"
    shutil.copytree(built["spectrograms"], spectrograms)
    meta = json.loads((spectrograms / "meta.json").read_text())
    meta["params"][key] *= 2  # the recorded params no longer give the recorded image axes/scale
    (spectrograms / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"differ from what its recorded params.*re-run dvc"):
        export.run(export_params(), built["model"], built["reports"], built["segments"],
                   spectrograms, tmp_path / "b", built["splits"])


def test_spectrograms_of_other_segments_fail(built, tmp_path):
    segments = tmp_path / "segments"
    shutil.copytree(built["segments"], segments)
    meta = json.loads((segments / "meta.json").read_text())
    meta["params"]["bandpass_hz"] = [1.0, 30.0]
    (segments / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"made from other segments.*re-run dvc repro"):
        export.run(export_params(), built["model"], built["reports"], segments,
                   built["spectrograms"], tmp_path / "b", built["splits"])


def test_export_ignores_params_yaml_preprocessing():
    """The bundle's preprocessing comes from the data folders: export reads only its section,
    and DVC does not re-run it when segment/spectrogram params (e.g. workers) change."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["export"]
    assert stage["params"] == ["export"]
    assert set(export.ExportParams.model_fields) == set(committed_params()["export"])


def test_bundle_format_check(built, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(built["bundle"], folder)
    assert bundle.read_bundle_json(folder)["bundle_format"] == bundle.format_for("grey")
    current = bundle.BUNDLE_FORMAT
    meta = json.loads((folder / bundle.BUNDLE_JSON).read_text())
    (folder / bundle.BUNDLE_JSON).write_text(json.dumps({**meta, "bundle_format": current + 1}))
    with pytest.raises(bundle.BundleFormatError,
                       match=rf"bundle_format {current + 1} is newer.*pip install -U"):
        bundle.read_bundle_json(folder)
    (folder / bundle.BUNDLE_JSON).write_text(json.dumps({**meta, "bundle_format": "1"}))
    with pytest.raises(bundle.BundleFormatError, match="no integer 'bundle_format'"):
        bundle.read_bundle_json(folder)
    with pytest.raises(FileNotFoundError, match=rf"holds bundles .*one of: {folder}$"):
        bundle.read_bundle_json(tmp_path)  # the folder above a bundle names it


def test_repository_params_and_dvc_stage():
    params = parse_section(committed_params(), "export", export.ExportParams)
    assert params.parity_atol == 1e-4 and params.parity_max_images is None
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["export"]
    assert stage["matrix"] == yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][
        "train"]["matrix"]
    assert {"pipeline/export.py", "pipeline/runtime/bundle.py"} <= set(stage["deps"])
