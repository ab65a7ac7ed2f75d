"""The rhythm discriminant: scikit-learn's LDA in torch buffers, and its mix with a head."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from pipeline.training import fitting
from pipeline.training.fusion import FusionHead
from pipeline.training.rhythm_prior import ABSENT, RhythmDiscriminant, RhythmMix


def log_features(rr: np.ndarray) -> np.ndarray:
    """The reference input: logs, with values below 1 ms (a zero RMSSD) raised to it."""
    return np.log(np.maximum(rr.astype(np.float64), 1e-3))


def _beats(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rhythm features of three classes (0 normal, 2 premature, 3 wide pause); class 1 absent."""
    rng = np.random.default_rng(seed)
    targets = rng.choice([0, 2, 3], size=n, p=[0.8, 0.1, 0.1])
    base = rng.uniform(0.6, 1.2, size=n)  # each beat's own baseline rhythm
    kind = [targets == 2, targets == 3]
    pre = base * np.select(kind, [0.6, 1.0], 1.0) * rng.lognormal(0, 0.05, n)
    post = base * np.select(kind, [1.3, 1.4], 1.0) * rng.lognormal(0, 0.05, n)
    return np.stack([pre, post, base, pre / base], axis=1).astype(np.float32), targets


def test_discriminant_reproduces_sklearn_probabilities_and_never_picks_an_absent_class():
    rr, targets = _beats(600)
    disc = RhythmDiscriminant(rr.shape[1], 4).fit(rr, targets)
    lda = LinearDiscriminantAnalysis(priors=[1 / 3] * 3).fit(log_features(rr), targets)
    probs = disc(torch.from_numpy(rr)).exp().numpy()
    np.testing.assert_allclose(probs[:, [0, 2, 3]], lda.predict_proba(log_features(rr)),
                               atol=1e-4)
    assert probs[:, 1].max() <= 1.01e-9  # class 1 was never seen: the floor
    assert (probs.argmax(1) == targets).mean() > 0.9  # prematurity is what it separates


def test_two_classes_and_zero_valued_window_features_stay_finite():
    rr, targets = _beats(400, seed=1)
    keep = targets != 3
    rr, targets = rr[keep], targets[keep]
    rr[:5, 0] = 0.0  # e.g. a window's RMSSD of 0
    disc = RhythmDiscriminant(rr.shape[1], 4).fit(rr, targets)
    lda = LinearDiscriminantAnalysis(priors=[0.5, 0.5]).fit(log_features(rr), targets)
    probs = disc(torch.from_numpy(rr)).exp().numpy()
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[:, [0, 2]], lda.predict_proba(log_features(rr)), atol=1e-4)
    # scikit-learn's one function is class 2's log-odds against class 0, whose score is 0
    np.testing.assert_allclose(disc.coef.numpy()[[0, 2]], [np.zeros(4), lda.coef_[0]], rtol=3e-7)
    np.testing.assert_allclose(disc.intercept.numpy()[[0, 2]], [0.0, lda.intercept_[0]],
                               rtol=3e-7)


def test_discriminant_is_fitted_silently_in_float64_on_float32_features():
    """train hands over float32 rhythm features (`rhythm_matrix`); the logs are fitted in
    float64, so the buffers are scikit-learn's float64 fit rounded to float32 (a float32 fit of
    these nearly collinear logs is off by 1e-6 and more), with equal priors that sum to 1:
    scikit-learn warns about nothing."""
    rr, targets = _beats(400, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        disc = RhythmDiscriminant(rr.shape[1], 4).fit(rr, targets)
    lda = LinearDiscriminantAnalysis(priors=[1 / 3] * 3).fit(log_features(rr), targets)
    np.testing.assert_allclose(disc.coef.numpy()[[0, 2, 3]], lda.coef_, rtol=3e-7)
    np.testing.assert_allclose(disc.intercept.numpy()[[0, 2, 3]], lda.intercept_, rtol=3e-7)
    assert disc.coef[1].abs().sum().item() == 0 and disc.intercept[1].item() == ABSENT


def test_one_class_is_refused_with_the_fix():
    rr, _ = _beats(50)
    with pytest.raises(ValueError, match="rr_lda_weight: 0"):
        RhythmDiscriminant(rr.shape[1], 4).fit(rr, np.zeros(50, dtype=int))


def test_mix_is_the_normalised_geometric_mean_of_head_and_discriminant():
    rr, targets = _beats(300, seed=2)
    torch.manual_seed(0)
    head = FusionHead(6, rr.shape[1], 4, "mlp", 8, 0.0).eval()
    head.rr_norm.fit(torch.from_numpy(rr))
    disc = RhythmDiscriminant(rr.shape[1], 4).fit(rr, targets)
    mix = RhythmMix(head, disc, 0.25).eval()
    image, rhythm = torch.randn(len(rr), 6), torch.from_numpy(rr)
    with torch.no_grad():
        got = mix(image, rhythm).softmax(1)
        p_head, p_disc = head(image, rhythm).softmax(1), disc(rhythm).exp()
    expected = p_head ** 0.75 * p_disc ** 0.25
    torch.testing.assert_close(got, expected / expected.sum(1, keepdim=True))
    for weight in (0.0, 1.0):  # 0 is the head alone: no mix is built for it
        with pytest.raises(ValueError, match="in \\(0, 1\\)"):
            RhythmMix(head, disc, weight)


@pytest.mark.parametrize(("rr_features", "mixed"), [(["rr_pre", "rr_post"], True), ([], False)])
def test_ensemble_members_are_mixed_only_when_the_head_sees_rhythm(rr_features, mixed):
    arch = {"inputs": "image+rr" if rr_features else "image", "head": "linear", "hidden": 4,
            "dropout": 0.0, "rr_features": rr_features, "heads": 2, "rr_lda_weight": 0.25}
    heads = [fitting._member(FusionHead(3, len(rr_features), 4), len(rr_features), 4,
                             arch["rr_lda_weight"]) for _ in range(arch["heads"])]
    assert all(isinstance(h, RhythmMix) == mixed for h in heads)
    rr = np.abs(np.random.default_rng(0).normal(1.0, 0.2, (40, len(rr_features))))
    targets = np.repeat([0, 2], 20)
    member, head = fitting._fit_fixed_parts(heads[0], rr.astype(np.float32), targets)
    assert isinstance(head, FusionHead) and member is heads[0]
    if mixed:  # the discriminant was fitted on the fold's rows
        assert member.discriminant.intercept[1].item() < -1e3
        assert member.discriminant.coef.abs().sum().item() > 0
