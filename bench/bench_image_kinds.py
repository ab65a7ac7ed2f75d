"""Which image kind to use: grey, multires and two_lead compared on out-of-fold validation.

For each kind, makes the images with the spectrogram stage (the repository's `spectrogram:`
params, only `image` differs), then trains one frozen-backbone model with the repository's
`train:` params (only `channels` differs: grey keeps train.channels, the three-channel kinds take
image3) and reads its out-of-fold validation over the training patients (DS1 folds for mitdb):
macro-F1 over train.select_classes and each class's F1. The test split (DS2) is never read: the
default is chosen here, on validation, and the chosen kind is then evaluated once by evaluate.

two_lead needs segments holding a second lead: pass --segments-two-lead, or the bench runs the
segment stage with segment.second_leads = --second-leads into <out>/segments_two_lead (from
--raw). A few windows whose second lead is NaN or flat are then left out, so its validation rows
differ slightly from the one-lead kinds (the table gives each kind's row count).

Run after the data stages (`dvc repro split spectrogram`, or `make cpu-full`):
    python -m bench.bench_image_kinds --backbone tf_mobilenetv3_small_100
Writes <out>/<kind>/{spectrograms,model}/ and <out>/image_kinds.md (the table).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from data_prep import segment, spectrogram
from data_prep.params import DEFAULT_PARAMS, DatasetParams, load_section
from pipeline import train
from pipeline.training.run_folder import METRICS, RESOLVED

KINDS = ("grey", "multires", "two_lead")
SECOND_LEADS = ["V1", "V2", "V5", "V4"]  # mitdb's second leads (V1 in most records)


def make_images(kind: str, segments: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """The kind's spectrogram folder (made unless --reuse finds one) and the seconds it took."""
    out = args.out / kind / "spectrograms"
    if args.reuse and (out / "meta.json").is_file():
        return out, 0.0
    params = load_section("spectrogram", spectrogram.SpectrogramParams, args.params)
    started = time.monotonic()
    spectrogram.run(params.model_copy(update={"image": kind}), segments, out, args.splits)
    return out, time.monotonic() - started


def two_lead_segments(args: argparse.Namespace) -> Path:
    """Segments with a second lead: given, reused, or made by the segment stage."""
    if args.segments_two_lead:
        return args.segments_two_lead
    out = args.out / "segments_two_lead"
    if not (args.reuse and (out / "meta.json").is_file()):
        params = load_section("segment", segment.SegmentParams, args.params)
        dataset = load_section("dataset", DatasetParams, args.params)
        segment.run(params.model_copy(update={"second_leads": args.second_leads}), dataset.name,
                    args.raw, out)
    return out


def run_one(kind: str, args: argparse.Namespace) -> dict:
    segments = two_lead_segments(args) if kind == "two_lead" else args.segments
    images, seconds = make_images(kind, segments, args)
    params = load_section("train", train.TrainParams, args.params)
    update = {"device": args.device, "channels": "image3" if kind != "grey" else params.channels}
    if args.batch_size:
        update["batch_size"] = args.batch_size
    model = args.out / kind / "model"
    train.run(params.model_copy(update=update), args.backbone, "frozen", images, args.splits,
              model)
    metrics = json.loads((model / METRICS).read_text())
    validation = json.loads((model / RESOLVED).read_text())["validation"]
    classes = json.loads((model / RESOLVED).read_text())["select_classes"]
    return {"macro_f1": metrics["best_val_macro_f1"], "rows": validation["rows"],
            "f1": dict(zip(classes, validation.get("f1", []), strict=False)),
            "image_seconds": seconds}


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per image kind, out-of-fold validation only."""
    classes = list(next(iter(results.values()))["f1"])
    head = ["image", "val rows", "macro-F1"] + [f"{c} F1" for c in classes] + ["images s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, res in results.items():
        cells = [kind, str(res["rows"]), f"{res['macro_f1']:.3f}"]
        cells += [f"{res['f1'].get(c, float('nan')):.3f}" for c in classes]
        lines.append("| " + " | ".join([*cells, f"{res['image_seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--backbone", default="tf_mobilenetv3_small_100")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--segments", type=Path, default=Path("data/segments/mitdb"))
    parser.add_argument("--segments-two-lead", type=Path, help="segments with a second lead")
    parser.add_argument("--second-leads", nargs="+", default=SECOND_LEADS)
    parser.add_argument("--splits", type=Path, default=Path("data/splits/mitdb"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/image_kinds"))
    parser.add_argument("--reuse", action="store_true", help="keep images made by a former run")
    parser.add_argument("--batch-size", type=int, help="train.batch_size (make cpu-full: 256)")
    parser.add_argument("--device", default="auto", help="train.device")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = {kind: run_one(kind, args) for kind in args.kinds}
    text = table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "image_kinds.md").write_text(text + "\n")
    print(text)
    best = max(results, key=lambda k: results[k]["macro_f1"])
    print(f"\nbest on out-of-fold validation: {best} (choose spectrogram.image on this, "
          "never on test)")


if __name__ == "__main__":
    main()
