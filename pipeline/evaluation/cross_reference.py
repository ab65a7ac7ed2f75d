"""Another database's side of a cross-database evaluation (`pipeline.cross_evaluate`).

Which records to evaluate (all, the config's test split, or a list; the config's excluded
records left out and named), each record's subject (the bootstrap unit), the lead each record
uses (the bundle's preference list, then the database config's lead names) and the reference
label of every row `pipeline.predict` returns, through the bundle's label map:

- beat bundles: the annotation symbol of each beat (predict's `label` column);
- rhythm bundles: the rhythm episode over each window, as the segment stage labels windows
  (`data_prep.beats.candidates.rhythm_segments`);
- record bundles: the record's row of the reference CSV (challenge `REFERENCE.csv`).

A row without a reference label keeps a reason (its predict status when it was not
classified, else no_reference_annotations, unknown_symbol, no_reference_rhythm,
not_in_reference, unmapped_label...): nothing is left out uncounted. Torch-free.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.beats.candidates import rhythm_segments
from data_prep.layout import ENV_MIRROR, list_records, resolve_mirror
from data_prep.records import signals, wfdb_io
from data_prep.records.configs import DatabaseConfig, read_reference, resolve_annotator
from pipeline.runtime.predict import BUNDLE_ANNOTATOR, Bundle

log = logging.getLogger(__name__)

SPLITS = ("all", "test")
OK = "ok"


@dataclass
class Selection:
    """The records evaluated, and the ones left out with the reason."""

    split: str
    records: list[str]
    excluded: dict[str, str] = field(default_factory=dict)
    definition: str | None = None


def database_folder(mirror: Path | None, database: str,
                    env: Mapping[str, str] | None = None) -> Path:
    """`<mirror>/<database>/`, the mirror from `mirror`, else $ECG_PHYSIONET_MIRROR (as fetch).

    Raises:
        FileNotFoundError: no mirror given, or no such folder; names both fixes.
    """
    root = resolve_mirror(mirror, os.environ if env is None else env)
    if root is None:
        raise FileNotFoundError(f"no mirror to read '{database}' from: pass --mirror DIR (a "
                                f"folder holding {database}/) or set {ENV_MIRROR}")
    folder = root / database
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; a mirror is laid out as "
                                f"<mirror>/{database}/ with RECORDS and the record files")
    return folder


def select_records(folder: Path, config: DatabaseConfig, split: str,
                   wanted: list[str] | None = None, definition: str | None = None) -> Selection:
    """The records of `folder` to evaluate: every one (`all`), the test records of a split
    definition of the config (`test`; default its default_split), or `wanted`; the config's
    excluded records are always left out.

    Raises:
        ValueError: an unknown split, a config without that split definition, or records the
            folder does not hold (named, with the fix).
    """
    if split not in SPLITS:
        raise ValueError(f"--split '{split}': use one of {SPLITS}")
    available = list_records(folder)
    if wanted:
        chosen, split = list(dict.fromkeys(wanted)), "records"
    elif split == "test":
        definition = definition or config.default_split
        if definition not in config.splits:
            raise ValueError(
                f"--split test: configs/databases/<db>.yaml of {folder.name} defines no split "
                f"'{definition}' (it has {sorted(config.splits) or 'none'}); add one there, "
                "pass --split-definition NAME, or use --split all")
        chosen = list(config.splits[definition].test)
    else:
        chosen = available
    if missing := [r for r in chosen if r not in set(available)]:
        raise ValueError(f"records {missing} are not in {folder}/RECORDS; re-sync the mirror "
                         "or fix the record list")
    excluded = {r: config.exclude[r] for r in chosen if r in config.exclude}
    if excluded:
        log.info("%s: left out as the database config says: %s", folder.name, excluded)
    return Selection(split, [r for r in chosen if r not in excluded], excluded,
                     definition if split == "test" else None)


def choose_lead(bundle: Bundle, folder: Path, record: str, config: DatabaseConfig) -> str | None:
    """The lead to read: the bundle's preference list first, then the database config's lead
    names; None when the record has none of them (or its header cannot be read)."""
    try:
        header = wfdb_io.read_header(folder, record, tolerant=bundle.segment.tolerant_headers)
    except (FileNotFoundError, ValueError):
        return None  # predict reports the header's error for this record
    channel, _ = signals.choose_lead(header.sig_names, config.lead_preference(
        bundle.segment.leads), "skip")
    return None if channel is None else header.sig_names[channel]


def annotator_for(bundle: Bundle, config: DatabaseConfig, explicit: str | None) -> str | None:
    """The annotation extension of the evaluated database: `explicit` ("none": detect beats),
    else the database config's, else the bundle's."""
    if explicit is not None:
        return None if explicit.lower() == "none" else explicit
    return config.annotator or BUNDLE_ANNOTATOR


def label_rows(bundle: Bundle, folder: Path, record: str, table: pd.DataFrame,
               annotator: str | None, reference: dict[str, str] | None) -> pd.DataFrame:
    """`table` (one record's predict rows) with `label` set to the reference class ("" when
    there is none) and `reason` ("" for a scored row, else why it is not)."""
    table = table.copy()
    mode = bundle.segment.label_mode
    reason: np.ndarray | str
    if mode == "beat":
        reason = np.where(table["beat_source"] == "detector", "no_reference_annotations",
                          "unknown_symbol")
    elif mode == "record":
        table["label"], reason = _record_label(bundle, record, reference or {})
    else:
        table["label"], reason = _rhythm_labels(bundle, folder, record, table, annotator)
    ok = table["status"] == OK
    table["reason"] = np.where(~ok, table["status"], np.where(table["label"] == "", reason, ""))
    return table


def _record_label(bundle: Bundle, record: str, reference: dict[str, str]) -> tuple[str, str]:
    if record not in reference:
        return "", "not_in_reference"
    raw = reference[record]
    if raw in bundle.labels.ignore:
        return "", "ignored_label"
    return (bundle.labels.map[raw], "") if raw in bundle.labels.map else ("", "unmapped_label")


def _rhythm_labels(bundle: Bundle, folder: Path, record: str, table: pd.DataFrame,
                   annotator: str | None) -> tuple[np.ndarray, str]:
    """Each window's rhythm class, by the segment stage's rule (one episode over the whole
    window, named in the label map); windows in predict's order (`cut_fixed`)."""
    labels = np.full(len(table), "", dtype=object)
    seg = bundle.segment
    ext = resolve_annotator(seg.annotator) if annotator == BUNDLE_ANNOTATOR else annotator
    if ext is None or not (folder / f"{record}.{ext}").is_file():
        return labels, "no_reference_annotations"
    header = wfdb_io.read_header(folder, record, tolerant=seg.tolerant_headers)
    ann = wfdb_io.read_annotations(folder, record, ext, tolerant=seg.tolerant_headers)
    n_out = signals.resampled_length(header.n_samples, header.fs, seg.target_fs)
    _, length, stride = seg.geometry()
    starts = signals.window_starts(n_out, length, stride)
    windows = table["sample"].notna().to_numpy()
    if windows.sum() != starts.size:  # a record-level problem row, or another lead length
        return labels, "no_reference_rhythm"
    found = rhythm_segments(ann, header.fs, n_out, seg, bundle.labels)
    by_start = dict(zip(found.sample.tolist(), found.label.tolist(), strict=True))
    labels[windows] = [by_start.get(s, "") for s in starts.tolist()]
    left = Counter(found.skipped) + Counter(found.non_beat)
    if left:
        log.info("record %s: windows without a rhythm label: %s", record, dict(left))
    return labels, "no_reference_rhythm"


def load_reference(bundle: Bundle, folder: Path, explicit: Path | None) -> dict[str, str] | None:
    """Record bundles: the reference CSV (`explicit`, else the bundle's reference_csv name in
    the database folder, then beside it); None for beat and rhythm bundles."""
    if bundle.segment.label_mode != "record":
        return None
    if explicit is not None:
        return read_reference(explicit)
    name = Path(bundle.segment.reference_csv or "REFERENCE.csv")
    found = [p for p in (folder / name, folder.parent / name) if p.is_file()]
    return read_reference(found[0] if found else folder / name)
