"""Typed, strict loading of one `params.yaml` section per stage.

Each stage declares a pydantic model; unknown keys, missing sections and wrong types are
`ValueError`s that name the file, the section and the offending key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_PARAMS = Path("params.yaml")


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


def parse_section(data: dict, section: str, model: type[T], source: str = "params") -> T:
    """Validates `data[section]` against `model`."""
    if section not in data:
        raise ValueError(f"{source}: missing section '{section}'; see the repository's params.yaml")
    try:
        return model.model_validate(data[section] or {})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<section>'}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(f"{source} [{section}]: {problems}") from None


def load_section(section: str, model: type[T], path: Path = DEFAULT_PARAMS) -> T:
    """Loads and validates one section of a params file."""
    return parse_section(read_yaml(path), section, model, source=str(path))


def per_database(given: Path | None, params_path: Path, folder: str, *rest: str) -> Path:
    """`given`, else `<folder>/<dataset.name>/<rest...>`: each database's outputs apart."""
    if given is not None:
        return given
    return Path(folder, load_section("dataset", DatasetParams, params_path).name, *rest)
