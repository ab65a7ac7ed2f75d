"""segment: params, the three label modes, bad records, skip accounting, run() and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from data_prep import layout, segment
from data_prep.beats import context, morphology, rhythm
from data_prep.beats.candidates import rhythm_segments
from data_prep.beats.windows import cut_beats, signal_quality
from data_prep.params import read_yaml
from data_prep.records.configs import load_label_map
from tests.helpers import REPO, committed_params, write_committed_params
from tests.synthetic import write_record, write_records_file

AAMI = str(REPO / "configs" / "labels" / "aami.yaml")
RHYTHM = str(REPO / "configs" / "labels" / "rhythm.yaml")


def make_params(**overrides: object) -> segment.SegmentParams:
    section = committed_params()["segment"]
    return segment.SegmentParams.model_validate({**section, "label_map": AAMI, **overrides})


def aami_without(folder: Path, *symbols: str) -> str:
    """The AAMI map less `symbols` (it maps every WFDB beat code): an unknown-symbol case."""
    data = read_yaml(Path(AAMI))
    for symbol in symbols:
        del data["map"][symbol]
    path = folder / f"aami_without_{'_'.join(symbols)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def make_db(tmp_path: Path, records: dict[str, dict], name: str = "synth") -> Path:
    """Writes records into <tmp>/raw/<name>/ with a RECORDS file; returns the raw folder."""
    folder = tmp_path / "raw" / name
    for record, kwargs in records.items():
        write_record(folder, record, **kwargs)
    write_records_file(folder, list(records))
    return tmp_path / "raw"


def ctx(raw: Path, params: segment.SegmentParams, out: Path, reference: dict | None = None,
        name: str = "synth") -> segment.Context:
    labels = load_label_map(Path(params.label_map))
    return segment.Context(params, labels, raw / name, out, "atr", reference or {},
                           frozenset(labels.map))


def test_params_match_params_yaml() -> None:
    data = committed_params()
    assert segment.SegmentParams.model_validate(data["segment"]).geometry() == (313, 625, 1)
    assert segment.DatasetParams.model_validate(data["dataset"]).name == "mitdb"
    with pytest.raises(ValueError, match="extra"):
        make_params(windows_s=2)
    with pytest.raises(ValueError, match="fs/2"):
        make_params(bandpass_hz=[0.5, 200.0])
    with pytest.raises(ValueError, match="reference_csv"):
        make_params(label_mode="record")
    assert make_params(label_mode="rhythm", window_s=10, window_stride_s=5).geometry() == (
        0, 2500, 1250)


@pytest.mark.parametrize("fmt", ["16", "212"])
@pytest.mark.parametrize("fs", [128, 250, 360, 500])
def test_beat_windows_are_centred_after_resampling(tmp_path: Path, fs: int, fmt: str) -> None:
    raw = make_db(tmp_path, {"r1": {"fs": fs, "fmt": fmt, "seconds": 20}})
    beats = segment.wfdb_io.read_annotations(raw / "synth", "r1", "atr").sample
    res = segment.process_record(ctx(raw, make_params(), tmp_path / "out"), "r1")
    assert res.skip is None and res.lead == "MLII"
    expected = np.rint(beats * 250 / fs).astype(int)
    inside = (expected >= 313) & (expected + 312 <= int(np.ceil(20 * fs * 250 / fs)))
    assert res.index["sample"].tolist() == expected[inside].tolist()
    assert res.segments.skipped == {"record_edge": int((~inside).sum())}
    shard = layout.load_shard(tmp_path / "out", "r1")
    assert shard.shape == (inside.sum(), 625) and shard.dtype == np.float32
    assert np.abs(shard[:, 308:319].argmax(axis=1) - 5).max() <= 1  # the spike sits at 313


def test_beat_labels_edges_and_unknown_symbols(tmp_path: Path) -> None:
    n = 360 * 20
    beats = [100, 1000, 2000, 3000, 4000, 5000, n - 100, n - 1, n, n + 50]
    symbols = ["N", "V", "A", "~", "B", "/", "N", "N", "N", "N"]  # B: left out of the map below
    raw = make_db(tmp_path, {"r1": {"beats": beats, "symbols": symbols, "seconds": 20,
                                    "rhythm": [(10, "(N\x00")]}})
    params = make_params(label_map=aami_without(tmp_path, "B"))
    res = segment.process_record(ctx(raw, params, tmp_path / "out"), "r1")
    assert res.index[["label", "symbol"]].values.tolist() == [["V", "V"], ["S", "A"], ["Q", "/"]]
    assert res.segments.skipped == {"unknown_symbol": 1, "record_edge": 3,
                                    "annotation_past_end": 2}
    assert res.segments.non_beat == {"~": 1, "+": 1}
    assert res.segments.unknown == {"B": 1}


def test_beat_windows_are_exact_sample_ranges_inside_the_record(tmp_path: Path) -> None:
    """At 250 Hz (no resampling) a beat at sample b gets the window [b - 313, b + 312) of the
    conditioned lead, in the stage and in predict (`cut_beats`). The lead is noise, so every
    slice is unique: a window shifted by one sample, or centred on length // 2 = 312, differs.
    Edges: beats 313 and 4688 give windows [0, 625) and [4375, 5000), the first and last that
    fit 5000 samples; 312 and 4689 would leave the record by one sample and are skipped. A NaN
    at 2311, the last sample of beat 2000's window, drops that window."""
    n, beats = 5000, np.array([312, 313, 1000, 2000, 4688, 4689])
    x = np.random.default_rng(0).normal(0.0, 0.5, n)
    x[2311] = np.nan
    raw = make_db(tmp_path, {"r1": {"fs": 250, "seconds": n / 250, "sig_names": ("MLII",),
                                    "beats": beats, "signal": x[:, None]}})
    params = make_params()
    lead = segment.wfdb_io.read_signal(raw / "synth", "r1", 0)
    y, _ = segment.signals.condition(lead, 250, 250, params.bandpass_hz, params.filter_order)
    expected = np.stack([y[0:625], y[687:1312], y[4375:5000]])
    res = segment.process_record(ctx(raw, params, tmp_path / "out"), "r1")
    assert res.skip is None and res.index["sample"].tolist() == [313, 1000, 4688]
    assert res.segments.skipped == {"record_edge": 2, "nan_samples": 1}
    np.testing.assert_array_equal(layout.load_shard(tmp_path / "out", "r1"), expected)
    windows, centre, status = cut_beats(lead, 250, beats, params)
    assert centre.tolist() == beats.tolist()
    assert status.tolist() == ["record_edge", "", "", "nan_samples", "", "record_edge"]
    np.testing.assert_array_equal(windows, expected)


def test_rhythm_windows_follow_episodes(tmp_path: Path) -> None:
    fs = 250
    rhythm = [(125, "(N\x00"), (25 * fs, "(AFIB\x00"), (28 * fs, "(AFIB"), (45 * fs, "(XYZ")]
    raw = make_db(tmp_path, {"r1": {"fs": fs, "seconds": 60, "rhythm": rhythm}})
    params = make_params(label_mode="rhythm", label_map=RHYTHM)
    res = segment.process_record(ctx(raw, params, tmp_path / "out"), "r1")
    assert res.index[["sample", "label", "symbol"]].values.tolist() == [
        [2500, "N", "(N"], [7500, "AF", "(AFIB"]]
    assert res.segments.skipped == {"before_first_rhythm": 1, "rhythm_change": 2,
                                    "unknown_rhythm": 1}
    assert res.segments.unknown == {"(XYZ": 1}
    assert layout.load_shard(tmp_path / "out", "r1").shape == (2, 2500)


def test_rhythm_window_label_covers_its_first_to_last_sample() -> None:
    """10 s windows at 250 Hz are [0, 2500), [2500, 5000), ...; a window keeps a label only
    when no episode starts inside it after its first sample. AFIB from 5000 starts exactly
    where window 2 starts (window 1 stays N, window 2 is AF); N again from 9999, the last
    sample of window 3 [7500, 10000), makes window 3 a rhythm change."""
    ann = segment.wfdb_io.Annotations(
        sample=np.array([0, 5000, 9999]), symbol=np.array(["+", "+", "+"]),
        aux_note=np.array(["(N", "(AFIB", "(N"]))
    params = make_params(label_mode="rhythm", label_map=RHYTHM)
    seg = rhythm_segments(ann, 250, 15000, params, load_label_map(Path(RHYTHM)))
    assert seg.start.tolist() == [0, 2500, 5000, 10000, 12500]
    assert seg.label.tolist() == ["N", "N", "AF", "N", "N"]
    assert seg.skipped == {"rhythm_change": 1}


@pytest.mark.parametrize("header", [True, False])
def test_record_mode_labels_from_reference_csv(tmp_path: Path, header: bool) -> None:
    raw = make_db(tmp_path, {r: {"fs": 300, "seconds": 35, "annotate": False}
                             for r in ("A1", "A2", "A3", "A4")})
    rows = ["A1,N", "A2,A", "A4,~"]
    (raw / "synth" / "REFERENCE.csv").write_text("\n".join(["record,label"] * header + rows))
    labels = tmp_path / "labels.yaml"
    labels.write_text(yaml.safe_dump({"classes": ["N", "AF"], "map": {"N": "N", "A": "AF"},
                                      "ignore": ["~"]}))
    params = make_params(label_mode="record", label_map=str(labels),
                         reference_csv="REFERENCE.csv", max_skip_fraction=0.5)
    summary = segment.run(params, "synth", raw, tmp_path / "out", workers=1)
    index = layout.read_index(tmp_path / "out" / layout.INDEX)
    assert index.groupby("record").label.agg(set).to_dict() == {"A1": {"N"}, "A2": {"AF"}}
    assert index[index.record == "A2"]["sample"].tolist() == [0, 2500, 5000]
    assert summary["records"]["skipped"]["A3"]["reason"] == "not_in_reference"
    assert summary["segments_skipped"] == {"not_in_reference": 3}
    assert summary["non_beat_annotations"] == {"~": 3}


def test_lead_choice_and_fallback(tmp_path: Path) -> None:
    raw = make_db(tmp_path, {"pref": {"sig_names": ("V1", "MLII"), "seconds": 10},
                             "other": {"sig_names": ("V5", "V2"), "seconds": 10}})
    first = segment.process_record(ctx(raw, make_params(), tmp_path / "o1"), "other")
    assert (first.lead, first.fell_back, first.skip) == ("V5", True, None)
    assert segment.process_record(ctx(raw, make_params(), tmp_path / "o1"), "pref").lead == "MLII"
    skip = segment.process_record(ctx(raw, make_params(lead_fallback="skip"), tmp_path / "o2"),
                                  "other")
    assert skip.skip.reason == "missing_lead" and "V5" in skip.skip.detail
    assert skip.skip.lost == 10  # beats at 1.5 + 0.8 k s, less the one at 9.5 s (record edge)


def _break(folder: Path) -> None:
    (folder / "nodat.dat").unlink()
    dat = folder / "short.dat"
    dat.write_bytes(dat.read_bytes()[:1000])
    (folder / "badhea.hea").write_text("garbage\n")
    (folder / "noatr.atr").unlink()


def test_bad_records_are_counted_skips(tmp_path: Path) -> None:
    n = 360 * 20
    signal = np.column_stack([np.sin(np.arange(n) / 30)] * 2)
    signal[3600:3636] = np.nan  # 0.1 s at 10 s: the beat at 10.1 s and its neighbours touch it
    records = {r: {"seconds": 20} for r in ("good", "nodat", "short", "badhea", "noatr")}
    records["nan"] = {"seconds": 20, "signal": signal, "fmt": "212"}
    raw = make_db(tmp_path, records)
    _break(raw / "synth")
    summary = segment.run(make_params(max_skip_fraction=0.9), "synth", raw, tmp_path / "out",
                          workers=1)
    skipped = summary["records"]["skipped"]
    assert {r: s["reason"] for r, s in skipped.items()} == {
        "nodat": "missing_signal", "short": "unreadable_signal",
        "badhea": "unreadable_header", "noatr": "missing_annotations"}
    assert "nodat.dat" in skipped["nodat"]["detail"] and "fetch" in skipped["nodat"]["detail"]
    assert "short.dat" in skipped["short"]["detail"]
    assert "badhea.hea" in skipped["badhea"]["detail"]
    assert "noatr.atr" in skipped["noatr"]["detail"]
    assert summary["per_record"]["nan"]["skipped"]["nan_samples"] == 3  # beats at 9.5, 10.3, 11.1 s
    assert summary["segments_skipped"]["missing_signal"] == 22  # 24 beats, 2 at the edges
    assert set(layout.read_index(tmp_path / "out" / layout.INDEX).record) == {"good", "nan"}


def test_flat_windows_are_skipped_as_predict_skips_them(tmp_path: Path) -> None:
    """A lead-off stretch (one raw value) drops the beats whose windows lie mostly in it,
    counted as "flat", by the same rule (windows.flat_windows) predict applies."""
    n, fs = 360 * 30, 360
    beats = np.arange(360, n - 360, 288)  # every 0.8 s
    signal = np.column_stack([np.sin(np.arange(n) / 30)] * 2)
    signal[fs * 12:fs * 20] = 0.4  # 8 s lead-off
    raw = make_db(tmp_path, {"off": {"seconds": 30, "signal": signal, "beats": beats}})
    summary = segment.run(make_params(max_skip_fraction=0.9), "synth", raw, tmp_path / "out",
                          workers=1)
    index = layout.read_index(tmp_path / "out" / layout.INDEX)
    time = index["sample"] / 250
    flat = summary["per_record"]["off"]["skipped"]["flat"]
    assert flat == summary["segments_skipped"]["flat"] >= 8  # beats centred at 13.25-18.75 s
    assert not time.between(13.3, 18.7).any() and time.between(2, 10).sum() > 5
    assert len(index) + flat + sum(v for k, v in summary["segments_skipped"].items()
                                   if k != "flat") == len(beats)
    assert layout.load_shard(tmp_path / "out", "off").shape[0] == len(index)


def test_skip_fraction_failure_names_worst_record(tmp_path: Path) -> None:
    raw = make_db(tmp_path, {"ok": {"seconds": 20},
                             "odd": {"seconds": 20, "symbols": ["n"] * 12 + ["N"] * 12}})
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"worst records: odd: \{'unknown_symbol': 12.*max_skip"):
        segment.run(make_params(max_skip_fraction=0.2, label_map=aami_without(tmp_path, "n")),
                    "synth", raw, out, workers=1)
    assert json.loads((out / layout.SUMMARY).read_text())["unknown_labels"] == {"n": 12}
    assert not (out / layout.INDEX).exists() and not (out / layout.META).exists()


def test_run_writes_the_output_format(tmp_path: Path) -> None:
    raw = make_db(tmp_path, {"100": {"fs": 360, "fmt": "212", "seconds": 20},
                             "101": {"fs": 500, "seconds": 15}, "102": {"seconds": 10},
                             "103": {"seconds": 10, "annotate": False}})
    configs = tmp_path / "configs" / "databases"
    configs.mkdir(parents=True)
    (configs / "synth.yaml").write_text('exclude:\n  102: paced\nsplits: {}\n')
    out = tmp_path / "out"
    (out / layout.SHARDS).mkdir(parents=True)
    np.save(out / layout.SHARDS / "stale.npy", np.zeros(1))
    params = make_params(max_skip_fraction=0.1)  # short records: a few beats at the edges
    databases = tmp_path / "configs" / "databases"
    summary = segment.run(params, "synth", raw, out, databases_dir=databases, workers=2)
    index = layout.read_index(out / layout.INDEX)
    assert list(index.columns) == ["record", "row", "sample", "label", "symbol",
                                   *rhythm.BEAT_FEATURES, rhythm.STATUS, *morphology.FEATURES]
    assert np.isfinite(index[list(rhythm.BEAT_FEATURES)].to_numpy()).all()
    # regular synthetic beats every 0.8 s (rounded to whole samples at 360 and 500 Hz)
    np.testing.assert_allclose(index["rr_pre"], 0.8, atol=2e-3)
    np.testing.assert_allclose(index["rr_pre_ratio"], 1.0, atol=1e-3)
    for record, rows in index.groupby("record"):
        assert rows.row.tolist() == list(range(len(rows)))
        assert layout.load_shard(out, record).shape == (len(rows), 625)
    assert sorted(p.name for p in (out / layout.SHARDS).iterdir()) == ["100.npy", "101.npy"]
    meta = json.loads((out / layout.META).read_text())
    assert meta == {"database": "synth", "label_mode": "beat", "classes": list("NSVFQ"),
                    "fs": 250, "window_samples": 625, "offset_samples": 313,
                    "leads": {"100": "MLII", "101": "MLII"},
                    "params": params.recorded(), "signal_quality": signal_quality(),
                    "rhythm": context.describe(params)}
    assert meta["rhythm"]["features"] == [*rhythm.BEAT_FEATURES, *morphology.FEATURES]
    # identical synthetic beats: every beat matches its record's template
    assert (index["qrs_dissimilarity"] < 0.05).all()
    assert summary["records"]["excluded"] == {"102": "paced"}
    assert summary["segments_kept"]["N"] == len(index) == summary["kept_total"]
    assert summary["records"]["processed"] == 2 and summary["lead_fallbacks"] == {}
    assert summary["records"]["skipped"]["103"]["reason"] == "missing_annotations"


def test_cli_runs_as_dvc_calls_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_db(tmp_path, {"100": {"seconds": 100}}, name="mitdb")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    write_committed_params(tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    segment.main(["--params", "params.yaml", "--raw", "raw", "--out", "data/segments"])
    index = pd.read_csv(tmp_path / "data/segments/index.csv", dtype={"record": str})
    assert len(index) == 122 and set(index.label) == {"N"}  # 124 beats, 2 at the end edge


@pytest.mark.integration
def test_real_mitdb_record_counts(tmp_path: Path, physionet_mirror: Path) -> None:
    raw = tmp_path / "raw" / "mitdb"
    raw.mkdir(parents=True)
    for suffix in ("hea", "dat", "atr"):
        (raw / f"100.{suffix}").symlink_to(physionet_mirror / "mitdb" / f"100.{suffix}")
    write_records_file(raw, ["100"])
    summary = segment.run(make_params(), "mitdb", tmp_path / "raw", tmp_path / "out", workers=1)
    kept, lost = summary["segments_kept"], summary["segments_skipped"]["record_edge"]
    # MIT-BIH directory: record 100 has 2239 N, 33 A and 1 V beats
    assert kept["S"] == 33 and kept["V"] == 1 and kept["N"] + lost == 2239 and lost == 4
