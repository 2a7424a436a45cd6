"""Pairs as numpy arrays, and grouping that scales with the number of pairs (issue 6).

`build_groups` works on arrays now; a small dict-based version of the documented rule, kept
here as the reference, must give the very same groups on random inputs with exact duplicates,
chains and ties. `find_pairs` returns arrays and never more than one row per pair.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from copyscan.search import find_pairs
from copyscan.group import Item, Pairs, build_groups, quality_key


def _reference_groups(items: list[Item], pairs, threshold: float) -> list[tuple]:
    """The rule of group.py's docstring, written plainly with dicts: the oracle."""
    parent = list(range(len(items)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for attr in ("content_hash", "pixel_hash"):
        first = {}
        for i, it in enumerate(items):
            h = getattr(it, attr)
            if h in first:
                a, b = root(first[h]), root(i)
                parent[max(a, b)] = min(a, b)
            else:
                first[h] = i
    clusters: dict[int, list[int]] = {}
    for i in range(len(items)):
        clusters.setdefault(root(i), []).append(i)
    for c in clusters.values():
        c.sort(key=lambda i: quality_key(items[i]))
    cluster_of = {i: r for r, c in clusters.items() for i in c}
    near: dict[int, dict[int, float]] = {r: {} for r in clusters}
    for i, j, s in pairs:
        a, b = cluster_of[i], cluster_of[j]
        if a != b and s >= threshold and s > near[a].get(b, -2.0):
            near[a][b] = near[b][a] = s
    assigned: set[int] = set()
    groups = []
    for c in sorted(clusters, key=lambda r: quality_key(items[clusters[r][0]])):
        if c in assigned:
            continue
        assigned.add(c)
        takes = sorted(((d, s) for d, s in near[c].items() if d not in assigned),
                       key=lambda t: (-t[1], quality_key(items[clusters[t[0]][0]])))
        assigned.update(d for d, _ in takes)
        if len(clusters[c]) > 1 or takes:
            members = [items[i].path for i in clusters[c]] + [items[i].path for d, _ in takes for i in clusters[d]]
            groups.append(members)
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def _random_case(seed: int, n: int = 300, n_pairs: int = 600):
    rng = np.random.default_rng(seed)
    twins = rng.integers(0, n // 3, size=n)  # shared hashes: exact duplicates
    items = [
        Item(f"/p/{rng.integers(0, 10 ** rng.integers(1, 4))}/{i}.jpg", int(rng.integers(1, 4)) * 100, 100,
             int(rng.integers(1, 4)) * 1000,
             f"c{twins[i]}" if rng.random() < 0.1 else f"c-{i}", f"p{twins[i]}" if rng.random() < 0.1 else f"p-{i}")
        for i in range(n)
    ]
    a, b = rng.integers(0, n, n_pairs), rng.integers(0, n, n_pairs)
    scores = rng.choice([0.7, 0.75, 0.8, 0.8, 0.9, 0.95], size=n_pairs)  # repeated scores: ties
    pairs = [(int(i), int(j), float(s)) for i, j, s in zip(a, b, scores) if i != j]
    return items, pairs


@pytest.mark.parametrize("seed", range(8))
def test_groups_match_the_reference_rule(seed):
    items, pairs = _random_case(seed)
    got = build_groups(items, pairs, 0.75)
    assert sorted(([m.path for m in g.members] for g in got), key=lambda g: (-len(g), g[0])) == _reference_groups(items, pairs, 0.75)
    # Pairs given as arrays (what find_pairs returns) group the same as the list.
    as_arrays = Pairs.of(pairs)
    assert [[m.path for m in g.members] for g in build_groups(items, as_arrays, 0.75)] == [[m.path for m in g.members] for g in got]


def test_find_pairs_returns_arrays_one_row_per_pair():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    vecs = np.concatenate([base, base + 0.05 * rng.standard_normal((50, 16)).astype(np.float32)])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    pairs = find_pairs(vecs, 0.9)
    assert isinstance(pairs, Pairs) and pairs.first.dtype == np.int64 and pairs.score.dtype == np.float32
    assert (pairs.first < pairs.second).all()
    keys = pairs.first * len(vecs) + pairs.second
    assert len(np.unique(keys)) == len(keys) >= 50
    # Limited to some query rows: exactly the pairs with an end among them.
    rows = np.arange(0, 100, 7)
    some = find_pairs(vecs, 0.9, rows)
    expected = {(i, j) for i, j, _ in pairs if i in set(rows.tolist()) or j in set(rows.tolist())}
    assert {(i, j) for i, j, _ in some} == expected


def test_a_million_pairs_group_in_bounded_memory():
    # 20k images, 1M random pairs (a hundred copies each): every image in some pair.
    n, n_pairs = 20_000, 1_000_000
    rng = np.random.default_rng(0)
    items = [Item(f"/p/{i}.jpg", 100 + i % 7, 100, 1000 + i, f"c{i}", f"p{i}") for i in range(n)]
    a, b = rng.integers(0, n, n_pairs), rng.integers(0, n, n_pairs)
    keep = a != b
    pairs = Pairs(np.minimum(a, b)[keep], np.maximum(a, b)[keep], rng.uniform(0.5, 1, keep.sum()).astype(np.float32))
    tracemalloc.start()
    try:
        groups = build_groups(items, pairs, 0.75)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert groups and len({m.path for g in groups for m in g.members}) == sum(len(g.members) for g in groups)
    # The pairs themselves are 20 MB (measured peak ~50 MB); dicts of Python floats for 2M
    # neighbour entries would take a few hundred.
    assert peak < 120 * 2**20, f"grouping peaked at {peak / 2**20:.0f} MB"
