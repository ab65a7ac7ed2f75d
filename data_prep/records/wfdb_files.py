"""WFDB files read as bytes and text, for what wfdb itself cannot tell (no wfdb import here).

- Header problems: which field wfdb rejected, and a copy of a header without its date/time
  fields (a record line that wfdb cannot parse, seen in real challenge data) for the opt-in
  tolerant reading in `data_prep.records.wfdb_io`.
- Annotation files: whether one ends with its end-of-file word, since wfdb.rdann reads a file
  cut short silently.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HEADER_FIX = "the header does not follow the WFDB header format; correct or replace the file"
TOLERANT_HINT = "or set segment.tolerant_headers: true to read it without its date/time fields"
ANN_EOF = 0  # the 16-bit word that ends every WFDB annotation file
ANN_SKIP, ANN_AUX = 59, 63  # codes followed by extra words: a 32-bit interval, an aux string


def header_problem(record: str, path: Path, err: Exception, tolerant: bool) -> ValueError:
    """A header wfdb cannot parse: names the field when wfdb's message shows it."""
    text = str(err)
    field = next((name for key, name in (("%d/%m/%Y", "base_date field"),
                                         ("%H:%M:%S", "base_time field"),
                                         ("signal line", "signal line"))
                  if key in text), "record line")
    hint = f", {TOLERANT_HINT}" if field.startswith("base_") and not tolerant else ""
    return ValueError(f"record {record}: cannot read {path}: its {field} does not parse "
                      f"({type(err).__name__}: {err}); {HEADER_FIX}{hint}")


def header_lines(path: Path) -> tuple[list[str], int]:
    """A header's lines and the index of its record line (the first that is not a comment)."""
    lines = path.read_text(errors="replace").splitlines()
    return lines, next(i for i, line in enumerate(lines) if line.strip() and line[0] != "#")


def named_files(folder: Path, header: Path, depth: int = 1) -> set[str]:
    """Files a header names (signal files, segment headers and theirs), that exist in `folder`."""
    lines, at = header_lines(header)
    names = {line.split()[0] for line in lines[at + 1:] if line.strip() and line[0] != "#"}
    found = {n for n in names if (folder / n).is_file()}
    for segment in (n for n in names if (folder / f"{n}.hea").is_file()):
        found.add(f"{segment}.hea")
        if depth:
            found |= named_files(folder, folder / f"{segment}.hea", depth - 1)
    return found


@contextmanager
def without_date(record_dir: Path, record: str) -> Iterator[str]:
    """The record as wfdb can read it after dropping the record line's time and date fields:
    a corrected header in a temporary folder beside links to the files it names."""
    header = Path(record_dir) / f"{record}.hea"
    lines, at = header_lines(header)
    lines[at] = " ".join(lines[at].split()[:4])  # name[/segments] n_sig fs n_samples
    with tempfile.TemporaryDirectory(prefix="wfdb-header-") as tmp:
        base = Path(tmp) / Path(record).name
        for name in named_files(header.parent, header):
            (base.parent / name).parent.mkdir(parents=True, exist_ok=True)
            (base.parent / name).symlink_to((header.parent / name).resolve())
        base.with_name(f"{base.name}.hea").write_text("\n".join(lines) + "\n")
        yield str(base)


def annotation_complete(path: Path) -> bool:
    """Whether an annotation file ends with its end-of-file word (WFDB annotation format).

    wfdb.rdann drops the last word unread, assuming it is that marker, so a file cut short
    reads silently with the annotations it still holds. Walking the words (SKIP and AUX carry
    extra words) finds whether the marker is really there.
    """
    data = Path(path).read_bytes()
    words = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2").tolist()
    i = 0
    while i < len(words):
        word = words[i]
        if word == ANN_EOF:
            return True
        code, value = word >> 10, word & 0x3FF
        i += 3 if code == ANN_SKIP else 1 + (value + 1) // 2 if code == ANN_AUX else 1
    return False
