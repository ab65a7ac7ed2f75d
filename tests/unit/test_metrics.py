"""Metrics against hand-computed cases, sklearn, and synthetic bootstrap/calibration data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from pipeline.evaluation import metrics
from pipeline.evaluation.headline import headline, macro_f1_text

NAMES = ["N", "S", "V", "F"]
# 8 beats of 3 records. V is never predicted; F never occurs but is predicted once.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 0, 1, 1, 0, 0, 3])
RECORDS = np.array(["a", "a", "a", "b", "b", "c", "c", "c"])
NAN = np.nan


def one_hot_probs(y_pred: np.ndarray, k: int, top: float = 0.7) -> np.ndarray:
    probs = np.full((len(y_pred), k), (1 - top) / (k - 1))
    probs[np.arange(len(y_pred)), y_pred] = top
    return probs


# Built per test, not once per module: `make mutation` runs for each mutant only the tests that
# called the mutated function, and a shared fixture calls it from the first test alone.
@pytest.fixture
def hand() -> metrics.Evaluation:
    return metrics.evaluate(Y_TRUE, one_hot_probs(Y_PRED, 4), NAMES, RECORDS, n_boot=200)


def test_confusion_counts_keep_absent_class(hand):
    expected = [[3, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]]
    np.testing.assert_array_equal(hand.counts, expected)
    np.testing.assert_allclose(hand.normalised[0], [0.75, 0.25, 0, 0])
    assert np.isnan(hand.normalised[3]).all()  # F has no true beats: undefined, not 0


def test_ec57_rates_by_hand(hand):
    pc = hand.per_class
    np.testing.assert_array_equal(pc.tp, [3, 1, 0, 0])
    np.testing.assert_array_equal(pc.fp, [2, 1, 0, 1])
    np.testing.assert_array_equal(pc.fn, [1, 1, 2, 0])
    np.testing.assert_array_equal(pc.tn, [2, 5, 6, 7])
    np.testing.assert_allclose(pc.se, [0.75, 0.5, 0.0, NAN])
    np.testing.assert_allclose(pc.ppv, [0.6, 0.5, NAN, 0.0])  # V never predicted: +P undefined
    np.testing.assert_allclose(pc.fpr, [0.5, 1 / 6, 0.0, 1 / 8])
    np.testing.assert_allclose(pc.f1, [6 / 9, 0.5, 0.0, 0.0])


def test_summary_by_hand(hand):
    s = hand.summary
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["macro_f1"] == pytest.approx((6 / 9 + 0.5) / 4)
    assert s["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 0) / 3)
    assert s["n_segments"] == 8 and s["n_records"] == 3


def test_auc_by_hand_and_absent_class(hand):
    # N: positive scores .7 .7 .7 .1, negative .1 .7 .7 .1 -> (6 wins + 8 ties / 2) / 16
    assert hand.per_class.auc["N"] == pytest.approx(10 / 16)
    assert np.isnan(hand.per_class.auc["F"]) and np.isnan(hand.per_class.ap["F"])
    assert any("class F" in note for note in hand.notes)
    assert set(hand.roc["class"]) == {"N", "S", "V"}
    assert hand.summary["macro_auc"] == pytest.approx(np.mean(hand.per_class.auc[:3]))


def test_classification_report_matches(hand):
    report = hand.report_dict
    assert "F" in hand.report_text and "V" in hand.report_text
    assert report["F"]["precision"] == 0.0 and np.isnan(report["F"]["recall"])
    assert np.isnan(report["V"]["precision"])
    assert report["macro avg"]["f1-score"] == pytest.approx(hand.summary["macro_f1"])


def test_per_record_table(hand):
    table = hand.per_record.set_index("record")
    assert list(table.n) == [3, 2, 3]
    assert list(table.n_N) == [3, 1, 0]
    np.testing.assert_allclose(table.accuracy, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(table.loc["b", ["N_se", "N_ppv", "S_se", "S_ppv"]],
                               [0.0, NAN, 1.0, 0.5])
    assert np.isnan(table.loc["a", "S_se"])


def test_metrics_tree_is_json_with_nulls(hand):
    tree = {"test": hand.metrics_tree()}
    text = json.dumps(metrics.nan_to_none(tree), allow_nan=False)
    loaded = json.loads(text)
    assert loaded["test"]["F"]["se"] is None and loaded["test"]["V"]["ppv"] is None
    assert loaded["test"]["S"]["se"] == 0.5 and loaded["test"]["N"]["tp"] == 3
    flat = metrics.flatten_metrics(tree)
    for key in ("test_macro_f1", "test_macro_f1_ci_low", "test_S_se", "test_S_se_ci_high"):
        assert key in flat


def synthetic(n_records: int, beats: int = 200, seed: int = 0, k: int = 3):
    """Records whose skill differs (patients are not alike), softmax-like probabilities."""
    rng = np.random.default_rng(seed)
    records = np.repeat([f"r{i}" for i in range(n_records)], beats)
    y = rng.choice(k, size=len(records), p=[0.7, 0.2, 0.1][:k])
    skill = np.repeat(rng.uniform(0.5, 3.0, n_records), beats)
    logits = rng.normal(size=(len(y), k))
    logits[np.arange(len(y)), y] += skill
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs, records


@pytest.mark.filterwarnings("error")
def test_agrees_with_sklearn():
    y, probs, records = synthetic(12)
    probs = probs.astype(np.float32)  # as a model returns them: rows sum to 1 +- 1e-7
    ev = metrics.evaluate(y, probs, ["N", "S", "V"], records, n_boot=0)
    pred = probs.argmax(axis=1)
    assert ev.summary["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert ev.summary["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    np.testing.assert_allclose(ev.per_class.se, recall_score(y, pred, average=None))
    assert "accuracy_ci_low" not in ev.summary


def width(ev: metrics.Evaluation, stat: str) -> float:
    return ev.summary[f"{stat}_ci_high"] - ev.summary[f"{stat}_ci_low"]


def test_bootstrap_contains_point_and_narrows_with_records():
    names = ["N", "S", "V"]
    few, many = (
        metrics.evaluate(y, probs, names, records, n_boot=1000, seed=3)
        for y, probs, records in (synthetic(8, seed=1), synthetic(120, seed=1))
    )
    stats = [s for s in metrics.SUMMARY_STATS if s != "macro_f1_nsvf"]  # no F class here
    for ev in (few, many):
        assert np.isnan(ev.summary["macro_f1_nsvf"])
        for stat in stats:
            assert ev.summary[f"{stat}_ci_low"] <= ev.summary[stat] <= ev.summary[f"{stat}_ci_high"]
        pc = ev.per_class
        assert ((pc.se_ci_low <= pc.se) & (pc.se <= pc.se_ci_high)).all()
        assert ((pc.ppv_ci_low <= pc.ppv) & (pc.ppv <= pc.ppv_ci_high)).all()
    for stat in stats:
        assert width(many, stat) < width(few, stat) / 2


def test_four_class_macro_f1_leaves_q_out_and_has_intervals():
    rng = np.random.default_rng(0)
    records = np.repeat([f"r{i}" for i in range(20)], 100)
    y = rng.choice(5, size=records.size, p=[0.6, 0.15, 0.15, 0.09, 0.01])
    logits = rng.normal(size=(y.size, 5))
    logits[np.arange(y.size), y] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ev = metrics.evaluate(y, probs, ["N", "S", "V", "F", "Q"], records, n_boot=200)
    f1 = ev.per_class["f1"]
    assert ev.summary["macro_f1_nsvf"] == pytest.approx(f1[["N", "S", "V", "F"]].mean())
    assert ev.summary["macro_f1_nsvf"] != pytest.approx(f1.mean())
    low, high = ev.summary["macro_f1_nsvf_ci_low"], ev.summary["macro_f1_nsvf_ci_high"]
    assert low <= ev.summary["macro_f1_nsvf"] <= high
    pc = ev.per_class
    assert ((pc.f1_ci_low <= pc.f1) & (pc.f1 <= pc.f1_ci_high)).all()


def test_bootstrap_resamples_records_not_beats():
    # One record: every draw is that record, so the interval collapses onto the estimate.
    y, probs, _ = synthetic(1, beats=500)
    ev = metrics.evaluate(y, probs, ["N", "S", "V"], np.full(len(y), "r0"), n_boot=100)
    assert width(ev, "accuracy") == pytest.approx(0.0)


def test_bootstrap_is_seeded_and_nan_when_never_defined():
    per_record = np.zeros((3, 2, 2), dtype=np.int64)
    per_record[:, 0, 0] = [5, 3, 4]  # class 1 never occurs nor is predicted
    a = metrics.bootstrap_intervals(per_record, n_boot=50, seed=7)
    b = metrics.bootstrap_intervals(per_record, n_boot=50, seed=7)
    np.testing.assert_array_equal(a["se"], b["se"])
    assert np.isnan(a["se"][:, 1]).all() and np.isnan(a["ppv"][:, 1]).all()


def test_ece_calibrated_near_zero_overconfident_large():
    rng = np.random.default_rng(0)
    n, k = 40_000, 3
    confidence = rng.uniform(1 / k, 1.0, n)
    pred = rng.integers(0, k, n)
    probs = np.repeat(((1 - confidence) / (k - 1))[:, None], k, axis=1)
    probs[np.arange(n), pred] = confidence
    hit = rng.uniform(size=n) < confidence  # correct with exactly the stated probability
    y = np.where(hit, pred, (pred + rng.integers(1, k, n)) % k)
    ece, bins = metrics.calibration(y, probs)
    assert ece < 0.02
    assert bins["count"].sum() == n and len(bins) == 15
    assert np.isnan(bins.accuracy[0])  # no confidence below 1/3: empty bins are NaN
    overconfident = one_hot_probs(pred, k, top=0.99)
    y_wrong = np.where(rng.uniform(size=n) < 0.6, pred, (pred + 1) % k)
    assert metrics.calibration(y_wrong, overconfident)[0] == pytest.approx(0.39, abs=0.02)


@pytest.mark.parametrize(
    ("probs", "message"),
    [(np.full((8, 3), 1 / 3), "expected"), (np.full((8, 4), 2.0), "softmax")],
)
def test_bad_input_names_the_fix(probs, message):
    with pytest.raises(ValueError, match=message):
        metrics.evaluate(Y_TRUE, probs, NAMES, RECORDS)


def test_headline_aami_and_tiny_support_caveats() -> None:
    tree = {"accuracy": 0.9, "macro_f1": 0.5, "macro_f1_nsvf": 0.6,
            "macro_f1_nsvf_ci_low": 0.5, "macro_f1_nsvf_ci_high": 0.7,
            **{c: {"se": 0.1 * i, "ppv": 0.2, "f1": f1} for i, (c, f1) in
               enumerate(zip("NSVFQ", [0.9, 0.3, 0.6, float("nan"), 0.0], strict=True))}}
    out = headline(tree, list("NSVFQ"))
    assert out["macro_f1_nsvf"] == 0.6 and out["macro_f1_nsvf_ci_low"] == 0.5  # with its CI
    assert set(out) == {"accuracy", "macro_f1_nsvf", "macro_f1_nsvf_ci_low",
                        "macro_f1_nsvf_ci_high", "S_se", "S_ppv", "S_f1", "V_se", "V_ppv",
                        "V_f1"}
    assert out["V_se"] == pytest.approx(0.2)
    notes = metrics.tiny_support_caveats(pd.Series({"N": 500, "S": 29, "V": 30, "F": 1, "Q": 0}))
    assert notes == [_caveat("S", 29), _caveat("F", 1)]  # from 1 to 29 examples


def test_logged_macro_f1_names_the_classes_it_averages():
    aami = {"accuracy": 0.9, "macro_f1": 0.5144, "macro_f1_nsvf": 0.632,
            **{c: {"f1": 0.5, "se": 0.5} for c in ("N", "S", "V", "F", "Q")}}
    assert macro_f1_text(aami) == "N/S/V/F macro-F1 0.6320 (over N/S/V/F/Q 0.5144)"
    rhythm = {"macro_f1": 0.7, "macro_f1_nsvf": None, "AF": {"f1": 0.6}, "other": {"f1": 0.8}}
    assert macro_f1_text(rhythm) == "macro-F1 over AF/other 0.7000"
    assert macro_f1_text(rhythm | {"macro_f1_nsvf": float("nan")}).startswith("macro-F1 over")


def _uniform_skill_records(n_records: int = 100) -> tuple[np.ndarray, ...]:
    """Records of 100 beats whose accuracies are 1/100, 2/100, ... 100/100 (one S beat each).

    All records are the same size, so a bootstrap draw's accuracy is the mean of the picked
    records' accuracies: approximately normal (central limit theorem over 100 picks) around
    the point estimate with sd = std(accuracies) / sqrt(n_records), computed exactly here.
    """
    y, pred, records = [], [], []
    for i in range(n_records):
        y += [1] + [0] * 99
        pred += [1] + [0] * i + [1] * (99 - i)
        records += [f"r{i:03d}"] * 100
    accuracies = (np.arange(n_records) + 1) / 100
    return np.array(y), np.array(pred), np.array(records), accuracies


def test_intervals_are_95_percent_by_default():
    """The default interval is the 2.5th to 97.5th percentile of the bootstrap (alpha 0.05).

    On records of equal size the bootstrap accuracy is near normal with a known sd, so each
    bound lies 1.96 sd from the estimate; a 90 % interval (1.64 sd) or a 99 % one (2.58 sd)
    labelled as 95 % would be off by more than 0.3 sd, far beyond the 4000 draws' noise.
    """
    y, pred, records, accuracies = _uniform_skill_records()
    sd = accuracies.std() / np.sqrt(len(accuracies))
    ev = metrics.evaluate(y, one_hot_probs(pred, 2), ["N", "S"], records, n_boot=4000)
    s = ev.summary
    assert s["accuracy"] == pytest.approx(accuracies.mean())
    z_low = (s["accuracy"] - s["accuracy_ci_low"]) / sd
    z_high = (s["accuracy_ci_high"] - s["accuracy"]) / sd
    assert z_low == pytest.approx(1.96, abs=0.15) and z_high == pytest.approx(1.96, abs=0.15)
    per_record = metrics.record_confusions(y, pred, np.repeat(np.arange(100), 100), 100, 2)
    low, high = metrics.bootstrap_intervals(per_record, n_boot=4000)["accuracy"]
    assert (accuracies.mean() - low) / sd == pytest.approx(1.96, abs=0.15)
    assert (high - accuracies.mean()) / sd == pytest.approx(1.96, abs=0.15)
    narrow = metrics.bootstrap_intervals(per_record, n_boot=4000, alpha=0.1)["accuracy"]
    assert (accuracies.mean() - narrow[0]) / sd == pytest.approx(1.645, abs=0.15)


def test_undefined_f1_is_nan_and_left_out_of_both_macro_averages():
    """A class that never occurs and is never predicted has F1 0/0: NaN, not 0, and both
    macro averages skip it; counting it as 0 would pull 5-class and N/S/V/F macro-F1 down.

    Confusion (rows true N S V F Q, columns predicted): N [3 1 0 0 0], S [1 1 0 0 0],
    V [0 0 2 0 0], F empty, Q [0 0 1 0 0]. F1 = 2TP/(2TP+FP+FN): N 6/8, S 2/4, V 4/5, F NaN,
    Q 0 (one beat, missed: defined and 0).
    """
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 4])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 2, 2, 2])
    names = ["N", "S", "V", "F", "Q"]
    ev = metrics.evaluate(y_true, one_hot_probs(y_pred, 5), names, np.full(9, "a"), n_boot=0)
    np.testing.assert_allclose(ev.per_class.f1, [0.75, 0.5, 0.8, NAN, 0.0])
    assert ev.summary["macro_f1"] == pytest.approx((0.75 + 0.5 + 0.8 + 0.0) / 4)
    assert ev.summary["macro_f1_nsvf"] == pytest.approx((0.75 + 0.5 + 0.8) / 3)
    assert ev.summary["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 1.0 + 0.0) / 4)


def _caveat(name: str, n: int) -> str:
    return (f"class {name}: only {n} examples (< 30): its Se, +P, F1 and their intervals rest on "
            "too few examples to be reliable")


HAND_NOTES = ["class F: no segments in y_true; Se, AUC and AP undefined (NaN)",
              _caveat("N", 4), _caveat("S", 2), _caveat("V", 2)]


def test_per_class_table_columns_index_and_integer_counts(hand):
    pc = hand.per_class
    assert pc.index.name == "class" and list(pc.index) == NAMES  # per_class.csv's first column
    np.testing.assert_array_equal(pc.support, [4, 2, 2, 0])  # rows of the confusion matrix
    np.testing.assert_array_equal(pc.predicted, [5, 2, 0, 1])  # its columns
    counts = ["support", "predicted", "tp", "fp", "fn", "tn"]
    assert (pc[counts].dtypes == np.int64).all()  # counts stay integers in metrics.json
    assert hand.class_names == NAMES


def test_summary_keys_log_loss_and_ece_by_hand(hand):
    s = hand.summary
    assert set(s) == {*metrics.SUMMARY_STATS, "macro_auc", "ece", "log_loss", "n_segments",
                      "n_records", *(f"{stat}_ci_{end}" for stat in metrics.SUMMARY_STATS
                                     for end in ("low", "high"))}
    # the true class gets 0.7 on the 4 right beats and 0.1 on the 4 wrong ones
    assert s["log_loss"] == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2)
    # one confidence bin (0.7) holding every beat, of accuracy 0.5
    assert s["ece"] == pytest.approx(0.2)
    rel = hand.reliability
    assert len(rel) == 15 and rel["count"].sum() == 8
    assert rel.loc[rel["count"] > 0, "accuracy"].tolist() == [0.5]


def test_pr_curve_points_by_hand(hand):
    assert set(hand.pr["class"]) == {"N", "S", "V"}  # F has no beats: no curve
    v = hand.pr[hand.pr["class"] == "V"]  # every V score is 0.1: one threshold
    np.testing.assert_allclose(v.recall, [1.0, 0.0])
    np.testing.assert_allclose(v.precision, [0.25, 1.0])


def test_report_text_three_digits_and_caveats_at_the_end(hand):
    report, caveats = hand.report_text.split("\nCaveats:\n")
    rows = {line.split()[0]: line.split()[1:] for line in report.splitlines() if line.strip()}
    assert rows["N"] == ["0.600", "0.750", "0.667", "4"]
    assert rows["F"] == ["0.000", "nan", "0.000", "0"]
    assert caveats == "".join(f"- {note}\n" for note in HAND_NOTES)
    assert hand.notes == HAND_NOTES and hand.report_dict["caveats"] == HAND_NOTES


def test_metrics_tree_values_are_plain_python(hand):
    tree = hand.metrics_tree()
    assert tree["accuracy"] == 0.5 and tree["n_segments"] == 8
    assert type(tree["N"]["tp"]) is int and type(tree["S"]["se"]) is float
    flat = metrics.flatten_metrics({"test": tree})
    assert flat["test_accuracy"] == 0.5 and flat["test_S_se"] == 0.5 and flat["test_N_tp"] == 3


def test_nan_to_none_converts_numpy_scalars_and_arrays():
    out = metrics.nan_to_none({"a": np.array([1, 2]), "b": np.float32("nan"), 3: np.int64(4),
                               "c": (np.float64(0.5), float("inf"))})
    assert out == {"a": [1, 2], "b": None, "3": 4, "c": [0.5, None]}
    assert type(out["a"][0]) is int and type(out["3"]) is int
    json.dumps(out, allow_nan=False)


def test_float32_probabilities_give_the_float64_results():
    """A float32 softmax can hold exact zeros; metrics must not depend on the dtype (sklearn's
    log_loss clips at the eps of the dtype it gets, 1e-7 for float32 against 2e-16)."""
    y = np.array([0, 1, 1, 0, 2, 2])
    probs = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0.5, 0.5, 0], [0, 0, 1], [0, 0.2, 0.8]])
    records = np.array(["a", "a", "b", "b", "c", "c"])
    names = ["N", "S", "V"]
    probs = probs.astype(np.float32)
    ev32 = metrics.evaluate(y, probs, names, records, n_boot=0)
    ev64 = metrics.evaluate(y, probs.astype(np.float64), names, records, n_boot=0)
    np.testing.assert_equal(ev32.summary, ev64.summary)
    assert ev64.summary["log_loss"] > 5  # the zero for the true class is clipped near 2e-16


def test_one_class_only_has_undefined_auc_and_no_error():
    ev = metrics.evaluate(np.zeros(4, int), one_hot_probs(np.array([0, 0, 1, 0]), 2),
                          ["N", "S"], np.array(["a", "a", "b", "b"]), n_boot=0)
    assert np.isnan(ev.summary["macro_auc"]) and ev.summary["accuracy"] == 0.75
    assert "class N: the only class in y_true; AUC undefined (NaN)" in ev.notes


def test_one_segment_and_one_draw_are_evaluated():
    ev = metrics.evaluate(np.array([1]), np.array([[0.2, 0.8]]), ["N", "S"], np.array(["a"]),
                          n_boot=1, n_bins=10)
    assert ev.summary["accuracy"] == 1.0 and ev.summary["n_segments"] == 1
    assert ev.summary["accuracy_ci_low"] == ev.summary["accuracy_ci_high"] == 1.0
    assert len(ev.reliability) == 10 and ev.reliability["count"].tolist()[7] == 1  # (0.7, 0.8]


def _uniform_per_record() -> tuple[np.ndarray, np.ndarray]:
    """The records of `_uniform_skill_records` as confusion matrices, and their accuracies."""
    y, pred, _, accuracies = _uniform_skill_records()
    codes = np.repeat(np.arange(len(accuracies)), 100)
    return metrics.record_confusions(y, pred, codes, len(accuracies), 2), accuracies


def test_bootstrap_defaults_are_1000_draws_seed_0_and_seeded():
    per_record, _ = _uniform_per_record()
    default = metrics.bootstrap_intervals(per_record)
    explicit = metrics.bootstrap_intervals(per_record, n_boot=1000, seed=0, alpha=0.05)
    np.testing.assert_equal(default, explicit)
    again = metrics.bootstrap_intervals(per_record, n_boot=999, seed=5)["accuracy"]
    np.testing.assert_array_equal(
        again, metrics.bootstrap_intervals(per_record, n_boot=999, seed=5)["accuracy"])
    for other in ({"n_boot": 1001}, {"seed": 1}):  # the bounds do move with either
        changed = metrics.bootstrap_intervals(per_record, **other)["accuracy"]
        assert (changed != default["accuracy"]).all()


def test_evaluate_defaults_and_seed_reproduce_the_intervals():
    y, probs, records = synthetic(8, beats=40)
    names = ["N", "S", "V"]
    default = metrics.evaluate(y, probs, names, records)
    explicit = metrics.evaluate(y, probs, names, records, n_boot=1000, seed=0, n_bins=15)
    np.testing.assert_equal(default.summary, explicit.summary)
    assert len(default.reliability) == 15
    pd.testing.assert_frame_equal(default.per_class, explicit.per_class)
    other = metrics.evaluate(y, probs, names, records, seed=1)
    for bound in ("accuracy_ci_low", "accuracy_ci_high"):  # another seed, other draws
        assert other.summary[bound] != default.summary[bound]


def test_interval_of_alpha_one_is_the_bootstrap_median():
    """alpha = 1 (a 0 % interval): both bounds are the 50th percentile of the draws."""
    per_record, accuracies = _uniform_per_record()
    low, high = metrics.bootstrap_intervals(per_record, n_boot=1000, alpha=1.0)["accuracy"]
    assert low == high
    sd = accuracies.std() / np.sqrt(len(accuracies))
    assert abs(low - accuracies.mean()) < 0.2 * sd


_PROBS_MESSAGE = r"^probs must be in \[0, 1\] with rows summing to 1; pass softmax outputs$"


@pytest.mark.parametrize(("y_true", "probs", "records", "message"), [
    (Y_TRUE, one_hot_probs(Y_PRED, 4)[:7], RECORDS,
     r"^lengths differ: y_true 8, probs 7, records 8$"),
    (Y_TRUE[:0], np.zeros((0, 4)), RECORDS[:0],
     r"^no segments to evaluate; check the split's test records$"),
    (np.where(Y_TRUE == 2, 4, Y_TRUE), one_hot_probs(Y_PRED, 4), RECORDS,
     r"^y_true must hold class indices 0\.\.3$"),
    (np.where(Y_TRUE == 2, -1, Y_TRUE), one_hot_probs(Y_PRED, 4), RECORDS,
     r"^y_true must hold class indices 0\.\.3$"),
    (Y_TRUE.astype(float), one_hot_probs(Y_PRED, 4), RECORDS,
     r"^y_true must hold class indices 0\.\.3$"),
    (Y_TRUE, np.where(np.arange(4) == 0, np.nan, one_hot_probs(Y_PRED, 4)), RECORDS,
     _PROBS_MESSAGE),
    (Y_TRUE, one_hot_probs(Y_PRED, 4) + np.array([-0.2, 0.2, 0, 0]), RECORDS, _PROBS_MESSAGE),
    (Y_TRUE, one_hot_probs(Y_PRED, 4) + np.array([0.01, 0, 0, 0]), RECORDS, _PROBS_MESSAGE),
])
def test_bad_inputs_are_named_exactly(y_true, probs, records, message):
    with pytest.raises(ValueError, match=message):
        metrics.evaluate(y_true, probs, NAMES, records, n_boot=0)


def test_rows_summing_to_one_within_1e_3_are_accepted():
    probs = one_hot_probs(Y_PRED, 4) + np.array([5e-4, 0, 0, 0])
    assert metrics.evaluate(Y_TRUE, probs, NAMES, RECORDS, n_boot=0).summary["accuracy"] == 0.5
