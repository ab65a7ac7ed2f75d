"""Evaluate stage: run one trained model on unseen patients and report EC57-style results.

Reads `models/<run>/` (model.safetensors, resolved_config.json, mlflow_run.json),
`data/spectrograms/` and `data/splits/assignment.csv`; params from the `evaluate:` and
`tracking:` sections of params.yaml. Writes to `reports/<run>/`:

- `predictions.csv`: split,record,row,sample,label,pred,prob_<class>... (classes in meta.json
  order), one row per image of each evaluated split; float32 softmax probabilities written
  with 9 significant digits, which read back as the identical float32 values;
- `headline.json`: the DVC metrics file (`dvc metrics show`, `dvc exp show`): per split,
  accuracy, the N/S/V/F macro-F1 and S and V Se/+P/F1 (`pipeline.evaluation.headline`);
- `metrics.json`: `{split: metrics tree}`, every metric with record-bootstrap intervals and the
  caveats (e.g. classes with fewer than 30 examples); read by export, not a DVC metric;
- `confusion_test.csv`: actual,predicted per test image, for DVC's confusion template;
- record and rhythm label modes: `metrics.json` also holds `record_level` per split (window
  probabilities averaged per record: per-class F1 and the challenge-style mean F1, see
  `pipeline.evaluation.record_level`), `headline.json` its `record_mean_f1`, and
  `details/<split>/record_predictions.csv` one row per record;
- `details/`: `classification_report_<split>.txt` / `.json`, `notes.md`,
  `evaluation_config.json` and per split `<split>/`: confusion matrix (PNG with counts and
  row-normalised; CSVs of both), ROC / PR / reliability PNGs and CSVs, per-record (EC57) and
  per-class tables. (One folder, because DVC forbids outputs inside another output folder.)

Then it completes the model's MLflow run (the id train wrote): final metrics, the reports,
the spectrogram previews, tags, and optionally the model with a signature.

Run: `python -m pipeline.evaluate --params params.yaml --model models/<run>
--spectrograms data/spectrograms --splits data/splits --out reports/<run>`
(dvc.yaml runs it for every model the train matrix trains).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from data_prep.cli import run_main
from data_prep.layout import (
    INDEX,
    META,
    PREVIEW,
    SEGMENTS_META,
    atomic_path,
    rhythm_matrix,
    write_json,
)
from data_prep.params import DEFAULT_PARAMS, StrictModel, load_section, per_database
from pipeline.evaluation import record_level
from pipeline.evaluation.headline import macro_f1_text
from pipeline.evaluation.metrics import Evaluation
from pipeline.evaluation.report_folder import (
    CONFIG,
    DETAILS,
    FLOAT_FORMAT,
    NOTES,
    PREDICTIONS,
    predictions_frame,
)
from pipeline.evaluation.report_writer import evaluate_predictions, write_reports
from pipeline.tracking import run_tracking
from pipeline.training import data
from pipeline.training.device import resolve_device
from pipeline.training.fusion import uses_image
from pipeline.training.inference import frame_probs
from pipeline.training.run_folder import (
    RESOLVED,
    ImageClassifier,
    PackedClassifier,
    load_model,
    rhythm_names,
)
from pipeline.training.transforms import check_channels

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]


class EvaluateParams(StrictModel):
    """The `evaluate:` section of params.yaml (the comments there say why each value)."""

    splits: list[Split] = Field(min_length=1)
    n_boot: int = Field(ge=0)
    seed: int
    batch_size: int = Field(ge=1)
    device: Literal["auto", "cpu", "cuda"]
    num_workers: int | None = Field(default=None, ge=0)
    amp: bool
    max_per_class: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> EvaluateParams:
        if "test" not in self.splits or len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits {self.splits} must hold 'test' (unseen patients, the "
                             "reported result and DVC's confusion plot) and no split twice")
        return self


def run(
    params: EvaluateParams,
    model_dir: Path,
    spectrograms: Path,
    splits: Path,
    out: Path,
    tracking_params: run_tracking.TrackingParams | None = None,
) -> dict:
    """Evaluates the model in `model_dir` on `params.splits` and writes `out` (module doc).

    Args:
        tracking_params: the `tracking:` section; None evaluates without MLflow (tests).

    Returns:
        The metrics written to metrics.json.
    """
    with run_tracking.evaluation_run(tracking_params, model_dir) as run_id:
        model, preprocess, resolved = load_model(model_dir)
        if uses_image(resolved["model"]["inputs"]):  # images of the kind the model was made for
            check_channels(resolved["params"]["channels"],
                           int(data.read_meta(spectrograms).get("channels", 1)), spectrograms)
        classes = list(resolved["classes"])
        frames, available = _split_frames(params, spectrograms, splits, classes)
        device = resolve_device(params.device)
        parts = []
        workers = data.resolve_workers(params.num_workers, device)
        for split, frame in frames.items():
            probs = frame_probs(model, preprocess, resolved, spectrograms, frame, device,
                                params.batch_size, params.amp, split, workers)
            parts.append(predictions_frame(split, frame, probs, classes))
        predictions = pd.concat(parts, ignore_index=True)
        shutil.rmtree(out / DETAILS, ignore_errors=True)  # no split left over from a past run
        with atomic_path(out / PREDICTIONS) as tmp:
            predictions.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
        results = evaluate_predictions(predictions, classes, params.n_boot, params.seed)
        label_mode = data.read_meta(spectrograms).get(SEGMENTS_META, {}).get("label_mode")
        metrics = write_reports(results, predictions, out, available,
                                by_record=label_mode in record_level.RECORD_LABEL_MODES)
        info = _config(params, model_dir, resolved, device, available, run_id)
        write_json(out / DETAILS / CONFIG, info)
        _write_notes(out / DETAILS / NOTES, info, results)
        if run_id:
            example = _example(spectrograms, next(iter(frames.values())), resolved)
            classifier = (PackedClassifier(ImageClassifier(preprocess, model),
                                           example[1], len(rhythm_names(resolved))).cpu().float()
                          if tracking_params and tracking_params.log_model else None)
            run_tracking.log_evaluation(
                run_id, out, metrics, {**_tags(info), **_caveat_tags(results)},
                [model_dir / RESOLVED, out / DETAILS / CONFIG], spectrograms / PREVIEW,
                classifier, example[0])
    log.info("wrote %s: %s", out, "; ".join(f"{s} {macro_f1_text(m)}" for s, m in metrics.items()))
    return metrics


def _split_frames(
    params: EvaluateParams, spectrograms: Path, splits: Path, classes: list[str]
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Each evaluated split's images (capped when asked) and how many it has uncapped."""
    meta = data.read_meta(spectrograms)
    if list(meta["classes"]) != classes:
        raise ValueError(
            f"{spectrograms / META} classes {meta['classes']} differ from the model's "
            f"{classes} ({RESOLVED}); re-run train on these spectrograms"
        )
    frame = data.load_split_index(spectrograms, splits, classes)
    available = {str(s): int((frame["split"] == s).sum()) for s in params.splits}
    frame = data.cap_per_class(frame, dict.fromkeys(params.splits, params.max_per_class),
                               params.seed)
    return {s: data.split_frame(frame, s, splits) for s in params.splits}, available


def _config(
    params: EvaluateParams, model_dir: Path, resolved: dict, device: torch.device,
    available: dict[str, int], run_id: str | None,
) -> dict:
    precision = "bf16-autocast" if params.amp and device.type == "cuda" else "float32"
    return {
        "stage": "evaluate", "model": str(model_dir), "backbone": resolved["backbone"],
        "freeze": resolved["freeze"], "classes": resolved["classes"],
        "params": params.model_dump(), "device": str(device), "precision": precision,
        "subset": params.max_per_class is not None, "available": available,
        "mlflow_run_id": run_id,
    }


def _tags(info: dict) -> dict[str, str]:
    params = info["params"]
    return {"evaluate.splits": ",".join(params["splits"]), "evaluate.device": info["device"],
            "evaluate.precision": info["precision"], "evaluate.n_boot": params["n_boot"],
            "evaluate.subset": str(info["subset"]).lower(),
            "evaluate.max_per_class": params["max_per_class"] or "all"}


def _caveat_tags(results: dict[str, Evaluation]) -> dict[str, str]:
    """`caveats.<split>`: what not to trust in the run's numbers ("none" when nothing)."""
    return {f"caveats.{split}": "; ".join(ev.notes) or "none" for split, ev in results.items()}


def _write_notes(path: Path, info: dict, results: dict[str, Evaluation]) -> None:
    """Human-readable caveats: what was evaluated, on which device and precision, the gaps."""
    lines = [f"# Evaluation of {info['model']}", "",
             f"- backbone {info['backbone']}, freeze {info['freeze']}; device {info['device']}, "
             f"{info['precision']} inference",
             "- intervals: 95 % percentile bootstrap over records (patients), "
             f"{info['params']['n_boot']} draws"]
    if info["subset"]:
        lines.append(f"- SUBSET: at most {info['params']['max_per_class']} images per class and "
                     "split (quick profile); not the full split's result")
    for split, ev in results.items():
        lines += ["", f"## {split}: {ev.summary['n_segments']} images of "
                  f"{ev.summary['n_records']} records (of {info['available'][split]} images)"]
        lines += [f"- {note}" for note in ev.notes] or ["- no caveats"]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _example(spectrograms: Path, frame: pd.DataFrame,
             resolved: dict) -> tuple[np.ndarray, tuple[int, ...]]:
    """Two real rows packed as the logged model's input example (`PackedClassifier`), and the
    image shape."""
    rows = frame.head(2)
    images = np.stack([data.SpectrogramDataset(spectrograms, rows)[i][0].numpy()
                       for i in range(len(rows))])
    rr = rhythm_matrix(rows, rhythm_names(resolved), spectrograms / INDEX)
    packed = np.concatenate([images.reshape(len(rows), -1).astype(np.float32), rr], axis=1)
    return packed, images.shape[1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--model", type=Path, required=True, help="train run folder")
    parser.add_argument("--spectrograms", type=Path, help="images (data/spectrograms/<db>)")
    parser.add_argument("--splits", type=Path, help="assignment (data/splits/<db>)")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/<db>/<run>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params = load_section("evaluate", EvaluateParams, args.params)
    tracking_params = run_tracking.load_tracking(args.params)
    run(params, args.model, per_database(args.spectrograms, args.params, "data/spectrograms"),
        per_database(args.splits, args.params, "data/splits"),
        per_database(args.out, args.params, "reports", args.model.name), tracking_params)


if __name__ == "__main__":
    run_main(main)
