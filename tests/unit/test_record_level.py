"""Record-level results (record and rhythm modes): the aggregation rule by hand, and record mode
end to end on synthetic records with a REFERENCE.csv (segment, spectrogram, train, evaluate)."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import segment, spectrogram
from data_prep.beats.windows import SegmentParams
from pipeline import evaluate, train
from pipeline.evaluation import record_level, report_folder
from tests.helpers import REPO, committed_params
from tests.synthetic import regular_beats, write_record, write_records_file


def test_mean_of_window_probabilities_by_hand() -> None:
    windows = pd.DataFrame({
        "record": ["a", "a", "b", "c", "c", "d", "d"],
        "label": ["N", "N", "AF", "N", "N", "N", "AF"],  # d changes rhythm: not scored
        "prob_N": [0.6, 0.2, 0.1, 0.9, 0.7, 0.5, 0.5],
        "prob_AF": [0.4, 0.8, 0.9, 0.1, 0.3, 0.5, 0.5]})
    records = record_level.aggregate(windows, ["N", "AF"])
    assert records["record"].tolist() == ["a", "b", "c", "d"]
    assert records["n_windows"].tolist() == [2, 1, 2, 2]
    assert records["prob_AF"].tolist() == pytest.approx([0.6, 0.9, 0.2, 0.5])
    assert records["pred"].tolist() == ["AF", "AF", "N", "N"]  # a: mean 0.4/0.6; d: tie -> first
    assert records["label"].tolist()[:3] == ["N", "AF", "N"] and records["label"].isna().iloc[3]
    got = record_level.scores(records, ["N", "AF"])
    # N: TP c, FN a -> F1 = 2/(2+0+1); AF: TP b, FP a -> F1 = 2/(2+1+0)
    assert got["N"] == {"support": 2, "tp": 1, "fp": 0, "fn": 1, "se": 0.5, "ppv": 1.0,
                        "f1": pytest.approx(2 / 3)}
    assert got["AF"]["f1"] == pytest.approx(2 / 3) and got["AF"]["ppv"] == 0.5
    assert got["mean_f1"] == pytest.approx(2 / 3) and got["accuracy"] == pytest.approx(2 / 3)
    assert got["n_records"] == 3 and got["mixed_label_records"] == 1
    assert got["mean_f1_classes"] == ["N", "AF"]


def test_record_takes_the_mean_probability_not_the_majority_vote() -> None:
    """Two weak windows outvote one confident window under a vote, but not under the mean:
    a: N 0.55, 0.55, 0.05 (vote N, mean AF 0.617); b: N 0.4, 0.4, 0.98 (vote AF, mean N 0.593).
    Either way a vote breaks its ties, it predicts the opposite class for both records."""
    windows = pd.DataFrame({
        "record": ["a", "a", "a", "b", "b", "b"],
        "label": ["AF", "AF", "AF", "N", "N", "N"],
        "prob_N": [0.55, 0.55, 0.05, 0.4, 0.4, 0.98],
        "prob_AF": [0.45, 0.45, 0.95, 0.6, 0.6, 0.02]})
    records = record_level.aggregate(windows, ["N", "AF"])
    assert records["prob_AF"].tolist() == pytest.approx([1.85 / 3, 1.22 / 3])
    assert records["pred"].tolist() == ["AF", "N"]
    got = record_level.scores(records, ["N", "AF"])
    assert got["accuracy"] == 1.0 and got["mean_f1"] == 1.0


def test_records_keep_their_order_of_first_appearance_and_columns() -> None:
    """Records come out as they first appear (a folder's order, not sorted), and the table's
    columns lead with record and n_windows, as predict's records.csv documents them."""
    windows = pd.DataFrame({"record": ["b", "a", "b"], "prob_X": [0.9, 0.2, 0.7],
                            "prob_Y": [0.1, 0.8, 0.3]})
    table = record_level.aggregate(windows, ["X", "Y"])
    assert table["record"].tolist() == ["b", "a"] and table["n_windows"].tolist() == [2, 1]
    assert table.columns.tolist() == ["record", "n_windows", "prob_X", "prob_Y", "pred"]


def test_no_labelled_record_gives_no_mean_f1() -> None:
    records = pd.DataFrame({"record": ["a"], "pred": ["X"], "label": [None]})
    assert record_level.scores(records, ["X", "Y"])["mean_f1"] is None


def test_every_windowed_label_mode_is_scored_per_record() -> None:
    """Rhythm and record windows both get record-level results (evaluate, cross_evaluate and
    predict branch on RECORD_LABEL_MODES); beat mode, one window per beat, does not."""
    modes = set(typing.get_args(SegmentParams.model_fields["label_mode"].annotation))
    assert set(record_level.RECORD_LABEL_MODES) == modes - {"beat"} == {"record", "rhythm"}


REFERENCE = {"t1": ("N", "train"), "t2": ("A", "train"), "t3": ("O", "train"),
             "v1": ("N", "val"), "v2": ("A", "val"),
             "x1": ("N", "test"), "x2": ("A", "test"), "x3": ("O", "test"), "x4": ("N", "test")}


def _record_mode_run(root: Path) -> tuple[Path, dict]:
    raw = root / "raw" / "cinc"
    for i, name in enumerate(REFERENCE):
        beats = regular_beats(300 * 30, 300, rr_s=0.6 + 0.05 * i)
        write_record(raw, name, fs=300, seconds=30.0, sig_names=("ECG",), beats=beats,
                     symbols=["N"] * len(beats), annotate=False)
    write_records_file(raw, list(REFERENCE))
    (raw / "REFERENCE.csv").write_text("".join(f"{r},{lab}\n" for r, (lab, _) in
                                               REFERENCE.items()))
    data = committed_params()
    data["segment"] |= {"label_mode": "record", "reference_csv": "REFERENCE.csv",
                        "label_map": str(REPO / "configs/labels/challenge2017.yaml"),
                        "window_s": 10.0, "window_stride_s": 10.0, "max_skip_fraction": 0.5}
    data["spectrogram"] |= {"image_size": 32, "workers": 1, "preview_per_class": 1}
    seg_dir, spec_dir, splits = root / "segments", root / "spectrograms", root / "splits"
    segment.run(segment.SegmentParams.model_validate(data["segment"]), "cinc", root / "raw",
                seg_dir, databases_dir=root, workers=1)
    spectrogram.run(spectrogram.SpectrogramParams.model_validate(data["spectrogram"]), seg_dir,
                    spec_dir)
    splits.mkdir()
    pd.DataFrame({"record": list(REFERENCE), "subject": list(REFERENCE),
                  "split": [s for _, s in REFERENCE.values()]}).to_csv(
        splits / "assignment.csv", index=False)
    model, reports = root / "models" / "m", root / "reports" / "m"
    train.run(train.TrainParams.model_validate(
        {**data["train"], "weights": "random", "epochs": 1, "batch_size": 8, "device": "cpu",
         "warmup_epochs": 0}), "test_resnet", "frozen", spec_dir, splits, model)
    metrics = evaluate.run(evaluate.EvaluateParams.model_validate(
        {**data["evaluate"], "n_boot": 10, "device": "cpu"}), model, spec_dir, splits, reports)
    return reports, metrics


def test_record_mode_end_to_end_matches_a_hand_computation(tmp_path: Path) -> None:
    reports, metrics = _record_mode_run(tmp_path)
    predictions = report_folder.read_predictions(reports / report_folder.PREDICTIONS)
    classes = ["N", "AF", "O", "Noisy"]
    test = predictions[predictions["split"] == "test"]
    assert sorted(test["record"].unique()) == ["x1", "x2", "x3", "x4"]
    assert (test.groupby("record").size() == 3).all()  # 30 s records, 10 s windows
    truth, pred = {}, {}  # by hand: mean probabilities per record, argmax
    for record, rows in test.groupby("record"):
        means = [float(np.mean(rows[f"prob_{c}"].astype(np.float64))) for c in classes]
        truth[record], pred[record] = rows["label"].iloc[0], classes[int(np.argmax(means))]
    f1 = {}
    for c in ("N", "AF", "O"):  # the classes present in the test truth
        tp = sum(truth[r] == c and pred[r] == c for r in truth)
        fp = sum(truth[r] != c and pred[r] == c for r in truth)
        fn = sum(truth[r] == c and pred[r] != c for r in truth)
        f1[c] = 2 * tp / (2 * tp + fp + fn)
    got = metrics["test"]["record_level"]
    assert got["n_records"] == 4 and got["mean_f1_classes"] == ["N", "AF", "O"]
    assert {c: got[c]["f1"] for c in f1} == pytest.approx(f1)
    assert got["mean_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert got["accuracy"] == pytest.approx(sum(truth[r] == pred[r] for r in truth) / 4)
    written = pd.read_csv(reports / "details" / "test" / "record_predictions.csv",
                          dtype={"record": str})
    assert dict(zip(written["record"], written["pred"], strict=True)) == pred
    headline = json.loads((reports / report_folder.HEADLINE).read_text())
    assert headline["test"]["record_mean_f1"] == pytest.approx(got["mean_f1"])
    assert json.loads((reports / report_folder.METRICS).read_text())["test"]["record_level"][
        "rule"].startswith("mean of window probabilities")


def test_predict_aggregates_only_classified_windows() -> None:
    from types import SimpleNamespace

    from pipeline.runtime.predict import Bundle

    table = pd.DataFrame({"record": ["a", "a", "a"], "status": ["ok", "flat", "ok"],
                          "label": ["", "", ""], "prob_N": [0.2, float("nan"), 0.4],
                          "prob_AF": [0.8, float("nan"), 0.6]})
    records = Bundle.per_record(SimpleNamespace(classes=["N", "AF"]), table)
    assert records["n_windows"].tolist() == [2]  # the flat window carries no prediction
    assert records["prob_N"].tolist() == pytest.approx([0.3]) and records["pred"].tolist() == [
        "AF"]
