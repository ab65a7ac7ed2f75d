"""predict: the light runtime on a bundle exported from the tiny synthetic pipeline."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from data_prep.beats import morphology, rhythm
from data_prep.layout import load_shard, read_index
from data_prep.records import signals, wfdb_io
from pipeline import predict
from pipeline.runtime import bundle as bundle_format
from pipeline.runtime import load_bundle, onnx_runner
from pipeline.runtime import predict as runtime
from tests.helpers import REPO
from tests.synthetic import ecg_like, regular_beats, write_record, write_records_file

PROBS = [f"prob_{c}" for c in ("N", "S", "V", "F", "Q")]


@pytest.fixture(scope="module")
def bundle(built):
    return predict.load_bundle(built["bundle"])


def _ok(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == "ok"]


def test_predict_record_equals_the_stage_images(bundle, built):
    """Same windows and images as segment + spectrogram made for the record (1e-5)."""
    table = bundle.predict_record(built["raw"] / "r3")
    index = read_index(built["spectrograms"] / "index.csv").query("record == 'r3'")
    rr = index[bundle.rhythm_features].to_numpy(np.float32)  # as the segment stage wrote them
    assert bundle.rhythm_features == [*rhythm.BEAT_FEATURES, *morphology.FEATURES]
    stage = bundle.predict_images(load_shard(built["spectrograms"], "r3")[index["row"]], rr)
    kept = _ok(table)[_ok(table)["label"] != ""]  # the stage keeps mapped symbols only
    assert len(kept) == len(index) and (kept["beat_source"] == "annotation").all()
    mapped = signals.map_samples(kept["sample"].to_numpy(np.int64), 360, 250)
    assert mapped.tolist() == index["sample"].tolist()
    assert kept["label"].tolist() == index["label"].tolist()
    np.testing.assert_allclose(kept[PROBS].to_numpy(), stage, atol=1e-5)
    edge = table[table["status"] != "ok"]
    assert set(edge["status"]) <= {"record_edge"} and edge[PROBS].isna().all().all()


def _linear_graph(path: Path, w_image: np.ndarray, w_rr: np.ndarray, bias: np.ndarray) -> None:
    """Writes an ONNX network with a bundle's inputs and outputs: logits = flattened images @
    w_image + rr @ w_rr + bias (float32), probs = softmax(logits)."""
    weights = [numpy_helper.from_array(a.astype(np.float32), name)
               for name, a in (("w_image", w_image), ("w_rr", w_rr), ("bias", bias))]
    images, rr = bundle_format.INPUT_NAME, bundle_format.RR_NAME
    nodes = [helper.make_node("Cast", [images], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w_image"], ["from_image"]),
             helper.make_node("MatMul", [rr, "w_rr"], ["from_rr"]),
             helper.make_node("Add", ["from_image", "from_rr"], ["summed"]),
             helper.make_node("Add", ["summed", "bias"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info(images, TensorProto.UINT8, ["batch", 32, 32]),
         helper.make_tensor_value_info(rr, TensorProto.FLOAT, ["batch", w_rr.shape[0]])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", w_rr.shape[1]])
         for name in bundle_format.OUTPUT_NAMES], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _linear_bundle(bundle, index: pd.DataFrame, path: Path):
    """The bundle with its network replaced by a fixed random linear one (`_linear_graph`) whose
    pixels and rhythm columns are centred and scaled on `index`'s rows, so that every one moves
    the probabilities and none saturates them; returns it and its probabilities in numpy."""
    rng = np.random.default_rng(0)
    rr = index[bundle.rhythm_features].to_numpy(np.float64)
    k, mean, scale = len(bundle.classes), rr.mean(0), rr.std(0) + 1e-3
    w_image = rng.normal(0, 2 / 32, (32 * 32, k)) / 255
    w_rr = rng.normal(0, 0.5 / np.sqrt(rr.shape[1]), (rr.shape[1], k)) / scale[:, None]
    bias = -127.5 * w_image.sum(0) - mean @ w_rr
    _linear_graph(path, w_image, w_rr, bias)

    def probs(images: np.ndarray, rr: np.ndarray) -> np.ndarray:
        logits = images.reshape(len(images), -1) @ w_image + rr @ w_rr + bias
        exp = np.exp(logits - logits.max(1, keepdims=True))
        return exp / exp.sum(1, keepdims=True)

    return dataclasses.replace(bundle, session=onnx_runner.onnx_session(path)), probs


@pytest.mark.parametrize("record", ["r1", "r3"])
def test_predict_feeds_the_network_the_stage_rows(bundle, built, tmp_path, monkeypatch, record):
    """predict's own path (lead, resampling, window cutting, images at the segment rate,
    rhythm and shape features) against what the segment and spectrogram stages wrote.

    The tiny trained model gives P(V) = 1 to every beat, so its probabilities cannot tell a
    window shifted by one sample, images made at another rate or rhythm columns in another
    order. Here the network's inputs must equal the shard rows byte for byte and the index's
    rhythm columns exactly, and a fixed linear network whose probabilities stay far from 0 and
    1 and move with every pixel and rhythm column must give the stage rows' probabilities.
    """
    index = read_index(built["spectrograms"] / "index.csv")
    linear, probs = _linear_bundle(bundle, index, tmp_path / "linear.onnx")
    fed = []

    def spy(session, images, rr, n_classes, batch_size=onnx_runner.BATCH_SIZE):
        fed.append((images.copy(), rr.copy()))
        return onnx_runner.run_probs(session, images, rr, n_classes, batch_size)

    monkeypatch.setattr(runtime, "run_probs", spy)
    table = linear.predict_record(built["raw"] / record)
    index = index[index["record"] == record]
    stage = load_shard(built["spectrograms"], record)[index["row"]]
    stage_rr = index[linear.rhythm_features].to_numpy(np.float32)
    ok = _ok(table)
    kept = (ok["label"] != "").to_numpy()  # the stage keeps mapped symbols only
    assert len(fed) == 1 and len(fed[0][0]) == len(ok) and kept.sum() == len(index) > 30
    images, rr = fed[0]
    np.testing.assert_array_equal(images[kept], stage)
    np.testing.assert_array_equal(rr[kept], stage_rr)
    expected = probs(stage.astype(np.float64), stage_rr.astype(np.float64))
    assert expected.min() > 1e-3 and expected.max() < 0.99  # far from saturated
    assert np.ptp(expected, axis=0).min() > 0.05  # and different from beat to beat
    np.testing.assert_allclose(ok[kept][PROBS].to_numpy(), expected, atol=1e-5)


def test_predict_signal_in_memory_equals_predict_record(bundle, built):
    x = wfdb_io.read_signal(built["raw"], "r3", 0)
    ann = wfdb_io.read_annotations(built["raw"], "r3", "atr")
    table = bundle.predict_signal(x, 360, ann.sample, record="r3", symbols=ann.symbol,
                                 lead="MLII")
    pd.testing.assert_frame_equal(table, bundle.predict_record(built["raw"] / "r3"))


def test_no_annotations_at_another_rate_uses_the_detector(bundle, tmp_path):
    beats = write_record(tmp_path, "hz500", fs=500, seconds=30.0, sig_names=("II",),
                         annotate=False)
    table = bundle.predict_record(tmp_path / "hz500")
    assert (table["beat_source"] == "detector").all()
    found = table["sample"].to_numpy(np.int64)
    assert len(found) == len(beats)  # every spike found once, at its sample (+-10 ms)
    assert np.abs(found - beats).max() <= 5
    ok = _ok(table)
    assert len(ok) >= len(beats) - 3 and np.allclose(ok[PROBS].sum(axis=1), 1, atol=1e-5)
    assert set(ok["pred"]) <= set(bundle.classes)
    np.testing.assert_allclose(table["time_s"], found / 500)


def test_missing_lead_names_the_leads_present(bundle, tmp_path, caplog):
    write_record(tmp_path, "v", sig_names=("V1", "V5"))
    with pytest.raises(ValueError, match=r"leads \['V1', 'V5'\], none of .*MLII.*lead="):
        bundle.predict_record(tmp_path / "v")
    with caplog.at_level(logging.INFO, logger="pipeline.runtime"):
        table = bundle.predict_record(tmp_path / "v.hea", lead="V5")
    assert _ok(table).shape[0] > 0
    assert set(table["lead"]) == {"V5"}  # the lead read is in every row and in the log
    assert "record v: lead V5" in caplog.text


def test_lead_column_names_the_preferred_lead_of_two(bundle, tmp_path):
    write_record(tmp_path, "two", sig_names=("V1", "MLII"))
    assert set(bundle.predict_record(tmp_path / "two")["lead"]) == {"MLII"}


def test_short_record_is_reported_not_classified(bundle, tmp_path, caplog):
    write_record(tmp_path, "short", seconds=2.0, beats=[360])
    with caplog.at_level(logging.WARNING):
        table = bundle.predict_record(tmp_path / "short")
    assert table["status"].tolist() == ["shorter_than_window"] and table["pred"].tolist() == [""]
    assert "short" in caplog.text and "shorter_than_window" in caplog.text


def test_nan_and_flat_segments_are_reported(bundle, caplog):
    fs, n = 250, 250 * 40
    beats = regular_beats(n, fs)
    x = ecg_like(n, fs, beats)
    x[250 * 10:250 * 12] = np.nan  # 2 s of invalid samples
    x[250 * 22:250 * 30] = 0.4  # 8 s lead-off: constant value
    with caplog.at_level(logging.WARNING):
        table = bundle.predict_signal(x, fs, beats)
    time = table["time_s"]
    assert (table.loc[time.between(10.2, 11.8), "status"] == "nan_samples").all()
    assert (table.loc[time.between(23.5, 28.5), "status"] == "flat").all()
    assert (table.loc[time.between(4, 8), "status"] == "ok").all()
    bad = table[table["status"] != "ok"]
    assert bad[PROBS].isna().all().all() and (bad["pred"] == "").all()
    assert "nan_samples" in caplog.text and "flat" in caplog.text
    assert bundle.predict_signal(np.full(n, np.nan), fs)["status"].tolist() == ["all_nan"]
    with pytest.raises(ValueError, match="one lead"):
        bundle.predict_signal(np.zeros((n, 2)), fs)


def test_predict_folder_reports_bad_records_and_goes_on(bundle, built, tmp_path):
    write_record(tmp_path, "a", seconds=20.0)
    write_record(tmp_path, "b", sig_names=("V1",))
    write_record(tmp_path, "c", seconds=1.0, beats=[100])
    write_records_file(tmp_path, ["a", "b", "c"])
    table = bundle.predict_folder(tmp_path)
    assert list(table.columns) == bundle.columns
    status = table.groupby("record")["status"].agg(set).to_dict()
    assert "ok" in status["a"] and status["b"] == {"record_error"}
    assert status["c"] == {"shorter_than_window"}
    assert "V1" in table.loc[table["record"] == "b", "note"].iat[0]


def test_a_folder_of_bundles_is_no_bundle_and_lists_them(built, tmp_path):
    for run in ("a-frozen", "b-partial"):
        shutil.copytree(built["bundle"], tmp_path / "export" / "db" / run)
    with pytest.raises(FileNotFoundError, match="holds bundles") as err:
        load_bundle(tmp_path / "export")
    assert str(tmp_path / "export" / "db" / "a-frozen") in str(err.value)
    assert str(tmp_path / "export" / "db" / "b-partial") in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such bundle folder"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no bundle.json; .*models/export/<db>/<run>"):
        load_bundle(tmp_path / "empty")


def test_cli_writes_csv(built, tmp_path):
    out = tmp_path / "p.csv"
    predict.main(["--bundle", str(built["bundle"]), str(built["raw"] / "r1"), str(built["raw"]),
                  "--out", str(out), "--annotator", "none"])
    table = pd.read_csv(out, dtype={"record": str}, keep_default_na=False)
    assert set(table["record"]) == {"r1", "r2", "r3"} and (table["beat_source"] == "detector").all()
    assert table.columns.tolist()[:4] == ["record", "lead", "sample", "time_s"]
    assert set(table["lead"]) == {"MLII"}


def test_installed_command_runs_a_bundle(built, tmp_path):
    command = Path(sys.executable).parent / "ecg-predict"
    assert command.is_file(), f"{command}: missing; pip install -e . installs the commands"
    out = tmp_path / "p.csv"
    done = subprocess.run([str(command), "--bundle", str(built["bundle"]), str(built["raw"] / "r1"),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (pd.read_csv(out)["status"] == "ok").any()
    wrong = subprocess.run([str(command), "--bundle", str(tmp_path), str(built["raw"] / "r1"),
                            "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr, wrong.stderr
    assert wrong.stderr.splitlines()[-1].startswith(f"error: {tmp_path}: no bundle.json")


def test_predict_imports_no_torch_timm_mlflow_dvc(built):
    script = textwrap.dedent(f"""
        import sys
        from importlib.abc import MetaPathFinder
        BLOCKED = {{"torch", "timm", "mlflow", "dvc", "onnx", "torchvision", "sklearn"}}
        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked import of {{name}}")
        sys.meta_path.insert(0, Block())
        from pipeline.runtime import load_bundle
        from pipeline.predict import main
        table = load_bundle({str(built["bundle"])!r}).predict_record({str(built["raw"] / "r1")!r})
        assert (table["status"] == "ok").any()
        main(["--bundle", {str(built["bundle"])!r}, {str(built["raw"] / "r1")!r},
              "--out", {str(built["bundle"].parent / "blocked.csv")!r}])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("OK")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr[-2000:]
