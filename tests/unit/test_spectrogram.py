"""Spectrogram stage: the pure core (axes, scaling, chunking) and run() on synthetic segments."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from data_prep import layout
from data_prep.images.stft import (
    ImageParams,
    SpectrogramParams,
    _resize,
    image_meta,
    iter_images,
    plan,
    spectrogram_images,
)
from data_prep.params import parse_section
from data_prep.spectrogram import main, run
from tests.helpers import committed_params

FS = 250.0
L = 625  # 2.5 s windows, as the segment stage writes them for mitdb
BASE = dict(window="hann", nperseg=32, noverlap=29, nfft=256, fmin_hz=0.0, fmax_hz=40.0,
            dynamic_range_db=60.0, image_size=224, workers=1, export_png=False,
            preview_per_class=4, windows=dict(nperseg=64, noverlap=53, nfft=256))


def params(**changes) -> SpectrogramParams:
    return SpectrogramParams(**{**BASE, **changes})


def sine(f_hz: float, n: int = L, amp: float = 1.0) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * f_hz * np.arange(n) / FS)).astype(np.float32)


def _peak(profile: np.ndarray) -> float:
    """Middle of the brightest run: a Hann main lobe is flat to < 1 uint8 level over a few
    rows, so argmax alone would pick the first of several equal rows."""
    return float(np.flatnonzero(profile >= profile.max() - 0.5).mean())


def bright_row(image: np.ndarray) -> float:
    return _peak(image.astype(float).mean(axis=1))


def bright_col(image: np.ndarray) -> float:
    return _peak(image.astype(float).mean(axis=0))


def test_shape_dtype_range():
    x = np.random.default_rng(0).standard_normal((5, L)).astype(np.float32)
    images = spectrogram_images(x, FS, params())
    assert images.shape == (5, 224, 224) and images.dtype == np.uint8
    assert images.max() == 255 or images.max() >= 250  # the peak may fall between pixels
    assert spectrogram_images(x, FS, params(image_size=64)).shape == (5, 64, 64)


@pytest.mark.parametrize(("fmin", "fmax", "bin_"),
                         [(0.0, 40.0, 20), (0.0, 40.0, 35), (5.0, 30.0, 22)])
def test_sine_lands_on_its_row_low_frequencies_at_the_bottom(fmin, fmax, bin_):
    # Bins above ~16 Hz: the 32-sample Hann main lobe (+-15.6 Hz) would otherwise overlap its
    # negative-frequency image and pull the peak towards 0 Hz.
    p = params(fmin_hz=fmin, fmax_hz=fmax)
    df = FS / p.nfft
    f_lo, f_hi = plan(p, FS, L).freq_hz
    assert fmin <= f_lo < fmin + df and fmax - df < f_hi <= fmax  # band kept, bin-aligned
    image = spectrogram_images(sine(bin_ * df)[None], FS, p)[0]
    expected = (f_hi - bin_ * df) / (f_hi - f_lo) * (p.image_size - 1)  # row 0 = top = f_hi
    rows_per_bin = (p.image_size - 1) / ((f_hi - f_lo) / df)
    assert abs(bright_row(image) - expected) <= rows_per_bin / 2  # within half an FFT bin


def test_low_and_high_sines_order_rows():
    low, high = spectrogram_images(np.stack([sine(3.0), sine(30.0)]), FS, params())
    assert bright_row(low) > 180 > 60 > bright_row(high)  # low frequency near the bottom


@pytest.mark.parametrize("t_s", [0.3, 1.2, 2.1])
def test_click_lands_on_its_column(t_s):
    p = params()
    x = np.zeros((1, L), np.float32)
    x[0, round(t_s * FS)] = 1.0
    image = spectrogram_images(x, FS, p)[0]
    t0, t1 = plan(p, FS, L).time_s
    expected = (t_s - t0) / (t1 - t0) * (p.image_size - 1)
    assert abs(bright_col(image) - expected) <= 2


def _click_levels(weak_db: float, dynamic_range_db: float) -> tuple[float, float]:
    """Column means near a full-scale click at 0.5 s and a weaker one at 2.0 s."""
    p = params(dynamic_range_db=dynamic_range_db)
    x = np.zeros((1, L), np.float32)
    x[0, round(0.5 * FS)], x[0, round(2.0 * FS)] = 1.0, 10 ** (-weak_db / 20)
    cols = spectrogram_images(x, FS, p)[0].astype(float).mean(axis=0)
    t1, size = plan(p, FS, L).time_s[1], p.image_size

    def near(t):
        c = round(t / t1 * (size - 1))
        return cols[c - 3:c + 4].max()

    return near(0.5), near(2.0)


def test_dynamic_range_maps_db_linearly_and_clips():
    strong, weak = _click_levels(weak_db=30.0, dynamic_range_db=60.0)
    assert strong >= 245  # a click is broadband: its column is at the image maximum
    assert abs(weak - 255 * (60 - 30) / 60) <= 10  # -30 dB of a 60 dB range: half scale
    _, clipped = _click_levels(weak_db=30.0, dynamic_range_db=20.0)
    assert clipped == 0  # below max - range: black
    quiet = spectrogram_images(np.zeros((1, L), np.float32), FS, params())[0]
    assert quiet.max() == 0


def test_flat_and_tiny_segments_are_finite_and_black():
    x = np.zeros((3, L), np.float32)
    x[1] = 1e-30  # underflows to zero power
    x[2] = 3.0  # DC only: one bright bottom row, no NaN
    images = spectrogram_images(x, FS, params())
    assert images[0].max() == 0 and images[1].max() == 0
    assert images[2][-1].min() == 255 and bright_row(images[2]) > 200  # 0 Hz: bottom row


def test_nan_segment_is_an_error_naming_the_row():
    x = np.zeros((4, L), np.float32)
    x[2, 10] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        spectrogram_images(x, FS, params())


def test_chunking_gives_identical_images():
    x = np.random.default_rng(1).standard_normal((23, L)).astype(np.float32)
    one = spectrogram_images(x, FS, params(), chunk_size=100)
    assert np.array_equal(one, spectrogram_images(x, FS, params(), chunk_size=4))
    assert np.array_equal(one[7:8], spectrogram_images(x[7:8], FS, params()))


def test_resize_matches_ndimage_zoom_flipped():
    p = params(image_size=50)
    q = plan(p, FS, L)
    img = np.random.default_rng(2).random((2, q.band.stop - q.band.start, q.frames), np.float32)
    expected = ndimage.zoom(img, (1, 50 / img.shape[1], 50 / img.shape[2]), order=1)[:, ::-1]
    np.testing.assert_allclose(_resize(img.copy(), q), expected, atol=1e-4)


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "viridis"}, "colour"),
    ({"noverlap": 32}, "noverlap"),
    ({"nfft": 16}, "nfft"),
    ({"fmin_hz": 50.0}, "fmin_hz"),
    ({"window": "nope"}, "window"),
])
def test_params_reject_unknown_keys_and_inconsistent_values(change, message):
    with pytest.raises(ValueError, match=message):
        parse_section({"spectrogram": {**BASE, **change}}, "spectrogram", SpectrogramParams)


def test_repository_params_load():
    assert parse_section(committed_params(), "spectrogram", SpectrogramParams).image_size == 224


def test_band_errors_name_the_fix():
    with pytest.raises(ValueError, match="Nyquist"):
        plan(params(fmax_hz=200.0), FS, L)
    with pytest.raises(ValueError, match="nfft"):
        plan(params(fmin_hz=10.0, fmax_hz=10.5), FS, L)


def reference_images(x: np.ndarray, p: SpectrogramParams) -> np.ndarray:
    """The documented formula in float64: |STFT|^2 of the plan's whole frames and band, dB re
    the image's maximum floored at -dynamic_range_db, 255 * (dB + range) / range, bilinear
    resize (ndimage.zoom order=1) with low frequencies at the bottom, rounded half up."""
    q = plan(p, FS, x.shape[1])
    z = q.sft.stft(x.astype(np.float64), p0=q.first, p1=q.first + q.frames)[:, q.band]
    power = np.abs(z) ** 2
    peak = power.max(axis=(1, 2), keepdims=True)
    db = 10 * np.log10(np.maximum(power, peak * 10 ** (-p.dynamic_range_db / 10)) / peak)
    level = 255 * (db + p.dynamic_range_db) / p.dynamic_range_db
    s = p.image_size
    level = ndimage.zoom(level, (1, s / level.shape[1], s / level.shape[2]), order=1)[:, ::-1]
    return np.floor(np.clip(level, 0, 255) + 0.5).astype(np.uint8)


def beats(n: int, seed: int = 0) -> np.ndarray:
    """ECG-like windows: a narrow QRS-like bump at different times plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(L) / FS
    return np.stack([np.exp(-((t - c) / 0.03) ** 2) + 0.02 * rng.standard_normal(L)
                     for c in np.linspace(0.3, 2.2, n)]).astype(np.float32)


@pytest.mark.parametrize("dynamic_range_db", [60.0, 20.0])
def test_images_follow_the_documented_formula(dynamic_range_db):
    """float32 arithmetic may move a pixel across a rounding edge (1 in 1e5 here), no more."""
    p = params(dynamic_range_db=dynamic_range_db)
    x = beats(10)
    diff = spectrogram_images(x, FS, p).astype(int) - reference_images(x, p)
    assert np.abs(diff).max() <= 1 and np.count_nonzero(diff) <= 1e-4 * diff.size


def test_images_do_not_depend_on_scale_or_float_dtype():
    """Each image is referenced to its own maximum: a quiet segment (peak power far below 1)
    gives the image of a loud one; float64 segments give the images of their float32 copy."""
    x = np.random.default_rng(4).standard_normal((3, L)).astype(np.float32)
    base = spectrogram_images(x, FS, params())
    for scale in (2.0 ** -30, 2.0 ** -10, 2.0 ** 10):
        diff = spectrogram_images(x * np.float32(scale), FS, params()).astype(int) - base
        assert np.abs(diff).max() <= 1 and np.count_nonzero(diff) <= 10
    x64 = np.random.default_rng(1).standard_normal((60, L))
    assert np.array_equal(spectrogram_images(x64, FS, params()),
                          spectrogram_images(x64.astype(np.float32), FS, params()))


def test_silent_segment_is_black_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no log10(0), no NaN cast to uint8
        image = spectrogram_images(np.zeros((2, L), np.float32), FS, params())
    assert image.max() == 0


def test_click_at_the_last_sample_is_the_image_maximum():
    """Frames sticking out of the segment are not computed: they would see the click at their
    centre, set the image maximum and leave the kept frames dark."""
    x = np.zeros((1, L), np.float32)
    x[0, -1] = 1.0
    image = spectrogram_images(x, FS, params())[0]
    assert image[:, -1].min() == 255  # the last kept frame: the brightest, broadband


def test_iter_images_yields_uint8_chunks_of_the_images():
    x = beats(5)
    chunks = list(iter_images(x, FS, params(), chunk_size=2))
    assert [c.shape for c in chunks] == [(2, 224, 224), (2, 224, 224), (1, 224, 224)]
    assert all(c.dtype == np.uint8 for c in chunks)
    assert np.array_equal(np.concatenate(chunks), spectrogram_images(x, FS, params()))
    with pytest.raises(ValueError, match=r"^expected segments of shape \(n, L\), got \(625,\)$"):
        next(iter_images(x[0], FS, params()))


def test_span_keeps_the_given_slices():
    """Slice p is centred on sample p * hop (hop 3; first whole frame: slice 5, window samples
    -1..30 with a zero first tap): slices 20..119 are the whole frames of samples 45..372."""
    p = params()
    x = np.random.default_rng(4).standard_normal((3, L)).astype(np.float32)
    kept = spectrogram_images(x[:, 45:373], FS, p)
    assert np.array_equal(spectrogram_images(x, FS, p, span=(20, 120)), kept)
    assert np.array_equal(np.concatenate(list(iter_images(x, FS, p, span=(20, 120)))), kept)
    meta = image_meta(p, FS, L, span=(20, 120))
    assert meta["stft"]["frames"] == 100
    assert meta["time_s"] == {"first_column": pytest.approx(0.24),
                              "last_column": pytest.approx(1.428), "frame_hop_s": 0.012}


def test_image_meta_pinned():
    """meta.json's description of grey images, by hand for the test params: 625 samples, hop 3,
    bins of 250/256 Hz; whole frames are slices 5..203 (centres 0.06 s .. 2.436 s)."""
    assert image_meta(params(), FS, L) == {
        "fs": 250.0,
        "image_size": 224,
        "window_samples": 625,
        "stft": {"window": "hann", "nperseg": 32, "noverlap": 29, "hop": 3, "nfft": 256,
                 "fmin_hz": 0.0, "fmax_hz": 40.0, "frames": 199, "frequency_bins": 41,
                 "frame_centres": "first_column s, then every hop; whole frames only"},
        "frequency_hz": {"bottom_row": 0.0, "top_row": 39.0625, "bin_hz": 0.9765625},
        "time_s": {"first_column": 0.06, "last_column": 2.436, "frame_hop_s": 0.012},
        "orientation": "low frequency at the bottom row: row 0 = top_row Hz, row 223 = "
                       "bottom_row Hz; column 0 = first_column s, last column = last_column s; "
                       "linear axes, bilinear resize",
        "channels": 1,
        "channel_note": "grey, one channel; the model side decides replication or in_chans=1",
        "dtype": "uint8",
        "value_scale": {"unit": "dB re the image's maximum STFT power",
                        "dynamic_range_db": 60.0,
                        "mapping": "uint8 = round(255 * (dB + 60.0) / 60.0) clipped to 0..255",
                        "zero": "-60.0 dB or below; all-zero segments",
                        "255": "the image's maximum"},
    }
    fmin = image_meta(params(fmin_hz=5.0), FS, L)  # bins 6..40: 5.859375 Hz .. 39.0625 Hz
    assert fmin["frequency_hz"]["bottom_row"] == 5.859375
    assert fmin["stft"]["frequency_bins"] == 35


IMAGE_KEYS = {"window": "hann", "nperseg": 32, "noverlap": 29, "nfft": 256, "fmin_hz": 0.0,
              "fmax_hz": 40.0, "dynamic_range_db": 60.0, "image_size": 224}


def test_recorded_params_grey_without_channel_keys_multires_as_json():
    assert params().image_params().recorded() == IMAGE_KEYS  # meta.json of grey: unchanged
    multires = ImageParams(**IMAGE_KEYS, image="multires")
    assert multires.recorded() == {**IMAGE_KEYS, "image": "multires",
                                   "multires_nperseg": [16, 32, 64]}  # a JSON list


def test_for_label_mode_takes_the_windows_stft_for_fixed_windows():
    p = params()
    assert p.for_label_mode("beat") is p
    for mode in ("rhythm", "record"):
        fixed = p.for_label_mode(mode)
        assert (fixed.nperseg, fixed.noverlap, fixed.nfft) == (64, 53, 256)
        assert fixed.model_dump(exclude={"nperseg", "noverlap", "nfft"}) == p.model_dump(
            exclude={"nperseg", "noverlap", "nfft"})


# ------------------------------------------------------------------------------ run()

RECORDS = {"100": ["N", "N", "V", "N", "S"], "201": ["N", "V", "V"], "A01": ["N", "Q"]}


@pytest.fixture
def segments(tmp_path):
    """A segments folder as data_prep.segment writes it: 3 records, ECG-ish beats."""
    folder = tmp_path / "segments"
    rng = np.random.default_rng(3)
    rows = []
    for record, labels in RECORDS.items():
        t = np.arange(L) / FS
        shard = np.stack([np.exp(-((t - 1.25) / (0.02 + 0.03 * (lab == "V"))) ** 2)
                          + 0.01 * rng.standard_normal(L) for lab in labels]).astype(np.float32)
        layout.save_shard(folder, record, shard)
        rows += [(record, i, 1000 * (i + 1), lab, lab) for i, lab in enumerate(labels)]
    index = pd.DataFrame(rows, columns=["record", "row", "sample", "label", "symbol"])
    layout.write_index(folder / layout.INDEX, index.sample(frac=1.0, random_state=0))
    layout.write_json(folder / layout.META, {"classes": ["N", "S", "V", "F", "Q"], "fs": FS,
                                             "window_samples": L, "label_mode": "beat"})
    return folder


def test_run_writes_shards_index_meta_previews(segments, tmp_path):
    out = tmp_path / "spec"
    meta = run(params(), segments, out)
    index = layout.read_index(out / layout.INDEX)
    seg_index = layout.read_index(segments / layout.INDEX)
    pd.testing.assert_frame_equal(index, seg_index)
    p = params()
    for record in RECORDS:
        shard = layout.load_shard(out, record, mmap=False)
        assert shard.shape == (len(RECORDS[record]), 224, 224) and shard.dtype == np.uint8
        expected = spectrogram_images(layout.load_shard(segments, record), FS, p)
        assert np.array_equal(shard, expected)  # rows in segment-shard order
    on_disk = layout.read_json(out / layout.META)
    assert on_disk["classes"] == ["N", "S", "V", "F", "Q"] and on_disk["fs"] == FS
    assert on_disk["channels"] == 1 and "bottom" in on_disk["orientation"]
    assert on_disk["stft"]["hop"] == 3 and on_disk["n_images"] == len(index)
    assert on_disk["frequency_hz"]["top_row"] <= 40.0 and on_disk["time_s"]["last_column"] > 2.4
    assert on_disk["segments"]["label_mode"] == "beat" and on_disk == meta
    assert set(meta["preview"]) == {"N", "S", "V", "Q"}  # F has no beats: no grid
    for name in meta["preview"].values():
        with Image.open(out / name) as grid:
            assert grid.format == "PNG" and grid.size[0] > 200
    assert not (out / "png").exists()


def test_run_with_pool_and_png_export(segments, tmp_path):
    out = tmp_path / "spec"
    run(params(export_png=True, workers=2, preview_per_class=0), segments, out)
    pngs = sorted(p.relative_to(out / "png").as_posix() for p in (out / "png").rglob("*.png"))
    assert len(pngs) == sum(map(len, RECORDS.values()))
    assert "V/100_3000.png" in pngs and "Q/A01_2000.png" in pngs
    with Image.open(out / "png/V/100_3000.png") as png:
        assert np.array_equal(np.asarray(png), layout.load_shard(out, "100")[2])
    assert not (out / "preview").exists()


def test_run_rejects_index_that_disagrees_with_a_shard(segments, tmp_path):
    index = layout.read_index(segments / layout.INDEX)
    layout.write_index(segments / layout.INDEX, index[index["row"] != 1])
    with pytest.raises(ValueError, match=r"record \w+: .*shards"):
        run(params(), segments, tmp_path / "spec")


def test_cli_as_in_dvc_yaml(segments, tmp_path):
    (tmp_path / "params.yaml").write_text(
        "spectrogram:\n" + "".join(f"  {k}: {str(v).lower() if isinstance(v, bool) else v}\n"
                                   for k, v in {**BASE, "preview_per_class": 1}.items()))
    out = tmp_path / "spec"
    main(["--params", str(tmp_path / "params.yaml"), "--segments", str(segments),
          "--out", str(out)])
    assert (out / "shards" / "201.npy").is_file() and (out / "preview" / "N.png").is_file()


def test_run_makes_images_only_for_records_the_split_assigned(segments, tmp_path):
    kept = sorted(RECORDS)[:-1]
    splits = tmp_path / "splits"
    splits.mkdir()
    pd.DataFrame({"record": kept, "subject": kept, "split": "train"}).to_csv(
        splits / "assignment.csv", index=False)
    out = tmp_path / "spec"
    meta = run(params(), segments, out, splits)
    index = layout.read_index(out / layout.INDEX)
    assert sorted(set(index["record"])) == kept == sorted(meta["records"])
    assert len(index) == sum(len(RECORDS[r]) for r in kept)
    assert not layout.shard_path(out, sorted(RECORDS)[-1]).exists()
