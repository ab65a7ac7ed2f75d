"""Does ImageNet pretraining help on ECG spectrograms? Same run twice: real weights vs random init.

Trains one small CNN with a frozen backbone (head on cached features) on the inter-patient
split twice, changing only `train.weights`, and prints both validation macro-F1 scores and their
difference. Needs the data stages' outputs (`dvc repro spectrogram`) and local weights
(`ECG_WEIGHTS_DIR`, e.g. ../shared/weights).

Run: ECG_WEIGHTS_DIR=../shared/weights python -m bench.bench_pretrained_vs_random \
        [--backbone tf_mobilenetv3_small_100] [--train-cap 1000] [--val-cap 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _params(base: Path, weights: str, args: argparse.Namespace) -> dict:
    params = yaml.safe_load(base.read_text())
    params["train"].update(
        weights=weights, epochs=args.epochs, device="cpu", patience=args.epochs,
        max_per_class={"train": args.train_cap, "val": args.val_cap},
    )
    return params


def _train(weights: str, args: argparse.Namespace, work: Path) -> tuple[float, float]:
    """Runs the train stage's CLI with one override; returns (best val macro-F1, seconds)."""
    params = work / f"params-{weights}.yaml"
    params.write_text(yaml.safe_dump(_params(args.params, weights, args), sort_keys=False))
    out = work / f"{args.backbone}-frozen-{weights}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline.train", "--params", str(params),
         "--backbone", args.backbone, "--freeze", "frozen",
         "--spectrograms", str(args.spectrograms), "--splits", str(args.splits),
         "--out", str(out)],
        check=True, env=env,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    return float(metrics["best_val_macro_f1"]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_mobilenetv3_small_100")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--spectrograms", type=Path, default=Path("data/spectrograms"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits"))
    parser.add_argument("--train-cap", type=int, default=1000, help="images per class (train)")
    parser.add_argument("--val-cap", type=int, default=500, help="images per class (val)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--keep", type=Path, help="keep both run folders here (default: temporary)")
    args = parser.parse_args()
    if not os.environ.get("ECG_WEIGHTS_DIR"):
        parser.error("set ECG_WEIGHTS_DIR to a folder of local ImageNet weights")
    with tempfile.TemporaryDirectory(prefix="pretrained-vs-random-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {w: _train(w, args, work) for w in ("imagenet", "random")}
    (f1_pre, s_pre), (f1_rand, s_rand) = results["imagenet"], results["random"]
    print(f"\n{args.backbone}, frozen backbone, inter-patient val (DS1 held-out patients), "
          f"caps train {args.train_cap} / val {args.val_cap} per class")
    print(f"{'weights':<10}{'val macro-F1':>14}{'seconds':>10}")
    print(f"{'imagenet':<10}{f1_pre:>14.4f}{s_pre:>10.0f}")
    print(f"{'random':<10}{f1_rand:>14.4f}{s_rand:>10.0f}")
    print(f"difference (imagenet - random): {f1_pre - f1_rand:+.4f}  (target >= +0.05)")


if __name__ == "__main__":
    main()
