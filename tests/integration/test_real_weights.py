"""The real ImageNet weights in ../shared/weights load through resolve_weights + build_model.

The README's photo-based verification needs scikit-image, which the project does not install;
instead the file hashes are checked against the README, every tensor against the file, and the
ImageNet classifier's output on a fixed synthetic image for determinism and against random init.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from pipeline.training.freeze import apply_freeze, feature_extractor
from pipeline.training.models import build_model, model_data_config
from pipeline.training.weights import resolve_weights

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README_SHA256 = {  # ../shared/weights/README.md
    "mobilenetv2_100": "6e4bbcc43fd7f31a4a4e3888004545bfe5633945ac2dbc7e6552d537c409643f",
    "tf_mobilenetv3_small_100": "084ee534bec53ca84db82faa818f39e3429141d696673c501221a89ba8909782",
    "regnetx_002": "bd929dffc52e124d90dbea5e4d91c6ff23cb3a27e3a989a830b828fcc31ecf80",
}
MEAN = {"mobilenetv2_100": 0.485, "tf_mobilenetv3_small_100": 0.5, "regnetx_002": 0.485}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ECG_WEIGHTS_DIR", raising=False)


def synthetic_image(model: torch.nn.Module) -> torch.Tensor:
    """A fixed, smooth 224 px RGB pattern, normalised as the model was pretrained."""
    cfg = model_data_config(model)
    ramp = torch.linspace(0, 1, 224)
    rgb = torch.stack([ramp[None, :].expand(224, 224), ramp[:, None].expand(224, 224),
                       0.5 + 0.5 * torch.sin(12 * ramp)[None, :] * torch.cos(9 * ramp)[:, None]])
    mean = torch.tensor(cfg["mean"])[:, None, None]
    std = torch.tensor(cfg["std"])[:, None, None]
    return ((rgb - mean) / std)[None]


@pytest.mark.parametrize("name", sorted(README_SHA256))
def test_backbone_loads_for_five_classes(name: str, weights_dir: Path) -> None:
    source = resolve_weights(name, "imagenet", weights_dir)
    assert source.kind == "file" and source.sha256 == README_SHA256[name]
    assert source.sha256 in source.describe()
    model = build_model(name, 5, source)
    assert model_data_config(model)["mean"][0] == pytest.approx(MEAN[name])
    expected = load_file(source.location)
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    classifier = {n for n, p in model.named_parameters() if id(p) in head_ids}
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for key, tensor in expected.items():
        if key in classifier:
            assert loaded[key].shape[0] == 5
        else:
            assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("name", sorted(README_SHA256))
def test_imagenet_head_is_reproduced(name: str, weights_dir: Path) -> None:
    source = resolve_weights(name, "imagenet", weights_dir)
    model = build_model(name, 1000, source).eval()
    for key, tensor in load_file(source.location).items():
        assert torch.equal(model.state_dict()[key], tensor), key
    x = synthetic_image(model)
    with torch.inference_mode():
        logits = model(x)
        again = model(x)
        features = model.forward_features(x)
        torch.manual_seed(0)
        random_model = build_model(name, 1000, resolve_weights(name, "random")).eval()
        random_features = random_model.forward_features(x)
    assert torch.equal(logits, again)
    assert torch.isfinite(logits).all() and logits.shape == (1, 1000)
    assert not torch.allclose(features, random_features, atol=1e-3)


@pytest.mark.parametrize("name", sorted(README_SHA256))
def test_frozen_feature_cache_path(name: str, weights_dir: Path) -> None:
    model = build_model(name, 5, resolve_weights(name, "imagenet", weights_dir))
    report = apply_freeze(model, "frozen")
    assert report.trainable_params < 0.01 * report.total_params
    feature_fn, head = feature_extractor(model, "frozen")
    model.eval()
    x = synthetic_image(model)
    with torch.inference_mode():
        torch.testing.assert_close(head(feature_fn(x)), model(x))


def test_vgg16_checkpoint_in_timm_layout(tmp_path: Path) -> None:
    """A 528 MB VGG16 file (random init, timm key layout) loads through the local-file path."""
    state = timm.create_model("vgg16", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()},
              str(tmp_path / "vgg16.tv_in1k.safetensors"))
    source = resolve_weights("vgg16.tv_in1k", "imagenet", tmp_path)
    model = build_model("vgg16.tv_in1k", 5, source)
    loaded = model.state_dict()
    for key, tensor in state.items():
        if not key.startswith("head.fc."):
            assert torch.equal(loaded[key], tensor), key
    report = apply_freeze(model, "frozen", pre_logits="frozen")
    assert (report.trainable_params, report.total_params) == (20_485, 134_281_029)
    assert report.trainable_groups == ("head",)
