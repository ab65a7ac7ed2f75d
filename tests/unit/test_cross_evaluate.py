"""Cross-database evaluation: the tiny pipeline's bundle (trained on 360 Hz "synth" records with
MLII) scored on a second synthetic database at 128 Hz whose leads are named CM5/ECG2."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from data_prep import layout
from data_prep.records.configs import load_label_map
from pipeline import cross_evaluate
from pipeline.evaluation import cross_reference
from pipeline.evaluation.report_folder import DETAILS, HEADLINE, METRICS, PREDICTIONS
from tests.helpers import REPO, segment_params
from tests.synthetic import write_record, write_records_file

DB, FS, SECONDS = "otherdb", 128, 60.0
CONFIG = {
    "name": DB, "annotator": "atr", "leads": ["ECG2"], "label_modes": ["beat"],
    "exclude": {"s4": "paced"}, "subjects": {"s1": "p1", "s2": "p1"},
    "default_split": "cross",
    "splits": {"cross": {"trainval": ["s5", "s6"], "test": ["s1", "s2", "s3", "s4"]}},
}


def _beats(seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.uniform(0.6, 1.0, int(SECONDS)))
    beats = np.round(times[times < SECONDS - 0.2] * FS).astype(np.int64)
    symbols = rng.choice(["N", "N", "N", "V", "A"], beats.size)
    symbols[5::25] = "F"  # a few fusion beats: a class with a tiny support
    return beats, symbols.tolist()


@pytest.fixture
def second_db(tmp_path: Path) -> dict:
    """<tmp>/mirror/otherdb/ (s1, s2, s6 annotated; s3 without a known lead; s4 excluded; s5
    without annotations) and <tmp>/configs/otherdb.yaml."""
    folder = tmp_path / "mirror" / DB
    beats = {}
    for i, record in enumerate(["s1", "s2", "s6", "s4"]):
        beats[record], symbols = _beats(i)
        write_record(folder, record, fs=FS, seconds=SECONDS, sig_names=("CM5", "ECG2"),
                     beats=beats[record], symbols=symbols)
    write_record(folder, "s3", fs=FS, seconds=SECONDS, sig_names=("X1", "X2"))
    write_record(folder, "s5", fs=FS, seconds=SECONDS, sig_names=("ECG2",), annotate=False)
    write_records_file(folder, ["s1", "s2", "s3", "s4", "s5", "s6"])
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / f"{DB}.yaml").write_text(yaml.safe_dump(CONFIG))
    return {"mirror": tmp_path / "mirror", "configs": configs, "beats": beats, "root": tmp_path}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _hand_metrics(predictions: pd.DataFrame) -> dict:
    """Se, +P and F1 per class and the N/S/V/F macro-F1, counted by hand (NaN: undefined)."""
    out, f1s = {}, []
    for name in ("N", "S", "V", "F", "Q"):
        truth, pred = predictions["label"] == name, predictions["pred"] == name
        tp, fp, fn = (truth & pred).sum(), (~truth & pred).sum(), (truth & ~pred).sum()
        ratio = lambda a, b: a / b if b else math.nan  # noqa: E731
        out[name] = {"se": ratio(tp, tp + fn), "ppv": ratio(tp, tp + fp),
                     "f1": ratio(2 * tp, 2 * tp + fp + fn), "support": int(truth.sum())}
        if name != "Q" and not math.isnan(out[name]["f1"]):
            f1s.append(out[name]["f1"])
    out["macro_f1_nsvf"] = float(np.mean(f1s))
    out["accuracy"] = float((predictions["label"] == predictions["pred"]).mean())
    return out


def _close(found, expected) -> bool:
    return (found is None and math.isnan(expected)) or found == pytest.approx(expected)


def test_bundle_scored_on_another_database(built, second_db, monkeypatch):
    from mlflow import MlflowClient

    from pipeline.tracking import mlflow_io, run_tracking

    root = second_db["root"]
    monkeypatch.chdir(root)  # the default out folder and the sqlite store's artifacts land here
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv(mlflow_io.URI_ENV, uri)
    before = _digest(built["reports"])
    summary = cross_evaluate.run(
        built["bundle"], DB, mirror=second_db["mirror"], n_boot=50, seed=1,
        databases_dir=second_db["configs"],
        tracking_params=run_tracking.TrackingParams(experiment="cross-test", log_model=False))

    out = Path("reports/cross/synth-on-otherdb/test_resnet-frozen")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [DETAILS, HEADLINE, METRICS, PREDICTIONS, "rows.csv", "cross.json"])
    assert _digest(built["reports"]) == before  # the training database's reports untouched
    assert summary["train_database"] == "synth" and summary["split"] == "all"
    assert summary["records"] == ["s1", "s2", "s3", "s5", "s6"]
    assert summary["excluded"] == {"s4": "paced"}
    # bundle leads (MLII, ...) absent: the config's ECG2 is read; s3 has neither
    assert summary["leads"] == {"s1": "ECG2", "s2": "ECG2", "s3": None, "s5": "ECG2",
                                "s6": "ECG2"}

    rows = pd.read_csv(out / "rows.csv", dtype={"record": str, "label": str, "reason": str},
                       keep_default_na=False)
    assert len(rows) == summary["rows"] == summary["scored"] + sum(summary["unscored"].values())
    assert summary["unscored"]["missing_lead"] == 1  # s3: one record-level row
    detected = rows.query("record == 's5'")
    assert (detected["beat_source"] == "detector").all() and (detected["reason"] != "").all()
    assert summary["unscored"]["no_reference_annotations"] == int(
        (detected["status"] == "ok").sum()) > 0
    s1 = rows.query("record == 's1'")  # every annotated beat, at the record's own 128 Hz
    assert s1["sample"].astype(int).tolist() == second_db["beats"]["s1"].tolist()
    assert set(s1.loc[s1["reason"] != "", "reason"]) <= {"record_edge"}

    predictions = pd.read_csv(out / PREDICTIONS, dtype={"record": str}, keep_default_na=False)
    assert len(predictions) == summary["scored"]
    assert set(predictions["record"]) == {"s1", "s2", "s6"}
    assert set(predictions["subject"]) == {"p1", "s6"} and set(predictions["lead"]) == {"ECG2"}
    metrics = yaml.safe_load((out / METRICS).read_text())["all"]
    hand = _hand_metrics(predictions)
    assert metrics["n_records"] == 2  # the bootstrap unit: subjects (s1 and s2 are p1)
    assert metrics["n_segments"] == len(predictions)
    assert metrics["accuracy"] == pytest.approx(hand["accuracy"])
    assert _close(metrics["macro_f1_nsvf"], hand["macro_f1_nsvf"])
    for name in ("N", "S", "V", "F"):
        assert metrics[name]["support"] == hand[name]["support"]
        for stat in ("se", "ppv", "f1"):
            assert _close(metrics[name][stat], hand[name][stat]), (name, stat)
    assert "macro_f1_nsvf_ci_low" in metrics and "ci_low" in str(metrics["V"])
    tiny = {c for c in ("N", "S", "V", "F", "Q") if 0 < hand[c]["support"] < 30}
    assert {c.split(":")[0].removeprefix("class ") for c in metrics["caveats"]
            if "examples (< 30)" in c} == tiny == {"F"}
    headline = yaml.safe_load((out / HEADLINE).read_text())["all"]
    assert headline["V_f1"] == metrics["V"]["f1"]
    assert (out / DETAILS / "all" / "confusion_counts.csv").is_file()

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("cross-test").experiment_id])
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.info.run_name == "synth-on-otherdb/test_resnet-frozen"
    tags = run.data.tags
    assert (tags["cross.train_database"], tags["cross.eval_database"], tags["cross.bundle_run"],
            tags["cross.split"]) == ("synth", DB, "test_resnet-frozen", "all")
    assert run.data.metrics["eval_all_accuracy"] == pytest.approx(metrics["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/rows.csv"} <= artifacts


def test_test_split_of_the_config_from_the_command_line(built, second_db, tmp_path, capsys):
    out = tmp_path / "cross-out"
    argv = ["--bundle", str(built["bundle"]), "--database", DB, "--mirror",
            str(second_db["mirror"]), "--split", "test", "--databases-dir",
            str(second_db["configs"]), "--out", str(out), "--n-boot", "10", "--no-mlflow"]
    cross_evaluate.main(argv)
    summary = layout.read_json(out / "cross.json")
    assert summary["split_definition"] == "cross" and summary["records"] == ["s1", "s2", "s3"]
    assert summary["mlflow_run_id"] is None and summary["n_boot"] == 10
    assert set(yaml.safe_load((out / METRICS).read_text())) == {"test"}
    assert (out / "confusion_test.csv").is_file()
    # a re-run that scores nothing (s5 has no annotations) says why and leaves no stale metrics
    with pytest.raises(ValueError, match=r"no row of 1 records .*no_reference_annotations"):
        cross_evaluate.main([*argv, "--records", "s5"])
    assert not (out / METRICS).exists() and not (out / "confusion_test.csv").exists()
    assert layout.read_json(out / "cross.json")["records"] == ["s5"]
    # a user's mistake is one line naming the fix
    with pytest.raises(SystemExit):
        from data_prep.cli import run_main
        run_main(cross_evaluate.main, [*argv[:4], "--mirror", str(tmp_path / "nowhere"),
                                       "--no-mlflow"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "nowhere" in err


def test_records_and_splits_are_checked(second_db, monkeypatch):
    folder = second_db["mirror"] / DB
    config = cross_reference.DatabaseConfig.model_validate(CONFIG)
    picked = cross_reference.select_records(folder, config, "all", ["s6", "s4", "s6"])
    assert (picked.split, picked.records, picked.excluded) == ("records", ["s6"], {"s4": "paced"})
    with pytest.raises(ValueError, match=r"\['nope'\] are not in .*RECORDS"):
        cross_reference.select_records(folder, config, "all", ["nope"])
    with pytest.raises(ValueError, match=r"defines no split 'other'.*--split all"):
        cross_reference.select_records(folder, config, "test", definition="other")
    monkeypatch.delenv(layout.ENV_MIRROR, raising=False)
    with pytest.raises(FileNotFoundError, match=r"--mirror DIR.*ECG_PHYSIONET_MIRROR"):
        cross_reference.database_folder(None, DB)
    monkeypatch.setenv(layout.ENV_MIRROR, str(second_db["mirror"]))
    assert cross_reference.database_folder(None, DB) == folder


def test_default_out_names_both_databases_and_the_run():
    assert cross_evaluate.default_out("mitdb", "svdb", "vgg16.tv_in1k-frozen") == Path(
        "reports/cross/mitdb-on-svdb/vgg16.tv_in1k-frozen")


def _window_bundle(mode: str, label_map: str) -> SimpleNamespace:
    """What label_rows reads of a rhythm or record bundle: its segment params and label map."""
    seg = segment_params(label_mode=mode, label_map=label_map, reference_csv="REFERENCE.csv")
    return SimpleNamespace(segment=seg, labels=load_label_map(REPO / label_map))


def _window_rows(n: int, record: str) -> pd.DataFrame:
    return pd.DataFrame({"record": record, "sample": pd.array(range(n), dtype="Int64"),
                         "beat_source": "window", "label": "", "status": "ok"})


def test_rhythm_windows_take_the_episode_over_them(tmp_path):
    """The segment stage's rule: one named episode over the whole window, else no label."""
    bundle = _window_bundle("rhythm", "configs/labels/rhythm.yaml")
    write_record(tmp_path, "r", fs=FS, seconds=60.0, sig_names=("ECG1",),
                 rhythm=[(0, "(N"), (25 * FS, "(AFIB"), (55 * FS, "(XYZ")])
    rows = _window_rows(6, "r")  # 10 s windows every 10 s
    rows.loc[5, "status"] = "flat"
    table = cross_reference.label_rows(bundle, tmp_path, "r", rows, "atr", None)
    assert table["label"].tolist() == ["N", "N", "", "AF", "AF", ""]
    assert table["reason"].tolist() == ["", "", "no_reference_rhythm", "", "", "flat"]
    missing = cross_reference.label_rows(bundle, tmp_path, "r", rows, "qrs", None)
    assert set(missing["reason"]) == {"no_reference_annotations", "flat"}


def test_record_windows_take_the_reference_row(tmp_path):
    bundle = _window_bundle("record", "configs/labels/challenge2017.yaml")
    (tmp_path / "REFERENCE.csv").write_text("A1,A\nA2,Z\n")
    reference = cross_reference.load_reference(bundle, tmp_path, None)
    labelled = [cross_reference.label_rows(bundle, tmp_path, r, _window_rows(2, r), None,
                                           reference) for r in ("A1", "A2", "A3")]
    assert [t["label"].tolist() for t in labelled] == [["AF", "AF"], ["", ""], ["", ""]]
    assert [t["reason"].iat[0] for t in labelled] == ["", "unmapped_label", "not_in_reference"]


def test_command_runs_without_torch_or_mlflow(built, second_db, tmp_path):
    """--no-mlflow needs only the runtime install (base + onnxruntime)."""
    out = tmp_path / "plain"
    script = textwrap.dedent(f"""
        import sys
        from importlib.abc import MetaPathFinder
        BLOCKED = {{"torch", "timm", "mlflow", "dvc", "onnx", "torchvision"}}
        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked import of {{name}}")
        sys.meta_path.insert(0, Block())
        from pipeline import cross_evaluate
        cross_evaluate.main(["--bundle", {str(built["bundle"])!r}, "--database", "{DB}",
                             "--mirror", {str(second_db["mirror"])!r}, "--records", "s6",
                             "--databases-dir", {str(second_db["configs"])!r},
                             "--out", {str(out)!r}, "--n-boot", "5", "--no-mlflow"])
        print("OK")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr[-2000:]
    assert layout.read_json(out / "cross.json")["records"] == ["s6"]


def test_out_never_lands_in_the_training_outputs(built, second_db):
    for out in (built["bundle"] / "x", built["reports"]):
        with pytest.raises(ValueError, match="training run's own outputs"):
            cross_evaluate.run(built["bundle"], DB, mirror=second_db["mirror"], out=out,
                               databases_dir=second_db["configs"])
