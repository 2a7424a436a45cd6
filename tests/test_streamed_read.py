"""Dedupe at scale reads the index folder shard by shard (store.live_rows, descriptor_blocks):
the same rows as read_table, the same groups as the in-memory path, and never every row at once."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from copyscan import api, dedupe_scale, store as store_module
from copyscan.extraction import Extraction
from copyscan.group import Item, build_groups
from copyscan.identity import ModelInfo
from copyscan.postprocess import PostProcess
from copyscan.search import find_pairs
from copyscan.store import IndexStore, Row, descriptors_of, rows_to_table

from conftest import make_photo

DIM = 16
INFO = ModelInfo("synthetic", DIM, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "0" * 64, "none")


def _shard(store: IndexStore, number: int, paths: list[str], vectors: np.ndarray, hashes: list[str] | None = None,
           regions: list[int] | None = None) -> None:
    hashes = hashes or [f"h{p}" for p in paths]
    rows = [Row(p, 1000 + i, 5, h, "", 40 + i % 7, 30) for i, (p, h) in enumerate(zip(paths, hashes))]
    if regions is None:
        table = rows_to_table(rows, vectors)
    else:
        boxes = np.tile(np.asarray([0, 0, 1, 1], np.float32), (len(rows), 1))
        table = rows_to_table(rows, vectors, np.asarray(regions), boxes)
    store.write_shard(number, table, INFO)


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _count_shard_reads_refuse_read_table(monkeypatch) -> list[int]:
    """Rows of each shard read from now on; read_table (every row at once) fails the test."""
    reads: list[int] = []
    real = store_module._read_shard

    def counted(path, columns=None):
        table = real(path, columns)
        reads.append(table.num_rows)
        return table

    def refused(*args, **kwargs):
        raise AssertionError("read_table holds every row at once")

    monkeypatch.setattr(store_module, "_read_shard", counted)
    monkeypatch.setattr(IndexStore, "read_table", refused)
    return reads


@pytest.fixture()
def mixed_store(tmp_path) -> IndexStore:
    """Shards with a path re-embedded later (the newer row is live), rows outside the root, a
    sibling folder whose name starts like the root's, and region rows."""
    store = IndexStore(tmp_path / "idx")
    store.lock()
    store.write_manifest(INFO, {"images": 0, "shards": 0, "skipped": 0}, dict(store_module.NOT_BUILT), ["/r"])
    _shard(store, 0, ["/r/a.jpg", "/r/b.jpg", "/other/c.jpg", "/r2/d.jpg"], _unit(4, 0))
    _shard(store, 1, ["/r/e.jpg", "/r/e.jpg", "/r/f.jpg"], _unit(3, 1), regions=[0, 1, 0])
    _shard(store, 2, ["/r/b.jpg", "/r/g.jpg"], _unit(2, 2))  # b re-embedded: this row is the live one
    store.unlock()
    return store


def test_live_rows_are_read_tables_rows(mixed_store):
    cols = ["width", "height", "bytes", "content_hash", "pixel_hash"]
    expected = mixed_store.read_table([*cols, "region", "descriptor"], root="/r")
    whole = np.asarray([r in (None, 0) for r in expected.column("region").to_pylist()])
    expected = expected.filter(pa.array(whole))
    got = mixed_store.live_rows(cols, root="/r", whole_images=True)
    assert got.table.column("path_bytes").to_pylist() == [b"/r/a.jpg", b"/r/e.jpg", b"/r/f.jpg", b"/r/b.jpg", b"/r/g.jpg"]
    assert got.table.to_pydict() == expected.select(["path_bytes", *cols]).to_pydict()
    blocks = list(mixed_store.descriptor_blocks(got))
    assert [len(b) for b in blocks] == [1, 2, 2]  # one block a shard: b's old row is not read as live
    np.testing.assert_array_equal(np.concatenate(blocks), descriptors_of(expected))
    # Without a root and with region rows: every live row, as read_table gives them.
    everything = mixed_store.live_rows(["region"])
    assert everything.table.to_pydict() == mixed_store.read_table(["region"]).to_pydict()
    # A selection of a selection keeps rows and shard positions in step.
    part = got.take(np.asarray([0, 3]))
    assert part.table.column("path_bytes").to_pylist() == [b"/r/a.jpg", b"/r/b.jpg"]
    np.testing.assert_array_equal(np.concatenate(list(mixed_store.descriptor_blocks(part))), descriptors_of(expected)[[0, 3]])


def test_sliced_dedupe_reads_shard_by_shard_and_groups_as_in_memory(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    n, shard_rows = 1200, 100
    x = _unit(n, 4)
    copies = rng.choice(np.arange(600, n), 60, replace=False)
    x[copies] = x[copies - 600] + 0.03 * rng.standard_normal((60, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    paths = [f"/photos/{i:05d}.jpg" for i in range(n)]
    hashes = [f"h{i}" for i in range(n)]
    hashes[copies[0]] = hashes[copies[0] - 600]  # one byte-identical file (not a link: it stays)
    store = IndexStore(tmp_path / "idx")
    store.lock()
    store.write_manifest(INFO, {"images": 0, "shards": 0, "skipped": 0}, dict(store_module.NOT_BUILT), ["/photos"])
    for number, a in enumerate(range(0, n, shard_rows)):
        _shard(store, number, paths[a:a + shard_rows], x[a:a + shard_rows], hashes[a:a + shard_rows])
    store.unlock()

    reads = _count_shard_reads_refuse_read_table(monkeypatch)
    groups, images, aliases = dedupe_scale.sliced_dedupe(store, "/photos", PostProcess(), threshold=0.9,
                                                          output=tmp_path / "out", source="t", memory_budget=1 << 30)
    assert images == n and not aliases
    assert reads and max(reads) == shard_rows  # every read is one shard
    monkeypatch.undo()
    items = [Item(p, 40 + i % 100 % 7, 30, 1000 + i % 100, h, "") for i, (p, h) in enumerate(zip(paths, hashes))]
    expected = build_groups(items, find_pairs(x, 0.9))
    assert len(expected) >= 50
    assert [[(m.path, m.role, m.match, round(m.score, 5)) for m in g.members] for g in groups] == \
           [[(m.path, m.role, m.match, round(m.score, 5)) for m in g.members] for g in expected]


def test_api_dedupe_in_slices_never_reads_the_whole_table(tmp_path, tiny_model_path, monkeypatch):
    folder = tmp_path / "photos"
    for s in range(6):
        make_photo(folder / f"p{s}.jpg", size=(96, 72), seed=s)
    make_photo(folder / "copy.png", size=(96, 72), seed=0)
    os.symlink("p0.jpg", folder / "link.jpg")  # one file, two names: grouped once, the link an alias
    os.link(folder / "p2.jpg", folder / "hard.jpg")
    extraction = Extraction(batch_size=8, workers=0, device="cpu")
    plain = api.dedupe(folder, output=tmp_path / "o1", index_dir=tmp_path / "idx", model=str(tiny_model_path),
                       extraction=extraction, report=False, threshold=0.9)
    asked: list[list[str]] = []
    real = IndexStore.read_table

    def spy(self, columns=None, root=None):
        asked.append(list(columns or ["*"]))
        return real(self, columns, root)

    monkeypatch.setattr(IndexStore, "read_table", spy)
    sliced = api.dedupe(folder, output=tmp_path / "o2", index_dir=tmp_path / "idx", extraction=extraction, report=False,
                        threshold=0.9, memory_budget="1G")
    assert plain.groups and [[m.path for m in g.members] for g in sliced.groups] == [[m.path for m in g.members] for g in plain.groups]
    assert sliced.images == plain.images == 7
    assert any(m.aliases == [str(folder / "link.jpg")] for g in sliced.groups for m in g.members)
    assert [[(m.path, m.aliases) for m in g.members] for g in sliced.groups] == \
           [[(m.path, m.aliases) for m in g.members] for g in plain.groups]
    # The unchanged index is planned from its paths and sizes; no descriptor, no every-column read.
    assert asked and not any("descriptor" in c or "*" in c for c in asked)


def test_index_commit_builds_faiss_from_the_shards_one_at_a_time(mixed_store, monkeypatch):
    from copyscan.indexing import commit

    reads = _count_shard_reads_refuse_read_table(monkeypatch)
    images, kind = commit(mixed_store, INFO, ["/r"], 0)
    monkeypatch.undo()
    assert max(reads) == 4  # the largest shard, never all 9 rows at once
    assert (images, kind) == (7, "Flat")  # 8 live rows, one of them a region row
    assert mixed_store.read_manifest()["counts"]["region_rows"] == 1
    assert not mixed_store.scratch_vectors_path().exists()
    index = mixed_store.load_faiss()
    live = descriptors_of(mixed_store.read_table(["descriptor"]))
    np.testing.assert_array_equal(index.reconstruct_n(0, index.ntotal), live)


@pytest.mark.parametrize("kind", [pa.binary(), pa.string(), pa.large_binary()])
def test_column_codes_equal_exactly_where_values_are(kind, monkeypatch):
    from copyscan import column_codes

    rng = np.random.default_rng(5)
    values = [f"/p/{int(v)}.jpg" for v in rng.integers(0, 300, 2000)] + ["", "/p/1.jpg"]
    if kind == pa.binary() or kind == pa.large_binary():
        values = [v.encode() for v in values]
    whole = pa.array(values + [None], kind)
    column = pa.chunked_array([whole.slice(0, 700), whole.slice(700, 1)])
    column = pa.chunked_array([*column.chunks, whole.slice(701)])  # sliced chunks: offsets not at 0
    codes = column_codes.value_codes(column)
    assert codes[-1] == -1 and (codes[:-1] >= 0).all()
    seen: dict = {}
    for value, code in zip(values, codes[:-1].tolist()):
        assert seen.setdefault(value, code) == code  # equal values, equal codes
    assert len(set(seen.values())) == len(seen)  # different values, different codes
    monkeypatch.setattr(column_codes, "BLOCK_ROWS", 7)  # keyed in blocks that cut across the chunks
    np.testing.assert_array_equal(column_codes.value_codes(column), codes)
    # Every key colliding: the byte check catches it and the codes stay exact.
    monkeypatch.setattr(column_codes, "_keys", lambda array: np.zeros(len(array), np.uint64))
    forced = column_codes.value_codes(column)
    assert len(set(forced[:-1].tolist())) == len(seen) and forced[-1] == -1
    assert [forced[i] == forced[j] for i, j in [(0, 1), (1, 2), (5, 9)]] == \
           [values[i] == values[j] for i, j in [(0, 1), (1, 2), (5, 9)]]
