"""Model-input preprocessing: channels, scaling, normalisation, spectrogram-safe masks only."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.training.transforms import ModelInput, Preprocess, SpecAugment, preprocess_spec

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "input_size": (3, 224, 224), "interpolation": "bicubic"}



def batch(b: int = 4, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (b, size, size), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8)


def test_grey3_replicates_and_normalises_per_channel():
    spec = preprocess_spec(IMAGENET, "grey3", 16)
    x = batch()
    out = Preprocess.from_spec(spec)(x)
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
    for c in range(3):
        expected = (x.float() / 255 - IMAGENET["mean"][c]) / IMAGENET["std"][c]
        torch.testing.assert_close(out[:, c], expected)
    assert spec["crop_pct"] == 1.0 and spec["in_chans"] == 3 and spec["scale"] == 1 / 255


def test_in_chans1_uses_one_averaged_mean_and_std():
    spec = preprocess_spec(IMAGENET, "in_chans1", 16)
    assert spec["in_chans"] == 1
    assert spec["mean"] == pytest.approx([sum(IMAGENET["mean"]) / 3])
    assert spec["std"] == pytest.approx([sum(IMAGENET["std"]) / 3])
    x = batch()
    out = Preprocess.from_spec(spec)(x.unsqueeze(1))  # (B, 1, H, W) accepted too
    assert out.shape == (4, 1, 16, 16)
    torch.testing.assert_close(out[:, 0], (x.float() / 255 - spec["mean"][0]) / spec["std"][0])


def test_spec_round_trips_through_json_and_keeps_model_statistics():
    half = {**IMAGENET, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # tf_mobilenetv3
    spec = json.loads(json.dumps(preprocess_spec(half, "grey3", 224)))
    pre = Preprocess.from_spec(spec)
    assert float(pre(torch.zeros(1, 4, 4, dtype=torch.uint8)).min()) == pytest.approx(-1.0)
    assert float(pre(torch.full((1, 4, 4), 255, dtype=torch.uint8)).max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="channels"):
        preprocess_spec(IMAGENET, "rgb", 224)
    with pytest.raises(ValueError, match="grey batch"):
        pre(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


def test_training_input_without_masks_is_deterministic_no_flip():
    pre = Preprocess.from_spec(preprocess_spec(IMAGENET, "grey3", 16))
    model_input = ModelInput(pre).train()
    x = batch()
    torch.testing.assert_close(model_input(x), pre(x))  # no random op at all when masks are off
    assert not SpecAugment().enabled


def test_masks_cover_whole_columns_and_rows_and_only_in_training():
    torch.manual_seed(0)
    aug = SpecAugment(time_mask=5, freq_mask=4, num_masks=1)
    unit = torch.rand(64, 1, 32, 32) + 0.1  # strictly positive: zeros are masked pixels
    out = aug.train()(unit)
    masked = out == 0
    cols = masked.all(dim=2).squeeze(1)  # (B, W): whole column masked (time mask)
    rows = masked.all(dim=3).squeeze(1)  # (B, H): whole row masked (frequency mask)
    assert (masked == (cols[:, None, None, :] | rows[:, None, :, None])).all()
    assert int(cols.sum(1).max()) <= 5 and int(rows.sum(1).max()) <= 4
    assert cols.any() and rows.any()
    torch.testing.assert_close(out[~masked], unit[~masked])  # nothing else changes: no flips
    torch.testing.assert_close(aug.eval()(unit), unit)


def test_model_input_masks_before_normalising():
    torch.manual_seed(1)
    pre = Preprocess.from_spec(preprocess_spec(IMAGENET, "grey3", 16))
    model_input = ModelInput(pre, SpecAugment(time_mask=16, freq_mask=0)).train()
    x = torch.full((8, 16, 16), 255, dtype=torch.uint8)
    out = model_input(x)
    floor = pre(torch.zeros(1, 16, 16, dtype=torch.uint8))[0, :, 0, 0]  # a masked pixel
    masked = (out == floor.view(1, 3, 1, 1)).all(dim=1)
    assert masked.any() and (masked | (out == pre(x)).all(dim=1)).all()
    torch.testing.assert_close(model_input.eval()(x), pre(x))
