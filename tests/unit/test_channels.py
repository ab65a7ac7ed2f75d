"""Image kinds (data_prep.images.channels): grey, multires and two_lead images, their stage output,
and the model side's channel handling (train.channels)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data_prep import layout
from data_prep.images import channels
from data_prep.images.stft import ImageParams, SpectrogramParams, plan, spectrogram_images
from data_prep.spectrogram import run
from pipeline.training.transforms import Preprocess, check_channels, preprocess_spec

FS, L = 250.0, 625
BASE = dict(window="hann", nperseg=32, noverlap=29, nfft=256, fmin_hz=0.0, fmax_hz=40.0,
            dynamic_range_db=60.0, image_size=48)
STAGE = dict(windows={"nperseg": 64, "noverlap": 53, "nfft": 256}, workers=1)
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def params(**changes) -> ImageParams:
    return ImageParams(**{**BASE, **changes})


def leads(n: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, L)).astype(np.float32) for _ in range(2)]


@pytest.mark.parametrize(("image", "shape"), [("grey", (5, 48, 48)), ("multires", (5, 3, 48, 48)),
                                              ("two_lead", (5, 3, 48, 48))])
def test_shapes_and_dtypes_per_kind(image, shape):
    p = params(image=image)
    images = channels.kind_images(leads(), FS, p)
    assert images.shape == shape and images.dtype == np.uint8
    assert images.shape[1:] == channels.image_shape(p)
    assert images.max() > 200 and images.min() < 50  # every kind spans the scale
    empty = channels.kind_images([x[:0] for x in leads()], FS, p)
    assert empty.shape == (0, *shape[1:]) and empty.dtype == np.uint8


def test_grey_is_the_single_resolution_image():
    x = leads()[0]
    np.testing.assert_array_equal(channels.kind_images([x], FS, params()),
                                  spectrogram_images(x, FS, params()))
    assert channels.common_span(params(), FS, L) is None


def test_each_multires_channel_is_the_grey_image_of_its_window():
    """Channel k = the grey image with nperseg k, the shared hop, over the common frames."""
    x = leads()[0]
    p = params(image="multires", multires_nperseg=(16, 32, 64))
    images = channels.kind_images([x], FS, p)
    span = channels.common_span(p, FS, L)
    for k, n in enumerate((16, 32, 64)):
        grey = params(nperseg=n, noverlap=n - 3)
        np.testing.assert_array_equal(images[:, k], spectrogram_images(x, FS, grey, span=span))
        assert plan(grey, FS, L, span).time_s == plan(params(nperseg=64, noverlap=61), FS, L).time_s
    # the longest window keeps all its whole frames: its channel is its plain grey image
    np.testing.assert_array_equal(images[:, 2], spectrogram_images(x, FS, params(nperseg=64,
                                                                                  noverlap=61)))
    assert not np.array_equal(images[:, 0], images[:, 2])  # the windows do differ


def test_two_lead_channels_show_lead_then_second_lead_then_lead_long():
    first, second = leads()
    p = params(image="two_lead")
    images = channels.kind_images([first, second], FS, p)
    span = channels.common_span(p, FS, L)
    np.testing.assert_array_equal(images[:, 0], spectrogram_images(first, FS, params(), span=span))
    np.testing.assert_array_equal(images[:, 1], spectrogram_images(second, FS, params(), span=span))
    long = params(nperseg=64, noverlap=61)
    np.testing.assert_array_equal(images[:, 2], spectrogram_images(first, FS, long, span=span))
    with pytest.raises(ValueError, match=r"needs 2 leads.*segment\.second_leads"):
        channels.kind_images([first], FS, p)
    assert channels.leads_needed(p) == 2 and channels.leads_needed(params(image="multires")) == 1


def test_chunking_never_changes_a_multichannel_image():
    x = leads(n=7)
    p = params(image="two_lead")
    whole = channels.kind_images(x, FS, p)
    np.testing.assert_array_equal(np.concatenate(list(channels.iter_kind_images(x, FS, p, 3))),
                                  whole)


@pytest.mark.parametrize(("windows", "message"), [((3, 32, 64), "longer than the hop"),
                                                  ((16, 32, 512), "at most nfft")])
def test_window_lengths_are_checked(windows, message):
    with pytest.raises(ValueError, match=message):
        params(image="multires", multires_nperseg=windows)
    params(image="grey", multires_nperseg=windows)  # grey never reads them


def test_grey_records_no_channel_keys_and_others_do():
    assert "image" not in params().recorded() and "multires_nperseg" not in params().recorded()
    recorded = params(image="multires").recorded()
    assert recorded["image"] == "multires" and recorded["multires_nperseg"] == [16, 32, 64]
    assert ImageParams.model_validate(recorded) == params(image="multires")
    assert ImageParams.model_validate(params().recorded()) == params()


def test_describe_lists_the_channels_and_their_shared_axes():
    p = params(image="multires")
    meta = channels.describe(p, FS, L)
    assert meta["channels"] == 3 and meta["image"] == "multires"
    assert [c["nperseg"] for c in meta["channel_list"]] == [16, 32, 64]
    assert [c["window_ms"] for c in meta["channel_list"]] == [64.0, 128.0, 256.0]
    assert meta["time_s"]["first_column"] == pytest.approx(11 * 3 / FS)  # longest window's
    assert channels.describe(params(), FS, L)["channels"] == 1


def _segments(folder, second: bool) -> None:
    rng = np.random.default_rng(1)
    rows = {"a": 4, "b": 3}
    for record, n in rows.items():
        layout.save_shard(folder, record, rng.standard_normal((n, L)).astype(np.float32))
        if second:
            layout.save_shard(folder / layout.SECOND_LEAD, record,
                              rng.standard_normal((n, L)).astype(np.float32))
    index = pd.DataFrame([(r, i, 100 + i, "N", "N") for r, n in rows.items() for i in range(n)],
                         columns=layout.SEGMENT_COLUMNS)
    layout.write_index(folder / layout.INDEX, index)
    meta = {"classes": ["N"], "fs": FS, "window_samples": L, "label_mode": "beat"}
    if second:
        meta[layout.SECOND_LEAD] = {"a": "V1", "b": "V1"}
    layout.write_json(folder / layout.META, meta)


@pytest.mark.parametrize("image", ["multires", "two_lead"])
def test_stage_writes_three_channel_shards(tmp_path, image):
    _segments(tmp_path / "seg", second=True)
    spec = SpectrogramParams(**BASE, **STAGE, image=image, export_png=True, preview_per_class=2)
    meta = run(spec, tmp_path / "seg", tmp_path / "out")
    shard = layout.load_shard(tmp_path / "out", "a")
    assert shard.shape == (4, 3, 48, 48) and shard.dtype == np.uint8
    leads_ = [layout.load_shard(tmp_path / "seg", "a")]
    leads_.append(layout.load_shard(tmp_path / "seg" / layout.SECOND_LEAD, "a"))
    np.testing.assert_array_equal(shard, channels.kind_images(leads_, FS, spec))
    assert meta["channels"] == 3 and meta["params"]["image"] == image
    assert (tmp_path / "out" / meta["preview"]["N"]).is_file()
    assert len(list((tmp_path / "out" / layout.PNG).glob("*/*.png"))) == 7


def test_two_lead_stage_without_second_lead_names_the_fix(tmp_path):
    _segments(tmp_path / "seg", second=False)
    spec = SpectrogramParams(**BASE, **STAGE, image="two_lead", export_png=False,
                             preview_per_class=0)
    with pytest.raises(ValueError, match=r"needs a second lead.*segment\.second_leads"):
        run(spec, tmp_path / "seg", tmp_path / "out")


def test_train_channels_must_fit_the_images():
    check_channels("grey3", 1, "meta.json")
    check_channels("in_chans1", 1, "meta.json")
    check_channels("image3", 3, "meta.json")
    with pytest.raises(ValueError, match=r"3-channel images; set train.channels to one of "
                                         r"\['image3'\]"):
        check_channels("grey3", 3, "meta.json")
    with pytest.raises(ValueError, match=r"one of \['grey3', 'in_chans1'\]"):
        check_channels("image3", 1, "meta.json")


def test_image3_normalises_each_channel_with_its_imagenet_statistics():
    spec = preprocess_spec(IMAGENET, "image3", 48)
    assert spec["in_chans"] == spec["image_channels"] == 3
    assert "image_channels" not in preprocess_spec(IMAGENET, "grey3", 48)  # grey spec unchanged
    pre = Preprocess.from_spec(spec)
    images = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    out = pre(images)
    for c in range(3):
        expected = (images[:, c].float() / 255 - IMAGENET["mean"][c]) / IMAGENET["std"][c]
        torch.testing.assert_close(out[:, c], expected)
    with pytest.raises(ValueError, match=r"expected a batch \(B, 3, H, W\)"):
        pre(images[:, 0])
