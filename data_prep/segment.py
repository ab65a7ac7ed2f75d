"""Segment stage: WFDB records -> labelled, band-passed signal windows at one sampling rate.

Reads   <raw>/<dataset.name>/ (the records its RECORDS file lists), the label map YAML
        (segment.label_map), configs/databases/<name>.yaml when it exists (excluded records,
        annotator) and, in record mode, the reference CSV ("record,label").
Writes  <out>/shards/<record>.npy  float32 (n, L) windows at segment.target_fs
        <out>/second_lead/shards/<record>.npy  the same windows of the record's second lead,
                                   with segment.second_leads (`data_prep.beats.second_lead`)
        <out>/index.csv            record,row,sample,label,symbol
        <out>/meta.json            database, label_mode, classes, fs, window/offset samples, leads,
                                   params (annotator resolved), signal_quality (the flat rule)
        <out>/summary.json         records processed/skipped/excluded, segments kept by class and
                                   skipped by reason, non-beat annotations, lead fallbacks
Run     python -m data_prep.segment --params params.yaml --raw data/raw --out data/segments

Label modes: `beat` cuts [beat - before, beat + after) around each annotated beat; `rhythm`
and `record` cut fixed windows labelled by the rhythm episode in effect (`+` annotations) or
by the record's row in the reference CSV. Symbols (rhythm names, record labels) in the label
map's `ignore` list are counted as non-beat annotations, not skips. Every other beat, window or
record left out is counted by reason (unknown symbol, record edge, NaN samples, "flat" windows of
a lead-off or saturated lead by the rule predict applies, unreadable record...); the stage
fails when skipped / (kept + skipped) exceeds segment.max_skip_fraction.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_prep import layout
from data_prep.beats import context, morphology, rhythm, second_lead
from data_prep.beats.candidates import (
    RecordSkip,
    Segments,
    attach_window_rhythm,
    beat_segments,
    beat_times,
    record_segments,
    rhythm_segments,
)
from data_prep.beats.segment_summary import check_skips as _check
from data_prep.beats.segment_summary import summarise
from data_prep.beats.windows import SegmentParams, condition_and_cut, flat_windows, signal_quality
from data_prep.cli import run_main
from data_prep.params import DatasetParams, parse_section, read_yaml
from data_prep.records import signals, wfdb_io
from data_prep.records.configs import (
    DATABASES_DIR,
    DatabaseConfig,
    LabelMap,
    load_database,
    load_label_map,
    read_reference,
    resolve_annotator,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


# ----------------------------------------------------------------------------- one record


@dataclass(frozen=True)
class Context:
    """Everything a worker needs to segment one record (picklable)."""

    params: SegmentParams
    labels: LabelMap
    record_dir: Path
    out_dir: Path
    annotator: str
    reference: dict[str, str]
    beat_symbols: frozenset[str]  # annotation symbols that are beats (segment.rhythm.beat_labels)


@dataclass
class RecordResult:
    """What one record contributed: its index rows and its counts (the shard is on disk)."""

    record: str
    segments: Segments | None = None
    lead: str | None = None
    second: str | None = None  # the second lead's name (segment.second_leads)
    duplicated: bool = False  # no second lead: the first lead stands in (second_lead_missing)
    fell_back: bool = False
    header_dropped: tuple[str, ...] = ()
    skip: RecordSkip | None = None
    index: pd.DataFrame | None = None


def _read(reader: Callable[..., T], *args: object, missing: str, unreadable: str,
          lost: int = 0) -> T:
    """Calls a wfdb_io reader; its errors (which name record, file and fix) skip the record."""
    try:
        return reader(*args)
    except FileNotFoundError as err:
        raise RecordSkip(missing, lost, str(err)) from None
    except ValueError as err:
        raise RecordSkip(unreadable, lost, str(err)) from None


def _header(ctx: Context, record: str) -> wfdb_io.Header:
    """The record's header; one that cannot be read skips the record with the segments it
    would have given: its labelled annotations when they can be read, else 1 (said so)."""
    try:
        return wfdb_io.read_header(ctx.record_dir, record, tolerant=ctx.params.tolerant_headers)
    except (FileNotFoundError, ValueError) as err:
        reason = "missing_header" if isinstance(err, FileNotFoundError) else "unreadable_header"
        lost, how = 1, "counted as 1 lost segment: how many it holds is unknown"
        if ctx.params.label_mode == "beat":
            try:
                ann = wfdb_io.read_annotations(ctx.record_dir, record, ctx.annotator)
                lost = max(int(np.isin(ann.symbol, list(ctx.labels.map)).sum()), 1)
                how = f"{lost} labelled annotations in its .{ctx.annotator} lost"
            except (FileNotFoundError, ValueError):
                pass
        raise RecordSkip(reason, lost, f"{err} ({how})") from None


def _candidates(ctx: Context, record: str, header: wfdb_io.Header, n_out: int) -> Segments:
    params = ctx.params
    if params.label_mode == "record":
        if record not in ctx.reference:
            _, length, stride = params.geometry()
            lost = signals.window_starts(n_out, length, stride).size
            raise RecordSkip("not_in_reference", lost, f"record {record} has no reference row")
        return record_segments(ctx.reference[record], n_out, params, ctx.labels)
    ann = _read(partial(wfdb_io.read_annotations, tolerant=params.tolerant_headers),
                ctx.record_dir, record, ctx.annotator,
                missing="missing_annotations", unreadable="unreadable_annotations")
    if params.label_mode == "beat":
        return beat_segments(ann, header.fs, header.n_samples, params, ctx.labels)
    seg = rhythm_segments(ann, header.fs, n_out, params, ctx.labels)
    attach_window_rhythm(seg, beat_times(ann, header.fs, ctx.beat_symbols), params)
    return seg


def _windows(ctx: Context, record: str, header: wfdb_io.Header, seg: Segments,
             channel: int) -> np.ndarray:
    """Reads, conditions and cuts the record's signal; windows touching NaN samples or failing
    the signal-quality rule (`windows.flat_windows`, as predict applies it) are skipped."""
    params, lost = ctx.params, seg.sample.size
    x = _read(partial(wfdb_io.read_signal, tolerant=params.tolerant_headers), ctx.record_dir,
              record, channel, missing="missing_signal", unreadable="unreadable_signal", lost=lost)
    if np.isnan(x).all():
        raise RecordSkip("all_nan", lost, f"record {record}: every sample of the lead is NaN")
    if params.label_mode == "record":  # no beat annotations: the detector gives the beats
        fs = header.signal_fs(channel)
        filled = np.nan_to_num(x)
        attach_window_rhythm(seg, wfdb_io.detect_qrs(filled, fs) / fs, params)
    try:
        windows, clean = condition_and_cut(x, header.signal_fs(channel), seg.start, params)
    except ValueError as err:  # e.g. a record shorter than the filter's padding
        raise RecordSkip("signal_error", lost, f"record {record}: {err}") from None
    seg.keep(clean, "nan_samples")
    _, length, _ = params.geometry()
    flat = flat_windows(x, header.fs, seg.start, length, params.target_fs)
    seg.keep(~flat, "flat")
    return windows[~flat]


def process_record(ctx: Context, record: str) -> RecordResult:
    """Segments one record and writes its shard; a bad record becomes a counted skip."""
    result = RecordResult(record)
    try:
        header = _header(ctx, record)
        result.header_dropped = header.dropped
        n_out = signals.resampled_length(header.n_samples, header.fs, ctx.params.target_fs)
        result.segments = seg = _candidates(ctx, record, header, n_out)
        channel, result.fell_back = signals.choose_lead(
            header.sig_names, ctx.params.leads, ctx.params.lead_fallback)
        if channel is None:
            fix = "add one there or set lead_fallback: first" if header.sig_names else "no signal"
            raise RecordSkip("missing_lead", seg.sample.size, f"record {record} has leads "
                             f"{list(header.sig_names)}, none of segment.leads; {fix}")
        result.lead = header.sig_names[channel]
        windows = second = _windows(ctx, record, header, seg, channel)
        if ctx.params.second_leads:
            windows, second, result.second, result.duplicated = second_lead.segment_windows(
                ctx.params, ctx.record_dir, header, channel, seg, windows)
    except RecordSkip as skip:
        log.warning("record %s skipped (%s)", record, skip)
        result.skip = skip
        return result
    except Exception as err:  # not a foreseen bad record: stop, but say which record
        raise RuntimeError(f"record {record}: unexpected {type(err).__name__}: {err}") from err
    if windows.shape[0]:
        layout.save_shard(ctx.out_dir, record, windows)
        if ctx.params.second_leads:
            layout.save_shard(ctx.out_dir / layout.SECOND_LEAD, record, second)
        result.index = pd.DataFrame({"record": record, "row": np.arange(windows.shape[0]),
                                     "sample": seg.sample, "label": seg.label,
                                     "symbol": seg.symbol,
                                     **seg.rhythm_columns(rhythm.feature_names(
                                         ctx.params.label_mode)),
                                     **_shape_columns(ctx.params, windows)})
    return result


def _shape_columns(params: SegmentParams, windows: np.ndarray) -> dict[str, np.ndarray]:
    shape = context.shape_features(params, windows)
    return dict(zip(morphology.feature_names(params.label_mode, params.morphology), shape.T,
                    strict=True))


# ----------------------------------------------------------------------------- run + CLI


def _process_all(ctx: Context, records: list[str], workers: int | None) -> list[RecordResult]:
    workers = min(workers or os.cpu_count() or 1, len(records))
    bar = partial(tqdm, total=len(records), desc="segment", unit="record", disable=None)
    if workers <= 1:
        return [process_record(ctx, record) for record in bar(records)]
    with ProcessPoolExecutor(workers) as pool:  # records are independent; order is kept
        return list(bar(pool.map(partial(process_record, ctx), records)))


def _clear(out_dir: Path) -> None:
    """Removes a previous run's outputs so that a failed run leaves no stale index or shard."""
    for name in (layout.INDEX, layout.META, layout.SUMMARY):
        (out_dir / name).unlink(missing_ok=True)
    for shard in [*(out_dir / layout.SHARDS).glob("**/*.npy"),
                  *(out_dir / layout.SECOND_LEAD).glob("**/*.npy")]:
        shard.unlink()


def _context(params: SegmentParams, database: str, raw_dir: Path, out_dir: Path,
             db: DatabaseConfig) -> Context:
    """Resolves inputs (the annotator by `configs.resolve_annotator`); a relative reference_csv
    is looked up in <raw>/<database>/, then in <raw>/."""
    record_dir = raw_dir / database
    if not record_dir.is_dir():
        raise FileNotFoundError(f"{record_dir}: no such folder; run the fetch stage first")
    reference = {}
    if params.label_mode == "record":
        ref = Path(params.reference_csv or "")
        found = [p for p in (record_dir / ref, raw_dir / ref) if p.is_file()]
        reference = read_reference(found[0] if found else record_dir / ref)
    db.check_label_mode(params.label_mode, database)
    annotator = resolve_annotator(params.annotator, db)
    params = params.model_copy(update={"leads": db.lead_preference(params.leads)})
    beats = params.rhythm.beat_labels
    beat_symbols = frozenset(load_label_map(Path(beats)).map) if beats else frozenset()
    return Context(params, load_label_map(Path(params.label_map)), record_dir, out_dir,
                   annotator, reference, beat_symbols)


def run(params: SegmentParams, database: str, raw_dir: Path, out_dir: Path, *,
        databases_dir: Path = DATABASES_DIR, workers: int | None = None) -> dict:
    """Segments every record of <raw_dir>/<database> into <out_dir>; returns the summary.

    Raises:
        ValueError: more than max_skip_fraction of the labelled segments were skipped, or none
            was kept (summary.json is written first, index.csv and meta.json are not).
    """
    db = load_database(database, databases_dir)
    ctx = _context(params, database, Path(raw_dir), Path(out_dir), db)
    records = layout.list_records(ctx.record_dir)
    excluded = {r: db.exclude[r] for r in records if r in db.exclude}
    _clear(ctx.out_dir)
    results = _process_all(ctx, [r for r in records if r not in excluded], workers)
    summary = summarise(results, excluded, ctx.labels, params, database)
    layout.write_json(ctx.out_dir / layout.SUMMARY, summary)
    _check(summary, ctx.out_dir / layout.SUMMARY)
    offset, length, _ = params.geometry()
    layout.write_index(ctx.out_dir / layout.INDEX,
                       pd.concat([r.index for r in results if r.index is not None]))
    layout.write_json(ctx.out_dir / layout.META, {
        "database": database, "label_mode": params.label_mode, "classes": ctx.labels.classes,
        "fs": params.target_fs, "window_samples": length, "offset_samples": offset,
        "leads": {r.record: r.lead for r in results if r.index is not None},
        **({layout.SECOND_LEAD: {r.record: r.second for r in results if r.index is not None}}
           if params.second_leads else {}),
        # the annotator as resolved (params, database config or default): export and predict
        # read what the stage did from here, never from params.yaml
        "params": params.model_copy(update={"annotator": ctx.annotator}).recorded(),
        "signal_quality": signal_quality(),
        "rhythm": context.describe(params),
    })
    log.info("%s: %d segments kept %s, %d skipped (%.2f%%)", database, summary["kept_total"],
             summary["segments_kept"], summary["skipped_total"], 100 * summary["skip_fraction"])
    return summary


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m data_prep.segment --params params.yaml --raw data/raw --out data/segments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--raw", type=Path, required=True, help="folder holding <dataset.name>/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = read_yaml(args.params)
    dataset = parse_section(data, "dataset", DatasetParams, str(args.params))
    params = parse_section(data, "segment", SegmentParams, str(args.params))
    run(params, dataset.name, args.raw, args.out, workers=args.workers)


if __name__ == "__main__":
    run_main(main)
