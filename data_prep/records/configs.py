"""Typed views of the versioned domain tables in `configs/`: label maps and database facts.

`configs/labels/*.yaml` map annotation symbols (or rhythm names) to classes;
`configs/databases/<db>.yaml` names excluded records, record -> subject and split definitions.
Unknown keys are errors, so a typo in a table fails loudly instead of being ignored.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from data_prep.params import StrictModel, parse_section, read_yaml

log = logging.getLogger(__name__)

DATABASES_DIR = Path("configs/databases")
DEFAULT_ANNOTATOR = "atr"  # PhysioNet's reference beat annotations

# YAML reads an unquoted 100 as an int; record and subject names are always strings
Name = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]


class LabelMap(StrictModel):
    """A label map YAML (configs/labels/): ordered classes, symbol -> class, ignored symbols."""

    classes: list[str] = Field(min_length=1)
    map: dict[str, str]
    ignore: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> LabelMap:
        if unknown := sorted(set(self.map.values()) - set(self.classes)):
            raise ValueError(f"map targets {unknown} are not among classes {self.classes}")
        if both := sorted(set(self.map) & set(self.ignore)):
            raise ValueError(f"symbols {both} are both mapped and ignored")
        return self


class SplitDefinition(StrictModel):
    """One entry of `splits:` in a database config: fixed test records, the rest train+val."""

    trainval: list[Name]
    test: list[Name]
    shared_subjects_allowed: dict[Name, str] = Field(default_factory=dict)


LabelMode = Literal["beat", "rhythm", "record"]
RANDOM_SPLIT = "random"


class DatabaseConfig(StrictModel):
    """configs/databases/<db>.yaml (template: configs/databases/_template.yaml).

    Every field has a default for databases without a file; `configured` says whether one was read.
    """

    name: str | None = None
    version: str | None = None
    annotator: str | None = None
    leads: list[str] = Field(default_factory=list)
    label_modes: list[LabelMode] = Field(default_factory=list)
    exclude: dict[Name, str] = Field(default_factory=dict)
    subjects: dict[Name, Name] = Field(default_factory=dict)
    splits: dict[str, SplitDefinition] = Field(default_factory=dict)
    default_split: str | None = None
    configured: bool = Field(default=False, exclude=True)  # set by load_database, not by the file

    @model_validator(mode="after")
    def _default_split_known(self) -> DatabaseConfig:
        known = [*self.splits, RANDOM_SPLIT]
        if self.default_split is not None and self.default_split not in known:
            raise ValueError(f"default_split '{self.default_split}' is none of {known}")
        return self

    def check_label_mode(self, mode: str, database: str) -> None:
        """Fails early when the config says the database has no labels of this shape."""
        if self.label_modes and mode not in self.label_modes:
            raise ValueError(f"segment.label_mode '{mode}': configs/databases/{database}.yaml "
                             f"says the database has labels for {self.label_modes} only; set "
                             "segment.label_mode to one of them (or add the mode to label_modes)")

    def lead_preference(self, leads: list[str]) -> list[str]:
        """segment.leads, then the database's own lead names not already listed."""
        return [*leads, *(lead for lead in self.leads if lead not in leads)]

    def resolve_split(self, definition: str) -> str:
        """`split.definition: default` -> the database's default_split, else "random"."""
        if definition != "default":
            return definition
        return self.default_split or RANDOM_SPLIT


def load_label_map(path: Path) -> LabelMap:
    """Loads and checks a label map YAML."""
    return parse_section({"label_map": read_yaml(path)}, "label_map", LabelMap, str(path))


NO_CONFIG_WARNING = (
    "{path} not found: EACH RECORD IS TAKEN AS ITS OWN SUBJECT (records of one patient can land "
    "in two splits unseen), no records are excluded and only split.definition 'random' or "
    "'default' works. Copy configs/databases/_template.yaml to {path} and fill it in."
)


def load_database(name: str, databases_dir: Path = DATABASES_DIR) -> DatabaseConfig:
    """Database facts from <databases_dir>/<name>.yaml; defaults (and a loud warning) without."""
    if name.startswith("_"):
        raise ValueError(f"dataset.name '{name}': names starting with '_' are templates "
                         f"({databases_dir}/{name}.yaml); name the database's own copy after it")
    path = databases_dir / f"{name}.yaml"
    if not path.is_file():
        log.warning(NO_CONFIG_WARNING.format(path=path))
        return DatabaseConfig()
    data = read_yaml(path)
    if "configured" in data:
        raise ValueError(f"{path}: 'configured' is not a database config key; remove it")
    config = parse_section({"database": data}, "database", DatabaseConfig, str(path))
    return config.model_copy(update={"configured": True})


def resolve_annotator(explicit: str | None, db: DatabaseConfig | None = None) -> str:
    """The annotation extension to read: segment.annotator, else the database config's, else
    DEFAULT_ANNOTATOR. The segment stage records the result in its meta.json."""
    return explicit or (db.annotator if db else None) or DEFAULT_ANNOTATOR


def read_reference(path: Path) -> dict[str, str]:
    """Reads a "record,label" CSV (challenge REFERENCE.csv), with or without a header row."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reference CSV not found; fix segment.reference_csv")
    with path.open(newline="") as fh:
        rows = [row for row in csv.reader(fh) if row and row[0].strip()]
    if rows and (rows[0][0].strip().lower() == "record" or rows[0][-1].strip().lower() == "label"):
        rows = rows[1:]
    if bad := [row for row in rows if len(row) < 2]:
        raise ValueError(f"{path}: rows need 'record,label', got {bad[0]}; fix the file")
    return {row[0].strip(): row[1].strip() for row in rows}
