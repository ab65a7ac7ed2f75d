"""Building, training, storing and running torch models: the train and evaluate stages' core.

Backbones (timm) and their weights, freezing by timm's layer groups, transforms, datasets over
the spectrogram shards, the feature store of frozen-backbone features, the fused image + rhythm
head and its fitting over patient folds, the training loop, checkpoints, devices and torchrun,
and a trained run's folder (`run_folder`) and probabilities on a split (`inference`).

May import torch, timm, data_prep, `pipeline.runtime` and `pipeline.evaluation`; never mlflow
(that is `pipeline.tracking`) and never a stage module.
"""
