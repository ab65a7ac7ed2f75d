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

from data_prep.beats import context, morphology, rhythm
from data_prep.layout import load_shard, read_index
from data_prep.records import signals, wfdb_io
from pipeline import predict
from pipeline.runtime import bundle as bundle_format
from pipeline.runtime import load_bundle, onnx_runner
from pipeline.runtime import predict as runtime
from tests.helpers import REPO
from tests.odd_records import spoil_date
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


def _linear_graph(path: Path, w_image: np.ndarray, w_rr: np.ndarray, bias: np.ndarray,
                  image: tuple[int, ...] = (32, 32)) -> None:
    """Writes an ONNX network with a bundle's inputs and outputs: logits = flattened images
    (of shape `image`) @ w_image + rr @ w_rr + bias (float32), probs = softmax(logits)."""
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
        [helper.make_tensor_value_info(images, TensorProto.UINT8, ["batch", *image]),
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


def _spy_network(monkeypatch) -> list[tuple[np.ndarray, np.ndarray]]:
    """What predict feeds the network: (images, rhythm features) of each call."""
    fed = []

    def spy(session, images, rr, n_classes, batch_size=onnx_runner.BATCH_SIZE):
        fed.append((images.copy(), rr.copy()))
        return onnx_runner.run_probs(session, images, rr, n_classes, batch_size)

    monkeypatch.setattr(runtime, "run_probs", spy)
    return fed


def _window_bundle(bundle, path: Path, features: list[str]):
    """The bundle as a record-mode one (10 s windows every 5 s) whose network is a fixed linear
    one on the images and the window rhythm `features` (none: images only)."""
    segment = bundle.segment.model_copy(update={"label_mode": "record", "window_s": 10.0,
                                                "window_stride_s": 5.0,
                                                "reference_csv": "REFERENCE.csv"})
    model = {k: v for k, v in bundle.meta["model"].items() if k != "rr_input"}
    if features:
        model["rr_input"] = {"features": features}
    rng = np.random.default_rng(1)
    _linear_graph(path, rng.normal(0, 1e-4, (32 * 32, 5)), rng.normal(0, 0.1, (len(features), 5)),
                  np.zeros(5))
    return dataclasses.replace(bundle, segment=segment, meta={**bundle.meta, "model": model},
                               session=onnx_runner.onnx_session(path))


def test_record_mode_windows_take_rhythm_from_given_or_detected_beats(bundle, tmp_path,
                                                                     monkeypatch):
    """Record and rhythm bundles classify fixed windows; their rhythm features are the window
    statistics (`context.rhythm_rows`) of the beats given, else of the XQRS detector's (as the
    segment stage in record mode), at the windows' starts."""
    windows = _window_bundle(bundle, tmp_path / "w.onnx", list(rhythm.feature_names("record")))
    fed = _spy_network(monkeypatch)
    fs, n = 360, 360 * 40
    beats = regular_beats(n, fs, rr_s=0.8)
    x = ecg_like(n, fs, beats)
    x[360 * 21:360 * 22] = np.nan  # detection runs on the NaN-filled lead
    detected = windows.predict_signal(x, fs)
    starts = np.arange(0, 250 * 30 + 1, 250 * 5)  # 10 s windows every 5 s in 40 s at 250 Hz
    assert detected["beat_source"].tolist() == ["window"] * len(starts)
    assert detected["sample"].tolist() == signals.map_samples(starts, 250, fs).tolist()
    found = wfdb_io.detect_qrs(signals.fill_nan(x)[0], fs)
    assert abs(len(found) - len(beats)) <= 2
    ok = (detected["status"] == "ok").to_numpy()
    expected = context.rhythm_rows(windows.segment, found / fs, None, starts)
    np.testing.assert_allclose(fed[0][1], expected[ok], rtol=1e-6)
    given = regular_beats(n, fs, rr_s=0.5)  # not the signal's: the given ones count
    windows.predict_signal(x, fs, given)
    expected = context.rhythm_rows(windows.segment, given / fs, None, starts)
    np.testing.assert_allclose(fed[1][1], expected[ok], rtol=1e-6)
    assert not np.allclose(fed[0][1], fed[1][1])
    write_record(tmp_path, "rec", fs=fs, seconds=40.0, beats=given, signal=x[:, None],
                 sig_names=("MLII",))  # a record's annotations are not read in record mode
    table = windows.predict_record(tmp_path / "rec")
    assert table["beat_source"].tolist() == ["window"] * len(starts)
    np.testing.assert_allclose(fed[2][1], fed[0][1], rtol=1e-6)


def test_record_mode_without_rhythm_features_and_the_per_record_answer(bundle, tmp_path):
    """A record bundle on images only needs no beats; its per-record answer is the mean of
    the classified windows' probabilities (flat windows left out), and their argmax."""
    windows = _window_bundle(bundle, tmp_path / "w.onnx", [])
    fs, n = 250, 250 * 40
    x = ecg_like(n, fs, regular_beats(n, fs))
    x[250 * 28:] = 0.3  # lead off: the last windows are flat
    table = windows.predict_signal(x, fs, record="r")
    ok = table[table["status"] == "ok"]
    assert 0 < len(ok) < len(table) and set(table["status"]) == {"ok", "flat"}
    records = windows.per_record(pd.concat([table, table.assign(record="s")]))
    assert records["record"].tolist() == ["r", "s"]
    assert records["n_windows"].tolist() == [len(ok)] * 2
    np.testing.assert_allclose(records[PROBS].to_numpy()[0], ok[PROBS].to_numpy().mean(0),
                               rtol=1e-6)
    assert records["pred"].iat[0] == PROBS[int(ok[PROBS].to_numpy().mean(0).argmax())][5:]


def test_two_lead_bundles_read_the_second_lead_the_record_has(bundle, tmp_path):
    """two_lead images: the second lead is the first of segment.second_leads other than the
    lead read (here V1, not MLII again), read as tolerantly as the first; its NaN stretch
    leaves its windows out with the note "second lead". Without one, the first is duplicated."""
    segment = bundle.segment.model_copy(update={"second_leads": ["MLII", "V1"],
                                                "tolerant_headers": True})
    image = bundle.spectrogram.model_copy(update={"image": "two_lead"})
    _linear_graph(tmp_path / "two.onnx", np.zeros((3 * 32 * 32, 5)), np.zeros((17, 5)),
                  np.zeros(5), image=(3, 32, 32))
    two = dataclasses.replace(bundle, segment=segment, spectrogram=image,
                              session=onnx_runner.onnx_session(tmp_path / "two.onnx"))
    fs, n = 360, 360 * 30
    beats = regular_beats(n, fs)
    lead = ecg_like(n, fs, beats)
    second = 0.5 * lead
    second[fs * 10:fs * 12] = np.nan
    write_record(tmp_path, "two", sig_names=("MLII", "V1"), beats=beats,
                 signal=np.column_stack([lead, second]))
    spoil_date(tmp_path / "two.hea")  # read only with segment.tolerant_headers
    table = two.predict_record(tmp_path / "two")
    assert set(table["lead"]) == {"MLII"}
    hidden = table["time_s"].between(10.2, 11.8)
    assert hidden.any() and (table.loc[hidden, "status"] == "nan_samples").all()
    assert (table.loc[hidden, "note"] == "second lead").all()
    middle = table["time_s"].between(4, 8)
    assert (table.loc[middle, "status"] == "ok").all() and (table.loc[middle, "note"] == "").all()
    write_record(tmp_path, "one", sig_names=("MLII",), beats=beats, signal=lead[:, None])
    ok = _ok(two.predict_record(tmp_path / "one"))
    assert len(ok) and (ok["note"] == "no second lead: first lead duplicated").all()


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
    note = "2.00 s of signal < one 2.5 s window"  # the bundle's beat windows: 1.25 + 1.25 s
    assert table["note"].tolist() == [note]
    assert f"record short not classified (shorter_than_window): {note}" in caplog.messages


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


def test_folder_runs_pass_annotator_and_lead_on_and_number_the_rows(bundle, tmp_path):
    write_record(tmp_path, "a", seconds=20.0, sig_names=("V1", "V5"))
    write_record(tmp_path, "b", seconds=20.0, sig_names=("V1", "V5"))
    write_records_file(tmp_path, ["a", "b"])
    table = bundle.predict_folder(tmp_path, annotator=None, lead="V5")
    assert set(table["record"]) == {"a", "b"} and set(table["lead"]) == {"V5"}
    assert (table["beat_source"] == "detector").all()  # annotations present but not asked for
    assert table.index.tolist() == list(range(len(table)))


def test_record_errors_name_the_record_and_say_what_to_do(bundle, tmp_path, caplog,
                                                          monkeypatch):
    write_record(tmp_path, "v", seconds=20.0, sig_names=("V1", "V5"))
    for path in ("v", "v.hea", "v.dat"):
        row = bundle.predict_record_or_error(tmp_path / path)
        assert row["record"].tolist() == ["v"] and row["status"].tolist() == ["record_error"]
        assert row["note"].tolist() == [
            f"record {tmp_path / 'v'}: leads ['V1', 'V5'], none of ['MLII', 'II', 'ML2', 'ECG', "
            "'ECG1'] that the bundle was trained on; pass lead=<name> (CLI --lead) to use "
            "another lead knowingly"]
    named = bundle.predict_record(tmp_path / "v.dat", lead="V1")  # the signal file's name
    assert set(named["record"]) == {"v"} and (named["status"] == "ok").any()
    table = bundle.predict_record_or_error(tmp_path / "v.hea", annotator=None, lead="V5")
    assert set(table["lead"]) == {"V5"} and (table["beat_source"] == "detector").all()

    def bug(*args, **kwargs):
        raise KeyError("rr_pre")

    monkeypatch.setattr(bundle, "predict_record", bug)
    with caplog.at_level(logging.DEBUG, logger="pipeline.runtime"):
        row = bundle.predict_record_or_error(tmp_path / "v.dat")
    assert row["note"].tolist() == ["record v: unexpected KeyError: 'rr_pre'; re-run with "
                                    "--debug for the traceback and report it"]
    assert [r.levelno for r in caplog.records if r.getMessage() == "record v failed"] == [
        logging.DEBUG]


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
