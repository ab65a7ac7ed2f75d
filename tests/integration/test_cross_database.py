"""Cross-database evaluation on real records: three mitdb DS2 records, resampled to 128 Hz with
other lead names, written into a temporary mirror as another database ("mitdb128"), scored with
the tiny pipeline's bundle by the command line, with an MLflow run in a temporary store."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
import yaml
from scipy.signal import resample_poly

from data_prep.layout import read_json
from data_prep.records.configs import load_label_map
from pipeline import cross_evaluate
from tests.helpers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DB, RECORDS, MINUTES = "mitdb128", ("100", "103", "113"), 5  # DS2 records with MLII first
UP, DOWN = 16, 45  # 360 Hz -> 128 Hz


def _resampled_copy(source: Path, record: str, dest: Path) -> pd.Series:
    """Writes the first MINUTES of a mitdb record at 128 Hz with leads D2/CH2; returns its
    beat symbols (annotations the AAMI map knows)."""
    n = MINUTES * 60 * 360
    rec = wfdb.rdrecord(str(source / record), sampto=n)
    ann = wfdb.rdann(str(source / record), "atr", sampto=n - 1)
    signal = resample_poly(rec.p_signal, UP, DOWN, axis=0)
    samples = np.minimum(np.rint(ann.sample * UP / DOWN).astype(np.int64), len(signal) - 1)
    wfdb.wrsamp(record, fs=128, units=["mV", "mV"], sig_name=["D2", "CH2"], p_signal=signal,
                fmt=["16", "16"], write_dir=str(dest))
    aux = [(note or "").rstrip("\x00") for note in ann.aux_note]
    wfdb.wrann(record, "atr", samples, np.asarray(ann.symbol), aux_note=aux, write_dir=str(dest))
    return pd.Series(ann.symbol)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bundle_on_resampled_mitdb_records(built, physionet_mirror, tmp_path, monkeypatch):
    folder = tmp_path / "mirror" / DB
    folder.mkdir(parents=True)
    symbols = {r: _resampled_copy(physionet_mirror / "mitdb", r, folder) for r in RECORDS}
    (folder / "RECORDS").write_text("".join(f"{r}\n" for r in RECORDS))
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / f"{DB}.yaml").write_text(yaml.safe_dump(
        {"name": DB, "annotator": "atr", "leads": ["D2"], "label_modes": ["beat"],
         "default_split": "ds2", "splits": {"ds2": {"trainval": [], "test": list(RECORDS)}}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"tracking": {"experiment": "cross-it", "log_model": False},
         "evaluate": {"n_boot": 200, "seed": 3}}))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ECG_PHYSIONET_MIRROR", str(tmp_path / "mirror"))  # no --mirror
    trained = Path("reports/synth/test_resnet-frozen")  # the training database's reports
    shutil.copytree(built["reports"], trained)
    before = _digest(Path("reports"))

    cross_evaluate.main(["--bundle", str(built["bundle"]), "--database", DB, "--split", "test",
                         "--databases-dir", str(configs)])

    out = Path("reports/cross/synth-on-mitdb128/test_resnet-frozen")
    assert {k: v for k, v in _digest(Path("reports")).items()
            if not k.startswith("cross/")} == before
    summary = read_json(out / "cross.json")
    assert summary["records"] == list(RECORDS) and summary["split_definition"] == "ds2"
    assert summary["leads"] == dict.fromkeys(RECORDS, "D2") and summary["n_boot"] == 200
    rows = pd.read_csv(out / "rows.csv", dtype={"record": str, "symbol": str, "label": str,
                                                "reason": str}, keep_default_na=False)
    aami = load_label_map(REPO / "configs/labels/aami.yaml")
    for record, symbol in symbols.items():  # one row per beat annotation, none dropped
        beats = symbol[~symbol.isin(aami.ignore)]
        assert rows.loc[rows["record"] == record, "symbol"].tolist() == beats.tolist()
    scored = rows[rows["reason"] == ""]
    assert scored["label"].tolist() == [aami.map[s] for s in scored["symbol"]]
    assert set(rows.loc[rows["reason"] != "", "reason"]) <= {"record_edge", "flat"}
    metrics = read_json(out / "metrics.json")["test"]
    assert metrics["n_segments"] == len(scored) == summary["scored"] > 1000
    assert metrics["n_records"] == 3 and metrics["N"]["support"] == (scored["label"] == "N").sum()
    assert metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"]
    assert (out / "confusion_test.csv").is_file()

    from mlflow import MlflowClient

    client = MlflowClient(uri)  # not the process default: earlier tests in this worker set it
    [run] = client.search_runs([client.get_experiment_by_name("cross-it").experiment_id])
    assert run.info.run_id == summary["mlflow_run_id"]
    assert run.data.tags["cross.eval_database"] == DB and run.data.tags["cross.split"] == "test"
    assert run.data.metrics["eval_test_accuracy"] == pytest.approx(metrics["accuracy"])
