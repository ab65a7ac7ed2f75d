"""Weights resolution, model building from local files and data config.

Tiny timm models with random weights stand in for real checkpoints; the network is never used
(HF_HUB_OFFLINE=1, or the hub probe is replaced).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from data_prep.layout import sha256_file
from pipeline.training import weights
from pipeline.training.models import build_model, model_data_config
from pipeline.training.weights import WeightsSource, resolve_weights

SMALL_VGG = {"mlp_ratio": 1 / 16}  # VGG key layout (features, pre_logits, head.fc), 1/8 size


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network, no user weights folder, an empty default Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(weights.ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "default-hf-cache"))


def save_model(path: Path, name: str, **kwargs) -> dict[str, torch.Tensor]:
    """Saves a random-init timm model's state_dict (timm key layout) as safetensors."""
    state = timm.create_model(name, pretrained=False, **kwargs).state_dict()
    state = {k: v.contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return state


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"not read by resolve_weights except for its sha256")


def test_random_only_when_asked(tmp_path: Path) -> None:
    source = resolve_weights("resnet10t", "random", tmp_path)
    assert source == WeightsSource("random", "random", None)
    assert "random" in source.describe()
    assert build_model("resnet10t", 3, source).get_classifier().out_features == 3


def test_tagged_name_needs_its_exact_file(tmp_path: Path) -> None:
    touch(tmp_path, "vgg16.tv_in1k.safetensors", "vgg16.other.safetensors", "vgg16_bn.safetensors")
    source = resolve_weights("vgg16.tv_in1k", "imagenet", tmp_path)
    assert source.kind == "file"
    assert Path(source.location).name == "vgg16.tv_in1k.safetensors"
    assert len(source.sha256) == 64
    assert source.describe().startswith("file:") and source.sha256 in source.describe()


def test_untagged_name_takes_the_only_tagged_file(tmp_path: Path) -> None:
    touch(tmp_path, "mobilenetv2_100.tv_qat_in1k.safetensors", "mobilenetv2_110d.a.safetensors")
    source = resolve_weights("mobilenetv2_100", "imagenet", tmp_path)
    assert Path(source.location).name == "mobilenetv2_100.tv_qat_in1k.safetensors"


def test_untagged_file(tmp_path: Path) -> None:
    touch(tmp_path, "resnet18.safetensors", "resnet18d.a1_in1k.safetensors")
    assert Path(resolve_weights("resnet18", "imagenet", tmp_path).location).name == (
        "resnet18.safetensors"
    )


def test_several_tags_for_untagged_name_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path, "resnet18.a1_in1k.safetensors", "resnet18.tv_in1k.safetensors")
    with pytest.raises(ValueError, match=r"resnet18\.a1_in1k\.safetensors, resnet18\.tv_in1k"):
        resolve_weights("resnet18", "imagenet", tmp_path)


def test_weights_dir_before_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    touch(first, "resnet18.a.safetensors")
    touch(second, "resnet18.b.safetensors")
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(second))
    assert Path(resolve_weights("resnet18", "imagenet", first).location).parent == first
    assert Path(resolve_weights("resnet18", "imagenet").location).parent == second
    touch(tmp_path / "empty")
    assert Path(resolve_weights("resnet18", "imagenet", tmp_path / "empty").location).parent == (
        second
    )


def test_offline_without_weights_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        resolve_weights("vgg16.tv_in1k", "imagenet", tmp_path)
    message = str(err.value)
    for hint in ("HF_HUB_OFFLINE", "vgg16.tv_in1k.safetensors", "ECG_WEIGHTS_DIR",
                 "weights: random", str(tmp_path)):
        assert hint in message


def test_unreachable_hub_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(weights, "get_hf_file_metadata", no_network)
    with pytest.raises(ValueError, match=r"unreachable.*ConnectionError"):
        resolve_weights("resnet18", "imagenet", tmp_path)


def test_reachable_hub_records_the_file_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    class Meta:
        etag = '"' + "ab" * 32 + '"'

    monkeypatch.setattr(weights, "get_hf_file_metadata", lambda *a, **k: Meta())
    source = resolve_weights("vgg16", "imagenet")
    assert source == WeightsSource("hub", "timm/vgg16.tv_in1k", "ab" * 32)


def test_unknown_names_and_tags(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown timm model 'resnet999'"):
        resolve_weights("resnet999", "imagenet", tmp_path)
    with pytest.raises(ValueError, match=r"unknown timm model 'vgg17'; did you mean: .*vgg16"):
        resolve_weights("vgg17", "imagenet", tmp_path)
    with pytest.raises(ValueError, match=r"did you mean: .*vgg19"):
        resolve_weights("vgg17", "imagenet", tmp_path)
    with pytest.raises(ValueError, match=r"known pretrained names: .*resnet18\.a1_in1k"):
        resolve_weights("resnet18.my_tag", "imagenet", tmp_path)


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file"):
        resolve_weights("resnet10t", str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="weights_dir"):
        resolve_weights("resnet10t", "imagenet", tmp_path / "no-such-folder")


def test_local_file_loads_backbone_and_reinitialises_classifier(tmp_path: Path) -> None:
    state = save_model(tmp_path / "vgg11.tv_in1k.safetensors", "vgg11", **SMALL_VGG)
    source = resolve_weights("vgg11", "imagenet", tmp_path)
    model = build_model("vgg11", 5, source, **SMALL_VGG)
    loaded = model.state_dict()
    for key, tensor in state.items():
        if key.startswith("head.fc."):
            assert loaded[key].shape[0] == 5
        else:
            assert torch.equal(loaded[key], tensor), key
    assert {k for k in state if k.startswith("pre_logits.")}, "VGG layout has a pre-logits MLP"


def test_explicit_pth_file(tmp_path: Path) -> None:
    state = timm.create_model("resnet10t").state_dict()
    torch.save(state, tmp_path / "checkpoint.pth")
    source = resolve_weights("resnet10t", str(tmp_path / "checkpoint.pth"))
    model = build_model("resnet10t", 4, source)
    assert torch.equal(model.state_dict()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])


def test_hf_cache_as_weights_dir(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "0123abcd"
    state = save_model(snapshot / "model.safetensors", "resnet10t")
    (tmp_path / "hub" / "models--timm--resnet10t.c3_in1k" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--resnet10t.c3_in1k" / "refs" / "main").write_text("0123abcd")
    source = resolve_weights("resnet10t", "imagenet", tmp_path)
    assert source.kind == "file" and Path(source.location) == snapshot / "model.safetensors"
    model = build_model("resnet10t", 2, source)
    assert torch.equal(model.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_default_hf_cache_is_the_hub_source_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloaded once on a connected machine, the hub source keeps working offline."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what hf_hub_download reads
    repo = Path(constants.HF_HUB_CACHE) / "models--timm--resnet10t.c3_in1k"
    state = save_model(repo / "snapshots" / "feed" / "model.safetensors", "resnet10t")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("feed")
    source = resolve_weights("resnet10t", "imagenet")
    assert (source.kind, source.location) == ("hub", "timm/resnet10t.c3_in1k")
    assert source.sha256 == sha256_file(repo / "snapshots" / "feed" / "model.safetensors")
    model = build_model("resnet10t", 2, source)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_file_of_another_architecture_fails(tmp_path: Path) -> None:
    save_model(tmp_path / "resnet14t.x.safetensors", "resnet14t")
    source = resolve_weights("resnet14t", "imagenet", tmp_path)
    with pytest.raises(ValueError, match="resnet10t"):
        build_model("resnet10t", 5, source)


@pytest.mark.parametrize("change", ["drop", "extra"])
def test_file_with_missing_or_extra_backbone_keys_fails(tmp_path: Path, change: str) -> None:
    """timm alone only logs these (non-strict load once the classifier is re-sized)."""
    state = timm.create_model("resnet10t").state_dict()
    if change == "drop":
        del state["layer4.0.bn2.weight"]
    else:
        state["layer5.0.conv.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "resnet10t.x.safetensors"))
    source = resolve_weights("resnet10t", "imagenet", tmp_path)
    with pytest.raises(ValueError, match=r"does not match.*layer[45]"):
        build_model("resnet10t", 5, source)


def test_model_data_config() -> None:
    mnv3 = model_data_config(timm.create_model("tf_mobilenetv3_small_100", num_classes=2))
    assert mnv3["mean"] == (0.5, 0.5, 0.5) and mnv3["std"] == (0.5, 0.5, 0.5)
    resnet = model_data_config(timm.create_model("resnet10t", num_classes=2))
    assert resnet["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert set(resnet) == {"mean", "std", "input_size", "interpolation"}
    grey = model_data_config(timm.create_model("resnet10t", num_classes=2, in_chans=1))
    assert grey["mean"] == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))
    assert len(grey["std"]) == 1 and grey["input_size"][0] == 1
