"""Stage 7 (group): turn scored pairs into groups of copies, each with one image to keep.

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
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .results import MATCH_IDENTICAL_FILE, MATCH_IDENTICAL_PIXELS, MATCH_NEAR, Group, Member


@dataclass(slots=True)  # no per-instance __dict__: dedupe holds one Item per image
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


@dataclass(eq=False)
class Pairs:
    """Scored pairs of item indices as three flat arrays: `first[k] < second[k]` scored `score[k]`.

    Millions of pairs cost 20 bytes each here, against ~150 for a Python tuple of three numbers.
    Iterating yields `(i, j, score)` tuples, so it reads like the list it replaces.
    """

    first: np.ndarray  # int64
    second: np.ndarray  # int64
    score: np.ndarray  # float32 from a search, float64 from a Python list

    @classmethod
    def empty(cls) -> Pairs:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))

    @classmethod
    def of(cls, pairs: Pairs | Iterable[tuple[int, int, float]]) -> Pairs:
        if isinstance(pairs, Pairs):
            return pairs
        rows = list(pairs)
        if not rows:
            return cls.empty()
        i, j, s = zip(*rows)
        i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
        return cls(np.minimum(i, j), np.maximum(i, j), np.asarray(s, np.float64))

    def __len__(self) -> int:
        return len(self.first)

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        return zip(self.first.tolist(), self.second.tolist(), self.score.tolist())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Pairs, list, tuple)):
            return NotImplemented
        return list(self) == list(other)

    def best_per_pair(self, n: int) -> Pairs:
        """One row per (first, second), the highest score kept, sorted by (first, second).

        `n` bounds the indices (the key is first * n + second).
        """
        if len(self) == 0:
            return self
        key = self.first * np.int64(max(n, 1)) + self.second
        order = np.lexsort((-self.score, key))  # by key, best score first within a key
        key = key[order]
        first_of_key = np.ones(len(key), dtype=bool)
        first_of_key[1:] = key[1:] != key[:-1]
        take = order[first_of_key]
        return Pairs(self.first[take], self.second[take], self.score[take])


def exact_cluster_labels(items: list[Item]) -> np.ndarray:
    """Cluster number (0, 1, ...) of each item: items with equal content or pixel hash share one.

    Union-find in numpy: only items whose hash was seen before cost a Python step.
    """
    parent = np.arange(len(items), dtype=np.int64)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = int(parent[i])
        return i

    for attr in ("content_hash", "pixel_hash"):
        first: dict[str, int] = {}
        for i, it in enumerate(items):
            h = getattr(it, attr)
            if not h:
                continue
            seen = first.setdefault(h, i)
            if seen != i:
                a, b = root(seen), root(i)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    # Pointer jumping until every item points at its root.
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            break
        parent = grand
    return np.unique(parent, return_inverse=True)[1].astype(np.int64)


def build_groups(items: list[Item], pairs: Pairs | Iterable[tuple[int, int, float]], threshold: float | None = None) -> list[Group]:
    """Groups of copies from items and scored pairs (i, j, score); singletons are not groups.

    Every pair given is a link: the search already applied the threshold (search.py). A
    `threshold` here drops weaker pairs first, for callers holding pairs found some other way.

    Pairs may be a `Pairs` (what `find_pairs` returns) or any iterable of (i, j, score). Work and
    memory grow with the number of pairs and of items in some group, not with N x N; the pairs
    stay in numpy arrays throughout.
    """
    labels = exact_cluster_labels(items)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    links = cluster_links(Pairs.of(pairs), labels, threshold, n_clusters)
    return groups_from_links(items, labels, links)


def groups_from_links(items: Sequence[Item], labels: np.ndarray, links: Pairs) -> list[Group]:
    """Groups from exact-copy cluster labels and the best score between linked clusters.

    The second half of build_groups, for callers that compute the links another way (streamed
    from pair files: copyscan.group_stream). `items` may be any sequence: only the items of
    clusters in some group are read.
    """
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    members = _members_of_involved_clusters(items, labels, links, n_clusters)
    # Adjacency of clusters in CSR form: the neighbours of c are dst[ptr[c]:ptr[c + 1]].
    src = np.concatenate([links.first, links.second])
    order = np.argsort(src, kind="stable")
    dst = np.concatenate([links.second, links.first])[order]
    dst_score = np.concatenate([links.score, links.score])[order]
    ptr = np.searchsorted(src[order], np.arange(n_clusters + 1))

    def best(c: int) -> Item:
        return items[members[c][0]]

    ranking = sorted(members, key=lambda c: quality_key(best(c)))
    assigned = np.zeros(n_clusters, dtype=bool)
    groups: list[Group] = []
    for ci in ranking:
        if assigned[ci]:
            continue
        assigned[ci] = True
        near, near_score = dst[ptr[ci]:ptr[ci + 1]], dst_score[ptr[ci]:ptr[ci + 1]]
        free = ~assigned[near]
        takes = sorted(
            zip(near[free].tolist(), near_score[free].tolist()),
            key=lambda t: (-t[1], quality_key(best(t[0]))),
        )
        assigned[near[free]] = True
        if len(members[ci]) == 1 and not takes:
            continue
        groups.append(_make_group(items, members, ci, takes))
    groups.sort(key=lambda g: (-len(g.members), g.keep.path))
    for gid, g in enumerate(groups, start=1):
        g.group_id = gid
    return groups


def cluster_links(pairs: Pairs, labels: np.ndarray, threshold: float | None, n_clusters: int) -> Pairs:
    """Best score between two different clusters over all their member pairs (at `threshold`, if given)."""
    ok = pairs.score >= threshold if threshold is not None else np.ones(len(pairs), dtype=bool)
    a, b = labels[pairs.first[ok]], labels[pairs.second[ok]]
    other = a != b
    a, b, score = a[other], b[other], pairs.score[ok][other]
    return Pairs(np.minimum(a, b), np.maximum(a, b), score).best_per_pair(n_clusters)


def _members_of_involved_clusters(items: Sequence[Item], labels: np.ndarray, links: Pairs, n_clusters: int) -> dict[int, list[int]]:
    """Cluster -> its items, best first, for the clusters that can be in a group.

    A cluster of one image with no link can never be in a group: leaving it out keeps the
    Python-level work proportional to the images that have copies.
    """
    sizes = np.bincount(labels, minlength=n_clusters)
    involved = sizes > 1
    involved[links.first] = True
    involved[links.second] = True
    by_cluster = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    members: dict[int, list[int]] = {}
    for c in np.nonzero(involved)[0].tolist():
        cluster = by_cluster[starts[c]:starts[c + 1]].tolist()
        members[c] = cluster if len(cluster) == 1 else sorted(cluster, key=lambda i: quality_key(items[i]))
    return members


def _make_group(items: Sequence[Item], clusters: Mapping[int, list[int]], ci: int, takes: list[tuple[int, float]]) -> Group:
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


def _exact_member(items: Sequence[Item], twin: int, j: int, score: float) -> Member:
    same_bytes = items[twin].content_hash == items[j].content_hash
    return _member(items[j], score, MATCH_IDENTICAL_FILE if same_bytes else MATCH_IDENTICAL_PIXELS)


def _member(item: Item, score: float, match: str) -> Member:
    return Member(item.path, "copy", float(score), item.width, item.height, item.bytes, match)
