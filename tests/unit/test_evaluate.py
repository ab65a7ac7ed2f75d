"""Evaluate stage end to end on a tiny model trained on synthetic spectrograms (no MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import f1_score

from data_prep import layout
from data_prep.layout import load_shard
from data_prep.params import parse_section
from pipeline import evaluate, train
from pipeline.evaluation import report_folder
from pipeline.evaluation.metrics import nan_to_none
from pipeline.training import run_folder
from tests.helpers import committed_params, make_params
from tests.synthetic import CLASSES, RECORDS, write_synthetic

REPO = Path(__file__).resolve().parents[2]
N_TEST = sum(sum(n) for split, n in RECORDS.values() if split == "test")
N_VAL = sum(sum(n) for split, n in RECORDS.values() if split == "val")



def eval_params(**overrides) -> evaluate.EvaluateParams:
    """The repository's evaluate params with test overrides (so params.yaml is tested too)."""
    section = committed_params()["evaluate"]
    return evaluate.EvaluateParams.model_validate({**section, "n_boot": 50, "device": "cpu",
                                                   "batch_size": 8, "splits": ["test", "val"],
                                                   **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(spectrograms, splits, model folder) of a partial-freeze test_resnet, one epoch."""
    root = tmp_path_factory.mktemp("evaluate")
    spec, splits = write_synthetic(root)
    model = root / "models" / "test_resnet-partial"
    torch.set_num_threads(1)
    train.run(make_params(epochs=1), "test_resnet", "partial", spec, splits, model)
    return spec, splits, model


@pytest.fixture(scope="module")
def report(trained, tmp_path_factory) -> tuple[Path, dict]:
    spec, splits, model = trained
    out = tmp_path_factory.mktemp("reports") / "test_resnet-partial"
    torch.set_num_threads(1)
    return out, evaluate.run(eval_params(), model, spec, splits, out)


def test_run_writes_every_output(report):
    out, metrics = report
    predictions = pd.read_csv(out / "predictions.csv", dtype={"record": str})
    probs = [f"prob_{c}" for c in CLASSES]
    assert list(predictions.columns) == [*report_folder.BASE_COLUMNS, *probs]
    assert predictions["split"].value_counts().to_dict() == {"val": N_VAL, "test": N_TEST}
    assert not predictions.duplicated(["split", "record", "row"]).any()
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics) == {"test", "val"}
    for split in ("test", "val"):
        tree = metrics[split]
        assert tree["n_segments"] == tree["n_available"] and tree["subset"] is False
        assert {"macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "balanced_accuracy",
                "macro_auc", "ece"} <= set(tree)
        assert {"se", "ppv", "se_ci_low", "ppv_ci_high"} <= set(tree["S"])
        details = out / "details"
        assert (details / f"classification_report_{split}.txt").read_text().strip()
        assert "macro avg" in json.loads(
            (details / f"classification_report_{split}.json").read_text())
        for name in ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png",
                     "confusion_counts.csv", "confusion_normalised.csv", "roc.csv", "pr.csv",
                     "reliability.csv", "per_record.csv", "per_class.csv"):
            assert (details / split / name).stat().st_size > 0, name
    counts = pd.read_csv(out / "details" / "test" / "confusion_counts.csv", index_col="actual")
    assert counts.to_numpy().sum() == N_TEST and list(counts.columns) == CLASSES
    confusion = pd.read_csv(out / "confusion_test.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == N_TEST
    per_record = pd.read_csv(out / "details" / "val" / "per_record.csv", dtype={"record": str})
    assert sorted(per_record["record"]) == ["102", "103"]
    config = json.loads((out / "details" / "evaluation_config.json").read_text())
    assert config["precision"] == "float32" and config["mlflow_run_id"] is None
    assert "## test" in (out / "details" / "notes.md").read_text()


def test_headline_is_the_small_dvc_metric_and_tiny_classes_are_caveats(report):
    out, metrics = report
    headline = json.loads((out / report_folder.HEADLINE).read_text())
    test = metrics["test"]
    # classes N, S, V (no F): macro-F1 and F1 per class, a few columns per split
    assert headline["test"] == {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
                                **{f"{c}_f1": test[c]["f1"] for c in CLASSES}}
    assert set(headline) == {"test", "val"}
    tiny = [c for c in CLASSES if 0 < test[c]["support"] < 30]
    assert tiny  # the synthetic test split has a few images per class
    caveats = [n for n in test["caveats"] if "< 30" in n]
    assert [c.split(":")[0] for c in caveats] == [f"class {c}" for c in tiny]
    report_text = (out / "details" / "classification_report_test.txt").read_text()
    assert "Caveats:" in report_text and caveats[0] in report_text
    notes = (out / "details" / "notes.md").read_text()
    assert caveats[0] in notes and "no caveats" not in notes.split("## test")[1]


def test_metrics_recomputed_from_predictions_csv_equal_metrics_json(report):
    out, metrics = report
    predictions = report_folder.read_predictions(out / "predictions.csv")
    probs = predictions[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (np.asarray(CLASSES)[probs.argmax(axis=1)] == predictions["pred"]).all()
    results = evaluate.evaluate_predictions(predictions, CLASSES, n_boot=50, seed=42)
    for split, ev in results.items():
        logged = {k: v for k, v in metrics[split].items()
                  if k not in ("subset", "n_available", "caveats")}
        assert nan_to_none(ev.metrics_tree()) == logged
        part = predictions[predictions["split"] == split]
        sk_f1 = f1_score(part["label"], part["pred"], labels=CLASSES, average="macro",
                         zero_division=np.nan)  # independent of pipeline.evaluation.metrics
        assert metrics[split]["macro_f1"] == pytest.approx(sk_f1, abs=1e-12)


def test_predictions_are_the_rebuilt_models_probabilities(trained, report):
    spec, _, model_dir = trained
    out, _ = report
    model, preprocess, resolved = run_folder.load_model(model_dir)
    assert resolved["freeze"] == "partial"
    predictions = report_folder.read_predictions(out / "predictions.csv")
    test = predictions[predictions["split"] == "test"].head(5)
    images = torch.stack([torch.from_numpy(np.array(load_shard(spec, r)[i]))
                          for r, i in zip(test["record"], test["row"], strict=True)])
    index = layout.read_index(spec / "index.csv").set_index(["record", "row"])
    names = run_folder.rhythm_names(resolved)
    assert names  # the default inputs fuse the image with the rhythm features
    rr = torch.from_numpy(index.loc[list(zip(test["record"], test["row"], strict=True)),
                                    names].to_numpy(np.float32))
    with torch.inference_mode():
        probs = run_folder.ImageClassifier(preprocess, model)(images, rr).numpy()
    np.testing.assert_allclose(probs, test[[f"prob_{c}" for c in CLASSES]].to_numpy(), atol=1e-6)


def test_capped_evaluation_says_it_is_a_subset(trained, tmp_path):
    spec, splits, model = trained
    metrics = evaluate.run(eval_params(max_per_class=2, n_boot=0), model, spec, splits,
                           tmp_path / "r")
    assert metrics["test"]["subset"] is True and metrics["test"]["n_segments"] == 6
    assert metrics["test"]["n_available"] == N_TEST
    assert "SUBSET" in (tmp_path / "r" / "details" / "notes.md").read_text()


def test_params_and_dvc_stage():
    params = parse_section(committed_params(), "evaluate", evaluate.EvaluateParams)
    assert params.splits[0] == "test" and params.max_per_class is None
    with pytest.raises(ValueError, match="must hold 'test'"):
        eval_params(splits=["val"])
    with pytest.raises(ValueError, match="n_boots"):
        eval_params(n_boots=3)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stage = stages["evaluate"]
    assert stage["matrix"] == stages["train"]["matrix"]
    run = "${dataset.name}/${item.backbone}-${item.freeze}"  # models and reports per database
    assert f"models/{run}/model.safetensors" in stage["deps"]
    assert f"models/{run}/mlflow_run.json" in stage["deps"]
    assert set(stage["params"]) == {"evaluate", "tracking"}
    assert list(stage["metrics"][0]) == [f"reports/{run}/headline.json"]  # metrics.json: an out
    train_outs = [next(iter(o)) if isinstance(o, dict) else o for o in stages["train"]["outs"]]
    assert f"models/{run}/mlflow_run.json" in train_outs


def test_missing_model_or_mismatched_classes_name_the_fix(trained, tmp_path):
    spec, splits, model = trained
    with pytest.raises(FileNotFoundError, match=r"resolved_config\.json"):
        evaluate.run(eval_params(), tmp_path / "none", spec, splits, tmp_path / "r")
    other, _ = write_synthetic(tmp_path / "other")
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "classes": ["N", "V", "S"]}))
    with pytest.raises(ValueError, match="re-run train"):
        evaluate.run(eval_params(), model, other, splits, tmp_path / "r")
