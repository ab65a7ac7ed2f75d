"""params: strict sections, unknown top-level sections and keys with real suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_prep.params import PARAMS_SECTIONS, DatasetParams, load_section, parse_section
from tests.helpers import REPO


def test_every_section_of_the_repository_params_is_known() -> None:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(data) <= set(PARAMS_SECTIONS)


def test_unknown_top_level_section_fails_with_the_close_name(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"name": "mitdb"}, "segmnet": {"leads": ["II"]}}))
    with pytest.raises(ValueError, match=rf"{path}: unknown section\(s\) 'segmnet' "
                                         r"\(did you mean segment\?\)"):
        load_section("dataset", DatasetParams, path)


def test_unknown_key_suggests_the_field_it_resembles() -> None:
    with pytest.raises(ValueError, match=r"\[dataset\].*nmae: .*\(did you mean name\?\)"):
        parse_section({"dataset": {"nmae": "mitdb"}}, "dataset", DatasetParams)


def test_other_yaml_files_are_not_checked_as_params() -> None:
    assert parse_section({"label_map": {"name": "x"}, "other": 1}, "label_map",
                         DatasetParams).name == "x"
