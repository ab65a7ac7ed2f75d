"""Model-input preprocessing for spectrogram images, shared by train, evaluate and export.

A batch of uint8 spectrograms (B, H, W) (low frequency at the bottom row, one grey channel) or
(B, 3, H, W) (the multi-channel image kinds of `data_prep.images.channels`) becomes a float tensor
(B, C, H, W): scaled to [0, 1], channels handled as configured (grey3, in_chans1 for grey
images; image3 for three-channel images) and normalised with the pretrained model's mean/std.
The images are already at the model's input size, so there is no resize or crop (crop_pct =
1.0). Everything is vectorised on the batch and runs on whatever device the batch is on.

The preprocessing is described by a plain dict (`preprocess_spec`) that goes into the run's
resolved config and the export bundle; `Preprocess.from_spec` rebuilds it exactly.

Augmentation is spectrogram-safe only (SpecAugment-style time and frequency masks). Flips
reverse time or frequency and random resized crops distort the frequency axis, so there are none.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

Channels = Literal["grey3", "in_chans1", "image3"]
CHANNELS: dict[str, int] = {"grey3": 3, "in_chans1": 1, "image3": 3}  # model input channels
IMAGE_CHANNELS: dict[str, int] = {"grey3": 1, "in_chans1": 1, "image3": 3}  # stored channels
SCALE = 1.0 / 255.0


def check_channels(channels: str, image_channels: int, source: object) -> None:
    """Fails (naming the fix) when `train.channels` does not fit the images' channel count.

    Args:
        channels: train.channels.
        image_channels: the spectrogram meta.json "channels" (1 grey; 3 multires, two_lead).
        source: where the images are described, for the message.
    """
    if IMAGE_CHANNELS.get(channels) == image_channels:
        return
    fit = [k for k, v in IMAGE_CHANNELS.items() if v == image_channels]
    raise ValueError(f"train.channels '{channels}' takes {IMAGE_CHANNELS.get(channels)}-channel "
                     f"images, but {source} holds {image_channels}-channel images; set "
                     f"train.channels to one of {fit} (or change spectrogram.image)")


def preprocess_spec(data_config: dict[str, Any], channels: Channels, image_size: int) -> dict:
    """Describes the preprocessing for a model.

    Args:
        data_config: the model's pretrained data config (`models.model_data_config`): mean, std,
            input_size, interpolation.
        channels: "grey3" (grey replicated to 3 channels, matches ImageNet stems), "in_chans1"
            (one channel, for a model built with timm `in_chans=1`) or "image3" (an image's
            own 3 channels, each normalised with its ImageNet channel's mean/std).
        image_size: side of the square spectrogram images (meta.json "image_size").

    Returns:
        A JSON-serialisable dict: channels, in_chans, mean, std, scale, image_size, crop_pct,
        interpolation and the image layout.
    """
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {sorted(CHANNELS)}, got {channels!r}")
    mean = [float(v) for v in data_config["mean"]]
    std = [float(v) for v in data_config["std"]]
    if channels == "in_chans1" and len(mean) > 1:
        # timm adapts a 3-channel stem to in_chans=1 by summing the RGB kernels, which is exact
        # for a grey input when all channels share one mean/std: use the channel averages.
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    if CHANNELS[channels] == 3 and len(mean) == 1:
        mean, std = mean * 3, std * 3
    # grey specs keep their keys as before (their feature store keys stay valid)
    image = {} if IMAGE_CHANNELS[channels] == 1 else {"image_channels": IMAGE_CHANNELS[channels]}
    return {
        "channels": channels,
        "in_chans": CHANNELS[channels],
        **image,
        "mean": mean,
        "std": std,
        "scale": SCALE,  # uint8 -> [0, 1] before normalisation
        "image_size": int(image_size),
        "crop_pct": 1.0,  # images are already the input size: no resize, no crop
        "interpolation": data_config.get("interpolation", "bilinear"),  # unused (no resize)
        "layout": ("uint8 (B, H, W)" if channels != "image3" else "uint8 (B, 3, H, W)")
        + ", row 0 = highest frequency, last row = lowest frequency",
    }


class Preprocess(nn.Module):
    """uint8 (B, H, W) or (B, 1, H, W) grey, or (B, 3, H, W) -> normalised float (B, C, H, W).

    Mean/std are buffers, so `.to(device)` moves them with the module and the module can be
    scripted into an export bundle.
    """

    mean: torch.Tensor  # buffers, declared for type checkers
    std: torch.Tensor

    def __init__(self, mean: list[float], std: list[float], in_chans: int, scale: float = SCALE,
                 image_channels: int = 1):
        super().__init__()
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean/std need {in_chans} values, got {mean} / {std}")
        if image_channels not in (1, in_chans):
            raise ValueError(f"{image_channels}-channel images cannot feed {in_chans} channels")
        self.in_chans, self.image_channels = in_chans, image_channels
        self.scale = scale
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_spec(cls, spec: dict) -> Preprocess:
        """Builds the module from a `preprocess_spec` dict (e.g. read from resolved_config.json)."""
        return cls(spec["mean"], spec["std"], spec["in_chans"], spec.get("scale", SCALE),
                   spec.get("image_channels", 1))

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) or (B, C, H, W) -> float (B, C, H, W) in [0, 1], C = image_channels."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.shape[1] != self.image_channels:
            want = ("a grey batch (B, H, W)" if self.image_channels == 1
                    else f"a batch (B, {self.image_channels}, H, W)")
            raise ValueError(f"expected {want}, got shape {tuple(images.shape)}")
        return images.float() * self.scale

    def normalise(self, unit: torch.Tensor) -> torch.Tensor:
        """float (B, image_channels, H, W) in [0, 1] -> (B, in_chans, H, W) normalised."""
        # expand() is a view: replicating grey to 3 channels costs no copy before normalising
        return (unit.expand(-1, self.in_chans, -1, -1) - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.to_unit(images))


class SpecAugment(nn.Module):
    """SpecAugment-style masking of a float (B, C, H, W) batch in [0, 1], before normalisation.

    Each image gets `num_masks` time masks (whole columns) and `num_masks` frequency masks
    (whole rows) of random width in [0, max width], the same in every channel (they share the
    time and frequency axes). Masked pixels are set to 0, the floor of the
    dB-scaled spectrogram: "no energy here", a value the model sees in real images. Active only
    in training mode; with both widths 0 it is the identity.
    """

    def __init__(self, time_mask: int = 0, freq_mask: int = 0, num_masks: int = 1):
        super().__init__()
        if min(time_mask, freq_mask, num_masks) < 0:
            raise ValueError("mask widths and num_masks must be >= 0")
        self.time_mask, self.freq_mask, self.num_masks = time_mask, freq_mask, num_masks

    @property
    def enabled(self) -> bool:
        return self.num_masks > 0 and (self.time_mask > 0 or self.freq_mask > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.enabled):
            return x
        batch, _, height, width = x.shape
        keep = torch.ones(batch, 1, height, width, dtype=torch.bool, device=x.device)
        for _ in range(self.num_masks):
            if self.time_mask > 0:
                keep &= ~_band_mask(batch, width, self.time_mask, x.device).view(batch, 1, 1, width)
            if self.freq_mask > 0:
                keep &= ~_band_mask(batch, height, self.freq_mask, x.device).view(
                    batch, 1, height, 1
                )
        return x * keep


def _band_mask(batch: int, size: int, max_width: int, device: torch.device) -> torch.Tensor:
    """(batch, size) bool, True on one random band [start, start + width) per row."""
    width = torch.randint(0, min(max_width, size) + 1, (batch, 1), device=device)
    start = (torch.rand(batch, 1, device=device) * (size - width + 1)).floor().long()
    pos = torch.arange(size, device=device).view(1, -1)
    return (pos >= start) & (pos < start + width)


class ModelInput(nn.Module):
    """Training-side input pipeline: uint8 batch -> (optional masks) -> normalised float."""

    def __init__(self, preprocess: Preprocess, augment: SpecAugment | None = None):
        super().__init__()
        self.preprocess = preprocess
        self.augment = augment or SpecAugment()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        unit = self.preprocess.to_unit(images)
        if self.training:
            unit = self.augment(unit)
        return self.preprocess.normalise(unit)
