"""A tiny pipeline on synthetic WFDB records: the real segment, spectrogram, train (test_resnet,
random weights, one epoch), evaluate and export stages; the `built` fixture (conftest) runs it
once per test session for the export and predict tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from data_prep import segment, spectrogram
from pipeline import evaluate, export, train
from tests.helpers import REPO, committed_params
from tests.synthetic import write_record, write_records_file

DB, RUN = "synth", "test_resnet-frozen"
SPLITS = {"r1": "train", "r2": "val", "r3": "test"}


def stage_params(image: str = "grey") -> dict:
    """The repository's params with small, fast overrides for the synthetic records, making
    images of kind `image` (`data_prep.images.channels`; two_lead keeps the records' second
    lead)."""
    data = committed_params()
    data["segment"] |= {"label_map": str(REPO / "configs/labels/aami.yaml"),
                        "max_skip_fraction": 0.5}
    if image == "two_lead":
        data["segment"]["second_leads"] = ["V1"]
    data["spectrogram"] |= {"image_size": 32, "workers": 1, "preview_per_class": 2,
                            "image": image}
    if image != "grey":
        data["train"]["channels"] = "image3"
    data["export"] |= {"register_model": False}
    return data


def _beats(fs: float, seconds: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """Irregular beats with N, V and A symbols (so every split holds two classes or more)."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.uniform(0.6, 1.0, int(seconds)))
    beats = np.round(times[times < seconds - 0.2] * fs).astype(np.int64)
    symbols = rng.choice(["N", "N", "N", "V", "A"], beats.size).tolist()
    return beats, symbols


def build_pipeline(root: Path, image: str = "grey") -> dict[str, Path]:
    """segment -> spectrogram -> (assignment) -> train -> evaluate -> export, in `root`."""
    raw = root / "raw" / DB
    for i, record in enumerate(SPLITS):
        beats, symbols = _beats(360, 40.0, i)
        write_record(raw, record, fs=360, seconds=40.0, beats=beats, symbols=symbols)
    write_records_file(raw, list(SPLITS))
    data = stage_params(image)
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    paths = {name: root / name for name in ("segments", "spectrograms", "splits", "reports")}
    paths |= {"raw": raw, "params": root / "params.yaml", "model": root / "models" / RUN,
              "bundle": root / "models" / "export" / RUN}
    seg = segment.SegmentParams.model_validate(data["segment"])
    segment.run(seg, DB, root / "raw", paths["segments"], databases_dir=root, workers=1)
    spec = spectrogram.SpectrogramParams.model_validate(data["spectrogram"])
    spectrogram.run(spec, paths["segments"], paths["spectrograms"])
    paths["splits"].mkdir()
    pd.DataFrame({"record": list(SPLITS), "subject": list(SPLITS), "split": list(SPLITS.values())}
                 ).to_csv(paths["splits"] / "assignment.csv", index=False)
    params = train.TrainParams.model_validate(
        {**data["train"], "weights": "random", "epochs": 1, "batch_size": 16, "device": "cpu",
         "warmup_epochs": 0})
    train.run(params, "test_resnet", "frozen", paths["spectrograms"], paths["splits"],
              paths["model"])
    evaluate.run(evaluate.EvaluateParams.model_validate(
        {**data["evaluate"], "n_boot": 20, "device": "cpu"}), paths["model"],
        paths["spectrograms"], paths["splits"], paths["reports"])
    export.run(export.ExportParams.model_validate(data["export"]), paths["model"],
               paths["reports"], paths["segments"], paths["spectrograms"], paths["bundle"],
               paths["splits"])
    return paths
