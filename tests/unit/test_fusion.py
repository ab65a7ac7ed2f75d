"""The fusion head: modality dropout (train.image_dropout), the rhythm standardisation it
fits, and the ensemble of fold heads."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.training import fitting
from pipeline.training.fusion import FusionHead, HeadEnsemble
from pipeline.training.rhythm_prior import RhythmDiscriminant, RhythmMix


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


LN8 = float(np.log(8.0))


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
