"""The `train:` section of params.yaml as a typed model (the comments there say why each value)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from data_prep.params import StrictModel
from pipeline.training.fusion import HeadKind, Inputs

FreezeMode = Literal["frozen", "partial", "full"]


class AugmentParams(StrictModel):
    """SpecAugment-style masks (pixels); 0 turns a mask off."""

    time_mask: int = Field(ge=0)
    freq_mask: int = Field(ge=0)
    num_masks: int = Field(ge=0)


class TrainParams(StrictModel):
    """The `train:` section of params.yaml (the comments there say why each value)."""

    backbones: list[str] = Field(min_length=1)
    freeze_modes: list[FreezeMode] = Field(min_length=1)
    weights: str
    weights_dir: str | None = None
    trainable_groups: int = Field(ge=1)
    pre_logits: Literal["frozen", "trainable"]
    channels: Literal["grey3", "in_chans1", "image3"]
    optimizer: Literal["adamw", "sgd"]
    lr: dict[FreezeMode, float]
    layer_decay: float | None = Field(gt=0, le=1)
    weight_decay: float = Field(ge=0)
    momentum: float = Field(ge=0, lt=1)
    epochs: int = Field(ge=1)
    warmup_epochs: float = Field(ge=0)
    batch_size: int = Field(ge=1)
    label_smoothing: float = Field(ge=0, lt=1)
    imbalance: Literal["weighted_loss", "balanced_sampler", "none"]
    class_weight_power: float = Field(ge=0, le=1)
    class_weight_cap: float | None = Field(ge=1)
    patience: int = Field(ge=0)
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    num_workers: int | None = Field(default=None, ge=0)
    max_per_class: dict[Literal["train", "val"], int | None] = Field(default_factory=dict)
    cache_features: bool
    feature_cache_dir: str | None = None
    feature_dtype: Literal["float16", "float32"]
    feature_batch_size: int = Field(ge=1)
    augment: AugmentParams
    nproc: int = Field(default=1, ge=1)
    inputs: Inputs
    morphology: bool = True  # inputs with rr: also the beat-shape features segment.morphology made
    head: HeadKind
    head_hidden: int = Field(ge=1)
    head_dropout: float = Field(ge=0, lt=1)
    image_dropout: float = Field(default=0.0, ge=0, lt=1)
    rr_lda_weight: float = Field(ge=0, lt=1)
    fold_ensemble: bool
    calibrate: bool
    select_classes: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        missing = [m for m in self.freeze_modes if m not in self.lr]
        if missing:
            raise ValueError(f"lr has no value for freeze modes {missing}")
        if any(v is not None and v < 1 for v in self.max_per_class.values()):
            raise ValueError("max_per_class values must be >= 1, or null for no cap")
        return self
