"""The fusion head's modality dropout (train.image_dropout)."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.training.fusion import FusionHead


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
