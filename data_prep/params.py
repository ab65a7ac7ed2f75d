"""Typed, strict loading of one `params.yaml` section per stage.

Each stage declares a pydantic model; unknown keys, missing sections and wrong types are
`ValueError`s that name the file, the section and the offending key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_PARAMS = Path("params.yaml")
# Every top-level section of params.yaml: one per stage plus the shared ones. A section that
# is not here (a misspelt stage name) is an error, as an unknown key inside a section is.
PARAMS_SECTIONS = ("dataset", "fetch", "segment", "split", "spectrogram", "train", "tracking",
                   "evaluate", "export")


class StrictModel(BaseModel):
    """Base for every params section: rejects unknown keys, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetParams(StrictModel):
    """The shared `dataset` section: which PhysioNet database every stage works on."""

    name: str = Field(min_length=1)


T = TypeVar("T", bound=StrictModel)


def read_yaml(path: Path) -> dict:
    """Reads a YAML mapping, with an error that names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; run from the repo root or pass --params")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(near)}?)" if near else ""


def check_sections(data: dict, source: str = "params") -> None:
    """Fails on a top-level section of a params file that no stage reads."""
    unknown = [str(key) for key in data if key not in PARAMS_SECTIONS]
    if unknown:
        raise ValueError(
            f"{source}: unknown section(s) " + ", ".join(
                f"'{name}'{_did_you_mean(name, PARAMS_SECTIONS)}" for name in unknown)
            + f"; the sections are {', '.join(PARAMS_SECTIONS)}")


def parse_section(data: dict, section: str, model: type[T], source: str = "params") -> T:
    """Validates `data[section]` against `model`; for a params file's own sections, first checks
    that the file holds no unknown section."""
    if section in PARAMS_SECTIONS:
        check_sections(data, source)
    if section not in data:
        raise ValueError(f"{source}: missing section '{section}'; see the repository's params.yaml")
    try:
        return model.model_validate(data[section] or {})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<section>'}: {e['msg']}"
            + (_did_you_mean(str(e["loc"][-1]), model.model_fields)
               if e["type"] == "extra_forbidden" else "")
            for e in err.errors())
        raise ValueError(f"{source} [{section}]: {problems}") from None


def load_section(section: str, model: type[T], path: Path = DEFAULT_PARAMS) -> T:
    """Loads and validates one section of a params file."""
    return parse_section(read_yaml(path), section, model, source=str(path))


def per_database(given: Path | None, params_path: Path, folder: str, *rest: str) -> Path:
    """`given`, else `<folder>/<dataset.name>/<rest...>`: each database's outputs apart."""
    if given is not None:
        return given
    return Path(folder, load_section("dataset", DatasetParams, params_path).name, *rest)
