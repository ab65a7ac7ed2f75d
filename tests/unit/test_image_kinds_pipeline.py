"""The tiny synthetic pipeline with three-channel images: segment -> spectrogram (multires or
two_lead) -> train (image3, one epoch) -> evaluate -> export (ONNX parity) -> predict, which must
make the very images the stage made."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_prep import spectrogram
from data_prep.images import channels
from data_prep.layout import load_shard, read_index, sha256_file, shard_path
from pipeline.runtime import bundle as bundle_format
from pipeline.runtime import predict
from pipeline.training.feature_store import record_stems
from tests.synthetic import write_record
from tests.tiny_pipeline import build_pipeline, stage_params

PROBS = [f"prob_{c}" for c in ("N", "S", "V", "F", "Q")]


@pytest.fixture(scope="module", params=["multires", "two_lead"])
def kind(request, tmp_path_factory):
    torch.set_num_threads(1)
    built = build_pipeline(tmp_path_factory.mktemp(request.param), image=request.param)
    return {**built, "image": request.param}


CARD = {"multires": "multires: segment lead, 16-sample window (64 ms); segment lead, 32",
        "two_lead": "two_lead: segment lead, 32-sample window (128 ms); second lead, 32-sample "
                    "window (128 ms); segment lead, 64-sample window (256 ms)"}


def test_bundle_describes_three_channel_images(kind):
    meta = bundle_format.read_bundle_json(kind["bundle"])
    assert meta["bundle_format"] == 3
    assert meta["model"]["input"]["shape"] == ["batch", 3, 32, 32]
    assert meta["preprocessing"]["spectrogram"]["image"] == kind["image"]
    assert meta["preprocessing"]["image"]["channels"] == 3
    assert meta["preprocessing"]["model_input"]["channels"] == "image3"
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["atol"]
    card = (kind["bundle"] / bundle_format.MODEL_CARD).read_text()
    assert CARD[kind["image"]] in card
    assert ("from two-lead spectrograms" in card) == (kind["image"] == "two_lead")
    resolved = json.loads((kind["model"] / "resolved_config.json").read_text())
    assert resolved["image"] == kind["image"] and len(resolved["validation"]["f1"]) == 4


def _spy(monkeypatch) -> list[np.ndarray]:
    made: list[np.ndarray] = []

    def spy(leads, fs, params):
        made.append(channels.kind_images(leads, fs, params))
        return made[-1]

    monkeypatch.setattr(predict, "kind_images", spy)
    return made


def test_predict_makes_the_stage_images(kind, monkeypatch):
    loaded = predict.load_bundle(kind["bundle"])
    made = _spy(monkeypatch)
    table = loaded.predict_record(kind["raw"] / "r3")
    index = read_index(kind["spectrograms"] / "index.csv").query("record == 'r3'")
    stage = load_shard(kind["spectrograms"], "r3")[index["row"]]
    ok = table[table["status"] == "ok"]
    kept = (ok["label"] != "").to_numpy()  # the stage keeps mapped symbols only
    assert stage.shape[1:] == (3, 32, 32) and kept.sum() == len(index)
    np.testing.assert_array_equal(made[0][kept], stage)  # the very same bytes
    rr = index[loaded.rhythm_features].to_numpy(np.float32)
    np.testing.assert_allclose(ok[kept][PROBS].to_numpy(), loaded.predict_images(stage, rr),
                               atol=1e-5)


def test_feature_store_key_differs_between_image_kinds(kind, tmp_path):
    grey = tmp_path / "grey"
    spec = spectrogram.SpectrogramParams.model_validate(stage_params("grey")["spectrogram"])
    meta = spectrogram.run(spec, kind["segments"], grey)
    assert meta["shard_sha256"]["r3"] == sha256_file(shard_path(grey, "r3"))
    stems = record_stems(kind["spectrograms"], ["r3"])
    assert record_stems(grey, ["r3"]) != stems  # other pixels, other store files
    spectrogram.run(spec, kind["segments"], grey)  # a re-run writes the same bytes
    assert record_stems(grey, ["r3"])["r3"] == f"r3-{meta['shard_sha256']['r3'][:16]}"
    from pipeline import evaluate  # a three-channel model on grey images: named, not a crash

    params = evaluate.EvaluateParams.model_validate(
        {**stage_params()["evaluate"], "n_boot": 5, "device": "cpu"})
    with pytest.raises(ValueError, match=r"'image3' takes 3-channel images, but .*grey holds "
                                         r"1-channel images"):
        evaluate.run(params, kind["model"], grey, kind["splits"], tmp_path / "report")


def test_grey_model_on_three_channel_images_fails_at_the_start(kind, tmp_path):
    from pipeline import train

    data = stage_params("grey")
    params = train.TrainParams.model_validate(
        {**data["train"], "weights": "random", "epochs": 1, "device": "cpu"})
    with pytest.raises(ValueError, match=r"'grey3' takes 1-channel images.*\['image3'\]"):
        train.run(params, "test_resnet", "frozen", kind["spectrograms"], kind["splits"],
                  tmp_path / "model")
    assert json.loads((kind["spectrograms"] / "meta.json").read_text())["channels"] == 3


def test_two_lead_bundle_on_a_one_lead_record_duplicates_its_lead(kind, monkeypatch, tmp_path):
    if kind["image"] != "two_lead":
        pytest.skip("two_lead only")
    write_record(tmp_path, "one", fs=360, seconds=20.0, sig_names=("MLII",))
    loaded = predict.load_bundle(kind["bundle"])
    made = _spy(monkeypatch)
    table = loaded.predict_record(tmp_path / "one")
    ok = table[table["status"] == "ok"]
    assert len(ok) > 10 and (ok["note"] == "no second lead: first lead duplicated").all()
    np.testing.assert_array_equal(made[0][:, 0], made[0][:, 1])  # lead channels: one lead
    assert not np.array_equal(made[0][:, 0], made[0][:, 2])  # the long window differs
    skip = loaded.segment.model_copy(update={"second_lead_missing": "skip"})
    loaded.segment = skip
    rows = loaded.predict_record(tmp_path / "one")
    assert rows["status"].tolist() == ["missing_second_lead"]
