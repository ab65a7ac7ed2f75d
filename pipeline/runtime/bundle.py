"""The export bundle's on-disk format: bundle.json read/write, version check, model card text.

A bundle folder (`models/export/<db>/<run>/`, written by `pipeline.export`) holds:

- `model.onnx`: uint8-valued spectrograms (batch, S, S), or (batch, 3, S, S) for the
  multi-channel image kinds, -> `probs` (softmax) and `logits`, with the model-input
  preprocessing (/255, grey -> channels, mean/std) inside the graph;
- `bundle.json`: `bundle_format`, classes, label map, the whole preprocessing (the segment and
  image params as the data stages recorded them in their meta.json, model input), metrics with
  confidence intervals, data, versions;
- `model_card.md`: intended use, data, protocol, per-class results, limits, how to load it.

Nothing in a bundle is unpickled: JSON, Markdown and an ONNX protobuf. This module needs
neither torch nor onnxruntime, so both the export stage and `pipeline.predict` use it.
"""

from __future__ import annotations

import json
import math
from importlib import metadata
from pathlib import Path
from typing import Any

from data_prep.layout import sha256_file

BUNDLE_FORMAT = 3  # bump on any change an older reader would misread (2: image params only)
# 3: multi-channel images (spectrogram.image multires / two_lead). Grey bundles are still written
# as format 2 with the same bundle.json keys, so readers of format 2 keep reading them.
READABLE = (2, 3)


def format_for(image: str) -> int:
    """The format a bundle of this image kind is written in (the oldest that describes it)."""
    return 2 if image == "grey" else BUNDLE_FORMAT
BUNDLE_JSON, MODEL_ONNX, MODEL_CARD = "bundle.json", "model.onnx", "model_card.md"
PACKAGE = "ecg-spectro-tl"
INPUT_NAME, OUTPUT_NAMES = "images", ("probs", "logits")
RR_NAME = "rr"  # float32 (batch, F) raw rhythm features, F = len(preprocessing.rhythm.features)


class BundleFormatError(ValueError):
    """A bundle this version of the package cannot read (or not a bundle at all)."""


def package_version() -> str:
    """Installed version of this package ("unknown" when run from a source tree only)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def read_bundle_json(folder: Path) -> dict[str, Any]:
    """Reads and checks `<folder>/bundle.json`.

    Raises:
        FileNotFoundError: no bundle.json (or no model file) in `folder`.
        BundleFormatError: a format this package does not read, naming the version and the fix.
    """
    folder = Path(folder)
    path = folder / BUNDLE_JSON
    if not path.is_file():
        raise FileNotFoundError(_not_a_bundle(folder))
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleFormatError(f"{path}: not valid JSON ({err}); the file is damaged or cut "
                                f"short: copy the bundle folder again or re-export it "
                                f"(python -m pipeline.export)") from None
    found = meta.get("bundle_format") if isinstance(meta, dict) else None
    if not isinstance(found, int) or isinstance(found, bool):
        raise BundleFormatError(f"{path}: no integer 'bundle_format'; not an export bundle, or "
                                "a damaged one: re-export it with python -m pipeline.export")
    if found not in READABLE:
        newer = found > BUNDLE_FORMAT
        fix = (f"upgrade {PACKAGE} (pip install -U {PACKAGE}) to a version that reads it"
               if newer else "re-export the model with this version (python -m pipeline.export)")
        raise BundleFormatError(
            f"{path}: bundle_format {found} is {'newer' if newer else 'older'} than the format "
            f"{BUNDLE_FORMAT} that {PACKAGE} {package_version()} reads; {fix}")
    model = folder / meta.get("model", {}).get("file", MODEL_ONNX)
    if not model.is_file():
        raise FileNotFoundError(f"{model}: the bundle's network is missing; copy the whole "
                                "bundle folder or re-export it")
    _check_digest(model, meta.get("model", {}).get("sha256"), path)
    return meta


def _not_a_bundle(folder: Path) -> str:
    """Why `folder` is no bundle, and which folders to pass instead."""
    if not folder.is_dir():
        return f"{folder}: no such bundle folder"
    inner = sorted(str(p.parent) for pattern in (f"*/{BUNDLE_JSON}", f"*/*/{BUNDLE_JSON}")
                   for p in folder.glob(pattern))
    if inner:
        shown = ", ".join(inner[:5]) + (f" and {len(inner) - 5} more" if len(inner) > 5 else "")
        return f"{folder} holds bundles rather than being one; pass one of: {shown}"
    return (f"{folder}: no {BUNDLE_JSON}; pass a bundle folder as the export stage writes it "
            "(models/export/<db>/<run>)")


def _check_digest(model: Path, recorded: str | None, source: Path) -> None:
    """The network must be the one export wrote: an altered file may load and predict nonsense."""
    if not recorded:
        raise BundleFormatError(f"{source}: records no sha256 for {model.name}; re-export the "
                                "bundle (python -m pipeline.export)")
    found = sha256_file(model)
    if found != recorded:
        raise BundleFormatError(
            f"{model}: sha256 {found[:12]}... differs from the {recorded[:12]}... that {source} "
            "records: the file was altered or damaged; copy the bundle folder again or "
            "re-export it (python -m pipeline.export)")


def write_bundle_json(folder: Path, meta: dict[str, Any]) -> Path:
    """Writes bundle.json (NaN as null, so any JSON reader takes it)."""
    path = Path(folder) / BUNDLE_JSON
    path.write_text(json.dumps(_clean(meta), indent=2, allow_nan=False) + "\n")
    return path


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------- model card


def _fmt(value: Any, pct: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * value:.1f} %" if pct else f"{value:.3f}"


def _with_ci(tree: dict, key: str) -> str:
    low, high = tree.get(f"{key}_ci_low"), tree.get(f"{key}_ci_high")
    text = _fmt(tree.get(key))
    return text if low is None or high is None else f"{text} [{_fmt(low)}, {_fmt(high)}]"


def _results(meta: dict) -> list[str]:
    test = (meta.get("metrics") or {}).get("test")
    if not test:
        return ["No test metrics were found (reports/<run>/metrics.json has no 'test' split)."]
    lines = [f"Test split (unseen patients): {test.get('n_segments', '?')} beats/windows of "
             f"{test.get('n_records', '?')} records. 95 % intervals: percentile bootstrap over "
             "records (patients).", "",
             f"- accuracy {_with_ci(test, 'accuracy')}, macro-F1 {_with_ci(test, 'macro_f1')}, "
             f"balanced accuracy {_with_ci(test, 'balanced_accuracy')}"]
    if test.get("subset"):
        lines.append(f"- SUBSET: evaluated on a capped subset of {test.get('n_available')} "
                     "images (quick profile), not the full test split")
    lines += ["", "| class | support | Se (sensitivity) [95 % CI] | +P (PPV) [95 % CI] | F1 |",
              "| --- | --- | --- | --- | --- |"]
    for name in meta["classes"]:
        row = test.get(name) or {}
        lines.append(f"| {name} | {row.get('support', 'n/a')} | {_with_ci(row, 'se')} | "
                     f"{_with_ci(row, 'ppv')} | {_fmt(row.get('f1'), pct=False)} |")
    caveats = test.get("caveats")
    if caveats is None:  # a report from before caveats were recorded: say so, claim nothing
        return [*lines, "", "Caveats: not recorded by this evaluation; check class supports."]
    return [*lines, "", "Caveats:", *(f"- {c}" for c in caveats)] if caveats else [
        *lines, "", "Caveats: none (every class has at least 30 test examples)."]


def _data(meta: dict) -> list[str]:
    data = meta.get("data") or {}
    lines = [f"Database: {data.get('database', '?')}; split definition: "
             f"{data.get('split_definition', '?')}.", "",
             "| split | records | " + " | ".join(meta["classes"]) + " |",
             "| --- | --- | " + " | ".join("---" for _ in meta["classes"]) + " |"]
    for split, part in (data.get("splits") or {}).items():
        counts = part.get("counts", {})
        lines.append(f"| {split} | {len(part.get('records', []))} | "
                     + " | ".join(str(counts.get(c, 0)) for c in meta["classes"]) + " |")
    for split, part in (data.get("splits") or {}).items():
        lines.append(f"\n{split} records: {', '.join(map(str, part.get('records', [])))}")
    used = data.get("used_in_training") or {}
    if used:
        lines += ["", "Images used by train (after train.max_per_class caps):", "",
                  "| split | " + " | ".join(meta["classes"]) + " |",
                  "| --- | " + " | ".join("---" for _ in meta["classes"]) + " |"]
        lines += [f"| {split} | " + " | ".join(str(counts.get(c, 0)) for c in meta["classes"])
                  + " |" for split, counts in used.items()]
    return lines


def _protocol(meta: dict) -> list[str]:
    definition = str((meta.get("data") or {}).get("split_definition"))
    if definition.startswith("de_chazal"):
        return ["Inter-patient (de Chazal et al. 2004): trained on DS1 patients, validation from "
                "DS1 patients held out from training, tested on DS2 patients never seen in "
                "training. Model selection on validation macro-F1."]
    return [f"Split definition '{definition}' (see data/splits/summary.json): patient-grouped "
            "train/val/test; model selection on validation macro-F1. Not the de Chazal "
            "inter-patient protocol: compare with published DS1/DS2 results with care."]


def _channels(meta: dict) -> str:
    image = meta["preprocessing"].get("image", {})
    listed = image.get("channel_list")
    if not listed:
        return "one grey channel"
    return f"{image.get('image')}: " + "; ".join(
        f"{c['lead']}, {c['nperseg']}-sample window ({c['window_ms']:.0f} ms)" for c in listed)


def _head(arch: dict[str, Any]) -> str:
    if not arch:
        return "n/a"
    text = f"{arch['head']} over {arch['inputs']}, {arch['heads']} fold head(s) averaged"
    if arch.get("rr_lda_weight"):
        text += (f"; each mixed with a linear discriminant on log RR features "
                 f"(weight {arch['rr_lda_weight']})")
    if arch.get("image_dropout"):
        text += f"; trained with the image hidden from {arch['image_dropout']:.0%} of beats"
    return text


def _context(meta: dict[str, Any]) -> str:
    features = meta["model"].get("rr_input", {}).get("features", [])
    if not features:
        return "none (image only)"
    rhythm = meta["preprocessing"].get("rhythm") or {}
    shape = [f for f in rhythm.get("morphology", {}).get("features", []) if f in features]
    text = (f"{len(features) - len(shape)} RR features from the beat times "
            "(data_prep/beats/rhythm.py)")
    if shape:
        text += (f", {len(shape)} of each beat's shape against its record's median beat "
                 "(data_prep/beats/morphology.py)")
    return text + ": " + ", ".join(features)


def render_model_card(meta: dict[str, Any]) -> str:
    """model_card.md from a bundle's metadata (see `pipeline.export` for the keys)."""
    seg = meta["preprocessing"]["segment"]
    spec = meta["preprocessing"]["spectrogram"]
    model_input = meta["preprocessing"]["model_input"]
    model = meta["model"]
    leakage = (meta.get("data") or {}).get("leakage") or {}
    classes = ", ".join(meta["classes"])
    two = spec.get("image") == "two_lead"
    leads = "two-lead" if two else "single-lead"
    lines = [
        f"# Model card: {meta['name']}", "",
        "## Intended use", "",
        f"Research only. Classifies ECG beats (or windows) into {classes} from {leads} "
        "spectrograms, to study transfer learning on PhysioNet data. It is NOT a medical "
        "device, has no regulatory clearance and must not be used for diagnosis, triage or any "
        "decision about a patient.", "",
        "## Model", "",
        f"- {model['backbone']} ({model['freeze']} backbone), ImageNet weights: "
        f"{model.get('weights', {}).get('describe', 'n/a')}",
        f"- head: {_head(model.get('architecture') or {})}",
        f"- ONNX opset {model['opset']}, input `{INPUT_NAME}` uint8-valued "
        f"({', '.join(map(str, model['input']['shape']))}), outputs `probs` (softmax) and "
        "`logits`; "
        f"preprocessing inside the graph: /255, {model_input['channels']}, mean "
        f"{model_input['mean']}, std {model_input['std']}",
        "", "## Preprocessing (applied by pipeline.predict)", "",
        f"- lead: first of {seg['leads']} present (fallback: {seg['lead_fallback']}); "
        f"resampled to {seg['target_fs']} Hz; zero-phase Butterworth band-pass "
        f"{seg['bandpass_hz'][0]}-{seg['bandpass_hz'][1]} Hz, order {seg['filter_order']}",
        f"- label mode {seg['label_mode']}: " + (
            f"{seg['beat_window_s'][0]} s before and {seg['beat_window_s'][1]} s after each beat"
            if seg["label_mode"] == "beat" else
            f"{seg['window_s']} s windows every {seg['window_stride_s']} s"),
        f"- STFT {spec['window']} window, nperseg {spec['nperseg']}, noverlap "
        f"{spec['noverlap']}, nfft {spec['nfft']}, {spec['fmin_hz']}-{spec['fmax_hz']} Hz, "
        f"{spec['dynamic_range_db']} dB range per image, {spec['image_size']} px square, "
        "low frequencies at the bottom row", f"- image channels: {_channels(meta)}",
        f"- `rr` input: {_context(meta)}",
        "", "## Training data", "", *_data(meta),
        "", "## Protocol", "", *_protocol(meta),
    ]
    if leakage.get("warning"):
        lines += ["", f"Note: {leakage['warning']}. Records 201 and 202 come from the same "
                  "patient; the published lists keep them on both sides, which slightly "
                  "favours the test result for that patient."]
    lines += ["", "## Results", "", *_results(meta), "",
              "## Known limits", "",
              "- Classes with few test examples (see Caveats under Results) have wide Se/+P "
              "intervals and unreliable point estimates.",
              f"- {'Two leads' if two else 'One lead only'} (MLII in most training records"
              f"{'; the second: first of ' + str(seg.get('second_leads')) if two else ''}); "
              "other leads or placements are a distribution shift the model never saw.",
              "- Trained on one database (MIT-BIH, 1970s ambulatory recordings, 47 subjects): "
              "other devices, populations and sampling rates are a database shift; validate "
              "on your own data before drawing conclusions.",
              "- Beats come from the record's annotations; without them, from the XQRS "
              "detector, whose misses and false detections the model cannot see.",
              "", "## How to load it", "",
              "```python", "from pipeline.runtime import load_bundle",
              "bundle = load_bundle('models/export/<db>/<run>')",
              "table = bundle.predict_record('path/to/record')   # record name without extension",
              "```", "",
              "Only numpy, scipy, pandas, wfdb and onnxruntime are needed "
              "(pip install 'ecg-spectro-tl[runtime]'); no torch. Rows whose status is not "
              "\"ok\" (record edge, NaN or flat signal) carry no prediction.", ""]
    return "\n".join(lines)
