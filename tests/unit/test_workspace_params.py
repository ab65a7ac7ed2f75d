"""The workspace's params.yaml, whatever values an experiment left in it, parses for every stage.

Tests that build on the defaults read the committed file instead (tests/helpers.py).
"""

from __future__ import annotations

import pytest

from data_prep.fetch import FetchParams
from data_prep.params import DatasetParams, StrictModel, load_section
from data_prep.segment import SegmentParams
from data_prep.spectrogram import SpectrogramParams
from data_prep.split import SplitParams
from pipeline.evaluate import EvaluateParams
from pipeline.export import ExportParams
from pipeline.tracking.run_tracking import TrackingParams
from pipeline.train import TrainParams
from tests.helpers import REPO, committed_params

SECTIONS: dict[str, type[StrictModel]] = {
    "dataset": DatasetParams, "fetch": FetchParams, "segment": SegmentParams,
    "split": SplitParams, "spectrogram": SpectrogramParams, "train": TrainParams,
    "tracking": TrackingParams, "evaluate": EvaluateParams, "export": ExportParams,
}


@pytest.mark.parametrize("section", SECTIONS)
def test_workspace_params_parse(section: str) -> None:
    load_section(section, SECTIONS[section], REPO / "params.yaml")


def test_committed_params_hold_every_section_and_the_product_defaults() -> None:
    data = committed_params()
    assert set(SECTIONS) <= set(data)
    assert data["train"]["backbones"] == ["vgg16.tv_in1k"]
    data["train"]["backbones"] = ["changed"]  # callers get a copy
    assert committed_params()["train"]["backbones"] == ["vgg16.tv_in1k"]
