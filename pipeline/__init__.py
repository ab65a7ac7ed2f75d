"""Model side: the stages train, evaluate, export and cross_evaluate, and the predict command.

The modules here are shells users call (`python -m pipeline.train`, `ecg-predict`); the work
lives in the rooms below, each of which says what it may import (tests/unit/test_structure.py
checks it):

    training/    torch: models, weights, freezing, data, features, fused heads, fitting, runs
    evaluation/  metrics, intervals, plots and report folders (numpy/pandas/sklearn, no torch)
    tracking/    MLflow (the only mlflow importer), run provenance, the tracking server check
    runtime/     the public API of research scripts: bundles and prediction, no torch
"""
