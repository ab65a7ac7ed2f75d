"""What `pipeline.predict` reads from a WFDB record besides its lead: beat annotations and, for
two_lead bundles, the second lead (no torch, like predict)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from data_prep.beats.second_lead import choose_second
from data_prep.records import wfdb_io

log = logging.getLogger(__name__)


def annotated_beats(folder: Path, name: str, ext: str | None, ignore: list[str],
                    tolerant: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Beats from the record's .<ext> annotations (symbols not in the label map's `ignore`
    list) and their symbols, or (None, None): no such file, or no beat in it (detect them)."""
    if ext is None or not (folder / f"{name}.{ext}").is_file():
        log.info("record %s: no .%s annotations; detecting beats (XQRS)", name, ext)
        return None, None
    try:
        ann = wfdb_io.read_annotations(folder, name, ext, tolerant=tolerant)
    except ValueError as err:
        raise ValueError(f"{err}; or pass annotator=None (CLI --annotator none) to detect "
                         "beats instead") from None
    beat = ~np.isin(ann.symbol, ignore)
    if not beat.any():
        log.warning("record %s: .%s holds no beat annotation; detecting beats", name, ext)
        return None, None
    return ann.sample[beat], ann.symbol[beat]


def second_lead(folder: Path, header: wfdb_io.Header, channel: int, preference: list[str],
                tolerant: bool) -> tuple[np.ndarray | None, float | None]:
    """The record's second lead (`data_prep.beats.second_lead.choose_second`) and its rate, or
    (None, None) when it has none of `preference` besides its first lead `channel`."""
    second = choose_second(header.sig_names, channel, preference)
    if second is None:
        return None, None
    x = wfdb_io.read_signal(folder, header.record, second, tolerant=tolerant)
    return x, header.signal_fs(second)
