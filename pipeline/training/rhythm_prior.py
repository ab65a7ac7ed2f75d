"""A linear discriminant on log rhythm features, mixed into each fused head's probabilities.

de Chazal et al. 2004 classify unseen patients' beats with a linear discriminant on RR intervals
(and morphology). One pooled covariance and equal class priors give it a few dozen parameters,
so it carries over to new patients, where an MLP that also sees a thousand image features learns
the training patients. On mitdb DS1 out-of-fold validation (4 patient folds; the test split never
read), mixing it into the image+rr MLP at weight 0.25 raised macro-F1 N/S/V/F from 0.510 to
0.529 (S F1 0.403 -> 0.462, V 0.670 -> 0.685); weights 0.2 to 0.35 scored alike. On raw
instead of log features it lowered it (0.47).

The mix is geometric: log p = (1 - w) log p_head + w log p_lda (renormalised), so w = 0 is the
head alone. Features enter as logs: RR durations are closer to log-normal, and a ratio becomes a
difference, so the discriminant is the same whether an interval comes as seconds or as a ratio.
Window statistics that can be 0 (RMSSD, pNN50) are raised to LOG_FLOOR first.
The discriminant's log-probabilities are floored at log(1e-9) (LOG_PROB_FLOOR), as validated.

The head trains alone; its epoch is selected (and early-stopped) on the mix's validation output,
the model that ships (the same out-of-fold macro-F1 as selecting on the head: 0.530 vs 0.529).
The fold's discriminant is fitted on the same training rows with scikit-learn and stored as two
buffers, so the exported ONNX model and `pipeline.predict` compute the mix without scikit-learn.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from torch import Tensor, nn

LOG_FLOOR = 1e-3  # 1 ms, or a fraction of 0.1 %: below any meaningful rhythm value
ABSENT = -1.0e4  # score of a class the training rows do not hold
# log-probabilities are floored (probability 1e-9, as validated): a rhythm far outside the
# training patients' shifts the mix by at most w * 20.7, it cannot veto the head's answer outright
LOG_PROB_FLOOR = float(np.log(1e-9))


def log_features(rr: Tensor) -> Tensor:
    """The discriminant's input, one definition for fitting (float64) and the graph (float32)."""
    return rr.clamp_min(LOG_FLOOR).log()


class RhythmDiscriminant(nn.Module):
    """Class log-probabilities from a linear discriminant on log rhythm features (B, F)."""

    coef: Tensor
    intercept: Tensor

    def __init__(self, rr_dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("coef", torch.zeros(num_classes, rr_dim))
        self.register_buffer("intercept", torch.zeros(num_classes))

    def fit(self, rr: np.ndarray, targets: np.ndarray) -> RhythmDiscriminant:
        """Fits on training rows with equal priors over the classes they hold."""
        present = np.unique(targets)
        if present.size < 2:
            raise ValueError(f"the rhythm discriminant needs two classes in the training rows, "
                             f"found {present.tolist()}; set train.rr_lda_weight: 0")
        lda = LinearDiscriminantAnalysis(priors=np.full(present.size, 1.0 / present.size))
        with warnings.catch_warnings():  # ratios are exact differences of the logged intervals
            warnings.filterwarnings("ignore", message="Variables are collinear")
            lda.fit(log_features(torch.as_tensor(rr, dtype=torch.float64)).numpy(), targets)
        coef, intercept = lda.coef_, lda.intercept_
        if present.size == 2:  # scikit-learn keeps one function: the second class's log-odds
            coef = np.stack([np.zeros_like(coef[0]), coef[0]])
            intercept = np.array([0.0, intercept[0]])
        self.coef.zero_()
        self.intercept.fill_(ABSENT)
        self.coef[present] = torch.as_tensor(coef, dtype=torch.float32)
        self.intercept[present] = torch.as_tensor(intercept, dtype=torch.float32)
        return self

    def forward(self, rr: Tensor) -> Tensor:
        scores = log_features(rr.float()) @ self.coef.T + self.intercept
        return torch.log_softmax(scores, dim=1).clamp_min(LOG_PROB_FLOOR)


class RhythmMix(nn.Module):
    """A fused head whose probabilities are mixed with a rhythm discriminant's (weight w)."""

    def __init__(self, head: nn.Module, discriminant: RhythmDiscriminant, weight: float):
        super().__init__()
        if not 0.0 < weight < 1.0:
            raise ValueError(f"rhythm discriminant weight {weight}: use a value in (0, 1)")
        self.head, self.discriminant, self.weight = head, discriminant, weight

    def forward(self, features: Tensor, rr: Tensor) -> Tensor:
        head = torch.log_softmax(self.head(features, rr).float(), dim=1)
        return (1.0 - self.weight) * head + self.weight * self.discriminant(rr)
