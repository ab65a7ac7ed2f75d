"""Training loop, schedule, checkpoints/resume and the frozen-backbone feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.training import data, features
from pipeline.training.checkpoint import Checkpointer
from pipeline.training.engine import (
    FitConfig,
    WeightedCrossEntropy,
    fit,
    predict,
)
from pipeline.training.freeze import apply_freeze, feature_extractor, param_groups
from pipeline.training.optim import make_optimizer, make_scheduler
from pipeline.training.transforms import ModelInput, Preprocess, SpecAugment, preprocess_spec
from tests.synthetic import CLASSES, write_synthetic

CPU = torch.device("cpu")



class Interrupt(Exception):
    """Stands in for a kill after an epoch's checkpoint was written."""


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", pretrained=False, num_classes=len(CLASSES),
                             drop_rate=0.2)


def image_run(root: Path, seed: int = 0):
    """A tiny CNN, the synthetic images' loaders and its device-side input module."""
    spec, splits = write_synthetic(root) if not (root / "spectrograms").exists() else (
        root / "spectrograms", root / "splits")
    frame = data.load_split_index(spec, splits, CLASSES)
    sets = {s: data.SpectrogramDataset(spec, data.split_frame(frame, s, splits))
            for s in ("train", "val")}
    gen = torch.Generator()
    sampler = data.train_sampler(sets["train"].targets, True, gen)
    loaders = {s: data.make_loader(ds, 8, CPU, seed, sampler=sampler if s == "train" else None)
               for s, ds in sets.items()}
    model = tiny_cnn(seed)
    prepare = ModelInput(Preprocess.from_spec(preprocess_spec(model.pretrained_cfg, "grey3", 32)),
                         SpecAugment(time_mask=4, freq_mask=3))
    return model, loaders, prepare, gen


def fit_images(root: Path, ckpt: Path, epochs: int, on_epoch_end=None, patience: int = 0):
    model, loaders, prepare, gen = image_run(root)
    cfg = FitConfig(epochs=epochs, lr=3e-3, warmup_epochs=0.5, label_smoothing=0.1,
                    patience=patience, seed=7)
    result = fit(model, param_groups(model, cfg.lr, cfg.weight_decay, 0.8), loaders["train"],
                 loaders["val"], cfg, CPU, Checkpointer(ckpt, "fp"), prepare=prepare,
                 sampler_generator=gen, on_epoch_end=on_epoch_end)
    return model, result


def test_loss_falls_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(32, 16), torch.randint(0, 3, (32,))
    head = nn.Linear(16, 3)
    ds = TensorDataset(x, y)
    loader = data.make_loader(ds, 32, CPU, 0, batch_index=True)  # one fixed batch per epoch
    cfg = FitConfig(epochs=30, lr=0.05, warmup_epochs=0, weight_decay=0.0)
    result = fit(head, [{"params": list(head.parameters())}], loader, loader, cfg, CPU,
                 Checkpointer(tmp_path / "ckpt", "fp"))
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.best_score == max(r["val_macro_f1"] for r in result.history)


def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path):
    model_a, full = fit_images(tmp_path, tmp_path / "a", epochs=3)

    def stop_after_two(history):
        if len(history) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit_images(tmp_path, tmp_path / "b", epochs=3, on_epoch_end=stop_after_two)
    model_b, resumed = fit_images(tmp_path, tmp_path / "b", epochs=3)
    assert resumed.resumed_after == 2
    assert len(resumed.history) == 3
    for row_a, row_b in zip(full.history, resumed.history, strict=True):
        assert row_b == pytest.approx(row_a, rel=1e-5, abs=1e-6)
    assert resumed.best_epoch == full.best_epoch
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_checkpoint_loads_without_unpickling_and_keeps_one_epoch(tmp_path):
    _, result = fit_images(tmp_path, tmp_path / "ckpt", epochs=2)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    best = f"best-e{result.best_epoch:04d}.safetensors"
    assert set(files) == {"state.json", "module-e0002.safetensors", "optimizer-e0002.pt", best}
    assert state["epoch"] == 2 and state["files"]["best"] == best
    optim = torch.load(tmp_path / "ckpt" / "optimizer-e0002.pt", weights_only=True)
    assert optim["state"] and optim["param_groups"]
    weights = load_file(tmp_path / "ckpt" / "module-e0002.safetensors")
    assert weights.keys() == tiny_cnn().state_dict().keys()


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    head = nn.Linear(4, 3)
    opt = make_optimizer([{"params": list(head.parameters())}], FitConfig(epochs=1, lr=0.1))
    Checkpointer(tmp_path, "old").save(1, head, opt, {"history": []}, improved=True)
    assert Checkpointer(tmp_path, "new").load(head, opt) is None
    assert Checkpointer(tmp_path, "old").load(head, opt)["epoch"] == 1


def test_early_stopping_on_val_macro_f1(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(30, 8), torch.randint(0, 3, (30,))
    val = data.make_loader(TensorDataset(torch.randn(30, 8), torch.randint(0, 3, (30,))), 30,
                           CPU, 0, batch_index=True)
    head = nn.Linear(8, 3)
    cfg = FitConfig(epochs=50, lr=1e-6, warmup_epochs=0, patience=2)  # lr too small to improve
    result = fit(head, [{"params": list(head.parameters())}],
                 data.make_loader(TensorDataset(x, y), 10, CPU, 0, batch_index=True), val, cfg,
                 CPU, Checkpointer(tmp_path, "fp"))
    assert result.stopped_early and len(result.history) == result.best_epoch + 2


class Oracle(nn.Module):
    """Scores with the trained head's parameters, but answers the class coded in column 0."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.0 * self.head(x) + nn.functional.one_hot(x[:, 0].long(), 3).float()


def test_epochs_are_selected_on_the_scorer_output_when_one_is_given(tmp_path):
    torch.manual_seed(0)
    val_y = torch.randint(0, 3, (30,))
    val_x = torch.cat([val_y[:, None].float(), torch.randn(30, 7)], 1)
    val = data.make_loader(TensorDataset(val_x, val_y), 30, CPU, 0, batch_index=True)
    train = data.make_loader(TensorDataset(torch.randn(30, 8), torch.randint(0, 3, (30,))), 10,
                             CPU, 0, batch_index=True)
    head = nn.Linear(8, 3)
    cfg = FitConfig(epochs=6, lr=1e-2, warmup_epochs=0, patience=2)
    result = fit(head, [{"params": list(head.parameters())}], train, val, cfg, CPU,
                 Checkpointer(tmp_path, "fp"), scorer=Oracle(head))
    assert [row["val_macro_f1"] for row in result.history] == [1.0, 1.0, 1.0]
    assert result.best_epoch == 1 and result.stopped_early
    assert result.history[0]["train_macro_f1"] < 1.0  # the head itself was trained, not scored


def test_schedule_warms_up_then_decays_and_keeps_layer_ratios():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    cfg = FitConfig(epochs=4, lr=1.0, warmup_epochs=1)
    opt = make_optimizer([{"params": [a], "lr": 0.5, "lr_scale": 0.5},
                          {"params": [b], "lr": 1.0, "lr_scale": 1.0}], cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    head = [hi for _, hi in lrs]
    assert head[0] < 0.2 and head[9] == pytest.approx(10 / 11) and max(head) <= 1.0
    assert head[10] == pytest.approx(1.0) and head[-1] < 0.01
    assert all(lo == pytest.approx(0.5 * hi) for lo, hi in lrs)  # lr_scale not applied twice


def test_head_on_cached_features_matches_the_full_model(tmp_path):
    model, loaders, prepare, gen = image_run(tmp_path)
    apply_freeze(model, "frozen")
    feature_fn, head = feature_extractor(model, "frozen")
    model.eval()
    calls = []

    def compute(split):
        calls.append(split)
        return features.extract_features(feature_fn, loaders[split], CPU, prepare.preprocess)

    sets = {s: TensorDataset(*compute(s)) for s in ("train", "val")}
    assert calls == ["train", "val"]
    feat_loaders = {s: data.make_loader(ds, 8, CPU, 0, batch_index=True,
                                        sampler=data.train_sampler(ds.tensors[1].numpy(), False,
                                                                   gen) if s == "train" else None)
                    for s, ds in sets.items()}
    cfg = FitConfig(epochs=2, lr=1e-2, warmup_epochs=0)
    fit(head, param_groups(model, cfg.lr, cfg.weight_decay, None), feat_loaders["train"],
        feat_loaders["val"], cfg, CPU, Checkpointer(tmp_path / "ckpt", "fp"),
        sampler_generator=gen)
    head_logits, y_head = predict(head, feat_loaders["val"], CPU)
    full_logits, y_full = predict(model, loaders["val"], CPU, prepare)
    assert torch.equal(y_head, y_full)
    torch.testing.assert_close(head_logits, full_logits, rtol=1e-4, atol=1e-5)
    assert model.get_classifier().weight.grad is not None  # the model's own head was trained


def test_weighted_loss_weights_samples_not_the_smoothing_term():
    logits, targets = torch.randn(16, 3), torch.randint(0, 3, (16,))
    weight = torch.tensor([0.5, 1.0, 50.0])
    plain = nn.CrossEntropyLoss(weight=weight)(logits, targets)
    torch.testing.assert_close(WeightedCrossEntropy(weight)(logits, targets), plain)

    def optimum(loss_fn) -> int:
        """Class the loss-minimising logits of one class-0 sample predict."""
        z = torch.zeros(1, 3, requires_grad=True)
        opt = torch.optim.SGD([z], lr=1.0)
        for _ in range(300):
            opt.zero_grad()
            loss_fn(z, torch.tensor([0])).backward()
            opt.step()
        return int(z.argmax())

    assert optimum(WeightedCrossEntropy(weight, label_smoothing=0.1)) == 0
    # torch weights the smoothing term per class: the rare class wins every sample
    assert optimum(nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)) == 2
