"""The only module that imports `wfdb`: reading records and annotations, listing, downloading.

Reading turns every wfdb failure (missing file, truncated signal, unparsable header, corrupt
annotations) into a `FileNotFoundError`/`ValueError` that names the record, the file and the
fix, so that a stage can count the record as skipped instead of stopping on a traceback.
Downloading (used by `data_prep.fetch`) turns network failures into `PhysioNetUnreachable`
(a `ConnectionError`) and files that PhysioNet does not serve into `FileNotFoundError`.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import wfdb
from wfdb.io import download
from wfdb.io._url import NetFileError, NetFileNotFoundError

from data_prep.records import signals, wfdb_files

log = logging.getLogger(__name__)

REFETCH = "re-run fetch (dvc repro fetch) or fix the mirror"


class PhysioNetUnreachable(ConnectionError):
    """physionet.org could not be reached (no network, DNS, proxy, server error)."""


DETECT_FS = 250.0  # XQRS's thresholds are tuned near 250-360 Hz; at 1000 Hz it finds nothing


@dataclass(frozen=True)
class Header:
    """What a record header says: sampling rate, length, lead names, signal files.

    `fs` and `n_samples` count frames; a signal with several samples per frame is read at
    `signal_fs(channel)`. Signals without a description get the name "sig<i>". `dropped` names
    the fields a tolerant read had to ignore (empty for a well-formed header).
    """

    record: str
    fs: float
    n_samples: int
    sig_names: tuple[str, ...]
    files: tuple[str, ...]
    samps_per_frame: tuple[int, ...] = ()
    dropped: tuple[str, ...] = ()

    def signal_fs(self, channel: int) -> float:
        """The rate of one signal: the frame rate times its samples per frame."""
        spf = self.samps_per_frame[channel] if self.samps_per_frame else 1
        return self.fs * spf


@dataclass(frozen=True)
class Annotations:
    """One annotation file: sample indices (at the record's frame rate), symbols and aux notes
    (trailing NULs stripped)."""

    sample: np.ndarray
    symbol: np.ndarray
    aux_note: np.ndarray


@contextmanager
def _reading(record: str, path: Path | str, fix: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as err:
        missing = err.filename or path
        raise FileNotFoundError(f"record {record}: {missing} not found; {fix}") from None
    except Exception as err:  # wfdb raises ValueError, IndexError, struct.error... on bad files
        raise ValueError(
            f"record {record}: cannot read {path} ({type(err).__name__}: {err}); {fix}"
        ) from None


@contextmanager
def _record(record_dir: Path, record: str, tolerant: bool) -> Iterator[tuple[str, tuple]]:
    """The path to give wfdb for a record, and the header fields dropped to make it readable.

    Raises:
        FileNotFoundError: the header is missing.
        ValueError: the header cannot be parsed (and tolerance is off or does not help).
    """
    path, base = Path(record_dir) / f"{record}.hea", str(Path(record_dir) / record)
    dropped: tuple[str, ...] = ()
    try:
        wfdb.rdheader(base)
    except FileNotFoundError:
        raise FileNotFoundError(f"record {record}: {path} not found; {REFETCH}") from None
    except Exception as err:  # wfdb raises ValueError, IndexError... on a malformed header
        if not tolerant:
            raise wfdb_files.header_problem(record, path, err, tolerant) from None
        dropped, problem = ("base_time", "base_date"), err
    if not dropped:
        yield base, dropped
        return
    with wfdb_files.without_date(record_dir, record) as fixed:
        try:
            wfdb.rdheader(fixed)
        except Exception:  # not (only) the date/time: report the original problem
            raise wfdb_files.header_problem(record, path, problem, tolerant) from None
        log.info("record %s: %s read without its date/time fields", record, path)
        yield fixed, dropped


def _signal_layout(head: wfdb.Record | wfdb.MultiRecord, base: str) -> tuple[list, list, list]:
    """Lead names, signal files and samples per frame; a multi-segment record's come from its
    layout segment (or first segment), whose signals the whole record shares."""
    if isinstance(head, wfdb.MultiRecord):
        segments = wfdb.rdheader(base, rd_segments=True).segments
        first = next(s for s in segments if s is not None)
        files = [f for s in segments if s is not None for f in (s.file_name or [])]
        return list(first.sig_name or []), files, list(first.samps_per_frame or [])
    return list(head.sig_name or []), list(head.file_name or []), list(head.samps_per_frame or [])


def read_header(record_dir: Path, record: str, *, tolerant: bool = False) -> Header:
    """Reads a record's header (.hea), single- or multi-segment.

    Args:
        tolerant: retry a header whose date/time fields wfdb cannot parse without them;
            `Header.dropped` then names them so that the caller can count it.

    Raises:
        FileNotFoundError: the header is missing.
        ValueError: wfdb cannot parse it (names the field and the fix).
    """
    path = Path(record_dir) / f"{record}.hea"
    with _record(record_dir, record, tolerant) as (base, dropped), \
            _reading(record, path, wfdb_files.HEADER_FIX):
        head = wfdb.rdheader(base)
        n_samples = head.sig_len
        if n_samples is None:  # optional in the header format: the signal file says
            n_samples = wfdb.rdrecord(base).sig_len
        names, files, spf = _signal_layout(head, base)
    names = [name if (name or "").strip() else f"sig{i}" for i, name in enumerate(names)]
    return Header(record, float(head.fs), int(n_samples), tuple(names),
                  tuple(dict.fromkeys(files)), tuple(int(n) for n in spf), dropped)


def read_signal(record_dir: Path, record: str, channel: int, *,
                tolerant: bool = False) -> np.ndarray:
    """Reads one channel in physical units at its own rate (`Header.signal_fs`); samples wfdb
    marks invalid come back as NaN.

    Raises:
        FileNotFoundError: the signal file is missing.
        ValueError: the signal file is truncated or corrupt.
    """
    header = read_header(record_dir, record, tolerant=tolerant)
    files = ", ".join(str(Path(record_dir) / f) for f in header.files) or f"{record}.dat"
    expected = header.n_samples * round(header.signal_fs(channel) / header.fs)
    with _record(record_dir, record, tolerant) as (base, _), _reading(record, files, REFETCH):
        rec = wfdb.rdrecord(base, channels=[channel], return_res=64, smooth_frames=False)
        signal = np.asarray(rec.e_p_signal[0], dtype=np.float64)
        if signal.shape[0] != expected:
            raise ValueError(f"{signal.shape[0]} samples, header says {expected}")
    return signal


def read_annotations(record_dir: Path, record: str, extension: str, *,
                     tolerant: bool = False) -> Annotations:
    """Reads an annotation file (e.g. `.atr`), its samples at the record's frame rate.

    An annotation file may carry its own time resolution (`ann.fs`); its samples are then
    mapped to the record header's rate.

    Raises:
        FileNotFoundError: the record has no such annotation file.
        ValueError: the annotation file is corrupt, or truncated (no end-of-file marker).
    """
    path = Path(record_dir) / f"{record}.{extension}"
    fix = f"{REFETCH}, or set segment.annotator to an annotator this database has"
    with _reading(record, path, fix):
        ann = wfdb.rdann(str(Path(record_dir) / record), extension)
        if not wfdb_files.annotation_complete(path):
            raise ValueError(f"the file ends before its end-of-file marker (truncated after "
                             f"{len(ann.sample)} annotations)")
    sample = np.asarray(ann.sample, dtype=np.int64)
    try:
        record_fs: float | None = read_header(record_dir, record, tolerant=tolerant).fs
    except (FileNotFoundError, ValueError):  # annotations of a record whose header is bad
        record_fs = None
    if ann.fs and record_fs and abs(float(ann.fs) - record_fs) > 1e-6:
        log.info("record %s: %s is at %g Hz, the record at %g Hz; samples mapped", record,
                 path.name, ann.fs, record_fs)
        sample = signals.map_samples(sample, float(ann.fs), record_fs)
    aux = [(note or "").rstrip("\x00") for note in (ann.aux_note or [""] * len(ann.sample))]
    return Annotations(sample, np.asarray(ann.symbol, dtype=str), np.asarray(aux, dtype=str))


def detect_qrs(signal: np.ndarray, fs: float) -> np.ndarray:
    """QRS complexes of one lead with wfdb's XQRS detector, for records without beat annotations.

    XQRS (wfdb.processing.xqrs_detect) is a validated detector with adaptive thresholds,
    learned from the record's first seconds; it band-passes internally, so `signal` (one lead
    in physical units, without NaN, at `fs` Hz) can be the raw lead. It runs at DETECT_FS and
    its indices are mapped back to `fs`; they mark the detector's filtered QRS energy, not
    necessarily the R peak where beat annotations sit.

    Returns:
        Sorted sample indices at `fs` of the detected QRS complexes (possibly empty).
    """
    from wfdb import processing  # imported on use: it pulls in extra modules at import time

    x = np.asarray(signal, dtype=np.float64)
    if x.size < 2 * fs:  # XQRS learns over its first seconds; shorter input has no beat to find
        return np.empty(0, dtype=np.int64)
    at_detect = signals.resample(x, fs, DETECT_FS)
    found = processing.xqrs_detect(at_detect, fs=DETECT_FS, verbose=False)
    beats = signals.map_samples(np.asarray(found, dtype=np.int64), DETECT_FS, fs)
    return np.unique(np.clip(beats, 0, x.size - 1))


# ----------------------------------------------------------------------------- download


@contextmanager
def _network(db: str, version: str | None, what: str) -> Iterator[None]:
    try:
        yield
    except NetFileNotFoundError:
        raise FileNotFoundError(
            f"PhysioNet database '{db}' (version {version or 'latest'}) serves no {what}; "
            "check the database name, version and record names"
        ) from None
    except (NetFileError, requests.RequestException) as err:
        raise PhysioNetUnreachable(
            f"cannot reach physionet.org for '{db}' ({what}): {err}; check the network, "
            "or use a local mirror (fetch.mirror)"
        ) from None


def _pn_dir(db: str, version: str | None) -> str:
    if version:
        return f"{db}/{version}"
    with _network(db, version, "version listing"):
        return f"{db}/{download.get_version(db)}"


def download_file(db: str, version: str | None, filename: str, dest_dir: Path) -> Path:
    """Downloads one file of a PhysioNet database into `dest_dir` (keeping its subfolder).

    Args:
        db: PhysioNet short name, e.g. "mitdb".
        version: database version, e.g. "1.0.0"; None for the latest.
        filename: path relative to the database root, e.g. "RECORDS" or "100.hea".
        dest_dir: local folder standing for the database root.

    Returns:
        The local path of the downloaded file (written atomically).

    Raises:
        FileNotFoundError: PhysioNet does not serve that file.
        PhysioNetUnreachable: physionet.org cannot be reached.
    """
    pn_dir = _pn_dir(db, version)
    local = Path(dest_dir) / filename
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(f".{local.name}.part")
    with _network(db, version, filename):
        download.dl_full_file(posixpath.join(download.config.db_index_url, pn_dir, filename),
                              str(partial))
    partial.replace(local)
    return local


def download_records(db: str, version: str | None, records: list[str] | None, dest: Path) -> None:
    """Downloads records (header, signal files, every annotator they have) into `dest`.

    Args:
        db: PhysioNet short name, e.g. "mitdb".
        version: database version; None for the latest.
        records: record names; None or [] for every record in the database's RECORDS file.
        dest: local folder standing for the database root.

    Raises:
        FileNotFoundError: a requested record does not exist there.
        PhysioNetUnreachable: physionet.org cannot be reached.
    """
    pn_dir = _pn_dir(db, version)
    pinned = pn_dir.split("/", 1)[1]
    with _network(db, pinned, "RECORDS/ANNOTATORS"):
        names = records or download.get_record_list(pn_dir, "all")
        annotators = download.get_annotators(pn_dir, "all") or []
    for record in names:
        for filename in _record_files(db, pinned, record, Path(dest)):
            download_file(db, pinned, filename, Path(dest))
        for extension in annotators:
            try:
                download_file(db, pinned, f"{record}.{extension}", Path(dest))
            except FileNotFoundError:
                log.debug("%s: record %s has no .%s annotations", db, record, extension)


def _record_files(db: str, version: str, record: str, dest: Path) -> list[str]:
    """Downloads a record's header and returns the signal files (and segment headers) it names."""
    download_file(db, version, f"{record}.hea", dest)
    subdir = posixpath.dirname(record)
    with _reading(record, dest / f"{record}.hea", "the downloaded header is damaged; retry"):
        head = wfdb.rdheader(str(dest / record))
    if isinstance(head, wfdb.MultiRecord):  # multi-segment: fetch every segment in turn
        segments = [s for s in head.seg_name if s != "~"]
        return [f for s in segments for f in _record_files(db, version, posixpath.join(subdir, s),
                                                           dest)]
    return [posixpath.join(subdir, f) for f in dict.fromkeys(head.file_name or [])]
