"""Stage 7: turn scored pairs into groups of copies, each with one image to keep.

The rule, which stops unrelated images merging through a chain of pairs (A~B, B~C, but A!~C):

1. Exact duplicates are merged first, for free: files with the same bytes (content hash) or the
   same decoded pixels (pixel hash) are one cluster. Identity is transitive, so no chain risk.
2. Clusters are ranked by the quality of their best image: highest resolution, then least
   compressed (most bytes per pixel), then shortest path.
3. Star grouping: walking that ranking, each cluster not yet in a group becomes a group's kept
   image and takes every not-yet-grouped cluster whose similarity *to it* is at least the
   threshold. Every copy in a group is thus a direct match of the kept image; a B that is merely
   similar to a copy is left for a group of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .results import MATCH_IDENTICAL_FILE, MATCH_IDENTICAL_PIXELS, MATCH_NEAR, Group, Member


@dataclass
class Item:
    path: str
    width: int
    height: int
    bytes: int
    content_hash: str
    pixel_hash: str


def quality_key(item: Item) -> tuple:
    pixels = max(1, item.width * item.height)
    return (-pixels, -(item.bytes / pixels), len(item.path), item.path)


def keep_reason(keep: Item, others: list[Item]) -> str:
    """Which rule chose `keep` over the best of the others."""
    if not others:
        return "only image"
    runner = min(others, key=quality_key)
    kp, rp = keep.width * keep.height, runner.width * runner.height
    if kp != rp:
        return f"highest resolution ({keep.width}x{keep.height} vs {runner.width}x{runner.height})"
    kb, rb = keep.bytes / max(1, kp), runner.bytes / max(1, rp)
    if kb != rb:
        return f"same resolution, least compressed ({kb:.2f} vs {rb:.2f} bytes per pixel)"
    return "same resolution and file size, shortest path"


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def exact_clusters(items: list[Item]) -> list[list[int]]:
    uf = _UnionFind(len(items))
    for attr in ("content_hash", "pixel_hash"):
        first: dict[str, int] = {}
        for i, it in enumerate(items):
            h = getattr(it, attr)
            if h:
                if h in first:
                    uf.union(first[h], i)
                else:
                    first[h] = i
    clusters: dict[int, list[int]] = {}
    for i in range(len(items)):
        clusters.setdefault(uf.find(i), []).append(i)
    return list(clusters.values())


def build_groups(items: list[Item], pairs: list[tuple[int, int, float]], threshold: float) -> list[Group]:
    """Groups of copies from items and scored pairs (i, j, cosine); singletons are not groups."""
    clusters = exact_clusters(items)
    # Each cluster is represented by its best image; exact members sort behind it.
    for c in clusters:
        c.sort(key=lambda i: quality_key(items[i]))
    rep_of = np.empty(len(items), dtype=np.int64)
    for ci, c in enumerate(clusters):
        rep_of[c] = ci
    # Best score between two clusters over all member pairs.
    neighbours: list[dict[int, float]] = [dict() for _ in clusters]
    for i, j, s in pairs:
        a, b = int(rep_of[i]), int(rep_of[j])
        if a == b or s < threshold:
            continue
        if s > neighbours[a].get(b, -2.0):
            neighbours[a][b] = s
            neighbours[b][a] = s
    order = sorted(range(len(clusters)), key=lambda ci: quality_key(items[clusters[ci][0]]))
    assigned = np.zeros(len(clusters), dtype=bool)
    groups: list[Group] = []
    for ci in order:
        if assigned[ci]:
            continue
        assigned[ci] = True
        takes = sorted(
            ((cj, s) for cj, s in neighbours[ci].items() if not assigned[cj]),
            key=lambda t: (-t[1], quality_key(items[clusters[t[0]][0]])),
        )
        for cj, _ in takes:
            assigned[cj] = True
        if len(clusters[ci]) == 1 and not takes:
            continue
        groups.append(_make_group(items, clusters, ci, takes))
    groups.sort(key=lambda g: (-len(g.members), g.keep.path))
    for gid, g in enumerate(groups, start=1):
        g.group_id = gid
    return groups


def _make_group(items: list[Item], clusters: list[list[int]], ci: int, takes: list[tuple[int, float]]) -> Group:
    keep_i = clusters[ci][0]
    keep = items[keep_i]
    members = [Member(keep.path, "keep", 1.0, keep.width, keep.height, keep.bytes, "keep")]
    members += [_exact_member(items, keep_i, j, 1.0) for j in clusters[ci][1:]]
    for cj, score in takes:
        members.append(_member(items[clusters[cj][0]], score, MATCH_NEAR))
        # Exact twins of a near copy are as similar to the kept image as it is.
        members += [_exact_member(items, clusters[cj][0], j, score) for j in clusters[cj][1:]]
    others = [items[clusters[ci][j]] for j in range(1, len(clusters[ci]))] + [items[clusters[cj][0]] for cj, _ in takes]
    return Group(0, members, keep_reason(keep, others))


def _exact_member(items: list[Item], twin: int, j: int, score: float) -> Member:
    same_bytes = items[twin].content_hash == items[j].content_hash
    return _member(items[j], score, MATCH_IDENTICAL_FILE if same_bytes else MATCH_IDENTICAL_PIXELS)


def _member(item: Item, score: float, match: str) -> Member:
    return Member(item.path, "copy", float(score), item.width, item.height, item.bytes, match)
