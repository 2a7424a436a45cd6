"""The index job's pipeline shape (indexing.py): plan without a model, an engine that can be
swapped, and a commit that leaves the store consistent."""

from __future__ import annotations

from conftest import make_photo

from copyscan import indexing
from copyscan.extraction import Extraction
from copyscan.models import LazyModel
from copyscan.store import IndexStore, paths_of


def _photos(folder, n=5):
    for s in range(n):
        make_photo(folder / f"p{s}.jpg", size=(80, 60), seed=s)
    return str(folder.resolve())


def test_another_engine_plugs_in_and_gets_the_same_index(tmp_path, tiny_model_path):
    root = _photos(tmp_path / "photos")
    seen = []

    def reversed_engine(entries, model, extraction, advance):
        # Any order, its own batching: here one entry at a time, last first, through the local engine.
        assert isinstance(model, LazyModel)
        for entry in reversed(entries):
            seen.append(entry.path)
            yield from indexing.local_engine([entry], model, extraction, advance)

    ex = Extraction(workers=0)
    a = indexing.index_into(IndexStore(tmp_path / "a"), root, str(tiny_model_path), ex, engine=reversed_engine)
    b = indexing.index_into(IndexStore(tmp_path / "b"), root, str(tiny_model_path), ex)
    assert len(seen) == 5 and a.embedded == b.embedded == 5 and a.total == b.total == 5
    got, want = IndexStore(tmp_path / "a"), IndexStore(tmp_path / "b")
    assert sorted(paths_of(got.read_table())) == sorted(paths_of(want.read_table()))
    assert got.faiss_is_fresh() and got.stored_model() == want.stored_model()


def test_plan_needs_no_model_and_finds_only_changes(tmp_path, tiny_model_path):
    root = _photos(tmp_path / "photos")
    store = IndexStore(tmp_path / "idx")
    assert len(indexing.plan(store, root).todo) == 5
    indexing.index_into(store, root, str(tiny_model_path), Extraction(workers=0))
    make_photo(tmp_path / "photos" / "new.jpg", size=(80, 60), seed=99)
    work = indexing.plan(store, root)
    assert [e.path for e in work.todo] == [str(tmp_path / "photos" / "new.jpg")] and work.unchanged == 5

    def no_engine(entries, model, extraction, advance):
        raise AssertionError("an unchanged folder runs no engine")

    (tmp_path / "photos" / "new.jpg").unlink()
    lazy = LazyModel(str(tiny_model_path), "cpu")
    summary = indexing.index_into(store, root, lazy, Extraction(workers=0), engine=no_engine)
    assert summary.unchanged == 5 and summary.embedded == 0 and not lazy.loaded
