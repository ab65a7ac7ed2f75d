"""Stage `sources`: describes what `fetch` would copy, so that a changed source re-runs fetch.

DVC cannot depend on a folder that an environment variable names (`ECG_PHYSIONET_MIRROR`), nor
on a remote server. This stage is `always_changed` in dvc.yaml: every `dvc repro` runs it (it
reads the mirror's `RECORDS` and checksum manifest and lists file names, sizes and modification
times, never file contents: well under a second for thousands of files). `fetch` depends on
the JSON, whose content changes only with the source, so fetch re-runs exactly when the
mirror's record list, its manifest or any of its files changed, or the source moved from the
mirror to PhysioNet; otherwise DVC skips it. The mirror's own path is left out, so the same
mirror copied elsewhere (mtimes preserved) does not re-run fetch.

Reads `dataset.name` and the `fetch:` section of params.yaml (and `ECG_PHYSIONET_MIRROR`).
Writes `<out>` (e.g. `data/raw/mitdb.sources.json`).

Run: `python -m data_prep.sources --params params.yaml --out data/raw/mitdb.sources.json`
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from data_prep.layout import RECORDS, resolve_mirror, sha256_file, write_json
from data_prep.params import DEFAULT_PARAMS, DatasetParams, parse_section, read_yaml
from data_prep.records.checksums import find_manifest

log = logging.getLogger(__name__)


def _listing_digest(db_dir: Path) -> tuple[int, str]:
    """Number of files and a SHA-256 over (relative path, size, mtime) of each, in order."""
    digest, count = hashlib.sha256(), 0
    for path in sorted(p for p in db_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(db_dir).as_posix()}\0{stat.st_size}\0"
                      f"{stat.st_mtime_ns}\n".encode())
        count += 1
    return count, digest.hexdigest()


def describe(database: str, fetch_section: Mapping, env: Mapping[str, str]) -> dict:
    """What fetch would copy `database` from: a mirror folder's fingerprint, or PhysioNet."""
    mirror = resolve_mirror(fetch_section.get("mirror"), env)
    if mirror is None:  # a download: fetch's params (version, records) say everything
        return {"database": database, "source": "physionet", "version":
                fetch_section.get("version")}
    db_dir = mirror / database
    if not db_dir.is_dir():  # fetch fails on it with the full explanation
        return {"database": database, "source": "mirror", "missing": f"<mirror>/{database}"}
    records, manifest = db_dir / RECORDS, find_manifest(db_dir)
    n_files, listing = _listing_digest(db_dir)
    return {
        "database": database,
        "source": "mirror",
        "records_sha256": sha256_file(records) if records.is_file() else None,
        "manifest": manifest.name if manifest else None,
        "manifest_sha256": sha256_file(manifest) if manifest else None,
        "files": n_files,
        "listing_sha256": listing,
    }


def run(database: str, fetch_section: Mapping, out: Path,
        env: Mapping[str, str] | None = None) -> dict:
    """Writes the description of `database`'s source to `out` and returns it."""
    description = describe(database, fetch_section, os.environ if env is None else env)
    write_json(out, description)
    log.info("%s: source %s described in %s", database, description["source"], out)
    return description


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params.yaml")
    parser.add_argument("--out", type=Path, required=True,
                        help="JSON to write, e.g. data/raw/mitdb.sources.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = read_yaml(args.params)
    dataset = parse_section(data, "dataset", DatasetParams, str(args.params))
    run(dataset.name, data.get("fetch") or {}, args.out)


if __name__ == "__main__":
    main()
