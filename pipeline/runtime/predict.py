"""Classify new ECG records with an exported bundle: the light runtime for research scripts.

Imports numpy, scipy, pandas, onnxruntime and `data_prep` (lead choice, resampling, band-pass,
window cutting and spectrogram images: the very functions the segment and spectrogram stages
use) - never torch, timm, mlflow or dvc. Reads a bundle folder (`pipeline.runtime.bundle`)
and WFDB records (any sampling rate wfdb reads); writes nothing (the command line,
`pipeline.predict` or `ecg-predict`, writes the CSV).

    from pipeline.runtime import load_bundle
    bundle = load_bundle("models/export/mitdb/vgg16.tv_in1k-frozen")
    table = bundle.predict_record("mitdb/100")         # beats from 100.atr when present

One row per beat (beat bundles) or window (rhythm/record bundles): record, lead (the lead read,
also logged), sample (at the record's own rate), time_s, beat_source, symbol and label
(reference annotation, if any), status, note, pred and prob_<class>. Rows whose status is not
"ok" carry no prediction: record_edge / annotation_past_end (window leaves the record),
nan_samples, flat (lead off or saturated), and record-level rows (shorter_than_window, no_beats,
all_nan, signal_error, record_error). Each is also logged as a warning. Two-lead bundles
(spectrogram.image two_lead) also read the record's second lead as the segment stage chose it
(`data_prep.beats.second_lead`): rows whose second lead is NaN or flat say "second lead" in
the note column; a record without one is a missing_second_lead row or, as the bundle was
trained, uses its first lead twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from data_prep.beats import context
from data_prep.beats.second_lead import MISSING, both_leads
from data_prep.beats.windows import SegmentParams, cut_beats, cut_fixed, flat_windows
from data_prep.images.channels import kind_images, leads_needed
from data_prep.images.stft import ImageParams
from data_prep.layout import list_records
from data_prep.records import signals, wfdb_io
from data_prep.records.configs import LabelMap, resolve_annotator
from pipeline.evaluation import record_level
from pipeline.runtime import predict_records, predict_table
from pipeline.runtime.bundle import read_bundle_json
from pipeline.runtime.onnx_runner import onnx_session, run_probs

log = logging.getLogger(__name__)

BUNDLE_ANNOTATOR = "bundle"  # predict_record default: the annotator the bundle was trained with
BASE = predict_table.BASE


@dataclass
class Bundle:
    """A loaded bundle: its metadata, preprocessing params and ONNX session."""

    path: Path
    meta: dict
    segment: SegmentParams
    spectrogram: ImageParams
    labels: LabelMap
    session: ort.InferenceSession

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def columns(self) -> list[str]:
        return predict_table.columns(self.classes)

    def per_record(self, table: pd.DataFrame) -> pd.DataFrame:
        """Record and rhythm modes: one row per record from its classified windows, by
        evaluate's rule (mean window probabilities, argmax;
        `pipeline.evaluation.record_level`)."""
        return record_level.aggregate(table[table["status"] == "ok"], self.classes)

    @property
    def rhythm_features(self) -> list[str]:
        """The rhythm features the network takes (`rr` input), in order; empty: images only."""
        return list(self.meta["model"].get("rr_input", {}).get("features", []))

    def predict_images(self, images: np.ndarray, rr: np.ndarray | None = None) -> np.ndarray:
        """Softmax probabilities (n, K) of uint8 images (n, S, S) or (n, 3, S, S) as the stage
        makes them (`data_prep.images.channels`) and rhythm features (n, F) as
        `data_prep.beats.rhythm` does."""
        rr = np.zeros((len(images), 0), np.float32) if rr is None else rr
        return run_probs(self.session, images, rr, len(self.classes))

    def rhythm(self, beats: np.ndarray, fs: float, symbols: np.ndarray | None,
               starts: np.ndarray | None = None) -> np.ndarray:
        """Rhythm features exactly as the segment stage computes them
        (`data_prep.beats.context`)."""
        if not self.rhythm_features:
            return np.zeros((len(beats) if starts is None else len(starts), 0), np.float32)
        mapped = None if symbols is None else np.isin(symbols, list(self.labels.map))
        return context.rhythm_rows(self.segment, np.asarray(beats, np.float64) / fs, mapped,
                                   starts)

    def predict_signal(self, signal: np.ndarray, fs: float, beats: np.ndarray | None = None,
                       *, record: str = "signal", symbols: np.ndarray | None = None,
                       second: np.ndarray | None = None, second_fs: float | None = None,
                       lead: str = "") -> pd.DataFrame:
        """Classifies one in-memory lead (and, for two_lead bundles, its second lead).

        Args:
            signal: 1-D lead in physical units (mV for mitdb-like records); NaN where invalid.
            fs: its sampling rate in Hz (resampled to the bundle's rate here).
            beats: beat samples at `fs`; None runs the XQRS detector (beat bundles only).
            record: the name written in the record column.
            symbols: annotation symbol of each beat, for the symbol/label columns.
            second: two_lead bundles: the second lead (as `signal`); None applies the bundle's
                segment.second_lead_missing (`data_prep.beats.second_lead`).
            second_fs: its sampling rate (default `fs`).
            lead: the lead's name, for the lead column.
        """
        return self._classify(signal, fs, beats, record, symbols, second, second_fs
                              ).assign(lead=lead)

    def _classify(self, signal: np.ndarray, fs: float, beats: np.ndarray | None, record: str,
                  symbols: np.ndarray | None, second: np.ndarray | None,
                  second_fs: float | None) -> pd.DataFrame:
        x = np.asarray(signal, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"signal must be one lead (1-D), got shape {x.shape}; pick a column")
        if np.isnan(x).all():
            return self._problem(record, "all_nan", "every sample is NaN")
        _, length, _ = self.segment.geometry()
        if signals.resampled_length(x.size, fs, self.segment.target_fs) < length:
            return self._problem(record, "shorter_than_window",
                                 f"{x.size / fs:.2f} s of signal < one {self._window_s()} s window")
        source = "annotation" if beats is not None else "detector"
        if self.segment.label_mode == "beat" and beats is None:
            beats = wfdb_io.detect_qrs(signals.fill_nan(x)[0], fs)
        two = leads_needed(self.spectrogram) > 1
        if two and second is None and self.segment.second_lead_missing == "skip":
            return self._problem(record, MISSING, "no second lead (the bundle skips such records)")
        try:
            table = self._cut(x, fs, beats, record, source, symbols,
                              None if second is None else (second, second_fs or fs))
        except ValueError as err:  # conditioning failed, e.g. shorter than the filter padding
            return self._problem(record, "signal_error", str(err))
        if table.empty:
            return self._problem(record, "no_beats", f"no beat in {x.size / fs:.1f} s of signal")
        return predict_table.finish(table, self.classes, self.segment.label_mode)

    def predict_record(self, record_path: str | Path, annotator: str | None = BUNDLE_ANNOTATOR,
                       lead: str | None = None) -> pd.DataFrame:
        """Classifies one WFDB record (`dir/name`, with or without .hea).

        Args:
            record_path: the record, e.g. "mitdb/100".
            annotator: beat annotation extension; default the bundle's ("atr"); None always
                detects beats. A record without that file gets detected beats too.
            lead: a lead name to use instead of the bundle's preference list.

        Raises:
            ValueError: none of the bundle's leads is in the record (names the leads present).
            FileNotFoundError: the record's header or signal file is missing.
        """
        path = Path(record_path)
        folder, name = path.parent, path.name.removesuffix(".hea").removesuffix(".dat")
        tolerant = self.segment.tolerant_headers
        header = wfdb_io.read_header(folder, name, tolerant=tolerant)
        wanted = [lead] if lead else self.segment.leads
        channel, _ = signals.choose_lead(header.sig_names, wanted, "skip")
        if channel is None:
            raise ValueError(
                f"record {folder / name}: leads {list(header.sig_names)}, none of {wanted} that "
                f"the bundle was trained on; pass lead=<name> (CLI --lead) to use another lead "
                "knowingly")
        x = wfdb_io.read_signal(folder, name, channel, tolerant=tolerant)
        fs = header.signal_fs(channel)  # the lead's own rate: it may hold several per frame
        beats = symbols = None
        if self.segment.label_mode == "beat":
            ext = (resolve_annotator(self.segment.annotator) if annotator == BUNDLE_ANNOTATOR
                   else annotator)
            beats, symbols = predict_records.annotated_beats(folder, name, ext,
                                                             self.labels.ignore, tolerant)
        if beats is not None:  # annotations count frames
            beats = signals.map_samples(beats, header.fs, fs)
        x2, fs2 = (predict_records.second_lead(folder, header, channel,
                                               self.segment.second_leads, tolerant)
                   if leads_needed(self.spectrogram) > 1 else (None, None))
        log.info("record %s: lead %s", name, header.sig_names[channel])
        return self.predict_signal(x, fs, beats, record=name, symbols=symbols, second=x2,
                                   second_fs=fs2, lead=header.sig_names[channel])

    def predict_folder(self, folder: str | Path, annotator: str | None = BUNDLE_ANNOTATOR,
                       lead: str | None = None) -> pd.DataFrame:
        """Every record of a folder (its RECORDS file, else its .hea files); a record that fails
        gives one record_error row (and a warning) instead of stopping the others."""
        tables = [self.predict_record_or_error(Path(folder) / name, annotator, lead)
                  for name in list_records(Path(folder))]
        return pd.concat(tables, ignore_index=True)

    def predict_record_or_error(self, record_path: str | Path,
                                annotator: str | None = BUNDLE_ANNOTATOR,
                                lead: str | None = None) -> pd.DataFrame:
        """`predict_record`, with any error of this record as one record_error row (its message
        in the note column; the traceback in the debug log), as folder runs report it."""
        name = Path(record_path).name.removesuffix(".hea").removesuffix(".dat")
        try:
            return self.predict_record(record_path, annotator, lead)
        except (ValueError, OSError) as err:
            note = str(err)
        except Exception as err:  # an odd file wfdb trips on, or a bug: this record only
            note = (f"record {name}: unexpected {type(err).__name__}: {err}; re-run with "
                    "--debug for the traceback and report it")
        log.debug("record %s failed", name, exc_info=True)
        return self._problem(name, "record_error", note)

    # ------------------------------------------------------------------------- internals

    def _cut(self, x: np.ndarray, fs: float, beats: np.ndarray | None, record: str,
             source: str, symbols: np.ndarray | None,
             second: tuple[np.ndarray, float] | None = None) -> pd.DataFrame:
        """Windows as the segment stage cuts them, images, ONNX; one row per beat/window."""
        seg = self.segment
        offset, length, _ = seg.geometry()
        if seg.label_mode == "beat":
            assert beats is not None  # predict_signal detects them for beat bundles
            windows, centre, status = cut_beats(x, fs, beats, seg)
            starts, sample = centre - offset, np.asarray(beats, dtype=np.int64)
            rr = self.rhythm(beats, fs, symbols)
        else:
            windows, starts, status = cut_fixed(x, fs, seg)
            sample, source = signals.map_samples(starts, seg.target_fs, fs), "window"
            rr = self.rhythm(self._window_beats(x, fs, beats), fs, None, starts)
        ok = np.flatnonzero(status == "")
        flat = flat_windows(x, fs, starts[ok], length, seg.target_fs)
        status[ok[flat]] = "flat"
        leads, note = [windows[~flat]], np.full(len(status), "", dtype=object)
        if leads_needed(self.spectrogram) > 1:  # as the stage: rows bad in it are left out
            rows = ok[~flat]
            leads, status[rows] = both_leads(leads[0], starts[rows], second, seg)
            note[rows[status[rows] != ""]] = "second lead"
            note[note == ""] = "no second lead: first lead duplicated" if second is None else ""
        status[status == ""] = "ok"
        probs = np.full((len(status), len(self.classes)), np.nan, dtype=np.float32)
        good = status == "ok"
        annotated = symbols is not None
        symbols = np.asarray(symbols if annotated else [""] * len(status), dtype=str)
        if good.any():
            images = kind_images(leads, seg.target_fs, self.spectrogram)
            rr = rr[good]
            if self.rhythm_features:  # + shape against a template of the beats the stage keeps
                mapped = np.isin(symbols[good], list(self.labels.map)) if annotated else None
                rr = np.hstack([rr, context.shape_features(seg, leads[0], mapped)])
            probs[good] = self.predict_images(images, rr)
        table = pd.DataFrame({
            "record": record, "lead": "", "sample": sample, "time_s": sample / fs,
            "beat_source": source,
            "symbol": symbols, "label": [self.labels.map.get(s, "") for s in symbols],
            "status": status.astype(str), "note": note.astype(str),
            "pred": np.where(good, np.asarray(self.classes)[np.nan_to_num(probs).argmax(1)], ""),
            **{f"prob_{c}": probs[:, i] for i, c in enumerate(self.classes)}})
        return table

    def _window_beats(self, x: np.ndarray, fs: float, beats: np.ndarray | None) -> np.ndarray:
        """Beat samples for window statistics: given ones, else the detector's (as segment in
        record mode)."""
        if beats is not None or not self.rhythm_features:
            return np.asarray(beats if beats is not None else [], dtype=np.int64)
        return wfdb_io.detect_qrs(signals.fill_nan(x)[0], fs)

    def _problem(self, record: str, status: str, note: str) -> pd.DataFrame:
        return predict_table.problem(record, status, note, self.classes)

    def _window_s(self) -> float:
        return self.segment.geometry()[1] / self.segment.target_fs


def load_bundle(path: str | Path) -> Bundle:
    """Loads an export bundle (bundle.json + model.onnx); nothing is unpickled.

    Raises:
        FileNotFoundError: not a bundle folder, or its model.onnx is missing.
        BundleFormatError: a bundle_format this package cannot read (names the fix).
    """
    path = Path(path)
    meta = read_bundle_json(path)
    pre = meta["preprocessing"]
    session = onnx_session(path / meta["model"]["file"])
    label_map = {k: meta["label_map"][k] for k in ("classes", "map", "ignore")}
    return Bundle(path, meta, SegmentParams.model_validate(pre["segment"]),
                  ImageParams.model_validate(pre["spectrogram"]),
                  LabelMap.model_validate(label_map), session)
