"""Index choice and neighbour search (ann.py), pair finding (search.find_pairs), grouping (group.py)."""

from __future__ import annotations

import numpy as np
import pytest

from copyscan import ann
from copyscan.search import find_pairs
from copyscan.group import Item, build_groups, keep_reason, quality_key
from copyscan.results import MATCH_IDENTICAL_FILE, MATCH_IDENTICAL_PIXELS, MATCH_NEAR


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _random(n: int, d: int, seed: int = 0) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n, d)))


# ---- ann ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", [(0, 128), (1, 128), (500, 1280), (9_999, 4096), (100_000, 1280)])
def test_choose_index_flat_when_small(n, d):
    choice = ann.choose_index(n, d)
    assert choice.kind == "Flat" and choice.factory == "Flat"
    assert choice.nprobe == 0
    assert "exact" in choice.reason


def test_choose_index_ivf_for_a_million():
    choice = ann.choose_index(1_000_000, 128)
    assert choice.kind == "IVF"
    assert choice.factory == f"IVF{choice.nlist},Flat"
    assert choice.nlist == 4096  # 4 * sqrt(1e6) = 4000 -> nearest power of two
    assert choice.nprobe == max(16, choice.nlist // 16) == 256
    assert "approximate" in choice.reason


def test_flat_search_is_exact():
    vecs = _random(300, 16, seed=1)
    index = ann.build_index(vecs)
    assert index.ntotal == 300
    scores, ids = ann.search(index, vecs[:10], 5)
    brute = vecs[:10] @ vecs.T
    for q in range(10):
        order = np.argsort(-brute[q])[:5]
        np.testing.assert_array_equal(ids[q], order)
        np.testing.assert_allclose(scores[q], brute[q, order], atol=1e-5)


def test_search_caps_k_at_index_size():
    vecs = _random(3, 8)
    scores, ids = ann.search(ann.build_index(vecs), vecs, 10)
    assert ids.shape == (3, 3) and (ids >= 0).all()


def test_ivf_returns_exact_inner_products(tmp_path):
    vecs = _random(20_000, 32, seed=2)
    choice = ann.IndexChoice("IVF", "IVF64,Flat", 64, 16)
    index = ann.build_index(vecs, choice)
    assert index.ntotal == 20_000
    import faiss

    assert faiss.extract_index_ivf(index).nprobe == 16
    queries = vecs[:50] + 0.05 * _random(50, 32, seed=3)
    queries = _unit(queries)
    scores, ids = ann.search(index, queries, 10)
    found = 0
    for q in range(50):
        for s, i in zip(scores[q], ids[q]):
            if i < 0:
                continue
            found += 1
            assert s == pytest.approx(float(queries[q] @ vecs[i]), abs=1e-4)
        assert ids[q][0] == q  # its own near-copy is the best match
    assert found > 0
    # save/load keeps it and sets nprobe again
    path = str(tmp_path / "ivf.faiss")
    ann.save_index(index, path)
    loaded = ann.load_index(path, nprobe=16)
    assert faiss.extract_index_ivf(loaded).nprobe == 16
    s2, i2 = ann.search(loaded, queries, 10)
    np.testing.assert_array_equal(i2, ids)


def test_search_above_returns_all_neighbours_beyond_k():
    rng = np.random.default_rng(4)
    base = _unit(rng.standard_normal(24))
    same = np.repeat(base[None, :], 300, axis=0)
    others = _random(200, 24, seed=5)
    vecs = np.concatenate([same, others])
    index = ann.build_index(vecs)
    found = ann.search_above(index, vecs[:2], threshold=0.99, k=8)
    assert len(found) == 2
    for ids, scores in found:
        assert sorted(ids.tolist()) == list(range(300))
        assert (scores >= 0.99).all()
        assert ids.dtype == np.int64
        assert np.all(np.diff(scores) <= 1e-6)  # sorted by score


def test_search_above_matches_brute_force():
    vecs = _random(400, 6, seed=6)  # low dimension: many pairs above 0.8
    index = ann.build_index(vecs)
    found = ann.search_above(index, vecs, threshold=0.8, k=2)
    sims = vecs @ vecs.T
    for q, (ids, scores) in enumerate(found):
        expected = set(np.nonzero(sims[q] >= 0.8 + 1e-5)[0].tolist())
        got = set(ids.tolist())
        assert expected <= got
        assert got <= set(np.nonzero(sims[q] >= 0.8 - 1e-5)[0].tolist())
        for i, s in zip(ids, scores):
            assert s == pytest.approx(sims[q, i], abs=1e-5)


def test_search_above_small_result_budget(monkeypatch):
    monkeypatch.setattr(ann, "RESULT_BUDGET", 64)  # forces chunked growth
    vecs = np.repeat(_random(1, 8)[:], 100, axis=0)
    found = ann.search_above(ann.build_index(vecs), vecs[:5], threshold=0.5, k=4)
    assert all(len(ids) == 100 for ids, _ in found)


def test_search_above_empty_cases():
    vecs = _random(5, 8)
    empty = ann.build_index(np.zeros((0, 8), np.float32))
    found = ann.search_above(empty, vecs, 0.5)
    assert len(found) == 5 and all(len(ids) == 0 for ids, _ in found)
    assert ann.search_above(ann.build_index(vecs), np.zeros((0, 8), np.float32), 0.5) == []


def test_find_pairs_each_pair_once():
    rng = np.random.default_rng(7)
    a, b = _unit(rng.standard_normal(16)), _unit(rng.standard_normal(16))
    vecs = np.stack([a, a, _unit(a + 0.01 * rng.standard_normal(16)), b, _unit(b + 0.01 * rng.standard_normal(16))])
    vecs = np.concatenate([vecs, _random(20, 16, seed=8)])
    pairs = find_pairs(vecs, 0.95)
    keys = [(i, j) for i, j, _ in pairs]
    assert all(i < j for i, j in keys)
    assert len(keys) == len(set(keys))
    sims = vecs @ vecs.T
    expected = {(i, j) for i in range(len(vecs)) for j in range(i + 1, len(vecs)) if sims[i, j] >= 0.95}
    assert set(keys) == expected
    assert {(0, 1), (0, 2), (1, 2), (3, 4)} <= set(keys)
    for i, j, s in pairs:
        assert s == pytest.approx(sims[i, j], abs=1e-5)
    assert find_pairs(vecs[:1], 0.5) == []


def test_find_pairs_many_identical():
    vecs = np.repeat(_random(1, 8), 60, axis=0)
    pairs = find_pairs(vecs, 0.9)
    assert len(pairs) == 60 * 59 // 2


# ---- group --------------------------------------------------------------------------------------


def _item(path, w=100, h=100, b=10_000, ch=None, ph=None) -> Item:
    return Item(path, w, h, b, ch or f"c:{path}", ph or f"p:{path}")


def _paths(group):
    return [m.path for m in group.members]


def test_no_chaining():
    # A is the best image; A~B, B~C, but A and C are not similar.
    items = [_item("/a.jpg", 400, 300), _item("/b.jpg", 300, 200), _item("/c.jpg", 200, 100)]
    groups = build_groups(items, [(0, 1, 0.8), (1, 2, 0.8)], threshold=0.75)
    assert len(groups) == 1
    g = groups[0]
    assert _paths(g) == ["/a.jpg", "/b.jpg"]
    assert "/c.jpg" not in _paths(g)
    assert g.keep.path == "/a.jpg" and g.keep.role == "keep"
    assert g.members[1].role == "copy" and g.members[1].score == pytest.approx(0.8)
    assert g.members[1].match == MATCH_NEAR


def test_no_chaining_leftover_forms_own_group():
    # A~B, B~C, C~D, A!~C: A takes B; C then keeps with D.
    items = [_item("/a.jpg", 400, 300), _item("/b.jpg", 300, 200), _item("/c.jpg", 200, 100), _item("/d.jpg", 100, 50)]
    groups = build_groups(items, [(0, 1, 0.9), (1, 2, 0.9), (2, 3, 0.9)], threshold=0.75)
    assert [_paths(g) for g in groups] == [["/a.jpg", "/b.jpg"], ["/c.jpg", "/d.jpg"]]


def test_pairs_below_threshold_ignored():
    items = [_item("/a.jpg"), _item("/b.jpg")]
    assert build_groups(items, [(0, 1, 0.7)], threshold=0.75) == []


def test_keeper_highest_resolution():
    items = [_item("/small.jpg", 100, 100, 50_000), _item("/big.jpg", 200, 100, 1_000)]
    g = build_groups(items, [(0, 1, 0.9)], 0.75)[0]
    assert g.keep.path == "/big.jpg"
    assert g.keep_reason == "highest resolution (200x100 vs 100x100)"


def test_keeper_least_compressed_at_same_resolution():
    items = [_item("/q60.jpg", 100, 100, 5_000), _item("/q95.jpg", 100, 100, 20_000)]
    g = build_groups(items, [(0, 1, 0.9)], 0.75)[0]
    assert g.keep.path == "/q95.jpg"
    assert g.keep_reason == "same resolution, least compressed (2.00 vs 0.50 bytes per pixel)"


def test_keeper_shortest_path_last():
    items = [_item("/photos/long/name.jpg", 100, 100, 5_000), _item("/p/x.jpg", 100, 100, 5_000)]
    g = build_groups(items, [(0, 1, 0.9)], 0.75)[0]
    assert g.keep.path == "/p/x.jpg"
    assert g.keep_reason == "same resolution and file size, shortest path"


def test_keep_reason_only_image():
    assert keep_reason(_item("/a.jpg"), []) == "only image"


def test_quality_key_order():
    items = [_item("/b.jpg", 10, 10, 100), _item("/a.jpg", 20, 10, 100), _item("/aa.jpg", 10, 10, 200)]
    assert [it.path for it in sorted(items, key=quality_key)] == ["/a.jpg", "/aa.jpg", "/b.jpg"]


def test_exact_duplicates_grouped_without_pairs():
    items = [
        _item("/orig.png", 100, 100, 9_000, ch="h1", ph="px1"),
        _item("/copy/orig.png", 100, 100, 9_000, ch="h1", ph="px1"),  # same bytes
        _item("/orig.bmp", 100, 100, 30_000, ch="h2", ph="px1"),  # same pixels, other bytes
        _item("/unrelated.jpg", 50, 50, 900),
    ]
    groups = build_groups(items, [], threshold=0.75)
    assert len(groups) == 1
    g = groups[0]
    # The BMP has the most bytes per pixel at equal resolution: it is kept.
    assert g.keep.path == "/orig.bmp"
    by_path = {m.path: m for m in g.members}
    assert set(by_path) == {"/orig.png", "/copy/orig.png", "/orig.bmp"}
    for p in ("/orig.png", "/copy/orig.png"):
        assert by_path[p].score == 1.0 and by_path[p].role == "copy"
        assert by_path[p].match == MATCH_IDENTICAL_PIXELS


def test_identical_file_vs_identical_pixels_labels():
    items = [
        _item("/a.png", 100, 100, 9_000, ch="h1", ph="px1"),
        _item("/b.png", 100, 100, 9_000, ch="h1", ph="px1"),
        _item("/c.png", 100, 100, 8_000, ch="h3", ph="px1"),
    ]
    g = build_groups(items, [], 0.75)[0]
    assert g.keep.path == "/a.png"  # ties on quality: shortest then alphabetical
    by_path = {m.path: m for m in g.members}
    assert by_path["/b.png"].match == MATCH_IDENTICAL_FILE and by_path["/b.png"].score == 1.0
    assert by_path["/c.png"].match == MATCH_IDENTICAL_PIXELS and by_path["/c.png"].score == 1.0


def test_exact_twin_of_a_near_copy_gets_its_score():
    items = [
        _item("/a.jpg", 400, 300),
        _item("/b.jpg", 200, 150, 5_000, ch="hb", ph="pb"),
        _item("/b2.jpg", 200, 150, 5_000, ch="hb", ph="pb"),
    ]
    g = build_groups(items, [(0, 2, 0.85)], 0.75)[0]
    assert g.keep.path == "/a.jpg"
    by_path = {m.path: m for m in g.members}
    assert by_path["/b.jpg"].score == pytest.approx(0.85) and by_path["/b.jpg"].match == MATCH_NEAR
    assert by_path["/b2.jpg"].score == pytest.approx(0.85) and by_path["/b2.jpg"].match == MATCH_IDENTICAL_FILE


def test_singletons_make_no_group():
    items = [_item(f"/{i}.jpg") for i in range(5)]
    assert build_groups(items, [], 0.75) == []
    assert build_groups([], [], 0.75) == []


def test_group_ids_biggest_first():
    items = [_item(f"/s{i}.jpg", 100 - i, 100) for i in range(2)] + [_item(f"/b{i}.jpg", 100 - i, 100) for i in range(4)]
    pairs = [(0, 1, 0.9), (2, 3, 0.9), (2, 4, 0.9), (2, 5, 0.95)]
    groups = build_groups(items, pairs, 0.75)
    assert [g.group_id for g in groups] == [1, 2]
    assert [len(g.members) for g in groups] == [4, 2]
    assert groups[0].keep.path == "/b0.jpg"
    # copies ordered by score, best first
    assert [m.path for m in groups[0].members] == ["/b0.jpg", "/b3.jpg", "/b1.jpg", "/b2.jpg"]
    for g in groups:
        assert sum(m.role == "keep" for m in g.members) == 1 and g.members[0].role == "keep"
