"""Spectrogram settings by label mode: beat images unchanged, 10 s rhythm/record windows with
their own STFT (`spectrogram.windows`, about one frame per image column), recorded so that
predict makes the same images from the bundle's params."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import layout, spectrogram
from data_prep.images.stft import (
    ImageParams,
    SpectrogramParams,
    WindowSTFT,
    plan,
    spectrogram_images,
)
from pipeline.export import recorded_preprocessing
from tests.helpers import committed_params
from tests.holter import predicted_and_stage_images, segmented_holter
from tests.synthetic import ecg_like, regular_beats

FS = 250.0
BEAT = ImageParams(window="hann", nperseg=32, noverlap=29, nfft=256, fmin_hz=0.0, fmax_hz=40.0,
                   dynamic_range_db=60.0, image_size=224)
# sha256 of the beat images below, computed before rhythm/record windows got their own STFT:
# beat images must stay byte-identical (trained models and bundles depend on them)
BEAT_CORE_SHA = "6946bd92cf4557ef0f0ede114059ad8c8a176272015edae7a02a3633767c9ee9"


def committed() -> SpectrogramParams:
    return SpectrogramParams.model_validate(
        committed_params()["spectrogram"] | {"workers": 1, "preview_per_class": 1})


def window_image(params: SpectrogramParams) -> ImageParams:
    """The image params of 10 s rhythm/record windows."""
    return params.for_label_mode("record").image_params()


def beat_segments() -> np.ndarray:
    """Four 2.5 s windows (625 samples at 250 Hz) of the synthetic ECG."""
    x = ecg_like(2500, FS, regular_beats(2500, FS, rr_s=0.8, first_s=0.3)).astype(np.float32)
    return np.stack([x[i:i + 625] for i in (0, 400, 1000, 1875)])


def write_segments(folder: Path, shard: np.ndarray, label_mode: str) -> Path:
    """A segments folder as data_prep.segment writes it: one record, all rows labelled N."""
    layout.save_shard(folder, "r1", shard)
    layout.write_index(folder / layout.INDEX, pd.DataFrame(
        {"record": "r1", "row": np.arange(len(shard)), "sample": 1000 * np.arange(len(shard)),
         "label": "N", "symbol": "N"}))
    layout.write_json(folder / layout.META, {"classes": ["N"], "fs": FS, "label_mode": label_mode,
                                             "window_samples": shard.shape[1]})
    return folder


def sha(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def test_beat_images_are_byte_identical_to_before(tmp_path: Path) -> None:
    params = committed()
    assert params.for_label_mode("beat").image_params() == params.image_params() == BEAT
    assert sha(spectrogram_images(beat_segments(), FS, BEAT)) == BEAT_CORE_SHA
    meta = spectrogram.run(params, write_segments(tmp_path / "seg", beat_segments(), "beat"),
                           tmp_path / "spec")
    assert sha(layout.load_shard(tmp_path / "spec", "r1", mmap=False)) == BEAT_CORE_SHA
    assert ImageParams.model_validate(meta["params"]) == BEAT and meta["stft_keys"] == "spectrogram"
    assert meta["stft"]["frames"] == 199  # 2.5 s at a 12 ms hop


@pytest.mark.parametrize("mode", ["rhythm", "record"])
def test_ten_second_windows_get_about_one_frame_per_column(mode: str) -> None:
    params = committed()
    image = params.for_label_mode(mode).image_params()
    length = 2500  # segment.window_s 10 s at 250 Hz
    assert (image.nperseg, image.hop, image.nfft) == (64, 11, 256)
    assert {k: v for k, v in image.model_dump().items() if k not in ("nperseg", "noverlap")} \
        == {k: v for k, v in BEAT.model_dump().items() if k not in ("nperseg", "noverlap")}
    frames = plan(image, FS, length).frames
    assert 0.9 * image.image_size <= frames <= image.image_size  # no frame skipped by the resize
    # what the beat settings would have done: ~3.7 frames per column, most never read
    assert plan(BEAT, FS, length).frames > 3.5 * BEAT.image_size


def test_window_mode_stage_uses_and_records_the_window_stft(tmp_path: Path) -> None:
    t = np.arange(2500) / FS
    spikes = [np.exp(-0.5 * ((t - at) / 0.012) ** 2) for at in (2.0, 5.0, 8.0)]
    shard = np.stack(spikes).astype(np.float32)  # one spike per window, at 2, 5 and 8 s
    params = committed()
    meta = spectrogram.run(params, write_segments(tmp_path / "seg", shard, "record"),
                           tmp_path / "spec")
    images = layout.load_shard(tmp_path / "spec", "r1", mmap=False)
    assert np.array_equal(images, spectrogram_images(shard, FS, window_image(params)))
    assert meta["stft_keys"] == "spectrogram.windows"
    assert ImageParams.model_validate(meta["params"]) == window_image(params)
    assert meta["stft"]["frames"] == 222 and meta["stft"]["hop"] == 11
    first, last = meta["time_s"]["first_column"], meta["time_s"]["last_column"]
    for image, at in zip(images, (2.0, 5.0, 8.0), strict=True):
        column = int(np.argmax(image.astype(float).mean(axis=0)))
        expected = (at - first) / (last - first) * (image.shape[1] - 1)
        assert abs(column - expected) <= 2  # 2 columns = 90 ms


def test_window_settings_are_checked_when_params_load() -> None:
    section = committed_params()["spectrogram"]
    with pytest.raises(ValueError, match=r"windows: noverlap \(64\) must be < nperseg \(64\)"):
        SpectrogramParams.model_validate(section | {"windows": {"nperseg": 64, "noverlap": 64,
                                                                "nfft": 256}})
    with pytest.raises(ValueError, match="hop"):
        SpectrogramParams.model_validate(section | {"windows": {"nperseg": 64, "nfft": 256,
                                                                "hop": 11}})


REFERENCE = {"x1": "N", "x2": "A"}


def test_predict_in_record_mode_makes_the_stage_images(tmp_path: Path, monkeypatch) -> None:
    """A bundle's preprocessing is what the stages recorded (export.recorded_preprocessing);
    predict cuts a record into the same 10 s windows and makes the same images from it."""
    raw = segmented_holter(tmp_path, REFERENCE)  # 128 Hz, two leads, as a Holter database
    seg_dir, spec_dir = tmp_path / "segments", tmp_path / "spectrograms"
    spectrogram.run(committed(), seg_dir, spec_dir)
    assert recorded_preprocessing(seg_dir, spec_dir)[1] == window_image(committed())
    done = 0
    for table, predicted, stage, rows in predicted_and_stage_images(
            tmp_path, seg_dir, spec_dir, raw, monkeypatch):
        assert table["sample"].tolist() == [round(s * 128 / 250) for s in rows["sample"]]
        assert len(stage) == 3 and np.array_equal(predicted, stage)
        done += 1
    assert done == len(REFERENCE)


def test_squeezed_frames_are_warned_and_an_unknown_label_mode_fails(tmp_path: Path,
                                                                      caplog) -> None:
    shard = np.random.default_rng(1).standard_normal((2, 2500)).astype(np.float32)
    segments = write_segments(tmp_path / "seg", shard, "rhythm")
    as_beats = committed().model_copy(update={"windows": WindowSTFT(nperseg=32, noverlap=29,
                                                                    nfft=256)})
    with caplog.at_level("WARNING", logger="data_prep.spectrogram"):
        meta = spectrogram.run(as_beats, segments, tmp_path / "spec")
    assert meta["stft"]["frames"] == 824
    assert "824 STFT frames per rhythm window for 224 image columns" in caplog.text
    assert "spectrogram.windows.nperseg - noverlap) to about 11 samples" in caplog.text
    meta_path = segments / layout.META
    layout.write_json(meta_path, layout.read_json(meta_path) | {"label_mode": "beats"})
    with pytest.raises(ValueError, match=r"meta.json: label_mode 'beats' is not beat"):
        spectrogram.run(committed(), segments, tmp_path / "spec")
