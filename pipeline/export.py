"""Export stage: one trained model -> a self-contained bundle for research scripts.

Reads `models/<run>/` (model.safetensors, resolved_config.json, mlflow_run.json when
registering), `reports/<run>/` (metrics.json, predictions.csv, details/evaluation_config.json),
`data/segments/meta.json` and `summary.json`, `data/spectrograms/` (meta.json, shards of the
test images), `data/splits/summary.json` (optional), the label map YAML and the `export:`
section of params.yaml. The preprocessing comes from what the data stages recorded (segment and
spectrogram meta.json), never from params.yaml. Writes `models/export/<db>/<run>/` (see
`pipeline.runtime.bundle`): model.onnx, bundle.json, model_card.md. The folder appears only when
everything passed.

Parity check: the ONNX graph is run on the test images of predictions.csv (all of them, or
`export.parity_max_images` spread evenly) and must reproduce the evaluate stage's probabilities
to `export.parity_atol`; otherwise the stage fails and writes no bundle. Then, if
`export.register_model`, the model evaluate logged to the run's MLflow run is registered as a new
version of `export.registered_name` with `export.alias`, and the bundle is attached to the run.

Run: python -m pipeline.export --params params.yaml --model models/<run> --reports reports/<run>
--segments data/segments --spectrograms data/spectrograms --out models/export/<db>/<run>
(dvc.yaml runs it for every backbone x freeze mode of the train matrix).
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import timm
import torch
from pydantic import Field

from data_prep.beats.windows import SegmentParams
from data_prep.cli import run_main
from data_prep.images.channels import describe, image_shape
from data_prep.images.stft import ImageParams
from data_prep.layout import META, SEGMENTS_META, read_json, sha256_file
from data_prep.params import DEFAULT_PARAMS, StrictModel, load_section, per_database
from data_prep.records.configs import load_label_map
from pipeline.evaluation.parity import check_parity, load_images, load_rhythm, parity_rows
from pipeline.evaluation.report_folder import (
    CONFIG,
    DETAILS,
    METRICS,
    PREDICTIONS,
    read_predictions,
)
from pipeline.runtime import bundle
from pipeline.runtime.onnx_runner import BATCH_SIZE, onnx_session, run_probs
from pipeline.tracking import provenance, run_tracking
from pipeline.training.run_folder import ImageClassifier, load_model, rhythm_names

log = logging.getLogger(__name__)


class ExportParams(StrictModel):
    """The `export:` section of params.yaml (the comments there say why each value)."""

    opset: int = Field(ge=17)
    parity_atol: float = Field(gt=0)
    parity_atol_amp: float = Field(gt=0)
    parity_max_images: int | None = Field(default=None, ge=1)
    register_model: bool
    registered_name: str = Field(min_length=1)
    alias: str | None = None


# ----------------------------------------------------------------------------- pure core


def export_onnx(net: ImageClassifier, image_shape: tuple[int, ...], n_rr: int, path: Path,
                opset: int) -> None:
    """Writes `net` as ONNX with inputs images (uint8) and rr (float32, n_rr wide) and a dynamic
    batch axis (torch.export-based exporter)."""
    images = torch.zeros(2, *image_shape, dtype=torch.uint8)
    rr = torch.zeros(2, n_rr, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(net.eval(), (images, rr), str(path), dynamo=True, opset_version=opset,
                      input_names=[bundle.INPUT_NAME, bundle.RR_NAME],
                      output_names=list(bundle.OUTPUT_NAMES),
                      dynamic_shapes={"images": {0: batch}, "rr": {0: batch}},
                      external_data=False)
    onnx.checker.check_model(str(path))


# ----------------------------------------------------------------------------- metadata


def recorded_preprocessing(segments: Path, spectrograms: Path
                           ) -> tuple[SegmentParams, ImageParams, dict, dict | None]:
    """The segment and image params the data stages recorded, the image description and the
    signal-quality rule the segment stage applied.

    Checks that the spectrograms were made from these segments and that their recorded image
    params (STFT, band, dynamic_range_db, image_size) reproduce the description in their
    meta.json, so a bundle never describes preprocessing its model did not see.

    Raises:
        ValueError: stale or foreign data folders, naming the file and the fix.
    """
    seg_meta, spec_meta = read_json(segments / META), read_json(spectrograms / META)
    fix = "re-run dvc repro (segment, spectrogram, train, evaluate) before exporting"
    if spec_meta.get(SEGMENTS_META) != seg_meta:
        raise ValueError(f"{spectrograms / META} was made from other segments than "
                         f"{segments / META}; {fix}")
    if "params" not in seg_meta or "params" not in spec_meta:
        raise ValueError(f"{segments / META} or {spectrograms / META} records no 'params' "
                         f"(written by an older version); {fix}")
    seg = SegmentParams.model_validate(seg_meta["params"])
    image = ImageParams.model_validate(spec_meta["params"])
    described = describe(image, float(spec_meta["fs"]), int(spec_meta["window_samples"]))
    if differ := sorted(k for k, v in described.items() if spec_meta.get(k) != v):
        raise ValueError(f"{spectrograms / META}: {differ} differ from what its recorded params "
                         f"give; the images come from other params; {fix}")
    return seg, image, described, seg_meta.get("signal_quality")


def _data_info(segments: Path, splits: Path, resolved: dict) -> dict:
    split_summary = splits / "summary.json"
    summary = read_json(split_summary) if split_summary.is_file() else {}
    seg_summary = read_json(segments / "summary.json") if (segments / "summary.json").is_file() \
        else {}
    return {"database": seg_summary.get("database") or read_json(segments / "meta.json").get(
                "database"),
            "segments_kept": seg_summary.get("segments_kept"),
            "split_definition": summary.get("definition"),
            "splits": {s: {"records": p.get("records", []), "counts": p.get("counts", {})}
                       for s, p in summary.get("splits", {}).items()},
            "leakage": summary.get("leakage"),
            "used_in_training": resolved.get("counts")}


def _versions(opset: int) -> dict:
    return {"package": bundle.package_version(), "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__, "opset": opset}


def _metadata(name: str, resolved: dict, seg: SegmentParams, image: ImageParams, described: dict,
              quality: dict | None, reports: Path, data_info: dict, model_file: Path,
              opset: int, rhythm: dict | None) -> dict:
    offset, length, _ = seg.geometry()
    labels = load_label_map(Path(seg.label_map))
    return {
        "bundle_format": bundle.format_for(image.image), "name": name,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "classes": list(resolved["classes"]),
        "label_map": {"source": seg.label_map, **labels.model_dump()},
        "model": {"file": bundle.MODEL_ONNX, "sha256": sha256_file(model_file), "format": "onnx",
                  "opset": opset, "backbone": resolved["backbone"], "freeze": resolved["freeze"],
                  "input": {"name": bundle.INPUT_NAME, "dtype": "uint8",
                            "shape": ["batch", *image_shape(image)]},
                  "rr_input": {"name": bundle.RR_NAME, "dtype": "float32",
                               "shape": ["batch", len(rhythm_names(resolved))],
                               "features": rhythm_names(resolved)},
                  "architecture": resolved.get("model"),
                  "outputs": {"probs": "softmax probabilities (batch, K), K in classes order",
                              "logits": "pre-softmax scores (batch, K)"},
                  "weights": resolved.get("weights"),
                  "train_params": resolved.get("params")},
        "preprocessing": {
            "segment": seg.model_dump(mode="json"),
            "signal_quality": quality,
            "window": {"fs": seg.target_fs, "offset_samples": offset, "window_samples": length},
            "rhythm": rhythm,
            "spectrogram": image.recorded(),
            "image": described,
            "model_input": resolved["preprocessing"]},
        "metrics": {"source": str(reports / METRICS),
                    **read_json(reports / METRICS)},
        "data": data_info,
        "versions": _versions(opset),
        "provenance": {"git_commit": provenance.git_commit(),
                       "dvc": provenance.dvc_data_version(),
                       "train_data_fingerprint": resolved.get("data_fingerprint"),
                       "train_fingerprint": resolved.get("fingerprint")},
    }


# ----------------------------------------------------------------------------- run + CLI


def _atol(params: ExportParams, reports: Path) -> float:
    """float32 evaluations must match to parity_atol; bf16-autocast ones only to the amp one."""
    config = reports / DETAILS / CONFIG
    precision = read_json(config).get("precision") if config.is_file() else "float32"
    if precision == "float32":
        return params.parity_atol
    log.warning("%s: evaluate ran with %s; the parity check uses export.parity_atol_amp=%g (set "
                "evaluate.amp: false for float32 reports that the bundle reproduces to %g)",
                config, precision, params.parity_atol_amp, params.parity_atol)
    return params.parity_atol_amp


def _remove_leftovers(out: Path) -> None:
    """Removes the hidden work folders an interrupted export of `out` left beside it."""
    for stale in out.parent.glob(f".{out.name}.*"):
        if stale.is_dir():
            log.info("removing %s, left by an interrupted export", stale)
            shutil.rmtree(stale, ignore_errors=True)


def run(params: ExportParams, model_dir: Path, reports: Path, segments: Path,
        spectrograms: Path, out: Path, splits: Path = Path("data/splits")) -> dict:
    """Writes the bundle of `model_dir` to `out` (module doc); returns its bundle.json content."""
    if params.register_model:  # a down server must fail now, not after building the bundle
        run_tracking.check_tracking_server()
    seg, image, described, quality = recorded_preprocessing(segments, spectrograms)
    model, preprocess, resolved = load_model(model_dir)
    classes = list(resolved["classes"])
    predictions = read_predictions(reports / PREDICTIONS)
    rows = parity_rows(predictions, params.parity_max_images)
    if rows.empty:
        raise ValueError(f"{reports / PREDICTIONS}: no test rows to check the bundle "
                         "against; add test to evaluate.splits and re-run evaluate")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the bundle is meant to be shared
    try:  # built beside `out` and moved there only once complete: a failure leaves no bundle
        images = load_images(spectrograms, rows)
        names = rhythm_names(resolved)
        export_onnx(ImageClassifier(preprocess, model, with_logits=True), images.shape[1:],
                    len(names), work / bundle.MODEL_ONNX, params.opset)
        session = onnx_session(work / bundle.MODEL_ONNX)
        log.info("parity check on %d of %d test images (export.parity_max_images=%s)",
                 len(rows), int((predictions["split"] == "test").sum()), params.parity_max_images)
        probs = run_probs(session, images, load_rhythm(spectrograms, rows, names), len(classes),
                          BATCH_SIZE)
        parity = check_parity(rows, probs, classes, _atol(params, reports),
                              reports / PREDICTIONS)
        meta = _metadata(out.name, resolved, seg, image, described, quality, reports,
                         _data_info(segments, splits, resolved), work / bundle.MODEL_ONNX,
                         params.opset, read_json(segments / META).get("rhythm"))
        meta["parity"] = {**parity, "reference": str(reports / PREDICTIONS)}
        bundle.write_bundle_json(work, meta)
        (work / bundle.MODEL_CARD).write_text(bundle.render_model_card(meta))
        shutil.rmtree(out, ignore_errors=True)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s (parity: max |diff| %.2e on %d images)", out, parity["max_abs_diff"],
             parity["images"])
    if params.register_model:
        run_tracking.register_bundle(model_dir, out, run_tracking.registered_name(
            params.registered_name, meta.get("data", {}).get("database")), params.alias)
    else:
        log.info("export.register_model is false: not registering %s in MLflow", out)
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--model", type=Path, required=True, help="train run folder")
    for flag, default in (("reports", "reports/<db>/<run>"), ("segments", "data/segments/<db>"),
                          ("spectrograms", "data/spectrograms/<db>"),
                          ("splits", "data/splits/<db>"), ("out", "models/export/<db>/<run>")):
        parser.add_argument(f"--{flag}", type=Path, help=f"default: {default}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params = load_section("export", ExportParams, args.params)
    name = args.model.name
    run(params, args.model, per_database(args.reports, args.params, "reports", name),
        per_database(args.segments, args.params, "data/segments"),
        per_database(args.spectrograms, args.params, "data/spectrograms"),
        per_database(args.out, args.params, "models/export", name),
        per_database(args.splits, args.params, "data/splits"))


if __name__ == "__main__":
    run_main(main)
