"""The index folder on disk: shards, live rows, compaction, skipped.csv, manifest checks, the lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from copyscan.discover import Skipped
from copyscan.identity import ModelInfo
from copyscan.store import (
    FORMAT_VERSION,
    IndexFolderError,
    IndexStore,
    Row,
    descriptors_of,
    paths_of,
    rows_to_table,
)

DIM = 8


def _info(name="tiny", dim=DIM, sha="a" * 64) -> ModelInfo:
    return ModelInfo(name, dim, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), sha, "torch", "/models/tiny.safetensors")


def _rows(paths, tag="x") -> list[Row]:
    return [Row(p, 100 + i, 1_000_000 + i, f"c-{tag}-{i}", f"p-{tag}-{i}", 64 + i, 48 + i) for i, p in enumerate(paths)]


def _desc(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _store(tmp_path: Path) -> IndexStore:
    store = IndexStore(tmp_path / "idx")
    store.folder.mkdir(parents=True, exist_ok=True)
    return store


def test_rows_to_table_round_trip():
    paths = ["/photos/a.jpg", "/photos/sub/b.png", "/photos/c é.webp"]
    rows = _rows(paths)
    desc = _desc(3)
    table = rows_to_table(rows, desc)
    assert table.num_rows == 3
    assert pa.types.is_fixed_size_list(table.schema.field("descriptor").type)
    assert table.schema.field("descriptor").type.list_size == DIM
    back = descriptors_of(table)
    assert back.dtype == np.float32 and back.shape == (3, DIM)
    np.testing.assert_array_equal(back, desc)
    assert paths_of(table) == paths
    assert table.column("content_hash").to_pylist() == [r.content_hash for r in rows]
    assert table.column("width").to_pylist() == [64, 65, 66]
    assert table.column("bytes").to_pylist() == [100, 101, 102]


def test_descriptors_of_empty_table():
    table = rows_to_table([], np.zeros((0, DIM), np.float32))
    assert descriptors_of(table).shape == (0, DIM)


def test_shards_readable_by_pyarrow_and_pandas(tmp_path):
    store = _store(tmp_path)
    store.write_shard(0, rows_to_table(_rows(["/p/a.jpg", "/p/b.jpg"]), _desc(2, 1)))
    store.write_shard(1, rows_to_table(_rows(["/p/c.jpg"]), _desc(1, 2)))
    shards = store.shard_paths()
    assert [s.name for s in shards] == ["part-000000.parquet", "part-000001.parquet"]

    plain = pq.read_table(shards[0])
    assert plain.num_rows == 2
    dtype = plain.schema.field("descriptor").type
    assert pa.types.is_fixed_size_list(dtype) and dtype.list_size == DIM
    assert dtype.value_type == pa.float32()

    whole = pq.read_table(store.shard_dir)
    assert whole.num_rows == 3

    df = pd.read_parquet(store.shard_dir)
    assert len(df) == 3
    assert set(df["path"]) == {"/p/a.jpg", "/p/b.jpg", "/p/c.jpg"}
    assert all(len(d) == DIM for d in df["descriptor"])
    one = pd.read_parquet(shards[1])
    assert list(one["path"]) == ["/p/c.jpg"]
    np.testing.assert_allclose(np.asarray(one["descriptor"].iloc[0], dtype=np.float32), _desc(1, 2)[0])


def test_latest_shard_wins_for_a_duplicated_path(tmp_path):
    store = _store(tmp_path)
    old = _desc(2, 1)
    new = _desc(1, 9)
    store.write_shard(0, rows_to_table(_rows(["/p/a.jpg", "/p/b.jpg"], "old"), old))
    store.write_shard(1, rows_to_table(_rows(["/p/a.jpg"], "new"), new))
    table = store.read_table()
    assert table.num_rows == 2
    paths = paths_of(table)
    assert sorted(paths) == ["/p/a.jpg", "/p/b.jpg"]
    a = paths.index("/p/a.jpg")
    assert table.column("content_hash").to_pylist()[a] == "c-new-0"
    np.testing.assert_array_equal(descriptors_of(table)[a], new[0])
    assert store.known_files()["/p/a.jpg"] == (100, 1_000_000)


def test_compact_drops_dead_and_superseded_rows_atomically(tmp_path):
    store = _store(tmp_path)
    store.write_shard(0, rows_to_table(_rows(["/p/a.jpg", "/p/b.jpg", "/p/c.jpg"], "old"), _desc(3, 1)))
    store.write_shard(1, rows_to_table(_rows(["/p/a.jpg", "/p/d.jpg"], "new"), _desc(2, 2)))
    store.write_shard(2, rows_to_table(_rows(["/p/e.jpg"], "e"), _desc(1, 3)))
    before = store.read_table()

    dropped = store.compact({"/p/b.jpg", "/p/e.jpg"})
    # b (dead), e (dead, its shard becomes empty and goes), old a (superseded).
    assert dropped == 3
    assert [p.name for p in store.shard_paths()] == ["part-000000.parquet", "part-000001.parquet"]
    raw = pq.read_table(store.shard_dir)
    raw_paths = sorted(os.fsdecode(b) for b in raw.column("path_bytes").to_pylist())
    assert raw_paths == ["/p/a.jpg", "/p/c.jpg", "/p/d.jpg"]  # every row live, each path once
    after = store.read_table()
    assert sorted(paths_of(after)) == ["/p/a.jpg", "/p/c.jpg", "/p/d.jpg"]
    a = paths_of(after).index("/p/a.jpg")
    assert after.column("content_hash").to_pylist()[a] == "c-new-0"
    # Live descriptors are unchanged by compaction.
    live_before = {p: d for p, d in zip(paths_of(before), descriptors_of(before))}
    for p, d in zip(paths_of(after), descriptors_of(after)):
        np.testing.assert_array_equal(d, live_before[p])
    # Nothing temporary left anywhere in the index folder.
    leftovers = [p for p in store.folder.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    # A second compaction has nothing to do.
    assert store.compact(set()) == 0


def test_read_table_filters_by_root(tmp_path):
    store = _store(tmp_path)
    paths = ["/photos/a.jpg", "/photos/sub/b.jpg", "/photos2/c.jpg", "/other/d.jpg"]
    store.write_shard(0, rows_to_table(_rows(paths), _desc(4)))
    assert sorted(paths_of(store.read_table(root="/photos"))) == ["/photos/a.jpg", "/photos/sub/b.jpg"]
    assert paths_of(store.read_table(root="/photos/")) == ["/photos/a.jpg", "/photos/sub/b.jpg"]
    assert paths_of(store.read_table(root="/photos2")) == ["/photos2/c.jpg"]
    assert paths_of(store.read_table(["width"], root="/nowhere")) == []
    t = store.read_table(["width"], root="/other")
    assert set(t.column_names) == {"path_bytes", "width"}


def test_non_utf8_path_round_trips_through_a_shard(tmp_path):
    store = _store(tmp_path)
    weird = os.fsdecode(b"/photos/caf\xe9.jpg")  # latin-1 byte: not valid UTF-8
    store.write_shard(0, rows_to_table(_rows([weird]), _desc(1)))
    t = store.read_table()
    assert paths_of(t) == [weird]
    assert t.column("path_bytes").to_pylist() == [b"/photos/caf\xe9.jpg"]
    assert "\ufffd" in t.column("path").to_pylist()[0]  # the printable column replaces the byte


def test_skipped_csv_round_trip_with_non_utf8_path(tmp_path):
    store = _store(tmp_path)
    weird = os.fsdecode(b"/photos/bad\xff\xfename.jpg")
    skipped = [
        Skipped("/photos/zero.png", "empty file", 0, 5),
        Skipped(weird, "not an image: cannot identify image file", 12, 7),
        Skipped("/photos/comma, \"quote\".jpg", "truncated", 3, 9),
    ]
    store.write_skipped(skipped)
    assert store.skipped_path.exists()
    back = store.read_skipped()
    assert sorted(back, key=lambda s: s.path) == sorted(skipped, key=lambda s: s.path)
    text = store.skipped_path.read_text(encoding="utf-8")  # valid UTF-8 for any spreadsheet
    assert text.splitlines()[0] == "path,reason,bytes,mtime_ns,path_hex"
    assert [p for p in store.folder.iterdir() if p.name.endswith(".tmp")] == []


def test_read_skipped_without_file_is_empty(tmp_path):
    assert _store(tmp_path).read_skipped() == []


def test_manifest_round_trip_and_model_check(tmp_path):
    store = _store(tmp_path)
    assert not store.exists()
    store.check_model(_info())  # nothing to check against yet
    m = store.write_manifest(_info(), {"images": 3, "shards": 1, "skipped": 0}, {"type": "Flat"}, ["/photos"])
    assert store.exists()
    read = store.read_manifest()
    assert read == m
    assert read["format"] == "copyscan-index" and read["format_version"] == FORMAT_VERSION
    assert read["model"]["name"] == "tiny" and read["model"]["dim"] == DIM
    assert read["counts"]["images"] == 3
    store.check_model(_info())  # same model: fine

    for other in (_info(name="other"), _info(sha="b" * 64), _info(dim=16)):
        with pytest.raises(IndexFolderError, match="holds descriptors of model tiny"):
            store.check_model(other)

    # roots accumulate across writes, `created` stays
    m2 = store.write_manifest(_info(), {"images": 4, "shards": 2, "skipped": 0}, {"type": "Flat"}, ["/more"])
    assert m2["roots"] == ["/more", "/photos"]
    assert m2["created"] == m["created"]


def test_manifest_of_another_format_version_is_refused(tmp_path):
    store = _store(tmp_path)
    store.write_manifest(_info(), {"images": 0, "shards": 0, "skipped": 0}, {}, [])
    doc = json.loads(store.manifest_path.read_text())
    doc["format_version"] = FORMAT_VERSION + 1
    store.manifest_path.write_text(json.dumps(doc))
    with pytest.raises(IndexFolderError) as exc:
        store.read_manifest()
    msg = str(exc.value)
    assert f"v{FORMAT_VERSION + 1}" in msg and f"reads v{FORMAT_VERSION}" in msg and "rebuild" in msg


def test_manifest_of_another_format_or_garbage_is_refused(tmp_path):
    store = _store(tmp_path)
    store.manifest_path.write_text(json.dumps({"format": "something-else", "format_version": 1}))
    with pytest.raises(IndexFolderError, match="not a copyscan index"):
        store.read_manifest()
    store.manifest_path.write_text("{not json")
    with pytest.raises(IndexFolderError, match="unreadable"):
        store.read_manifest()


def test_missing_manifest_says_how_to_build(tmp_path):
    with pytest.raises(IndexFolderError, match="copyscan index"):
        IndexStore(tmp_path / "nothing").read_manifest()


def test_unreadable_shard_is_a_clear_error(tmp_path):
    store = _store(tmp_path)
    store.shard_dir.mkdir()
    (store.shard_dir / "part-000000.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(IndexFolderError, match="unreadable"):
        store.read_table()


def test_second_writer_is_refused(tmp_path):
    first = IndexStore(tmp_path / "idx")
    second = IndexStore(tmp_path / "idx")
    first.lock()
    try:
        with pytest.raises(IndexFolderError, match="another copyscan process"):
            second.lock()
    finally:
        first.unlock()
    second.lock()  # free again once the first lets go
    second.unlock()


def test_empty_store_reads_empty(tmp_path):
    store = _store(tmp_path)
    assert store.shard_paths() == []
    assert store.next_shard_number() == 0
    assert store.read_table().num_rows == 0
    assert store.known_files() == {}
    assert store.compact({"/x"}) == 0
