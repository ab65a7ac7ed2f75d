"""The tiny synthetic pipeline with three-channel images: segment -> spectrogram (multires) ->
train (image3, one epoch) -> evaluate -> export (ONNX parity) -> predict, which must make the
very images the stage made."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_prep import channels, spectrogram
from data_prep.layout import load_shard, read_index
from pipeline import bundle as bundle_format
from pipeline import predict
from pipeline.feature_store import FeatureStore
from tests.tiny_pipeline import build_pipeline, stage_params

PROBS = [f"prob_{c}" for c in ("N", "S", "V", "F", "Q")]


@pytest.fixture(scope="module")
def multires(tmp_path_factory):
    torch.set_num_threads(1)
    return build_pipeline(tmp_path_factory.mktemp("multires"), image="multires")


def test_bundle_describes_three_channel_images(multires):
    meta = bundle_format.read_bundle_json(multires["bundle"])
    assert meta["bundle_format"] == 3
    assert meta["model"]["input"]["shape"] == ["batch", 3, 32, 32]
    assert meta["preprocessing"]["spectrogram"]["image"] == "multires"
    assert meta["preprocessing"]["image"]["channels"] == 3
    assert meta["preprocessing"]["model_input"]["channels"] == "image3"
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["atol"]
    card = (multires["bundle"] / bundle_format.MODEL_CARD).read_text()
    assert "multires: segment lead, 16-sample window (64 ms)" in card


def test_predict_makes_the_stage_images(multires, monkeypatch):
    loaded = predict.load_bundle(multires["bundle"])
    made = []

    def spy(leads, fs, params):
        made.append(channels.kind_images(leads, fs, params))
        return made[-1]

    monkeypatch.setattr(predict, "kind_images", spy)
    table = loaded.predict_record(multires["raw"] / "r3")
    index = read_index(multires["spectrograms"] / "index.csv").query("record == 'r3'")
    stage = load_shard(multires["spectrograms"], "r3")[index["row"]]
    ok = table[table["status"] == "ok"]
    kept = (ok["label"] != "").to_numpy()  # the stage keeps mapped symbols only
    assert stage.shape[1:] == (3, 32, 32) and kept.sum() == len(index)
    np.testing.assert_array_equal(made[0][kept], stage)  # the very same bytes
    rr = index[loaded.rhythm_features].to_numpy(np.float32)
    np.testing.assert_allclose(ok[kept][PROBS].to_numpy(), loaded.predict_images(stage, rr),
                               atol=1e-5)


def test_feature_store_key_differs_between_image_kinds(multires, tmp_path):
    grey = tmp_path / "grey"
    spec = spectrogram.SpectrogramParams.model_validate(stage_params("grey")["spectrogram"])
    spectrogram.run(spec, multires["segments"], grey)
    store = FeatureStore(tmp_path / "store", {"model": "m", "weights": "w", "spec": {}},
                         lambda x: x, torch.nn.Identity(), torch.device("cpu"))
    assert store.folder(grey) != store.folder(multires["spectrograms"])
    assert store.folder(grey) == store.folder(grey)


def test_grey_model_on_multires_images_fails_at_the_start(multires, tmp_path):
    from pipeline import train

    data = stage_params("grey")
    params = train.TrainParams.model_validate(
        {**data["train"], "weights": "random", "epochs": 1, "device": "cpu"})
    with pytest.raises(ValueError, match=r"'grey3' takes 1-channel images.*\['image3'\]"):
        train.run(params, "test_resnet", "frozen", multires["spectrograms"], multires["splits"],
                  tmp_path / "model")
    assert json.loads((multires["spectrograms"] / "meta.json").read_text())["channels"] == 3
