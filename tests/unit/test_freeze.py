"""Freeze modes, layer-decayed param groups and the frozen-feature extractor on tiny timm CNNs."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from pipeline.training.freeze import (
    apply_freeze,
    block_groups,
    feature_extractor,
    forward_head_param_names,
    param_groups,
)

SMALL_VGG = {"mlp_ratio": 1 / 16}  # VGG layout with a small pre-logits MLP


def make(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=3, **kwargs)


def train_steps(model: nn.Module, steps: int = 3) -> None:
    """A few AdamW steps in train mode on random 64 px images."""
    optimizer = torch.optim.AdamW(param_groups(model, 1e-2, 0.05, 0.8))
    model.train()
    for _ in range(steps):
        x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 3, (4,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050"])
def test_frozen_fixes_backbone_and_batchnorm_statistics(name: str) -> None:
    model = make(name)
    report = apply_freeze(model, "frozen")
    classifier = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == classifier
    assert report.trainable_params == sum(p.numel() for p in model.get_classifier().parameters())
    assert report.total_params == sum(p.numel() for p in make(name).parameters())
    before = snapshot(model)
    train_steps(model)
    moved = changed(before, model)
    assert moved and all(k.startswith(report.trainable_groups[0]) for k in moved), moved
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_partial_unfreezes_exactly_the_last_groups() -> None:
    model = make("resnet10t")
    report = apply_freeze(model, "partial", trainable_groups=2)
    assert report.trainable_groups == ("layer3", "layer4", "fc")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "fc"}
    assert isinstance(model.layer3[0].bn1, nn.BatchNorm2d)  # trainable BN keeps learning stats
    assert not isinstance(model.layer2[0].bn1, nn.BatchNorm2d)
    before = snapshot(model)
    train_steps(model)
    tops = {k.split(".")[0] for k in changed(before, model)}
    assert tops == {"layer3", "layer4", "fc"}


def test_partial_range_is_checked() -> None:
    with pytest.raises(ValueError, match="trainable_groups=6 for 5 block groups"):
        apply_freeze(make("resnet10t"), "partial", trainable_groups=6)
    with pytest.raises(ValueError, match="trainable_groups=0"):
        apply_freeze(make("resnet10t"), "partial", trainable_groups=0)


def test_full_trains_everything() -> None:
    model = make("resnet10t")
    report = apply_freeze(model, "full")
    assert report.trainable_params == report.total_params
    assert report.trainable_groups == ("conv1+bn1", "layer1", "layer2", "layer3", "layer4", "fc")
    before = snapshot(model)
    train_steps(model)
    moved = changed(before, model)
    assert {k.split(".")[0] for k in moved} == {"conv1", "bn1", "layer1", "layer2", "layer3",
                                                "layer4", "fc"}


def test_bad_arguments_and_double_freeze() -> None:
    model = make("resnet10t")
    with pytest.raises(ValueError, match="mode='half'"):
        apply_freeze(model, "half")
    with pytest.raises(ValueError, match="pre_logits='maybe'"):
        apply_freeze(model, "frozen", pre_logits="maybe")
    apply_freeze(model, "frozen")
    with pytest.raises(ValueError, match="frozen before"):
        apply_freeze(model, "full")


def test_vgg_pre_logits_choice() -> None:
    frozen, trainable = make("vgg11", **SMALL_VGG), make("vgg11", **SMALL_VGG)
    small = apply_freeze(frozen, "frozen", pre_logits="frozen")
    large = apply_freeze(trainable, "frozen", pre_logits="trainable")
    assert small.trainable_groups == ("head",) and small.trainable_params == 4096 * 3 + 3
    assert large.trainable_groups == ("pre_logits+head",)
    assert (small.pre_logits, large.pre_logits) == ("frozen", "trainable")
    partial = apply_freeze(make("vgg11", **SMALL_VGG), "partial", 1, pre_logits="frozen")
    assert partial.trainable_groups == ("features.18", "pre_logits+head")
    assert partial.pre_logits == "trainable"  # timm groups fc6/fc7 with the head
    pre_logits = sum(p.numel() for p in trainable.pre_logits.parameters())
    assert large.trainable_params == small.trainable_params + pre_logits


def test_vgg16_parameter_split_as_documented() -> None:
    """The numbers in freeze.py's docstring."""
    with torch.device("meta"):
        model = timm.create_model("vgg16", num_classes=1000)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.features) == 14_714_688
    assert count(model.pre_logits) == 119_545_856
    assert count(model.get_classifier()) == 4_097_000
    assert count(model) == 138_357_544


@pytest.mark.parametrize("name", ["resnet10t", "vgg11", "mobilenetv3_small_050", "densenet121",
                                  "convnext_atto"])
def test_forward_head_params_are_classifier_plus_pre_logits(name: str) -> None:
    model = make(name, **(SMALL_VGG if name == "vgg11" else {})).train()
    expected = {
        "resnet10t": {"fc"}, "vgg11": {"pre_logits", "head"}, "densenet121": {"classifier"},
        "mobilenetv3_small_050": {"conv_head", "classifier"}, "convnext_atto": {"head"},
    }[name]
    assert {n.split(".")[0] for n in forward_head_param_names(model)} == expected
    assert model.training  # the probe runs in eval mode and restores the mode
    assert all(p.grad is None for p in model.parameters())
    head_group = set(block_groups(model)[-1][1])
    assert forward_head_param_names(model) <= head_group


def test_param_groups_decay_towards_the_input() -> None:
    model = make("resnet10t")
    apply_freeze(model, "full")
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    lr = {n: lr_of[id(p)] for n, p in model.named_parameters()}
    assert lr["fc.weight"] == pytest.approx(1e-3)
    assert lr["conv1.0.weight"] < lr["layer1.0.conv1.weight"] < lr["layer4.0.conv1.weight"]
    assert lr["layer4.0.conv1.weight"] < lr["fc.weight"]
    for name, param in model.named_parameters():
        assert (wd_of[id(param)] == 0.0) == (param.ndim <= 1), name  # norms and biases: no decay


def test_param_groups_cover_trainable_only() -> None:
    model = make("resnet10t")
    apply_freeze(model, "partial", trainable_groups=1)
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
    flat = param_groups(model, lr=2e-3, weight_decay=0.05, layer_decay=None)
    assert {g["lr"] for g in flat} == {2e-3}
    with pytest.raises(ValueError, match=r"layer_decay=1\.5"):
        param_groups(model, 1e-3, 0.05, 1.5)


@pytest.mark.parametrize("pre_logits", ["frozen", "trainable"])
@pytest.mark.parametrize("name", ["resnet10t", "vgg11", "mobilenetv3_small_050", "efficientnet_b0",
                                  "densenet121"])
def test_feature_extractor_matches_the_model(name: str, pre_logits: str) -> None:
    kwargs = SMALL_VGG if name == "vgg11" else {}
    model = make(name, drop_rate=0.2, **kwargs)
    apply_freeze(model, "frozen", pre_logits=pre_logits)
    feature_fn, head = feature_extractor(model, pre_logits)
    model.eval()
    head.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = feature_fn(x)
        torch.testing.assert_close(head(features), model(x), rtol=1e-5, atol=1e-5)
    if pre_logits == "frozen":
        assert features.shape == (2, model.get_classifier().in_features)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable <= {id(p) for p in head.parameters()}


def test_vgg_frozen_features_are_the_pre_logits_vector() -> None:
    model = make("vgg11", **SMALL_VGG)  # fc7 still outputs 4096
    apply_freeze(model, "frozen")
    feature_fn, head = feature_extractor(model, "frozen")
    model.eval()
    with torch.inference_mode():
        assert feature_fn(torch.randn(1, 3, 64, 64)).shape == (1, 4096)
    assert head is model.get_classifier()
