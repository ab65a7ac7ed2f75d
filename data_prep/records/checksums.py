"""Checksum manifests of a database folder (`SHA256SUMS`, as PhysioNet ships them) and the
check of fetched files against them."""

from __future__ import annotations

from pathlib import Path

from data_prep.layout import MANIFEST_NAMES, sha256_file


def parse_manifest(text: str) -> dict[str, str]:
    """Maps relative path -> sha256 from `sha256sum` output ("<hex>  <path>", "*" = binary)."""
    entries = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            entries[parts[1].lstrip("*").removeprefix("./")] = parts[0].lower()
    return entries


def find_manifest(folder: Path) -> Path | None:
    """The checksum manifest of a database folder, if it has one."""
    return next((folder / n for n in MANIFEST_NAMES if (folder / n).is_file()), None)


def verify_files(
    staging: Path,
    jobs: list[tuple[str, str]],
    manifest: dict[str, str] | None,
    verify: bool,
    source: str,
) -> dict:
    """Hashes the staged files and checks them against the manifest.

    Args:
        staging: folder holding the files.
        jobs: (record, relative path) of each file.
        manifest: relative path -> sha256, None when the source has none.
        verify: whether to check (fetch.verify_checksums).
        source: where the files came from, for the error message.

    Returns:
        digests (path -> sha256), bytes, verified count and unverified (not in the manifest).

    Raises:
        ValueError: a digest differs from the manifest (the source is corrupt).
    """
    digests, unverified = {}, []
    for record, rel in jobs:
        digests[rel] = digest = sha256_file(staging / rel)
        expected = (manifest or {}).get(rel)
        if not verify or manifest is None:
            continue
        if expected is None:
            unverified.append(rel)
        elif expected != digest:
            raise ValueError(
                f"record {record}, file {rel}: sha256 {digest} does not match the manifest "
                f"({expected}); the source {source} is corrupt. Re-copy the file from "
                "physionet.org (or set fetch.verify_checksums: false to accept it as is)."
            )
    return {
        "digests": digests,
        "bytes": sum((staging / rel).stat().st_size for rel in digests),
        "verified": len(digests) - len(unverified) if verify and manifest is not None else 0,
        "unverified": unverified,
    }
