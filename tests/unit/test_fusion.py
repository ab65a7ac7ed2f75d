"""The fusion head: modality dropout (train.image_dropout), the rhythm standardisation it
fits, and the ensemble of fold heads."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file
from sklearn.metrics import f1_score
from torch import nn

from data_prep.layout import INDEX, load_shard, rhythm_matrix
from pipeline.training import data, fitting
from pipeline.training.cv import Fold
from pipeline.training.device import epoch_seed
from pipeline.training.engine import FitConfig
from pipeline.training.feature_store import FeatureStore
from pipeline.training.freeze import apply_freeze, param_groups
from pipeline.training.fusion import (
    FusedNet,
    FusionHead,
    HeadEnsemble,
    feature_width,
    uses_image,
    uses_rr,
)
from pipeline.training.models import build_model, model_data_config
from pipeline.training.rhythm_prior import RhythmDiscriminant, RhythmMix
from pipeline.training.transforms import preprocess_spec
from pipeline.training.weights import WeightsSource
from tests.helpers import make_params
from tests.synthetic import CLASSES


def _inputs_seen(head: FusionHead, image: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
    head.net = nn.Identity()  # the head returns what its layers would see
    with torch.no_grad():
        return head(image, rr)


def test_image_dropout_hides_whole_image_vectors_in_training_only():
    torch.manual_seed(0)
    image, rr = torch.rand(2000, 8) + 0.5, torch.rand(2000, 3)
    head = FusionHead(8, 3, 4, "linear", dropout=0.0, image_dropout=0.5).train()
    seen = _inputs_seen(head, image, rr)
    hidden = (seen[:, :8] == 0).all(1)
    assert 0.45 < hidden.float().mean().item() < 0.55
    torch.testing.assert_close(seen[~hidden, :8], image[~hidden] * 2)  # kept ones scaled 1/(1-p)
    torch.testing.assert_close(seen[:, 8:], rr)  # the rhythm features always pass
    torch.testing.assert_close(_inputs_seen(head.eval(), image, rr), torch.cat([image, rr], 1))


def test_image_dropout_is_off_when_the_image_is_the_only_input():
    torch.manual_seed(0)
    image = torch.rand(500, 8) + 0.5
    head = FusionHead(8, 0, 4, "linear", dropout=0.0, image_dropout=0.5).train()
    torch.testing.assert_close(_inputs_seen(head, image, torch.zeros(500, 0)), image)


def test_rhythm_standardisation_is_fitted_on_the_fold_rows_and_applied():
    """Train fits each member's rhythm standardisation on its fold's training rows: the sample
    mean and std (ddof 1, as torch's std; a constant column keeps std 1e-6), in buffers that
    travel with the weights, and the head's layers see (rr - mean) / std. Checked by hand on
    four rows, for a plain head and for one mixed with a rhythm discriminant."""
    rr = np.array([[1.0, 0.9, 0.5], [2.0, 0.9, 0.5], [3.0, 0.9, 1.5], [6.0, 0.9, 1.5]],
                  dtype=np.float32)
    mean, std = [3.0, 0.9, 1.0], [np.sqrt(14 / 3), 1e-6, np.sqrt(1 / 3)]
    targets = np.array([0, 2, 0, 2])
    for member in (FusionHead(2, 3, 4, "linear", dropout=0.0),
                   RhythmMix(FusionHead(2, 3, 4, "linear", dropout=0.0),
                             RhythmDiscriminant(3, 4), 0.25)):
        _, head = fitting._fit_fixed_parts(member, rr, targets)
        np.testing.assert_allclose(head.rr_norm.mean.numpy(), mean, rtol=1e-6)
        np.testing.assert_allclose(head.rr_norm.std.numpy(), std, rtol=1e-6)
        copy = FusionHead(2, 3, 4, "linear", dropout=0.0)
        copy.load_state_dict(head.state_dict())
        probe = torch.tensor([[3 + np.sqrt(14 / 3), 0.9, 1 - np.sqrt(1 / 3)], [3.0, 0.9, 1.0]])
        image = torch.tensor([[0.5, -2.0], [1.0, 3.0]])
        seen = _inputs_seen(copy.eval(), image, probe)
        torch.testing.assert_close(seen, torch.tensor([[0.5, -2.0, 1.0, 0.0, -1.0],
                                                       [1.0, 3.0, 0.0, 0.0, 0.0]]))


def _linear(weights: list[float], rr_dim: int = 0) -> FusionHead:
    """A linear head on one image feature with fixed class weights (logits = x * weights)."""
    head = FusionHead(1, rr_dim, len(weights), "linear", dropout=0.0).eval()
    linear = head.net[1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[:, 0] = torch.tensor(weights)
        linear.bias.zero_()
    return head


LN8, LN2 = float(np.log(8.0)), float(np.log(2.0))


def test_ensemble_averages_member_probabilities_then_adds_the_class_bias():
    """Two heads that give (0.8, 0.1, 0.1) and (0.1, 0.8, 0.1): the ensemble's probability is
    their mean (0.45, 0.45, 0.1), not the softmax of the mean logits (0.425, 0.425, 0.150); the
    class bias multiplies it per class (log-prior shift) before renormalising."""
    ensemble = HeadEnsemble([_linear([LN8, 0.0, 0.0]), _linear([0.0, LN8, 0.0])], 3)
    image, rr = torch.tensor([[1.0], [0.0]]), torch.zeros(2, 0)
    with torch.no_grad():
        probs = ensemble(image, rr).softmax(1)
        ensemble.class_bias.copy_(torch.tensor([0.0, np.log(2.0), 0.0]))
        biased = ensemble(image, rr).softmax(1)
    torch.testing.assert_close(probs, torch.tensor([[0.45, 0.45, 0.1], [1 / 3, 1 / 3, 1 / 3]]))
    torch.testing.assert_close(biased, torch.tensor([[0.45, 0.9, 0.1], [1.0, 2.0, 1.0]])
                               / torch.tensor([[1.45], [4.0]]))


def test_ensemble_of_rhythm_mixes_averages_the_mixed_probabilities():
    """Members mixed with a rhythm discriminant (weight 0.25) that gives (0.1, 0.1, 0.8): each
    member's probability is the renormalised p_head^0.75 * p_lda^0.25, and the ensemble's is the
    mean of those."""
    members = []
    for weights in ([LN8, 0.0, 0.0], [0.0, LN8, 0.0]):
        disc = RhythmDiscriminant(1, 3)
        disc.intercept.copy_(torch.tensor([0.0, 0.0, LN8]))
        members.append(RhythmMix(_linear(weights), disc, 0.25).eval())
    ensemble = HeadEnsemble(members, 3)
    with torch.no_grad():
        probs = ensemble(torch.tensor([[1.0]]), torch.tensor([[0.8]])).softmax(1)
    lda = np.array([0.1, 0.1, 0.8])
    mixed = [p ** 0.75 * lda ** 0.25 for p in (np.array([0.8, 0.1, 0.1]),
                                              np.array([0.1, 0.8, 0.1]))]
    expected = np.mean([m / m.sum() for m in mixed], axis=0)
    np.testing.assert_allclose(probs.numpy()[0], expected, rtol=1e-5)


def test_a_single_head_ensemble_returns_its_logits_plus_the_class_bias():
    """One fold, one head: the head's own logits (no softmax round trip) shifted by the bias;
    the head sees the image features and the rhythm features it was given."""
    head = _linear([LN8, 0.0, 0.0], rr_dim=1)
    with torch.no_grad():
        head.net[1].weight[:, 1] = torch.tensor([0.0, 2.0, 0.0])  # the rhythm column counts
    ensemble = HeadEnsemble([head], 3)
    image, rr = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.5], [1.0]])
    with torch.no_grad():
        ensemble.class_bias.copy_(torch.tensor([0.0, LN2, -1.0]))
        logits = ensemble(image, rr)
    torch.testing.assert_close(logits, torch.tensor([[LN8, 1.0 + LN2, -1.0],
                                                     [0.0, 2.0 + LN2, -1.0]]))


def test_mlp_head_is_dropout_linear_gelu_dropout_linear():
    """The MLP head's layers, by their effect on one input of 1 through 1-wide identity layers:
    eval mode gives GELU(1); training (dropout 0.5 before each layer) gives 0 or
    2 * GELU(2) (both kept: each scaled by 2), never the values a missing layer would give."""
    head = FusionHead(1, 0, 1, "mlp", hidden=1, dropout=0.5)
    with torch.no_grad():
        for layer in (head.net[1], head.net[4]):
            layer.weight.fill_(1.0)
            layer.bias.zero_()
    x, none = torch.ones(4000, 1), torch.zeros(4000, 0)
    gelu = torch.nn.functional.gelu
    with torch.no_grad():
        torch.testing.assert_close(head.eval()(x[:2], none[:2]), gelu(x[:2]))
        torch.manual_seed(0)
        out = head.train()(x, none)
    kept = out != 0
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 2 * gelu(torch.tensor(2.0))))
    assert 0.2 < kept.float().mean().item() < 0.3  # both dropouts kept it: 1/4


def test_head_defaults_and_refused_arguments():
    """Defaults: a 256-wide MLP, no modality dropout. Equal image and rhythm widths are fine;
    no input at all or an unknown kind is refused with the fix."""
    head = FusionHead(4, 2, 3, "mlp").train()
    assert head.net[1].out_features == 256 and head.net[4].in_features == 256
    image, rr = torch.rand(300, 4) + 0.5, torch.rand(300, 2)
    torch.testing.assert_close(_inputs_seen(head, image, rr)[:, :4], image)  # nothing hidden
    assert FusionHead(2, 2, 3).rr_dim == 2
    with pytest.raises(ValueError, match="a head needs image features, rhythm features or both"):
        FusionHead(0, 0, 3)
    with pytest.raises(ValueError, match="head 'gru': use 'linear' or 'mlp'"):
        FusionHead(2, 2, 3, "gru")  # type: ignore[arg-type]


def test_one_rhythm_feature_is_standardised_too():
    member = FusionHead(1, 1, 2, "linear", dropout=0.0)
    _, head = fitting._fit_fixed_parts(member, np.array([[1.0], [3.0], [5.0]], np.float32),
                                       np.array([0, 1, 0]))
    torch.testing.assert_close(head.rr_norm.mean, torch.tensor([3.0]))
    torch.testing.assert_close(head.rr_norm.std, torch.tensor([2.0]))


def test_inputs_name_what_the_classifier_sees():
    assert [uses_image(i) for i in ("image", "rr", "image+rr")] == [True, False, True]
    assert [uses_rr(i) for i in ("image", "rr", "image+rr")] == [False, True, True]


def _backbone() -> nn.Module:
    """A tiny timm CNN without its classifier, as `fitting.assemble` leaves it."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    model.reset_classifier(0)
    return model.eval()


class _Seen(nn.Module):
    """A head that returns its two inputs side by side (what a fusion head receives)."""

    def forward(self, features: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
        return torch.cat([features, rr], dim=1)


def test_fused_net_runs_the_backbone_only_when_the_image_is_an_input():
    backbone = _backbone()
    image, rr = torch.rand(2, 3, 32, 32), torch.rand(2, 3)
    with torch.no_grad():
        pooled = backbone.forward_head(backbone.forward_features(image), pre_logits=True)
        seen = FusedNet(backbone, _Seen(), "image+rr").eval()(image, rr)
        torch.testing.assert_close(seen, torch.cat([pooled, rr], 1))
        rr_only = FusedNet(backbone, _Seen(), "rr")
        assert rr_only.backbone is None and rr_only.inputs == "rr"
        # as the cached training rows (`fitting.cached_features`): zero-width image features
        torch.testing.assert_close(rr_only(torch.empty(0), rr), rr)
    for inputs in ("image", "image+rr"):
        with pytest.raises(ValueError, match=re.escape(f"inputs {inputs!r} need a backbone")):
            FusedNet(None, _Seen(), inputs)  # type: ignore[arg-type]


def test_feature_width_is_the_pooled_pre_logits_width():
    """mobilenetv3's pre-logits conv widens 288 channels to 1024 features; a model without
    timm's head_hidden_size has its num_features."""
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(torch.rand(1, 3, 32, 32)),
                                    pre_logits=True)
    assert model.num_features == 288 and feature_width(model) == pooled.shape[1] == 1024
    plain = nn.Module()
    plain.num_features = 7
    assert feature_width(plain) == 7


# ------------------------------------------------ the run's network (fitting.build / assemble)

RANDOM = WeightsSource("random", "random")
RR = ["rr_pre", "rr_post", "rr_local"]


def _layout(head: FusionHead) -> dict:
    """What a fusion head was built with, read from its layers."""
    layers = list(head.net)
    linear = [m for m in layers if isinstance(m, nn.Linear)]
    return {"inputs": (head.image_dim, head.rr_dim),
            "kind": "mlp" if len(linear) == 2 else "linear",
            "widths": [(m.in_features, m.out_features) for m in linear],
            "dropout": [m.p for m in layers if isinstance(m, nn.Dropout)],
            "image_dropout": head.image_drop.p}


def test_build_records_the_architecture_and_builds_the_network_it_describes():
    """train.* values become the recorded architecture (resolved_config "model"), and the
    network is that: a classifier-less backbone frozen as asked, one head per fold, each
    mixed with a rhythm discriminant, and preprocessing from the backbone's pretrained config."""
    params = make_params(inputs="image+rr", head="mlp", head_hidden=12, head_dropout=0.1,
                         image_dropout=0.4, rr_lda_weight=0.3, trainable_groups=1, seed=3,
                         augment={"time_mask": 4, "freq_mask": 2, "num_masks": 2})
    setup = fitting.build(params, "test_resnet", "partial", 3, 32, RR, 2, RANDOM)
    assert setup.arch == {"inputs": "image+rr", "head": "mlp", "hidden": 12, "dropout": 0.1,
                          "rr_features": RR, "heads": 2, "image_dropout": 0.4,
                          "rr_lda_weight": 0.3, "image_dim": 96}
    assert setup.weights is RANDOM and setup.weights_id == RANDOM.describe()
    net = setup.net
    assert net.inputs == "image+rr" and isinstance(net.head, HeadEnsemble)
    assert net.head.class_bias.tolist() == [0.0, 0.0, 0.0]
    members = list(net.head.heads)
    assert len(members) == 2 and all(isinstance(m, RhythmMix) and m.weight == 0.3
                                     for m in members)
    assert members[0].head is not members[1].head
    for member in members:
        assert _layout(member.head) == {"inputs": (96, 3), "kind": "mlp",
                                        "widths": [(99, 12), (12, 3)], "dropout": [0.1, 0.1],
                                        "image_dropout": 0.4}
        assert tuple(member.discriminant.coef.shape) == (3, 3)
    backbone = net.backbone
    assert backbone is not None and backbone.conv1[0].in_channels == 3
    assert not [n for n, _ in backbone.named_parameters() if n.startswith("fc.")]  # no classifier
    reference = build_model("test_resnet", 3, RANDOM)
    assert setup.report == apply_freeze(reference, "partial", 1, "frozen")
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == {
        n for n, p in reference.named_parameters() if p.requires_grad and not n.startswith("fc.")}
    assert setup.spec == preprocess_spec(model_data_config(reference), "grey3", 32)
    augment = setup.prepare.augment
    assert (augment.time_mask, augment.freq_mask, augment.num_masks) == (4, 2, 2)
    images = torch.full((1, 32, 32), 255, dtype=torch.uint8)
    spec = setup.spec  # uint8 -> [0, 1] -> (x - mean) / std of the pretrained config
    expected = (1.0 - torch.tensor(spec["mean"])) / torch.tensor(spec["std"])
    torch.testing.assert_close(setup.prepare.eval()(images)[0, :, 0, 0], expected)
    again = fitting.build(params, "test_resnet", "partial", 3, 32, RR, 2, RANDOM).net
    for name, value in net.state_dict().items():  # seeded: the same network again
        torch.testing.assert_close(again.state_dict()[name], value, msg=name)


def test_build_keeps_image_dropout_and_the_mix_for_networks_that_have_both_inputs():
    """image_dropout needs image and rhythm inputs; the rhythm discriminant needs rhythm
    features: without them the recorded values are 0 and the heads are plain."""
    params = make_params(inputs="image", head="linear", image_dropout=0.4, rr_lda_weight=0.3,
                         channels="in_chans1", pre_logits="trainable")
    setup = fitting.build(params, "test_resnet", "frozen", 3, 32, [], 1, RANDOM)
    assert setup.arch["image_dropout"] == 0.0 and setup.arch["rr_lda_weight"] == 0.0
    reference = build_model("test_resnet", 3, RANDOM, in_chans=1)
    assert setup.report == apply_freeze(reference, "frozen", params.trainable_groups, "trainable")
    rhythm = fitting.build(params.model_copy(update={"inputs": "rr"}), "test_resnet", "frozen",
                           3, 32, RR, 1, RANDOM)
    assert rhythm.arch["image_dropout"] == 0.0 and rhythm.arch["rr_lda_weight"] == 0.3
    [head] = setup.net.head.heads
    assert _layout(head) == {"inputs": (96, 0), "kind": "linear", "widths": [(96, 3)],
                             "dropout": [params.head_dropout], "image_dropout": 0.0}
    assert setup.net.backbone.conv1[0].in_channels == 1  # channels in_chans1: a 1-channel stem
    assert setup.spec["in_chans"] == 1 and len(setup.spec["mean"]) == 1


def test_assemble_rebuilds_recorded_architectures_older_ones_included():
    """run_folder.load_model rebuilds a run's network from resolved_config "model": records
    from before image_dropout and rr_lda_weight existed get neither; rhythm-only networks
    drop the backbone but still return its pretrained data config."""
    params = make_params().model_dump()
    old = {"inputs": "image+rr", "head": "linear", "hidden": 8, "dropout": 0.0,
           "rr_features": RR, "heads": 2}
    net, report, config = fitting.assemble("test_resnet", "frozen", params, dict(old), 4, RANDOM)
    assert [_layout(h) for h in net.head.heads] == [
        {"inputs": (96, 3), "kind": "linear", "widths": [(99, 4)], "dropout": [0.0],
         "image_dropout": 0.0}] * 2
    assert report.mode == "frozen" and config == model_data_config(build_model(
        "test_resnet", 4, RANDOM))
    arch = {**old, "inputs": "rr", "heads": 3, "rr_lda_weight": 0.5}
    net, _, config = fitting.assemble("test_resnet", "frozen", params, arch, 4, RANDOM)
    assert arch["image_dim"] == 0 and net.backbone is None and net.inputs == "rr"
    assert config["mean"] == (0.5, 0.5, 0.5) and config["input_size"][0] == 3
    members = list(net.head.heads)
    assert len(members) == 3 and all(isinstance(m, RhythmMix) and m.weight == 0.5
                                     for m in members)
    assert _layout(members[0].head)["inputs"] == (0, 3)
    rr = torch.rand(2, 3) + 0.5
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(torch.empty(0), rr).softmax(1).sum(1),
                                   torch.ones(2))


def test_feature_identity_keys_the_shared_feature_store():
    """What cached features depend on besides the images; train and evaluate both key the
    store with it, so the exact dict matters."""
    spec = {"channels": "grey3"}
    named = WeightsSource("file", "/w/x.safetensors", "ab12")
    assert fitting.feature_identity(nn.Linear(2, 2), named, spec, 7) == {
        "model": "Linear", "weights": "ab12", "spec": spec, "width": 7, "random_seed": None}
    hub = WeightsSource("hub", "timm/x", None)
    assert fitting.feature_identity(nn.Identity(), hub, spec, 5) == {
        "model": "Identity", "weights": "hub:timm/x", "spec": spec, "width": 5,
        "random_seed": None}
    assert fitting.feature_identity(nn.Identity(), RANDOM, spec, 5)["random_seed"] == "seeded"
    assert fitting.feature_identity(nn.Identity(), RANDOM, spec, 5)["weights"] == (
        "random (explicitly requested, no pretrained weights)")
    with pytest.raises(AssertionError, match="rr-only networks have no backbone features"):
        fitting.feature_identity(None, named, spec, 7)


# --------------------------------------- what the heads train on, and one fit per fold

CPU = torch.device("cpu")


# the synthetic beats' rhythm features that vary (the others are one value on every beat)
VARYING = ["rr_pre", "rr_pre_ratio"]


def _trainval(spec: Path, splits: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The train+val rows of a synthetic spectrogram folder and their rhythm features, as
    train reads them."""
    frame = data.load_split_index(spec, splits, CLASSES)
    trainval = frame[frame["split"].isin(["train", "val"])].reset_index(drop=True)
    return trainval, rhythm_matrix(trainval, VARYING, spec / INDEX)


def _pooled(setup: fitting.Setup, spec: Path, frame: pd.DataFrame) -> torch.Tensor:
    """The backbone's pooled features of the frame's images, computed directly."""
    images = torch.from_numpy(np.stack([np.asarray(load_shard(spec, r)[w]) for r, w in
                                        frame[["record", "row"]].itertuples(index=False)]))
    with torch.no_grad():
        return setup.net.eval().image_features(setup.prepare.preprocess(images))


def test_cached_features_come_from_the_store_that_evaluate_reads(folders, tmp_path, capsys):
    spec, splits = folders
    trainval, _ = _trainval(spec, splits)
    setup = fitting.build(make_params(inputs="image+rr"), "test_resnet", "frozen", 3, 32, RR, 1,
                          RANDOM)
    got = fitting.cached_features(setup, tmp_path / "store", spec, trainval, CPU, 16, "float16")
    assert got.shape == (len(trainval), 96) and got.dtype == np.float16
    np.testing.assert_allclose(got, _pooled(setup, spec, trainval).numpy(), rtol=2e-3, atol=2e-3)
    assert "backbone features" in capsys.readouterr().err  # the progress bar says what it does
    identity = fitting.feature_identity(setup.net.backbone, RANDOM, setup.spec, 96)

    def fail(images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("recomputed a stored row")

    store = FeatureStore(tmp_path / "store", identity, fail, setup.prepare.preprocess, CPU,
                         dtype="float16")
    np.testing.assert_array_equal(store.rows(spec, trainval), got)  # found, nothing computed
    rhythm = fitting.build(make_params(inputs="rr"), "test_resnet", "frozen", 3, 32, RR, 1, RANDOM)
    none = fitting.cached_features(rhythm, tmp_path / "none", spec, trainval, CPU, 16, "float16")
    assert none.shape == (len(trainval), 0) and none.dtype == np.float32
    assert not (tmp_path / "none").exists()


def test_run_inputs_give_cached_rows_or_images_with_rhythm_and_target(folders):
    spec, splits = folders
    trainval, rr = _trainval(spec, splits)
    features = np.arange(len(trainval) * 2, dtype=np.float32).reshape(-1, 2)
    rows = np.array([5, 0, 17])
    cached = fitting.RunInputs(trainval, rr, features, spec).dataset(rows)
    image, rhythm, target = cached[1]
    torch.testing.assert_close(image, torch.from_numpy(features[0]))
    torch.testing.assert_close(rhythm, torch.from_numpy(rr[0]))
    assert len(cached) == 3 and target.dtype == torch.int64
    assert target.item() == trainval["target"].iat[0]
    images = fitting.RunInputs(trainval, rr, None, spec).dataset(rows)
    image, rhythm, target = images[2]
    record, row = trainval.loc[17, ["record", "row"]]
    torch.testing.assert_close(image, torch.from_numpy(np.array(load_shard(spec, record)[row])))
    torch.testing.assert_close(rhythm, torch.from_numpy(rr[17]))
    assert len(images) == 3 and target == trainval["target"].iat[17]


def _folds_by_record(trainval: pd.DataFrame, records: list[str]) -> list[Fold]:
    record = trainval["record"].to_numpy()
    return [Fold(f"fold{k}", np.flatnonzero(record != r), np.flatnonzero(record == r))
            for k, r in enumerate(records)]


def _macro_f1(targets: np.ndarray, probs: torch.Tensor) -> float:
    return f1_score(targets, probs.argmax(1).numpy(), labels=[0, 1, 2], average="macro",
                    zero_division=0)


def test_fit_folds_trains_each_head_on_its_fold_and_selects_epochs_on_the_mix(
        folders, tmp_path, caplog):
    """Cached image features and rhythm, two folds, heads mixed with a rhythm discriminant
    (weight 0.9) and a learning rate too small to train them: member k fits its rhythm
    standardisation and discriminant on fold k's training rows, sees those rows once per epoch
    in the order of the sampler seeded from (seed, epoch), in batches of train.batch_size; its
    epochs are scored on the mix, whose best-epoch probabilities are the out-of-fold ones."""
    spec, splits = folders
    trainval, rr = _trainval(spec, splits)
    targets = trainval["target"].to_numpy()
    params = make_params(inputs="image+rr", head="linear", head_dropout=0.0, image_dropout=0.0,
                         rr_lda_weight=0.9, batch_size=8, seed=5)
    setup = fitting.build(params, "test_resnet", "frozen", 3, 32, VARYING, 2, RANDOM)
    features = fitting.cached_features(setup, tmp_path / "store", spec, trainval, CPU, 64,
                                       "float32")
    folds = _folds_by_record(trainval, ["102", "103"])
    members = list(setup.net.head.heads)
    seen: list[tuple[int, bool, torch.Tensor]] = []
    for k, member in enumerate(members):
        member.head.register_forward_pre_hook(
            lambda module, args, k=k: seen.append((k, module.training, args[1][:, 0].clone())))
    weights, epochs = [], []

    def weight_fn(fold_targets: np.ndarray) -> torch.Tensor:
        weights.append(fold_targets.copy())
        return torch.tensor([1.0, 3.0, 2.0])

    cfg = FitConfig(epochs=2, lr=1e-7, warmup_epochs=0.0, seed=params.seed, select=(0, 1, 2))
    with caplog.at_level(logging.INFO, logger="pipeline.training.fitting"):
        fits = fitting.fit_folds(
            setup, fitting.RunInputs(trainval, rr, features, spec), folds, cfg, params, "frozen",
            CPU, tmp_path / "ckpt", "fp", weight_fn,
            lambda fold: lambda history: epochs.append((fold.name, len(history))))
    assert [fit.fold for fit in fits] == folds
    assert epochs == [("fold0", 1), ("fold0", 2), ("fold1", 1), ("fold1", 2)]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["fold0", "fold1"]
    position = {float(v): i for i, v in enumerate(rr[:, 0])}  # rr_pre tells the rows apart
    assert len(position) == len(rr)
    for k, (fold, member, fit) in enumerate(zip(folds, members, fits, strict=True)):
        np.testing.assert_array_equal(weights[k], targets[fold.train])
        batches = [rows for j, training, rows in seen if j == k and training]
        expected = []
        for epoch in range(2):
            generator = torch.Generator().manual_seed(epoch_seed(params.seed, epoch))
            expected += fold.train[list(data.train_sampler(weights[k], False, generator))].tolist()
        assert [position[float(v)] for rows in batches for v in rows] == expected
        full, rest = divmod(len(fold.train), 8)
        assert [len(b) for b in batches] == ([8] * full + [rest] * (rest > 0)) * 2
        np.testing.assert_allclose(member.head.rr_norm.mean.numpy(),
                                   rr[fold.train].astype(np.float64).mean(0), rtol=1e-6)
        reference = RhythmDiscriminant(rr.shape[1], 3).fit(rr[fold.train], targets[fold.train])
        torch.testing.assert_close(member.discriminant.coef, reference.coef)
        val_features, val_rr = torch.from_numpy(features[fold.val]), torch.from_numpy(rr[fold.val])
        with torch.no_grad():
            mixed = member.eval()(val_features, val_rr).softmax(1)
            alone = member.head(val_features, val_rr).softmax(1)
        np.testing.assert_allclose(fit.val_probs, mixed.numpy(), atol=1e-6)
        history = fit.result.history
        assert len(history) == 2 and fit.result.best_score == max(
            h["val_macro_f1"] for h in history)
        assert fit.result.best_score == pytest.approx(_macro_f1(targets[fold.val], mixed))
        assert _macro_f1(targets[fold.val], alone) != pytest.approx(fit.result.best_score)
        assert (f"{fold.name}: best epoch {fit.result.best_epoch}, val macro-F1 over N/S/V/F "
                f"{fit.result.best_score:.4f}") in caplog.messages


def test_fit_folds_trains_the_backbone_with_layer_decay_when_images_go_through_it(
        folders, tmp_path):
    """Partial mode without cached features: the fused network trains on images (its
    checkpoint holds backbone and head), the backbone's trainable group with its layer-decayed
    learning rates after the head's, and its frozen groups stay as they were. One fit writes
    its checkpoint in the folder itself."""
    spec, splits = folders
    trainval, rr = _trainval(spec, splits)
    params = make_params(inputs="image+rr", head="linear", rr_lda_weight=0.0, trainable_groups=2,
                         layer_decay=0.5, batch_size=16, cache_features=False)
    setup = fitting.build(params, "test_resnet", "partial", 3, 32, VARYING, 1, RANDOM)
    backbone = setup.net.backbone
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    split = trainval["split"].to_numpy()
    fold = Fold("single", np.flatnonzero(split == "train"), np.flatnonzero(split == "val"))
    cfg = FitConfig(epochs=1, lr=1e-2, warmup_epochs=0.0, seed=params.seed, select=(0, 1, 2))
    [fit] = fitting.fit_folds(setup, fitting.RunInputs(trainval, rr, None, spec), [fold], cfg,
                              params, "partial", CPU, tmp_path / "ckpt", "fp", lambda t: None,
                              lambda f: None)
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    saved = load_file(tmp_path / "ckpt" / state["files"]["module"])
    assert {k.split(".")[0] for k in saved} == {"backbone", "head"}
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == {"layer3", "layer4"}
    changed = {n for n, p in backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    optimizer = torch.load(tmp_path / "ckpt" / state["files"]["optimizer"], weights_only=True)
    groups = optimizer["param_groups"]
    decayed = param_groups(backbone, cfg.lr, cfg.weight_decay, 0.5)
    assert [g["lr_scale"] for g in groups] == pytest.approx(
        [1.0, 1.0] + [g["lr_scale"] for g in decayed])
    assert min(g["lr_scale"] for g in decayed) < 1.0
    [member] = setup.net.head.heads
    val = trainval.iloc[fold.val]
    with torch.no_grad():
        head = member.eval()(_pooled(setup, spec, val), torch.from_numpy(rr[fold.val]))
    np.testing.assert_allclose(fit.val_probs, head.softmax(1).numpy(), atol=1e-5)


def _fit_rhythm_only(spec: Path, splits: Path, out: Path,
                     weights: torch.Tensor | None) -> tuple[fitting.Setup, Fold, np.ndarray]:
    """One fit of a linear rhythm-only head on the synthetic folder (record 103 validates)."""
    trainval, rr = _trainval(spec, splits)
    params = make_params(inputs="rr", head="linear", rr_lda_weight=0.0, batch_size=16)
    setup = fitting.build(params, "test_resnet", "frozen", 3, 32, VARYING, 1, RANDOM)
    features = fitting.cached_features(setup, out / "store", spec, trainval, CPU, 16, "float32")
    [fold] = _folds_by_record(trainval, ["103"])
    cfg = FitConfig(epochs=1, lr=0.1, warmup_epochs=0.0, seed=params.seed, select=(0, 1, 2))
    [fit] = fitting.fit_folds(setup, fitting.RunInputs(trainval, rr, features, spec), [fold],
                              cfg, params, "frozen", CPU, out / "ckpt", "fp",
                              lambda t: weights, lambda f: None)
    return setup, fold, fit.val_probs


def test_fit_folds_of_a_rhythm_only_network_with_class_weights(folders, tmp_path):
    """inputs rr: no backbone, zero-width cached features, the head trains on the rhythm; the
    class weights weigh the loss (a heavy S weight moves the probabilities towards S)."""
    spec, splits = folders
    setup, fold, probs = _fit_rhythm_only(spec, splits, tmp_path / "plain", None)
    assert (tmp_path / "plain" / "ckpt" / "state.json").is_file()
    _, rr = _trainval(spec, splits)
    with torch.no_grad():
        expected = setup.net.eval()(torch.empty(0), torch.from_numpy(rr[fold.val])).softmax(1)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6)
    _, _, weighted = _fit_rhythm_only(spec, splits, tmp_path / "weighted",
                                      torch.tensor([1.0, 50.0, 1.0]))
    assert weighted[:, 1].mean() > probs[:, 1].mean() + 0.05
