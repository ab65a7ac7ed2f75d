"""Export stage on a tiny pipeline built from synthetic WFDB records: bundle, parity, format.

`build_pipeline` runs the real segment, spectrogram, train (test_resnet, random weights, one
epoch) and evaluate stages on three synthetic records, then exports; test_predict reuses it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from data_prep import segment, spectrogram
from data_prep.layout import sha256_file
from data_prep.params import parse_section
from pipeline import bundle, evaluate, export, train
from tests.repo_params import committed_params
from tests.synthetic import write_record, write_records_file

REPO = Path(__file__).resolve().parents[2]
DB, RUN = "synth", "test_resnet-frozen"
SPLITS = {"r1": "train", "r2": "val", "r3": "test"}
_BUILT: dict[str, dict[str, Path]] = {}  # one build per test process, shared with test_predict


def stage_params() -> dict:
    """The repository's params with small, fast overrides for the synthetic records."""
    data = committed_params()
    data["segment"] |= {"label_map": str(REPO / "configs/labels/aami.yaml"),
                        "max_skip_fraction": 0.5}
    data["spectrogram"] |= {"image_size": 32, "workers": 1, "preview_per_class": 2}
    data["export"] |= {"register_model": False}
    return data


def _beats(fs: float, seconds: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """Irregular beats with N, V and A symbols (so every split holds two classes or more)."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.uniform(0.6, 1.0, int(seconds)))
    beats = np.round(times[times < seconds - 0.2] * fs).astype(np.int64)
    symbols = rng.choice(["N", "N", "N", "V", "A"], beats.size).tolist()
    return beats, symbols


def build_pipeline(root: Path) -> dict[str, Path]:
    """segment -> spectrogram -> (assignment) -> train -> evaluate -> export, in `root`."""
    if str(root) in _BUILT:
        return _BUILT[str(root)]
    raw = root / "raw" / DB
    for i, record in enumerate(SPLITS):
        beats, symbols = _beats(360, 40.0, i)
        write_record(raw, record, fs=360, seconds=40.0, beats=beats, symbols=symbols)
    write_records_file(raw, list(SPLITS))
    data = stage_params()
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    paths = {name: root / name for name in ("segments", "spectrograms", "splits", "reports")}
    paths |= {"raw": raw, "params": root / "params.yaml", "model": root / "models" / RUN,
              "bundle": root / "models" / "export" / RUN}
    seg = segment.SegmentParams.model_validate(data["segment"])
    segment.run(seg, DB, root / "raw", paths["segments"], databases_dir=root, workers=1)
    spec = spectrogram.SpectrogramParams.model_validate(data["spectrogram"])
    spectrogram.run(spec, paths["segments"], paths["spectrograms"])
    paths["splits"].mkdir()
    pd.DataFrame({"record": list(SPLITS), "subject": list(SPLITS), "split": list(SPLITS.values())}
                 ).to_csv(paths["splits"] / "assignment.csv", index=False)
    params = train.TrainParams.model_validate(
        {**data["train"], "weights": "random", "epochs": 1, "batch_size": 16, "device": "cpu",
         "warmup_epochs": 0})
    train.run(params, "test_resnet", "frozen", paths["spectrograms"], paths["splits"],
              paths["model"])
    evaluate.run(evaluate.EvaluateParams.model_validate(
        {**data["evaluate"], "n_boot": 20, "device": "cpu"}), paths["model"],
        paths["spectrograms"], paths["splits"], paths["reports"])
    export.run(export_params(), paths["params"], paths["model"], paths["reports"],
               paths["segments"], paths["spectrograms"], paths["bundle"], paths["splits"])
    _BUILT[str(root)] = paths
    return paths


def export_params(**overrides) -> export.ExportParams:
    return export.ExportParams.model_validate({**stage_params()["export"], **overrides})


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)  # tiny model: one thread is fastest on busy CI cores
    return build_pipeline(tmp_path_factory.getbasetemp() / "export_pipeline")


def _rerun(built: dict[str, Path], reports: Path, out: Path, **overrides) -> dict:
    return export.run(export_params(**overrides), built["params"], built["model"], reports,
                      built["segments"], built["spectrograms"], out, built["splits"])


def test_run_writes_a_complete_bundle(built):
    folder = built["bundle"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [bundle.BUNDLE_JSON, bundle.MODEL_ONNX, bundle.MODEL_CARD])
    meta = json.loads((folder / bundle.BUNDLE_JSON).read_text())
    assert meta["bundle_format"] == 1 and meta["classes"] == ["N", "S", "V", "F", "Q"]
    assert meta["label_map"]["map"]["V"] == "V" and "+" in meta["label_map"]["ignore"]
    pre = meta["preprocessing"]
    assert pre["segment"]["target_fs"] == 250 and pre["window"]["window_samples"] == 625
    assert pre["spectrogram"]["nperseg"] == 32 and pre["image"]["orientation"]
    assert pre["model_input"]["channels"] == "grey3" and len(pre["model_input"]["mean"]) == 3
    assert meta["model"]["sha256"] == sha256_file(folder / bundle.MODEL_ONNX)
    assert meta["model"]["input"]["dtype"] == "uint8" and meta["model"]["opset"] == 20
    assert "se_ci_low" in meta["metrics"]["test"]["N"]
    assert set(meta["versions"]) >= {"package", "torch", "timm", "onnx", "opset"}
    assert "git_commit" in meta["provenance"] and "dvc" in meta["provenance"]
    test_rows = pd.read_csv(built["reports"] / "predictions.csv").query("split == 'test'")
    assert meta["parity"]["images"] == len(test_rows) and meta["parity"]["max_abs_diff"] < 1e-5
    card = (folder / bundle.MODEL_CARD).read_text()
    assert "NOT a medical device" in card and "| V |" in card and "load_bundle" in card
    caveats = meta["metrics"]["test"]["caveats"]  # a few test beats per class: all flagged
    assert caveats and all(c in card for c in caveats) and "Caveats:\n" in card


def test_onnx_matches_torch_for_any_batch_size(built):
    model, preprocess, _ = evaluate.load_model(built["model"])
    net = export.BundleNet(preprocess, model).eval()
    session = export.onnx_session(built["bundle"] / bundle.MODEL_ONNX)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        probs, logits = (t.numpy() for t in net(torch.from_numpy(images)))
    onnx_probs, onnx_logits = session.run(None, {"images": images})
    np.testing.assert_allclose(onnx_probs, probs, atol=1e-6)
    np.testing.assert_allclose(onnx_logits, logits, atol=1e-5)
    assert export.run_onnx(session, images, batch_size=2).shape == (5, 5)


def test_parity_check_fails_on_tampered_predictions(built, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(built["reports"], reports)
    table = pd.read_csv(reports / "predictions.csv", dtype={"record": str})
    row = table.index[table["split"] == "test"][3]
    table.loc[row, "prob_N"] += 0.01
    table.to_csv(reports / "predictions.csv", index=False)
    out = tmp_path / "bundle"
    with pytest.raises(ValueError, match=r"parity check failed.*r3 row .*dvc repro evaluate"):
        _rerun(built, reports, out)
    assert not out.exists() and not list(tmp_path.glob(".bundle.*"))  # no half-written bundle


def test_parity_cap_checks_a_spread_subset(built, tmp_path):
    meta = _rerun(built, built["reports"], tmp_path / "bundle", parity_max_images=4)
    assert meta["parity"]["images"] == 4
    rows = export.parity_rows(pd.DataFrame({"split": ["test"] * 10, "x": range(10)}), 4)
    assert rows["x"].tolist() == [0, 3, 6, 9]


def test_registering_is_separate_from_the_bundle(built, tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(FileNotFoundError, match=r"mlflow_run\.json: missing"):
        _rerun(built, built["reports"], out, register_model=True)
    assert (out / bundle.BUNDLE_JSON).is_file()  # written before registering was tried


def test_stale_data_params_fail(built, tmp_path):
    data = stage_params()
    data["spectrogram"]["nperseg"] = 64
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="re-run dvc repro"):
        export.run(export_params(), tmp_path / "params.yaml", built["model"], built["reports"],
                   built["segments"], built["spectrograms"], tmp_path / "b", built["splits"])


def test_bundle_format_check(built, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(built["bundle"], folder)
    assert bundle.read_bundle_json(folder)["bundle_format"] == 1
    meta = json.loads((folder / bundle.BUNDLE_JSON).read_text())
    (folder / bundle.BUNDLE_JSON).write_text(json.dumps({**meta, "bundle_format": 2}))
    with pytest.raises(bundle.BundleFormatError, match=r"bundle_format 2 is newer.*pip install -U"):
        bundle.read_bundle_json(folder)
    (folder / bundle.BUNDLE_JSON).write_text(json.dumps({**meta, "bundle_format": "1"}))
    with pytest.raises(bundle.BundleFormatError, match="no integer 'bundle_format'"):
        bundle.read_bundle_json(folder)
    with pytest.raises(FileNotFoundError, match=r"bundle\.json: missing"):
        bundle.read_bundle_json(tmp_path)


def test_repository_params_and_dvc_stage():
    params = parse_section(committed_params(), "export", export.ExportParams)
    assert params.parity_atol == 1e-4 and params.parity_max_images is None
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["export"]
    assert stage["matrix"] == yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][
        "train"]["matrix"]
    assert {"pipeline/export.py", "pipeline/bundle.py"} <= set(stage["deps"])
