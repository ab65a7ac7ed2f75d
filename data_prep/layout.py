"""The on-disk layout of every data folder (file names, index columns) and its readers/writers.

Images and signals are stored as one `.npy` shard per record plus one `index.csv` per stage
folder (DVC is slow on many small files). Record names are always strings ("100", "A00001").

    data/raw/            fetch.json; <db>/: RECORDS, SHA256SUMS, WFDB files         (fetch)
    data/segments/       shards/, index.csv (SEGMENT_COLUMNS), meta.json, summary.json, and
                         second_lead/shards/ with segment.second_leads          (segment)
    data/splits/         assignment.csv (ASSIGNMENT_COLUMNS), summary.json           (split)
    data/spectrograms/   shards/, index.csv, meta.json (its "segments" key holds the segment
                         meta.json), preview/<class>.png, png/<class>/...  (spectrogram)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

log = logging.getLogger(__name__)

INDEX = "index.csv"
META = "meta.json"
SUMMARY = "summary.json"
SHARDS = "shards"
INDEX_DTYPES = {"record": str, "label": str, "symbol": str}

RECORDS = "RECORDS"  # a PhysioNet database folder's list of record names
MANIFEST_NAMES = ("SHA256SUMS", "SHA256SUMS.txt")  # mirrors made by hand / PhysioNet's own name
FETCH_JSON = "fetch.json"  # in data/raw/<db>/: what fetch fetched, from where, with which digests
SEGMENT_COLUMNS = ("record", "row", "sample", "label", "symbol")  # row = row in the shard
ASSIGNMENT = "assignment.csv"
ASSIGNMENT_COLUMNS = ("record", "subject", "split", "fold")  # fold: -1 for test records
SPLITS = ("train", "val", "test")
PREVIEW, PNG = "preview", "png"  # spectrogram folder: grids per class, optional PNG per image
SEGMENTS_META = "segments"  # spectrogram meta.json key holding the segment stage's meta.json
# spectrogram meta.json key: record -> sha256 of its image shard (what the feature store keys on)
SHARD_SHA256 = "shard_sha256"
# segment folder: <segments>/second_lead/shards/<record>.npy, the second lead's windows (rows as
# the first lead's shard), and the meta.json key naming each record's second lead
SECOND_LEAD = "second_lead"


ENV_MIRROR = "ECG_PHYSIONET_MIRROR"  # a local PhysioNet mirror laid out as <mirror>/<db>/


def parse_records(text: str) -> list[str]:
    """Record names of a RECORDS file, one per line (a trailing slash marks a folder)."""
    return [line.strip().rstrip("/") for line in text.splitlines() if line.strip()]


def list_records(record_dir: Path) -> list[str]:
    """Record names from the RECORDS file, or from the .hea files when there is none."""
    listing = Path(record_dir) / RECORDS
    if listing.is_file():
        return parse_records(listing.read_text())
    records = sorted(p.stem for p in Path(record_dir).glob("*.hea"))
    if not records:
        raise FileNotFoundError(
            f"{record_dir}: no RECORDS file and no .hea files; run the fetch stage first"
        )
    log.warning("%s: no RECORDS file, using the %d .hea files found", record_dir, len(records))
    return records


def resolve_mirror(params_mirror: Path | None, env: Mapping[str, str]) -> Path | None:
    """Returns the mirror to copy from: params first, then the environment, else None."""
    if params_mirror is not None:
        return Path(params_mirror)
    value = env.get(ENV_MIRROR, "").strip()
    return Path(value) if value else None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`, moved onto it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        Path(tmp).replace(path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (streamed)."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the stage that writes it (dvc repro)")
    return json.loads(path.read_text())


def write_index(path: Path, index: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        index.to_csv(tmp, index=False)


def read_index(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the stage that writes it (dvc repro)")
    return pd.read_csv(path, dtype=INDEX_DTYPES, keep_default_na=False)


def shard_path(folder: Path, record: str) -> Path:
    return folder / SHARDS / f"{record}.npy"


@contextmanager
def shard_writer(
    folder: Path, record: str, shape: tuple[int, ...], dtype: npt.DTypeLike,
    digest: hashlib._Hash | None = None,
) -> Iterator[Callable[[np.ndarray], None]]:
    """Streams one record's .npy shard chunk by chunk; it appears only once complete.

    Memory stays at one chunk whatever the record length (a 24 h Holter record gives GBs of
    images). Yields `write(chunk)`; chunks are rows along the first axis, in order. `digest`,
    if given, is fed every byte written, so it ends as `sha256_file` of the shard would, without
    reading the file back.
    """
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": shape}
    rows = 0
    with atomic_path(shard_path(folder, record)) as tmp, tmp.open("wb") as fh:

        def put(data: bytes) -> None:
            fh.write(data)
            if digest is not None:
                digest.update(data)

        head = io.BytesIO()
        np.lib.format.write_array_header_2_0(head, header)
        put(head.getvalue())

        def write(chunk: np.ndarray) -> None:
            nonlocal rows
            assert chunk.shape[1:] == shape[1:], (chunk.shape, shape)
            put(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
            rows += len(chunk)

        yield write
        if rows != shape[0]:
            raise ValueError(f"shard of record {record}: wrote {rows} rows, expected {shape[0]}")


def save_shard(folder: Path, record: str, array: np.ndarray) -> Path:
    """Writes one record's array shard atomically and returns its path."""
    with shard_writer(folder, record, array.shape, array.dtype) as write:
        write(array)
    return shard_path(folder, record)


def _maker(folder: Path, stage: str | None) -> str:
    """Which stage to re-run for a folder's damaged shard (named by the caller, else guessed
    from DVC's folder names)."""
    if stage is None:
        stage = next((s for s in ("spectrogram", "segment") if s in Path(folder).name), None)
    return (f"re-run the {stage} stage (dvc repro --force {stage})" if stage
            else f"re-run the stage that writes {folder}")


def _check_shard_size(path: Path, fix: str) -> None:
    """A shard cut short (an interrupted copy, a full disk) fails here, naming the file,
    rather than as numpy's bare "mmap length is greater than file size" later."""
    try:
        with path.open("rb") as fh:
            read_header = (np.lib.format.read_array_header_1_0
                           if np.lib.format.read_magic(fh) == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(fh)
            expected = fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy shard ({err}); {fix}") from None
    size = path.stat().st_size
    if size < expected:
        raise ValueError(f"{path}: truncated ({size} bytes, its header says {expected} for "
                         f"shape {tuple(shape)}); {fix}")


def load_shard(folder: Path, record: str, mmap: bool = True, *,
               stage: str | None = None) -> np.ndarray:
    """One record's shard (memory-mapped by default).

    Args:
        stage: the stage that writes `folder`, named in errors ("segment", "spectrogram");
            None guesses it from the folder's name.

    Raises:
        FileNotFoundError: no shard for the record.
        ValueError: the shard is truncated or not a .npy file (names the stage to re-run).
    """
    path = shard_path(folder, record)
    fix = _maker(folder, stage)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard of record {record} missing; {fix}")
    _check_shard_size(path, fix)
    return np.load(path, mmap_mode="r" if mmap else None)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def rhythm_matrix(frame: pd.DataFrame, columns: list[str], source: Path) -> np.ndarray:
    """float32 (n, F) rhythm features of the frame's rows (index columns written by segment)."""
    if missing := [c for c in columns if c not in frame.columns]:
        raise ValueError(f"{source}: no rhythm columns {missing}; re-run the segment and "
                         "spectrogram stages (dvc repro spectrogram)")
    values = frame[list(columns)].to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"{source}: rhythm features hold NaN/inf; re-run the segment stage")
    return values
