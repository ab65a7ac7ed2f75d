"""The shared feature store: computes only missing rows, once, and returns them in frame order;
the run fingerprint follows the shards' recorded content hashes."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from data_prep.layout import load_shard, read_index, save_shard, sha256_file, shard_path
from pipeline.training import feature_store
from pipeline.training.data import load_split_index
from pipeline.training.feature_store import FeatureStore, record_stems
from pipeline.training.features import data_fingerprint
from pipeline.training.transforms import Preprocess
from tests.synthetic import write_synthetic


class Counting(torch.nn.Module):
    """Features = per-image mean and max; counts the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return torch.stack([x.mean(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], dim=1)


def test_store_computes_missing_rows_once_and_keeps_frame_order(tmp_path):
    spec, _ = write_synthetic(tmp_path)
    index = read_index(spec / "index.csv")
    fn = Counting()
    store = FeatureStore(tmp_path / "store", {"model": "counting"}, fn,
                         Preprocess([0.0], [1.0], 1), torch.device("cpu"), batch_size=4)
    part = index.sample(frac=0.5, random_state=0)  # shuffled rows of several records
    first = store.rows(spec, part)
    assert fn.seen == len(part) and first.shape == (len(part), 2)
    record, row = part.iloc[3][["record", "row"]]
    image = torch.from_numpy(np.asarray(load_shard(spec, record)[row])).float() / 255
    np.testing.assert_allclose(first[3], [image.mean(), image.max()], rtol=1e-6)

    everything = store.rows(spec, index)  # only the other half is computed
    assert fn.seen == len(index)
    by_key = {(r, w): f for (r, w), f in zip(index[["record", "row"]].itertuples(index=False),
                                             everything, strict=True)}
    for (r, w), f in zip(part[["record", "row"]].itertuples(index=False), first, strict=True):
        np.testing.assert_array_equal(by_key[(r, w)], f)

    again = FeatureStore(tmp_path / "store", {"model": "counting"}, fn,
                         Preprocess([0.0], [1.0], 1), torch.device("cpu"))
    np.testing.assert_array_equal(again.rows(spec, index), everything)
    assert fn.seen == len(index)  # a new run reads the store

    other = FeatureStore(tmp_path / "store", {"model": "other"}, fn,
                         Preprocess([0.0], [1.0], 1), torch.device("cpu"))
    other.rows(spec, index.head(3))
    assert fn.seen == len(index) + 3  # another identity is another key


def test_store_follows_the_pixels_not_the_meta_or_the_file_times(tmp_path):
    spec, _ = write_synthetic(tmp_path)
    index = read_index(spec / "index.csv")
    fn = Counting()
    store = FeatureStore(tmp_path / "store", {"model": "counting"}, fn,
                         Preprocess([0.0], [1.0], 1), torch.device("cpu"))
    first = store.rows(spec, index)
    meta = json.loads((spec / "meta.json").read_text())  # a new rhythm feature upstream
    meta["segments"]["rhythm"]["features"].append("rr_new")
    (spec / "meta.json").write_text(json.dumps(meta))
    for shard in (spec / "shards").glob("*.npy"):  # the image stage re-ran: same bytes, new times
        os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    np.testing.assert_array_equal(store.rows(spec, index), first)
    assert fn.seen == len(index)  # nothing recomputed

    record = str(index["record"].iloc[0])
    images = np.asarray(load_shard(spec, record)).copy()
    save_shard(spec, record, 255 - images)  # new pixels: that record alone is recomputed
    again = store.rows(spec, index)
    mine = (index["record"].astype(str) == record).to_numpy()
    assert fn.seen == len(index) + mine.sum()
    np.testing.assert_array_equal(again[~mine], first[~mine])
    assert not np.allclose(again[mine], first[mine])


def test_store_uses_the_digests_the_image_stage_recorded(tmp_path, monkeypatch):
    spec, _ = write_synthetic(tmp_path)
    records = sorted(read_index(spec / "index.csv")["record"].astype(str).unique())
    meta = json.loads((spec / "meta.json").read_text())
    hashed = record_stems(spec, records)  # no recorded digests: each shard is hashed
    assert hashed == {r: f"{r}-{sha256_file(shard_path(spec, r))[:16]}" for r in records}
    calls = []
    monkeypatch.setattr(feature_store, "sha256_file", lambda path: calls.append(path) or "0")
    assert record_stems(spec, records) == hashed and not calls  # once per process
    shard = shard_path(spec, records[0])
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert record_stems(spec, records)[records[0]] == f"{records[0]}-0" and calls == [shard]
    monkeypatch.undo()
    meta["shard_sha256"] = {r: f"{i:x}" * 64 for i, r in enumerate(records)}
    (spec / "meta.json").write_text(json.dumps(meta))
    assert record_stems(spec, records) == {r: f"{r}-{f'{i:x}' * 16}" for i, r in enumerate(records)}


def test_run_fingerprint_follows_recorded_digests_not_file_times(tmp_path):
    spec, splits = write_synthetic(tmp_path)
    classes = json.loads((spec / "meta.json").read_text())["classes"]
    index = load_split_index(spec, splits, classes)
    shard = shard_path(spec, str(index["record"].iloc[0]))

    def touch() -> None:
        os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))

    old = data_fingerprint(spec, splits, index)  # no recorded digests: file times count
    touch()
    assert data_fingerprint(spec, splits, index) != old
    meta = json.loads((spec / "meta.json").read_text())
    meta["shard_sha256"] = {r: sha256_file(shard_path(spec, r))
                            for r in index["record"].astype(str).unique()}
    (spec / "meta.json").write_text(json.dumps(meta))
    recorded = data_fingerprint(spec, splits, index)
    touch()  # the image stage re-ran and wrote the same pixels
    assert data_fingerprint(spec, splits, index) == recorded
    meta["shard_sha256"][shard.stem] = "0" * 64  # new pixels: a new recorded digest
    (spec / "meta.json").write_text(json.dumps(meta))
    assert data_fingerprint(spec, splits, index) != recorded
