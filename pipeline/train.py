"""Train stage: fine-tune one timm CNN on the spectrogram images.

Reads `data/spectrograms/` (index.csv, meta.json, shards/) and `data/splits/assignment.csv`;
params from the `train:` section of params.yaml. Writes to `models/<run>/`:

- `model.safetensors`: the best epoch's full model (selected on val macro-F1);
- `checkpoint/`: the last epoch's resumable state (re-running the same command resumes);
- `history.csv`: per-epoch train/val loss, accuracy, macro-F1 and lr (`dvc plots`);
- `metrics.json`: best val macro-F1 and friends (`dvc metrics`);
- `resolved_config.json`: params, classes, preprocessing spec, weights source, freeze report,
  device, versions;
- `mlflow_run.json`: the id of this model's MLflow run (see `pipeline.tracking.run_tracking`), which
  the evaluate stage completes; params from the `tracking:` section. An unreachable
  `MLFLOW_TRACKING_URI` fails before any training;
- `features/`: frozen mode's cached backbone features (unless train.feature_cache_dir is set).

Run: `python -m pipeline.train --params params.yaml --backbone vgg16.tv_in1k --freeze frozen
--spectrograms data/spectrograms --splits data/splits --out models/vgg16.tv_in1k-frozen`
(dvc.yaml runs it for every backbone x freeze mode in `train.backbones` x `train.freeze_modes`).
With `train.nproc` > 1 it restarts itself under `torchrun --standalone` with that many
data-parallel processes (several nodes: start torchrun yourself, docs/cluster.md); see
`pipeline.training.distributed`.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import timm
import torch

from data_prep.beats import morphology
from data_prep.cli import run_main
from data_prep.layout import INDEX, META, atomic_path, rhythm_matrix, write_json
from data_prep.params import DEFAULT_PARAMS, load_section, per_database
from pipeline.tracking import provenance, run_tracking
from pipeline.training import cv, data, distributed, features, fitting
from pipeline.training.checkpoint import save_weights
from pipeline.training.device import resolve_device
from pipeline.training.engine import EpochCallback, FitConfig
from pipeline.training.fusion import HeadEnsemble, uses_image, uses_rr
from pipeline.training.run_folder import (
    CHECKPOINT,
    FEATURE_STORE,
    HISTORY,
    METRICS,
    MODEL,
    RESOLVED,
)
from pipeline.training.train_params import FreezeMode, TrainParams
from pipeline.training.transforms import check_channels
from pipeline.training.weights import resolve_weights

log = logging.getLogger(__name__)

MATRIX_KEYS = ("backbones", "freeze_modes")  # choose the DVC matrix runs, not one run's result
LAUNCH_KEYS = ("nproc",)  # how many processes, not what is trained: a run resumes with any
HISTORY_COLUMNS = ("fold", "epoch", "train_loss", "train_acc", "train_macro_f1",
                   "val_loss", "val_acc", "val_macro_f1", "lr")


def run(
    params: TrainParams,
    backbone: str,
    freeze: FreezeMode,
    spectrograms: Path,
    splits: Path,
    out: Path,
    tracking_params: run_tracking.TrackingParams | None = None,
) -> dict:
    """Trains one backbone x freeze-mode run and writes its outputs to `out`.

    Args:
        tracking_params: the `tracking:` section; None trains without MLflow (tests).

    Returns:
        The metrics written to metrics.json.
    """
    started = time.monotonic()
    if tracking_params is not None:  # a down server must fail now, not after hours of training
        run_tracking.check_tracking_server()
    meta = data.read_meta(spectrograms)
    if uses_image(params.inputs):  # before any model is built or feature computed
        check_channels(params.channels, int(meta.get("channels", 1)), spectrograms / META)
    classes = list(meta["classes"])
    frame = data.load_split_index(spectrograms, splits, classes)
    frame = data.cap_per_class(frame, params.max_per_class, params.seed)
    for split in ("train", "val"):
        data.split_frame(frame, split, splits)  # an empty split fails now, naming the file
    trainval = frame[frame["split"].isin(["train", "val"])].reset_index(drop=True)
    device = distributed.device_of_rank(resolve_device(params.device))
    cached = params.inputs == "rr" or (freeze == "frozen" and params.cache_features)
    folds = cv.make_folds(trainval, params.fold_ensemble and cached)
    rr_names = _rr_names(meta, params, spectrograms)
    weights = resolve_weights(backbone, params.weights,
                              Path(params.weights_dir) if params.weights_dir else None)
    log.info("weights for %s: %s", backbone, weights.describe())
    setup = fitting.build(params, backbone, freeze, len(classes), int(meta["image_size"]),
                          rr_names, len(folds), weights)
    log.info("freeze %s", setup.report.summary())
    _check_combination(params, setup, cached)
    data_version = features.data_fingerprint(spectrograms, splits, frame)
    fingerprint = features.cache_key(
        params=params.model_dump(exclude={*MATRIX_KEYS, *LAUNCH_KEYS}), backbone=backbone,
        freeze=freeze, data=data_version, weights=setup.weights_id, spec=setup.spec,
        code=provenance.code_digest("pipeline.train"))
    select = [classes.index(c) for c in params.select_classes if c in classes]
    resolved = {
        "stage": "train", "backbone": backbone, "freeze": freeze, "params": params.model_dump(),
        "database": meta.get("segments", {}).get("database"),
        "image": meta.get("image", "grey"),  # spectrogram.image (data_prep.images.channels)
        "classes": classes, "preprocessing": setup.spec, "model": setup.arch,
        "weights": {**asdict(setup.weights), "describe": setup.weights.describe()},
        "freeze_report": asdict(setup.report), "device": str(device), "seed": params.seed,
        "num_workers": 0 if cached else data.resolve_workers(params.num_workers, device),
        # data_fingerprint: meta (with the shards' recorded sha256), index, assignment and rows
        # (sizes/mtimes for older shards), for cache and resume decisions only; the
        # content hashes of the data are the DVC tags (provenance.dvc_data_version)
        "data_fingerprint": data_version, "fingerprint": fingerprint,
        "folds": [f.name for f in folds], "select_classes": [classes[i] for i in select],
        "counts": _counts(frame, classes), "cached_features": cached, "versions": _versions(),
        "processes": distributed.ranks().world,
    }
    main = distributed.is_main()  # only rank 0 writes the run folder and logs to MLflow
    with _tracked(tracking_params if main else None, out, resolved) as run_id:
        inputs = fitting.RunInputs(
            trainval, rhythm_matrix(trainval, rr_names, spectrograms / INDEX), None,
            spectrograms)
        if cached:
            inputs.features = fitting.cached_features(
                setup, Path(params.feature_cache_dir or FEATURE_STORE), spectrograms, trainval,
                device, params.feature_batch_size, params.feature_dtype)
        fits = fitting.fit_folds(
            setup, inputs, folds, _fit_config(params, freeze, select), params, freeze, device,
            out / CHECKPOINT, fingerprint, partial(_class_weights, params, len(classes)),
            partial(_epoch_callback, out / HISTORY if main else None, run_id, len(folds) > 1))
        validation = _validate(setup, fits, trainval, params, select)
        metrics = _metrics(fits, validation, trainval, time.monotonic() - started)
        if main:  # no metadata in the weights: its order varies, the bytes would too
            resolved["validation"] = validation
            save_weights(setup.net, out / MODEL)
            write_json(out / METRICS, metrics)
            write_json(out / RESOLVED, resolved)
        if run_id:
            run_tracking.log_train_outputs(run_id, metrics, [out / RESOLVED, out / HISTORY])
    log.info("wrote %s: validation macro-F1 %.4f over %s", out,
             metrics["best_val_macro_f1"], "/".join(resolved["select_classes"]))
    return metrics


def _tracked(
    tracking_params: run_tracking.TrackingParams | None, out: Path, resolved: dict
) -> AbstractContextManager[str | None]:
    """The run's MLflow run (opened or resumed, FAILED on error), or no tracking at all."""
    if tracking_params is None:
        return nullcontext(None)
    weights, arch = resolved["weights"], resolved["model"]
    tags = {"stage": "train", "backbone": resolved["backbone"], "freeze": resolved["freeze"],
            "weights": weights["describe"], "weights.sha256": weights["sha256"],
            "device": resolved["device"], "inputs": arch["inputs"], "head": arch["head"],
            "folds": len(resolved["folds"]), "image": resolved["image"],
            "morphology": str(any(n in morphology.FEATURES for n in arch["rr_features"]))}
    # + git, DVC: start_run
    return run_tracking.train_run(tracking_params, out, resolved["fingerprint"], resolved, tags,
                                  database=resolved["database"])


def _rr_names(meta: dict, params: TrainParams, spectrograms: Path) -> list[str]:
    """The context features the model takes: rhythm, and the beat-shape ones unless
    train.morphology is false."""
    if not uses_rr(params.inputs):
        return []
    rhythm = meta.get("segments", {}).get("rhythm")
    if not rhythm:
        raise ValueError(f"{spectrograms / META}: no rhythm features recorded; re-run the "
                         "segment and spectrogram stages (dvc repro spectrogram), or set "
                         "train.inputs: image")
    shape = [] if params.morphology else rhythm.get("morphology", {}).get("features", [])
    return [name for name in rhythm["features"] if name not in shape]


def _check_combination(params: TrainParams, setup: fitting.Setup, cached: bool) -> None:
    if cached and setup.prepare.augment.enabled:
        raise ValueError(
            "train.augment masks change every epoch, but frozen mode caches features once: set "
            "train.cache_features=false to recompute features each epoch, or turn the masks off")
    if cached and params.pre_logits == "trainable" and uses_image(params.inputs):
        raise ValueError("train.pre_logits: trainable trains layers after the cached features; "
                         "set train.cache_features: false, or pre_logits: frozen")


def _validate(setup: fitting.Setup, fits: list[fitting.FoldFit], trainval: pd.DataFrame,
              params: TrainParams, select: list[int]) -> dict:
    """Out-of-fold validation over every validated row; fits the class bias if asked."""
    rows = np.concatenate([f.fold.val for f in fits])
    oof = cv.out_of_fold([f.fold for f in fits], [f.val_probs for f in fits], len(trainval))
    probs, targets = oof[rows], trainval["target"].to_numpy()[rows]
    result: dict = {"rows": int(rows.size),
                    "macro_f1": cv.macro_f1(targets, np.log(np.clip(probs, 1e-12, 1)), select),
                    "f1": cv.class_f1(targets, probs.argmax(1), select)}  # select_classes order
    # what a fitted class bias would add, measured on held-out patients: says whether to use it
    groups = trainval["subject" if "subject" in trainval else "record"].to_numpy()[rows]
    result["calibration_gain"] = cv.calibration_gain(probs, targets, groups, select)
    if params.calibrate:
        bias = cv.calibrate_bias(probs, targets, select)
        cast(HeadEnsemble, setup.net.head).class_bias.copy_(torch.from_numpy(bias).float())
        result["class_bias"] = bias.tolist()
        result["macro_f1_calibrated_in_sample"] = cv.macro_f1(
            targets, np.log(np.clip(probs, 1e-12, 1)) + bias, select)
    return result


def _class_weights(params: TrainParams, num_classes: int,
                   targets: np.ndarray) -> torch.Tensor | None:
    if params.imbalance != "weighted_loss":
        return None
    return data.class_weights(targets, num_classes, params.class_weight_power,
                              params.class_weight_cap)


def _epoch_callback(history: Path | None, run_id: str | None, several: bool,
                    fold: cv.Fold) -> EpochCallback | None:
    """history.csv after every epoch (rows of every fold) and MLflow curves (fold-prefixed)."""
    if history is None:
        return None
    done = _read_history(history, keep_except=fold.name)

    def after(rows: list[dict]) -> None:
        write_history(history, done + [{"fold": fold.name, **r} for r in rows])
        if run_id:
            row = dict(rows[-1])
            epoch = int(row.pop("epoch"))
            prefix = f"{fold.name}_" if several else ""
            run_tracking.log_epoch(run_id, {f"{prefix}{k}": v for k, v in row.items()}, epoch)

    return after


def _read_history(path: Path, keep_except: str) -> list[dict]:
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    return table[table["fold"] != keep_except].to_dict("records")


def _fit_config(params: TrainParams, freeze: FreezeMode, select: list[int]) -> FitConfig:
    return FitConfig(
        epochs=params.epochs, lr=params.lr[freeze], optimizer=params.optimizer,
        weight_decay=params.weight_decay, momentum=params.momentum,
        warmup_epochs=params.warmup_epochs, label_smoothing=params.label_smoothing,
        patience=params.patience, seed=params.seed, select=tuple(select),
    )


def write_history(path: Path, history: list[dict]) -> None:
    """history.csv for `dvc plots` (x: epoch), rewritten atomically after every epoch."""
    with atomic_path(path) as tmp:
        pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_csv(tmp, index=False)


def _metrics(fits: list[fitting.FoldFit], validation: dict, trainval: pd.DataFrame,
             seconds: float) -> dict:
    best = [f.result.history[f.result.best_epoch - 1] for f in fits]
    return {
        "best_val_macro_f1": validation["macro_f1"],  # out-of-fold, over select_classes
        "folds": len(fits),
        "best_epoch": [f.result.best_epoch for f in fits] if len(fits) > 1
        else fits[0].result.best_epoch,
        "best_val_acc": float(np.mean([b["val_acc"] for b in best])),
        "best_val_loss": float(np.mean([b["val_loss"] for b in best])),
        "train_macro_f1_at_best": float(np.mean([b["train_macro_f1"] for b in best])),
        "epochs_run": sum(len(f.result.history) for f in fits),
        "stopped_early": any(f.result.stopped_early for f in fits),
        "trainval_images": len(trainval),
        "val_images": validation["rows"],
        "train_seconds": round(seconds, 1),  # of this call (a resumed run counts its part)
    }


def _counts(frame: pd.DataFrame, classes: list[str]) -> dict[str, dict[str, int]]:
    table = pd.crosstab(frame["split"], frame["label"]).reindex(columns=classes, fill_value=0)
    return {split: {c: int(n) for c, n in row.items()} for split, row in table.iterrows()}


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": np.__version__,
            "cuda": torch.version.cuda or "none"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--backbone", help="timm model name (default: train.backbones[0])")
    parser.add_argument("--freeze", choices=["frozen", "partial", "full"],
                        help="freeze mode (default: train.freeze_modes[0])")
    parser.add_argument("--spectrograms", type=Path, help="default: data/spectrograms/<db>")
    parser.add_argument("--splits", type=Path, help="default: data/splits/<db>")
    parser.add_argument("--out", type=Path, help="default: models/<db>/<backbone>-<freeze>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params = load_section("train", TrainParams, args.params)
    tracking_params = run_tracking.load_tracking(args.params)
    backbone = args.backbone or params.backbones[0]
    freeze = args.freeze or params.freeze_modes[0]
    distributed.relaunch_under_torchrun(params.nproc, "pipeline.train",
                                        sys.argv[1:] if argv is None else argv)
    with distributed.session(params.device):  # joins torchrun's process group, if any
        run(params, backbone, freeze,
            per_database(args.spectrograms, args.params, "data/spectrograms"),
            per_database(args.splits, args.params, "data/splits"),
            per_database(args.out, args.params, "models", f"{backbone}-{freeze}"), tracking_params)


if __name__ == "__main__":
    run_main(main)
