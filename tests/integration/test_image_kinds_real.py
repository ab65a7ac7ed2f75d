"""Three-channel images on real mitdb records: the second lead chosen by name (record 114 has its
leads in the other order), and multires / two_lead shards whose channels share one time axis."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from data_prep import layout, segment, spectrogram
from tests.helpers import REPO, committed_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = {"114": "V5", "124": "V4"}  # record -> its second lead (114: V5 first, MLII second)


@pytest.fixture(scope="module")
def segments(physionet_mirror, tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    raw = root / "raw" / "mitdb"
    raw.mkdir(parents=True)
    for record in RECORDS:
        for ext in ("hea", "dat", "atr"):
            shutil.copy(physionet_mirror / "mitdb" / f"{record}.{ext}", raw)
    (raw / "RECORDS").write_text("".join(f"{r}\n" for r in RECORDS))
    data = committed_params()
    params = segment.SegmentParams.model_validate(
        data["segment"] | {"label_map": str(REPO / data["segment"]["label_map"]),
                           "second_leads": ["V1", "V2", "V5", "V4"]})
    summary = segment.run(params, "mitdb", root / "raw", root / "segments", workers=1)
    return root, summary, data


def test_second_leads_by_name_and_none_duplicated(segments):
    root, summary, _ = segments
    meta = layout.read_json(root / "segments" / layout.META)
    assert meta["leads"] == {"114": "MLII", "124": "MLII"}
    assert meta[layout.SECOND_LEAD] == RECORDS
    assert summary["second_lead"]["n_duplicated"] == 0


@pytest.mark.parametrize("image", ["multires", "two_lead"])
def test_three_channel_shards_of_real_beats(segments, image):
    root, _, data = segments
    params = spectrogram.SpectrogramParams.model_validate(
        data["spectrogram"] | {"image": image, "workers": 1, "preview_per_class": 4})
    meta = spectrogram.run(params, root / "segments", root / image)
    shard = layout.load_shard(root / image, "124")
    assert shard.shape[1:] == (3, 224, 224) and shard.dtype == np.uint8
    assert meta["channels"] == 3
    # every channel shows the beat's QRS at the image's centre column (the shared time axis):
    # broadband energy peaks there in each channel
    energy = shard.astype(np.float32).mean(axis=(0, 2))  # (3, columns)
    centre = (1.25 - meta["time_s"]["first_column"]) / (
        meta["time_s"]["last_column"] - meta["time_s"]["first_column"]) * 223
    for channel in energy:
        assert abs(int(channel.argmax()) - centre) < 8  # within ~0.1 s
