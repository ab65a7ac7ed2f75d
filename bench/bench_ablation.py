"""What each input adds: image, RR features, beat shape and their fusions on one split, head
and seed.

Trains and evaluates one frozen-backbone model per input choice with the repository's params
(only `train.inputs`, `train.morphology` and, in the last rows, one regulariser differ),
reusing the shared feature store (the CNN runs once per image, for all of them), and prints one
table of test (unseen patients) N/S/V/F Se, +P and F1 with record-bootstrap 95 % intervals next
to the published de Chazal et al. 2004 row. Two last rows, the default model without the rhythm
discriminant (`train.rr_lda_weight: 0`) and without modality dropout (`train.image_dropout: 0`),
show what each adds. Each run is an MLflow run tagged with its `inputs` and `morphology`, so the
compare view shows them side by side.

Run after the data stages (`dvc repro spectrogram`, or `make cpu-full`):
    python -m bench.bench_ablation --backbone tf_mobilenetv3_small_100
Writes <out>/<row>/{model,report}/ and <out>/ablation.md (the table).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

from data_prep.params import DEFAULT_PARAMS, load_section
from pipeline import evaluate, train

# row name -> train overrides; the rows that see rhythm keep the default discriminant weight.
from pipeline.tracking import run_tracking

# "rr" is the RR features alone; "+shape" adds each beat's shape against its record's median
# beat (segment.morphology, train.morphology), which needs no CNN either.
ROWS: dict[str, dict[str, Any]] = {
    "image": {"inputs": "image"},
    "rr": {"inputs": "rr", "morphology": False},
    "rr+shape": {"inputs": "rr"},
    "image+rr": {"inputs": "image+rr", "morphology": False},
    "image+rr+shape": {"inputs": "image+rr"},
    "image+rr+shape, no discriminant": {"inputs": "image+rr", "rr_lda_weight": 0.0},
    "image+rr+shape, no image dropout": {"inputs": "image+rr", "image_dropout": 0.0}}
CLASSES = ("N", "S", "V", "F")
# de Chazal, O'Dwyer, Reilly, IEEE TBME 51(7) 2004, DS1 -> DS2 (../shared/ANCHORS.md); F1 from
# the published Se/+P; N and F not reported as Se/+P pairs there.
DE_CHAZAL_ACCURACY = 0.862
DE_CHAZAL = {"S": (0.759, 0.385), "V": (0.777, 0.819)}


def _cell(tree: dict, cls: str, stat: str) -> str:
    value = tree[cls].get(stat)
    low, high = tree[cls].get(f"{stat}_ci_low"), tree[cls].get(f"{stat}_ci_high")
    if value is None:
        return "n/a"
    ci = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{value:.3f}{ci}"


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per input choice, then the published baseline."""
    head = ["inputs", "accuracy", "macro-F1 N/S/V/F"] + [f"{c} {s}" for c in CLASSES
                                                         for s in ("Se", "+P", "F1")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, tree in results.items():
        macro = tree.get("macro_f1_nsvf")
        ci = (f" [{tree['macro_f1_nsvf_ci_low']:.2f}, {tree['macro_f1_nsvf_ci_high']:.2f}]"
              if tree.get("macro_f1_nsvf_ci_low") is not None else "")
        cells = [name, f"{tree['accuracy']:.3f}", f"{macro:.3f}{ci}" if macro is not None else
                 "n/a"]
        cells += [_cell(tree, c, s) for c in CLASSES for s in ("se", "ppv", "f1")]
        lines.append("| " + " | ".join(cells) + " |")
    base = ["de Chazal 2004 (LDA, RR + morphology)", f"{DE_CHAZAL_ACCURACY:.3f}", ""]
    for cls in CLASSES:
        if cls in ("S", "V"):
            se, ppv = DE_CHAZAL[cls]
            base += [f"{se:.3f}", f"{ppv:.3f}", f"{2 * se * ppv / (se + ppv):.3f}"]
        else:
            base += ["", "", ""]
    lines.append("| " + " | ".join(base) + " |")
    return "\n".join(lines)


def run_one(name: str, args: argparse.Namespace) -> dict:
    params = load_section("train", train.TrainParams, args.params)
    update = {**ROWS[name], "device": args.device}
    if args.batch_size:
        update["batch_size"] = args.batch_size
    params = params.model_copy(update=update)
    tracking = run_tracking.load_tracking(args.params) if args.mlflow else None
    folder = args.out / re.sub(r"\W+", "_", name)  # image_rr_no_discriminant
    train.run(params, args.backbone, "frozen", args.spectrograms, args.splits, folder / "model",
              tracking)
    eval_params = load_section("evaluate", evaluate.EvaluateParams, args.params)
    evaluate.run(eval_params.model_copy(update={"splits": ["test"]}), folder / "model",
                 args.spectrograms, args.splits, folder / "report", tracking)
    return json.loads((folder / "report" / "metrics.json").read_text())["test"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--backbone", default="tf_mobilenetv3_small_100")
    parser.add_argument("--spectrograms", type=Path, default=Path("data/spectrograms/mitdb"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits/mitdb"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/ablation"))
    parser.add_argument("--batch-size", type=int, help="train.batch_size (make cpu-full: 256)")
    parser.add_argument("--device", default="auto", help="train.device")
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false",
                        help="do not log the runs to MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = {name: run_one(name, args) for name in ROWS}
    text = table(results)
    (args.out / "ablation.md").write_text(text + "\n")
    print(text)
    for full, base in (("image+rr", "rr"), ("image+rr+shape", "rr+shape"),
                       ("image+rr+shape", "image+rr")):
        print(f"{full} - {base}: " + _gain(results[full], results[base]))
    for what in ("discriminant", "image dropout"):
        print(f"{what}: " + _gain(results["image+rr+shape"], results[f"image+rr+shape, no {what}"]))


def _gain(a: dict, b: dict) -> str:
    return (", ".join(f"{c} F1 {a[c]['f1'] - b[c]['f1']:+.3f}" for c in ("S", "V"))
            + f", macro-F1 N/S/V/F {a['macro_f1_nsvf'] - b['macro_f1_nsvf']:+.3f}")

if __name__ == "__main__":
    main()
