"""Candidate windows of one record (before its signal is read) and why any were left out.

Beat mode: one candidate per mapped beat annotation; rhythm mode: fixed windows labelled by the
rhythm episode in effect; record mode: fixed windows with the record's label. Every candidate
dropped is counted by reason in `Segments.skipped`. Each candidate carries its rhythm features
(`data_prep.beats.rhythm`), computed from every beat of the record before any candidate is dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from data_prep.beats import rhythm
from data_prep.beats.windows import SegmentParams
from data_prep.records import signals, wfdb_io
from data_prep.records.configs import LabelMap


class RecordSkip(Exception):
    """A whole record is left out; `lost` labelled segments go with it."""

    def __init__(self, reason: str, lost: int, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.lost, self.detail = reason, lost, detail

    def __reduce__(self) -> tuple:  # travels back from worker processes inside RecordResult
        return RecordSkip, (self.reason, self.lost, self.detail)


@dataclass
class Segments:
    """Candidate windows of one record on the target-rate timeline, and what was left out."""

    sample: np.ndarray
    start: np.ndarray
    symbol: np.ndarray
    label: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=str))
    source: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    rr: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    rr_status: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    skipped: Counter = field(default_factory=Counter)
    non_beat: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)

    def keep(self, mask: np.ndarray, reason: str | None) -> None:
        """Keeps the candidates where `mask`; the others count as skipped for `reason`."""
        if reason is not None and (dropped := int(np.count_nonzero(~mask))):
            self.skipped[reason] += dropped
        for name in ("sample", "start", "symbol", "label", "source", "rr", "rr_status"):
            if getattr(self, name).size:  # label, source and rhythm are empty until set
                setattr(self, name, getattr(self, name)[mask])

    def apply_map(self, labels: LabelMap, unknown_reason: str) -> None:
        """Labels candidates from their symbols; ignored symbols are dropped without a skip."""
        known = np.isin(self.symbol, list(labels.map))
        ignored = np.isin(self.symbol, labels.ignore)
        self.non_beat.update(self.symbol[ignored].tolist())
        self.unknown.update(self.symbol[~known & ~ignored].tolist())
        self.keep(known | ignored, unknown_reason)
        self.keep(~ignored[known | ignored], None)
        self.label = np.array([labels.map[s] for s in self.symbol.tolist()], dtype=str)

    def set_rhythm(self, features: np.ndarray, status: np.ndarray) -> None:
        """Attaches one row of rhythm features (and its status) per current candidate."""
        assert len(features) == len(status) == self.sample.size, "one rhythm row per candidate"
        self.rr, self.rr_status = features, status

    def rhythm_columns(self, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The index columns of the rhythm features (float32 values as written) and status."""
        return {**{name: self.rr[:, i] for i, name in enumerate(names)},
                rhythm.STATUS: self.rr_status}


def beat_times(ann: wfdb_io.Annotations, fs: float, beat_symbols: frozenset[str]) -> np.ndarray:
    """Seconds of every beat annotation of a record (the symbols that are beats), ascending."""
    is_beat = np.isin(ann.symbol, list(beat_symbols))
    return np.sort(ann.sample[is_beat]) / fs


def beat_segments(ann: wfdb_io.Annotations, fs_in: float, n_in: int, params: SegmentParams,
                  labels: LabelMap) -> Segments:
    """One candidate per mapped beat annotation, centred `offset` samples into its window.

    Rhythm features come from every mapped beat (edge beats too: they bound an interval)."""
    offset, length, _ = params.geometry()
    order = np.argsort(ann.sample, kind="stable")
    sample_in, symbol = ann.sample[order], ann.symbol[order]
    sample = signals.map_samples(sample_in, fs_in, params.target_fs)
    seg = Segments(sample, sample - offset, symbol, source=sample_in)
    is_beat = np.isin(symbol, list(labels.map))
    feats = np.zeros((symbol.size, len(rhythm.BEAT_FEATURES)), dtype=np.float32)
    status = np.full(symbol.size, "", dtype=object)
    feats[is_beat], status[is_beat] = rhythm.beat_features(sample_in[is_beat] / fs_in,
                                                           params.rhythm)
    seg.set_rhythm(feats, status)
    seg.apply_map(labels, "unknown_symbol")
    n_out = signals.resampled_length(n_in, fs_in, params.target_fs)
    seg.keep(seg.source < n_in, "annotation_past_end")
    seg.keep(signals.inside(seg.start, length, n_out), "record_edge")
    return seg


def rhythm_segments(ann: wfdb_io.Annotations, fs_in: float, n_out: int, params: SegmentParams,
                    labels: LabelMap) -> Segments:
    """Fixed windows labelled by the rhythm episode (`+` aux_note) in effect over all of them."""
    _, length, stride = params.geometry()
    is_rhythm = ann.symbol == "+"
    onsets = signals.map_samples(ann.sample[is_rhythm], fs_in, params.target_fs)
    names = ann.aux_note[is_rhythm]
    changed = np.r_[True, names[1:] != names[:-1]]  # a repeated name does not start an episode
    onsets, names = onsets[changed], names[changed]
    starts = signals.window_starts(n_out, length, stride)
    first = np.searchsorted(onsets, starts, side="right") - 1
    last = np.searchsorted(onsets, starts + length - 1, side="right") - 1
    seg = Segments(starts, starts, names[first] if names.size else np.full(starts.size, ""))
    seg.keep(first >= 0, "before_first_rhythm")
    seg.keep((first == last)[first >= 0], "rhythm_change")
    seg.apply_map(labels, "unknown_rhythm")
    return seg


def attach_window_rhythm(seg: Segments, times_s: np.ndarray, params: SegmentParams) -> None:
    """Window RR statistics of rhythm/record-mode candidates from the record's beat times."""
    _, length, _ = params.geometry()
    fs = params.target_fs
    seg.set_rhythm(*rhythm.window_features(times_s, seg.start / fs, length / fs, params.rhythm))


def record_segments(label: str, n_out: int, params: SegmentParams, labels: LabelMap) -> Segments:
    """Fixed windows over the whole record, all with the record's label."""
    _, length, stride = params.geometry()
    starts = signals.window_starts(n_out, length, stride)
    if not starts.size:
        raise RecordSkip("shorter_than_window", 1, f"{n_out} samples < window of {length}")
    seg = Segments(starts, starts, np.full(starts.size, label))
    seg.apply_map(labels, "unknown_label")
    return seg
