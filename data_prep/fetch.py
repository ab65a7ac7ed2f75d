"""Stage `fetch`: copies (or downloads) one PhysioNet database's WFDB records into the raw folder.

Reads `dataset.name` and the `fetch:` section of params.yaml. The source is, in order: the
local mirror `fetch.mirror`, else the `ECG_PHYSIONET_MIRROR` environment variable, else
PhysioNet itself (through `data_prep.records.wfdb_io`). A mirror is laid out as PhysioNet serves a
database: `<mirror>/<db>/` holding `RECORDS`, the checksum manifest `SHA256SUMS` (PhysioNet
names it `SHA256SUMS.txt`) and the record files.

Writes `<out>/<db>/`: every file of each selected record (`<record>.*`: header, signals,
annotations...), top-level `.csv` tables (challenge `REFERENCE.csv`), `RECORDS` listing the
fetched records and the manifest restricted to them, and `fetch.json` in it (source, version,
records, file/byte/verified counts): everything of one database in one folder. Files are
staged in a temporary folder swapped in once all are complete and verified: a failed run leaves
no half-written file, a good one no stale file. The `sources` stage (`data_prep.sources`) runs
first and describes the mirror, so that a changed mirror re-runs this stage.

Run: `python -m data_prep.fetch --params params.yaml --out data/raw`
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field
from tqdm import tqdm

from data_prep.cli import run_main
from data_prep.layout import (
    ENV_MIRROR,
    FETCH_JSON,
    MANIFEST_NAMES,
    RECORDS,
    parse_records,
    resolve_mirror,
    write_json,
)
from data_prep.params import (
    DEFAULT_PARAMS,
    DatasetParams,
    StrictModel,
    parse_section,
    read_yaml,
)
from data_prep.records.checksums import find_manifest, parse_manifest, verify_files

log = logging.getLogger(__name__)

# builtin, socket and requests/urllib3 network errors, by name: neither library is imported
_NET_ERRORS = {"ConnectionError", "TimeoutError", "gaierror", "Timeout", "NewConnectionError",
               "MaxRetryError"}


class FetchParams(StrictModel):
    """The `fetch:` section of params.yaml (see the comments there)."""

    mirror: Path | None = None
    version: str | None = None
    records: list[str] = Field(default_factory=list)
    verify_checksums: bool = True


# ----------------------------------------------------------------------------- pure helpers


def select_records(available: list[str], wanted: list[str], where: str) -> list[str]:
    """Returns `wanted` (deduplicated, in order), or every available record when empty.

    Raises:
        ValueError: a wanted record is not in RECORDS; the message lists what exists.
    """
    if not wanted:
        return list(available)
    unknown = [r for r in wanted if r not in set(available)]
    if unknown:
        raise ValueError(
            f"fetch.records: {unknown} not in {where}; available records: {available}. "
            "Fix fetch.records in params.yaml ([] fetches every record)."
        )
    return list(dict.fromkeys(wanted))


def record_files(db_dir: Path, record: str) -> list[str]:
    """Relative paths of every file of `record` (`<record>.*`).

    Raises:
        FileNotFoundError: the record has no header file.
    """
    rel = Path(record)
    folder = db_dir / rel.parent
    names = sorted(p.name for p in folder.glob(f"{rel.name}.*") if p.is_file())
    if f"{rel.name}.hea" not in names:
        raise FileNotFoundError(
            f"record {record}: header {db_dir / (record + '.hea')} missing; the source is "
            "incomplete (re-sync the mirror or fix fetch.records)"
        )
    return [(rel.parent / n).as_posix() for n in names]


def copy_file(src: Path, dst: Path) -> None:
    """Copies `src` to a temporary name beside `dst`, then renames it (never a partial `dst`)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        shutil.copyfile(src, tmp)  # a copy, not a link: DVC caches the output
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def is_network_error(err: BaseException) -> bool:
    """True for connection/DNS/timeout errors, also when wrapped (requests, urllib)."""
    seen: object = err
    for _ in range(8):  # a bounded walk down the cause chain (chains can loop)
        if not isinstance(seen, BaseException):
            return False
        if {c.__name__ for c in type(seen).__mro__} & _NET_ERRORS:
            return True
        # urllib's URLError keeps the socket error in `reason` (HTTPError 404 is not network)
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "reason", None)
    return False


# ----------------------------------------------------------------------------- sources

Staged = tuple[list[str], list[tuple[str, str]], Path | None]  # records, files, manifest


def _read_records(db_dir: Path, wanted: list[str]) -> list[str]:
    records_file = db_dir / RECORDS
    if not records_file.is_file():
        raise FileNotFoundError(
            f"{records_file} missing: a PhysioNet database folder lists its records in RECORDS "
            f"(one per line); add it, e.g. `ls *.hea | sed 's/.hea$//' > {records_file}`"
        )
    available = parse_records(records_file.read_text())
    return select_records(available, wanted, str(records_file))


def _jobs(db_dir: Path, records: list[str], full: bool) -> list[tuple[str, str]]:
    """(record, relative path) of every file to fetch; "-" marks database-level files."""
    jobs = [(r, rel) for r in records for rel in record_files(db_dir, r)]
    # top-level tables (challenge REFERENCE.csv...) that the label modes read from the raw folder
    jobs += [("-", p.name) for p in sorted(db_dir.glob("*.csv")) if p.is_file()]
    return [*jobs, ("-", RECORDS)] if full else jobs  # full list: RECORDS kept verbatim


def stage_from_mirror(db_dir: Path, params: FetchParams, staging: Path) -> Staged:
    """Copies the selected records of a mirror's database folder into `staging`."""
    records = _read_records(db_dir, params.records)
    jobs = _jobs(db_dir, records, full=not params.records)
    for _, rel in tqdm(jobs, desc=f"fetch {db_dir.name}", unit="file", disable=None):
        copy_file(db_dir / rel, staging / rel)
    return records, jobs, find_manifest(db_dir)


def stage_from_physionet(db: str, params: FetchParams, staging: Path) -> Staged:
    """Downloads the selected records from PhysioNet into `staging`.

    Raises:
        ConnectionError: PhysioNet is unreachable; the message names both ways out.
    """
    from data_prep.records.wfdb_io import (  # lazy: the only wfdb user
        download_file,
        download_records,
    )

    manifest = None
    try:
        download_file(db, params.version, RECORDS, staging)
        try:
            manifest = Path(download_file(db, params.version, MANIFEST_NAMES[1], staging))
        except FileNotFoundError:
            log.warning("%s: physionet.org serves no %s", db, MANIFEST_NAMES[1])
        records = _read_records(staging, params.records)
        for record in tqdm(records, desc=f"download {db}", unit="record", disable=None):
            download_records(db, params.version, [record], staging)
    except OSError as err:
        if not is_network_error(err):
            raise
        raise ConnectionError(
            f"cannot download '{db}' from physionet.org ({type(err).__name__}: {err}). Either set "
            f"fetch.mirror in params.yaml (or the {ENV_MIRROR} environment variable) to a local "
            f"mirror laid out as <mirror>/{db}/ with RECORDS and the record files, or give this "
            "machine access to physionet.org."
        ) from None
    return records, _jobs(staging, records, full=not params.records), manifest


# ----------------------------------------------------------------------------- run + CLI


def _mirror_db_dir(mirror: Path, db: str) -> Path:
    db_dir = mirror / db
    if db_dir.is_dir():
        return db_dir
    hint = ""
    if (mirror / RECORDS).is_file():
        hint = f" ({mirror} holds RECORDS itself: point the mirror at its parent folder)"
    raise FileNotFoundError(
        f"PhysioNet mirror folder {db_dir} not found{hint}. A mirror is laid out as "
        f"<mirror>/{db}/ with RECORDS, SHA256SUMS(.txt) and the record files; fix fetch.mirror "
        f"in params.yaml or {ENV_MIRROR}, or unset both to download from physionet.org."
    )


def _finish(staging: Path, records: list[str], checked: dict, manifest_name: str | None) -> None:
    """Writes RECORDS (when a subset was fetched) and the manifest of the fetched files."""
    if RECORDS not in checked["digests"]:
        (staging / RECORDS).write_text("".join(f"{r}\n" for r in records))
    for name in MANIFEST_NAMES:  # a downloaded manifest lists every file; rewritten below
        (staging / name).unlink(missing_ok=True)
    if manifest_name is not None:  # the source's name, restricted to the files fetched
        lines = [f"{digest}  {rel}\n" for rel, digest in checked["digests"].items()]
        (staging / manifest_name).write_text("".join(lines))


def _swap_in(staging: Path, target: Path) -> None:
    """Replaces `target` by the complete `staging` folder (stale files go with the old one)."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.replace(old / target.name)
        staging.replace(target)
        shutil.rmtree(old)
    else:
        staging.replace(target)


def run(
    dataset: DatasetParams, params: FetchParams, out: Path, env: Mapping[str, str] | None = None
) -> dict:
    """Fetches `dataset.name` into `<out>/<db>/`, writes `<out>/<db>/fetch.json`, returns it."""
    db = dataset.name
    mirror = resolve_mirror(params.mirror, os.environ if env is None else env)
    db_dir = _mirror_db_dir(mirror, db) if mirror is not None else None
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{db}.partial-", dir=out))
    try:
        if db_dir is not None:
            log.info("fetch %s from mirror %s", db, db_dir)
            records, jobs, manifest = stage_from_mirror(db_dir, params, staging)
        else:
            log.info("fetch %s from physionet.org (version %s)", db, params.version or "latest")
            records, jobs, manifest = stage_from_physionet(db, params, staging)
        entries = parse_manifest(manifest.read_text()) if manifest else None
        source = str(db_dir or f"physionet.org/files/{db}")
        checked = verify_files(staging, jobs, entries, params.verify_checksums, source)
        _finish(staging, records, checked, manifest.name if manifest else None)
        _swap_in(staging, out / db)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if params.verify_checksums and manifest is None:
        log.warning("%s: the source has no checksum manifest; files unverified", db)
    if checked["unverified"]:
        log.warning("%s: not in the manifest, unverified: %s", db, checked["unverified"])
    summary = {
        "source": str(mirror) if mirror is not None else "physionet",
        "database": db,
        "version": params.version,
        "records": records,
        "files": len(checked["digests"]),
        "bytes": checked["bytes"],
        "verified": checked["verified"],
        "unverified": checked["unverified"],
    }
    write_json(out / db / FETCH_JSON, summary)
    log.info("fetched %d records: %d files, %d bytes, %d verified", len(records),
             summary["files"], summary["bytes"], summary["verified"])
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="raw folder, e.g. data/raw")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = read_yaml(args.params)
    run(
        parse_section(data, "dataset", DatasetParams, str(args.params)),
        parse_section(data, "fetch", FetchParams, str(args.params)),
        args.out,
    )


if __name__ == "__main__":
    run_main(main)
