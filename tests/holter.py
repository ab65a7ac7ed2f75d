"""A small two-lead 128 Hz record-mode database (REFERENCE.csv labels), segmented as the
stage does, and predict's images of it beside the stage's: shared by the tests that check
that predict makes exactly the images the spectrogram stage makes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep import layout, segment
from data_prep.records.configs import load_label_map
from pipeline.export import recorded_preprocessing
from pipeline.runtime.predict import Bundle
from tests.helpers import REPO, committed_params
from tests.synthetic import ecg_like, regular_beats, write_record, write_records_file


def segmented_holter(tmp_path: Path, reference: dict[str, str], **segment_overrides) -> Path:
    """Writes <tmp>/raw/holter (leads ECG1/ECG2, 35 s each, labels in REFERENCE.csv) and runs
    the segment stage in record mode into <tmp>/segments (lead ECG2); returns the raw folder."""
    raw = tmp_path / "raw" / "holter"
    for i, name in enumerate(reference):
        beats = regular_beats(128 * 35, 128, rr_s=0.7 + 0.1 * i)
        lead = ecg_like(128 * 35, 128, beats)
        # ECG1 differs in shape, not only in scale: per-image dB scaling makes a scaled copy's
        # spectrogram the same image, and two-lead tests must tell the leads apart
        write_record(raw, name, fs=128, seconds=35.0, sig_names=("ECG1", "ECG2"), beats=beats,
                     signal=np.column_stack([np.gradient(lead) * 5.0, 0.7 * lead]),
                     annotate=False)
    write_records_file(raw, list(reference))
    (raw / "REFERENCE.csv").write_text("".join(f"{r},{lab}\n" for r, lab in reference.items()))
    params = committed_params()["segment"] | {
        "label_mode": "record", "reference_csv": "REFERENCE.csv",
        "label_map": str(REPO / "configs/labels/challenge2017.yaml"), "leads": ["ECG2"],
        "max_skip_fraction": 0.5, **segment_overrides}
    segment.run(segment.SegmentParams.model_validate(params), "holter", tmp_path / "raw",
                tmp_path / "segments", databases_dir=tmp_path, workers=1)
    return raw


def predicted_and_stage_images(bundle_dir: Path, segments: Path, spectrograms: Path, raw: Path,
                               monkeypatch) -> Iterator[tuple[pd.DataFrame, np.ndarray,
                                                              np.ndarray, pd.DataFrame]]:
    """Per record: predict's table, the images predict fed the network (captured before ONNX),
    the stage's images of the same windows and their index rows. The bundle is built from
    what the stages recorded, as export builds it."""
    seg, image, _, _ = recorded_preprocessing(segments, spectrograms)
    labels = load_label_map(Path(seg.label_map))
    meta = {"classes": labels.classes, "model": {"rr_input": {"features": []}}}
    bundle = Bundle(bundle_dir, meta, seg, image, labels, session=None)
    seen: list[np.ndarray] = []

    def capture(images: np.ndarray, rr: np.ndarray | None = None) -> np.ndarray:
        seen.append(images)
        return np.full((len(images), len(labels.classes)), 1 / len(labels.classes), np.float32)

    monkeypatch.setattr(bundle, "predict_images", capture)
    index = layout.read_index(spectrograms / layout.INDEX)
    for name in layout.list_records(raw):
        seen.clear()
        table = bundle.predict_record(raw / name, annotator=None)
        rows = index[index["record"] == name].sort_values("sample")
        stage = layout.load_shard(spectrograms, name, mmap=False)[rows["row"].to_numpy()]
        yield table, np.concatenate(seen), stage, rows
