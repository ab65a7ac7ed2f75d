"""Datasets from spectrogram shards: split join, per-class cap, class balancing, loaders."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from data_prep.layout import load_shard
from pipeline.training import data
from tests.synthetic import CLASSES, RECORDS


def test_join_assigns_splits_and_drops_unassigned_records(folders):
    spec, splits = folders
    frame = data.load_split_index(spec, splits, CLASSES)
    assert set(frame["record"]) == set(RECORDS)  # "105" has no assignment
    for record, (split, counts) in RECORDS.items():
        part = frame[frame["record"] == record]
        assert (part["split"] == split).all()
        assert np.bincount(part["target"], minlength=3).tolist() == list(counts)
    assert (frame["target"] == frame["label"].map(CLASSES.index)).all()


def test_join_errors_name_the_file_and_the_stage(tmp_path, folders):
    spec, splits = folders
    with pytest.raises(FileNotFoundError, match=r"assignment\.csv.*split stage"):
        data.load_split_index(spec, tmp_path / "nowhere", CLASSES)
    with pytest.raises(FileNotFoundError, match=r"meta\.json.*spectrogram stage"):
        data.read_meta(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"not in meta\.json"):
        data.load_split_index(spec, splits, ["N", "S"])
    assign = pd.read_csv(splits / "assignment.csv", dtype=str)
    pd.concat([assign, assign.head(1)]).to_csv(splits / "assignment.csv", index=False)
    with pytest.raises(ValueError, match="assigned twice"):
        data.load_split_index(spec, splits, CLASSES)


def test_empty_split_is_an_error(folders):
    spec, splits = folders
    frame = data.load_split_index(spec, splits, CLASSES)
    with pytest.raises(ValueError, match=r"assignment\.csv: the 'val' split has no images"):
        data.split_frame(frame[frame["split"] != "val"], "val", splits)


def test_cap_per_class_is_seeded_and_per_split(folders):
    spec, splits = folders
    frame = data.load_split_index(spec, splits, CLASSES)
    a = data.cap_per_class(frame, {"train": 5, "val": 3}, seed=1)
    b = data.cap_per_class(frame, {"train": 5, "val": 3}, seed=1)
    c = data.cap_per_class(frame, {"train": 5, "val": 3}, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a.index.equals(c.index)
    counts = a.groupby(["split", "label"]).size()
    assert counts["train"].tolist() == [5, 5, 5]  # N 22, S 7, V 9 -> 5 each
    assert counts["val"].tolist() == [3, 3, 3]
    assert (a[a["split"] == "test"].index == frame[frame["split"] == "test"].index).all()
    assert a.index.is_monotonic_increasing  # original (shard) order kept
    assert data.cap_per_class(frame, {}, seed=1) is frame


def test_class_weights_inverse_frequency_normalised():
    targets = np.array([0] * 8 + [1] * 2 + [2] * 0 + [0] * 0)
    w = data.class_weights(targets, 3)
    assert w.tolist() == pytest.approx([10 / (2 * 8), 10 / (2 * 2), 0.0])
    assert float(w[torch.as_tensor(targets)].mean()) == pytest.approx(1.0)


def test_class_weights_tempered_and_capped():
    targets = np.array([0] * 900 + [1] * 100 + [2] * 1)
    sqrt = data.class_weights(targets, 3, power=0.5)
    assert float(sqrt[2] / sqrt[0]) == pytest.approx(30.0)  # sqrt(900 / 1)
    capped = data.class_weights(targets, 3, power=0.5, cap=10.0)
    assert float(capped[2] / capped[0]) == pytest.approx(10.0)
    assert float(capped[1] / capped[0]) == pytest.approx(3.0)  # under the cap: untouched
    assert float(capped[torch.as_tensor(targets)].mean()) == pytest.approx(1.0)


def test_balanced_sampler_draws_classes_equally():
    targets = np.array([0] * 900 + [1] * 90 + [2] * 10)
    sampler = data.balanced_sampler(targets, torch.Generator().manual_seed(0))
    drawn = np.bincount(targets[list(sampler)], minlength=3) / len(targets)
    assert drawn == pytest.approx([1 / 3] * 3, abs=0.05)


def test_dataset_reads_shard_rows_and_pickles_without_maps(folders):
    spec, splits = folders
    frame = data.load_split_index(spec, splits, CLASSES)
    ds = data.SpectrogramDataset(spec, data.split_frame(frame, "val", splits))
    image, target = ds[7]
    row = frame[frame["split"] == "val"].iloc[7]
    assert image.dtype == torch.uint8 and image.shape == (32, 32)
    expected = np.array(load_shard(spec, row["record"])[row["row"]])
    assert torch.equal(image, torch.from_numpy(expected))
    assert target == row["target"]
    assert pickle.loads(pickle.dumps(ds))._shards == {}


def test_dataset_checks_shards_up_front(folders):
    spec, splits = folders
    frame = data.load_split_index(spec, splits, CLASSES)
    (spec / "shards" / "102.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"102\.npy: shard missing"):
        data.SpectrogramDataset(spec, frame)


def test_loader_order_depends_only_on_the_sampler_generator(folders):
    spec, splits = folders
    frame = data.split_frame(data.load_split_index(spec, splits, CLASSES), "train", splits)
    ds = data.SpectrogramDataset(spec, frame)
    gen = torch.Generator()
    sampler = data.train_sampler(frame["target"].to_numpy(), False, gen)
    loader = data.make_loader(ds, 8, torch.device("cpu"), seed=0, sampler=sampler, num_workers=1)

    def epoch_targets(seed: int) -> list[int]:
        gen.manual_seed(seed)
        return torch.cat([y for _, y in loader]).tolist()

    first = epoch_targets(3)
    assert epoch_targets(4) != first
    assert epoch_targets(3) == first
    assert sorted(first) == sorted(frame["target"].tolist())
    assert not loader.pin_memory  # CPU
