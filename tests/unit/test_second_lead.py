"""The second lead of two-lead images: chosen by name, cut at the first lead's windows, and a
record without one duplicated or skipped, always counted (data_prep.beats.second_lead, segment)."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep import layout, segment, spectrogram
from data_prep.beats.second_lead import choose_second, cut_second
from data_prep.beats.windows import condition_and_cut
from data_prep.records import wfdb_io
from pipeline.export import recorded_preprocessing
from tests.helpers import committed_params
from tests.helpers import segment_params as make_params
from tests.holter import predicted_and_stage_images, segmented_holter
from tests.synthetic import ecg_like, write_record, write_records_file

FS = 360


def run(tmp_path, records: dict[str, dict], **overrides):
    raw = tmp_path / "raw"
    for record, kwargs in records.items():
        write_record(raw / "synth", record, **kwargs)
    write_records_file(raw / "synth", list(records))
    params = make_params(**{"second_leads": ["V1", "V2"], "max_skip_fraction": 0.5, **overrides})
    summary = segment.run(params, "synth", raw, tmp_path / "seg", databases_dir=tmp_path,
                          workers=1)
    return raw / "synth", tmp_path / "seg", summary


def test_choose_second_skips_the_first_lead_and_never_guesses():
    assert choose_second(("MLII", "V1"), 0, ["V1", "V2"]) == 1
    assert choose_second(("V1", "MLII", "V2"), 1, ["V1", "V2"]) == 0
    assert choose_second(("V1", "MLII"), 0, ["V1"]) is None  # V1 is the first lead already
    assert choose_second(("MLII", "V5"), 0, ["V1", "V2"]) is None  # no unnamed fallback
    assert choose_second(("MLII", " v2 "), 0, ["V1", "V2"]) == 1  # names match as leads do


def test_two_lead_record_keeps_both_leads_row_for_row(tmp_path):
    folder, seg, summary = run(tmp_path, {"a": {"fs": FS, "sig_names": ("MLII", "V1")}})
    first, second = layout.load_shard(seg, "a"), layout.load_shard(seg / layout.SECOND_LEAD, "a")
    index = layout.read_index(seg / layout.INDEX)
    assert first.shape == second.shape == (len(index), 625)
    params = make_params()
    starts = index["sample"].to_numpy() - params.geometry()[0]
    expected, clean = condition_and_cut(wfdb_io.read_signal(folder, "a", 1), FS, starts, params)
    assert clean.all()
    np.testing.assert_array_equal(second, expected)
    meta = layout.read_json(seg / layout.META)
    assert meta[layout.SECOND_LEAD] == {"a": "V1"}
    assert meta["params"]["second_leads"] == ["V1", "V2"]
    assert summary["second_lead"] == {"duplicated": [], "n_duplicated": 0, "leads": {"V1": 1}}


def test_one_lead_record_is_duplicated_and_counted(tmp_path):
    _, seg, summary = run(tmp_path, {"a": {"fs": FS, "sig_names": ("MLII", "V1")},
                                     "b": {"fs": FS, "sig_names": ("MLII",)}})
    np.testing.assert_array_equal(layout.load_shard(seg / layout.SECOND_LEAD, "b"),
                                  layout.load_shard(seg, "b"))
    assert summary["second_lead"]["duplicated"] == ["b"]
    assert summary["second_lead"]["n_duplicated"] == 1
    assert layout.read_json(seg / layout.META)[layout.SECOND_LEAD] == {"a": "V1", "b": "MLII"}


def test_one_lead_record_is_skipped_and_counted_when_asked(tmp_path):
    _, seg, summary = run(tmp_path, {"a": {"fs": FS, "sig_names": ("MLII", "V1")},
                                     "b": {"fs": FS, "sig_names": ("MLII",)}},
                          second_lead_missing="skip", max_skip_fraction=0.9)
    assert summary["records"]["skipped"]["b"]["reason"] == "missing_second_lead"
    assert summary["segments_skipped"]["missing_second_lead"] > 0
    assert not layout.shard_path(seg / layout.SECOND_LEAD, "b").exists()
    assert set(layout.read_index(seg / layout.INDEX)["record"]) == {"a"}


def test_windows_bad_in_the_second_lead_leave_both_shards_and_are_counted(tmp_path):
    n = 30 * FS
    beats = np.arange(540, n, 288)
    lead = ecg_like(n, FS, beats)
    second = lead * 0.5
    second[FS * 10:FS * 12] = np.nan  # a lead-off stretch in the second lead only
    signal = np.column_stack([lead, second])
    _, seg, summary = run(tmp_path, {"a": {"fs": FS, "sig_names": ("MLII", "V1"), "beats": beats,
                                           "signal": signal}})
    dropped = summary["segments_skipped"]["second_lead_nan_samples"]
    assert dropped >= 4  # every window touching the 2 s stretch
    index = layout.read_index(seg / layout.INDEX)
    assert layout.load_shard(seg, "a").shape[0] == len(index)
    assert layout.load_shard(seg / layout.SECOND_LEAD, "a").shape[0] == len(index)
    assert np.isfinite(layout.load_shard(seg / layout.SECOND_LEAD, "a")).all()


def test_one_lead_params_record_nothing_new(tmp_path):
    _, seg, summary = run(tmp_path, {"a": {"fs": FS}}, second_leads=[])
    meta = layout.read_json(seg / layout.META)
    assert layout.SECOND_LEAD not in meta and "second_leads" not in meta["params"]
    assert "second_lead" not in summary and not (seg / layout.SECOND_LEAD).exists()


@pytest.mark.parametrize("bad", ["nan", "flat"])
def test_cut_second_status(bad):
    params = make_params()
    x = np.sin(np.arange(20 * FS) / 7.0) + np.random.default_rng(0).normal(0, 0.05, 20 * FS)
    x[5 * FS:7 * FS] = np.nan if bad == "nan" else 1.0
    starts = np.array([250, 1375, 3000])  # the middle window covers 5.5-8 s
    windows, status = cut_second(x, FS, starts, params)
    assert status.tolist() == ["", "nan_samples" if bad == "nan" else "flat", ""]
    assert windows.shape == (2, 625)


def test_two_lead_record_mode_predict_makes_the_stage_images(tmp_path, monkeypatch):
    """10 s windows of a two-lead 128 Hz database: stage and predict stack the same channels."""
    raw = segmented_holter(tmp_path, {"h1": "N", "h2": "A"}, second_leads=["ECG1"])
    seg_dir, spec_dir = tmp_path / "segments", tmp_path / "spectrograms"
    spectrogram.run(spectrogram.SpectrogramParams.model_validate(
        committed_params()["spectrogram"] | {"image": "two_lead", "workers": 1,
                                             "preview_per_class": 1}), seg_dir, spec_dir)
    _, image, described, _ = recorded_preprocessing(seg_dir, spec_dir)
    assert image.image == "two_lead" and described["channels"] == 3
    assert image.nperseg == 64  # spectrogram.windows made these 10 s images
    done = 0
    for _, predicted, stage, _ in predicted_and_stage_images(tmp_path, seg_dir, spec_dir, raw,
                                                              monkeypatch):
        assert stage.shape == (3, 3, 224, 224)
        np.testing.assert_array_equal(predicted, stage)
        assert not np.array_equal(stage[:, 0], stage[:, 1])  # two different leads
        assert not np.array_equal(stage[:, 0], stage[:, 2])  # and another resolution
        done += 1
    assert done == 2
    assert [c["nperseg"] for c in described["channel_list"]] == [64, 64, 16]
