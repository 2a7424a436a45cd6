"""Stage 7 (group): turn scored pairs into groups of copies, each with one image to keep.

The rule, which stops unrelated images merging through a chain of pairs (A~B, B~C, but A!~C):

1. Exact duplicates are merged first, for free: files with the same bytes (content hash) or the
   same decoded pixels (pixel hash) are one cluster. Identity is transitive, so no chain risk.
   Within a cluster the original comes first (copyscan.keep.twin_key: a lossy file before a
   lossless re-save of its pixels, then the smaller file).
2. Clusters are ranked by how many other clusters they match (an original matches each of its
   copies, a copy mostly only its original), then by the quality of their best image.
3. Star grouping: walking that ranking, each cluster not yet in a group becomes a group's centre
   and takes every not-yet-grouped cluster whose similarity *to it* is at least the threshold.
   Every copy in a group is thus a direct match of the centre; a B that is merely similar to a
   copy is left for a group of its own.
4. The image to keep is then chosen among the group's clusters by `choose` (copyscan.keep in
   dedupe; by default the highest resolution). Pairs the user rejected (`rejected`, pairs of
   content hashes) never link two images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .keep import twin_key
from .results import MATCH_IDENTICAL_FILE, MATCH_IDENTICAL_PIXELS, MATCH_NEAR, Group, Member


@dataclass(slots=True)  # no per-instance __dict__: dedupe holds one Item per image
class Item:
    path: str
    width: int
    height: int
    bytes: int
    content_hash: str
    pixel_hash: str
    mtime_ns: int = 0


# Given a group's candidates (the first image of each cluster, the centre first): which to keep and why.
Chooser = Callable[[Sequence[Item]], tuple[int, str]]


def by_resolution(cands: Sequence[Item]) -> tuple[int, str]:
    """The default chooser: the highest resolution, then the least compressed, then the shortest path."""
    best = min(range(len(cands)), key=lambda k: quality_key(cands[k]))
    return best, keep_reason(cands[best], [c for k, c in enumerate(cands) if k != best])


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


def build_groups(items: list[Item], pairs: Pairs | Iterable[tuple[int, int, float]], threshold: float | None = None, *,
                 choose: Chooser = by_resolution, rejected: set[frozenset[str]] | None = None) -> list[Group]:
    """Groups of copies from items and scored pairs (i, j, score); singletons are not groups.

    Every pair given is a link: the search already applied the threshold (search.py). A
    `threshold` here drops weaker pairs first, for callers holding pairs found some other way.

    Pairs may be a `Pairs` (what `find_pairs` returns) or any iterable of (i, j, score). Work and
    memory grow with the number of pairs and of items in some group, not with N x N; the pairs
    stay in numpy arrays throughout.
    """
    labels = exact_cluster_labels(items)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    pairs = Pairs.of(pairs)
    if rejected:
        pairs = _without_rejected(items, pairs, rejected)
    links = cluster_links(pairs, labels, threshold, n_clusters)
    return groups_from_links(items, labels, links, choose=choose)


def groups_from_links(items: Sequence[Item], labels: np.ndarray, links: Pairs, *,
                      choose: Chooser = by_resolution) -> list[Group]:
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

    degree = np.diff(ptr)
    ranking = sorted(members, key=lambda c: (-int(degree[c]), quality_key(best(c))))
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
        if len(members[ci]) == 1 and not takes:
            continue
        order = [ci] + [cj for cj, _ in takes]
        pick, reason = choose([best(c) for c in order]) if len(order) > 1 else (0, _twin_reason(items, members[ci]))
        kc = order[pick]
        # Only direct matches of the kept image stay: the rest go back for groups of their own.
        direct = dict(zip(dst[ptr[kc]:ptr[kc + 1]].tolist(), dst_score[ptr[kc]:ptr[kc + 1]].tolist()))
        copies = [(cj, direct[cj]) for cj in order if cj != kc and cj in direct]
        copies.sort(key=lambda t: (-t[1], quality_key(best(t[0]))))
        assigned[kc] = True
        assigned[[cj for cj, _ in copies]] = True
        groups.append(_make_group(items, members, kc, copies, reason))
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
        members[c] = cluster if len(cluster) == 1 else sorted(cluster, key=lambda i: twin_key(items[i].path, items[i].bytes, items[i].mtime_ns))
    return members


def _without_rejected(items: Sequence[Item], pairs: Pairs, rejected: set[frozenset[str]]) -> Pairs:
    """The pairs less those whose two images' content hashes the user marked as not a copy."""
    if len(pairs) == 0:
        return pairs
    keep = np.array([frozenset((items[i].content_hash, items[j].content_hash)) not in rejected
                     for i, j in zip(pairs.first.tolist(), pairs.second.tolist())], dtype=bool)
    return Pairs(pairs.first[keep], pairs.second[keep], pairs.score[keep])


def _make_group(items: Sequence[Item], clusters: Mapping[int, list[int]], kc: int, copies: list[tuple[int, float]], reason: str) -> Group:
    keep_i = clusters[kc][0]
    keep = items[keep_i]
    members = [Member(keep.path, "keep", 1.0, keep.width, keep.height, keep.bytes, "keep", keep.mtime_ns, keep.content_hash)]
    members += [_exact_member(items, keep_i, j, 1.0) for j in clusters[kc][1:]]
    for cj, score in copies:
        members.append(_member(items[clusters[cj][0]], score, MATCH_NEAR))
        # Exact twins of a near copy are as similar to the kept image as it is.
        members += [_exact_member(items, clusters[cj][0], j, score) for j in clusters[cj][1:]]
    return Group(0, members, reason)


def _twin_reason(items: Sequence[Item], cluster: list[int]) -> str:
    keep, other = items[cluster[0]], items[cluster[1]]
    if keep.content_hash == other.content_hash:
        return "identical files: the oldest, then the shortest path"
    return "identical pixels: a lossy file before its lossless re-save, then the smallest file"


def _exact_member(items: Sequence[Item], twin: int, j: int, score: float) -> Member:
    same_bytes = items[twin].content_hash == items[j].content_hash
    return _member(items[j], score, MATCH_IDENTICAL_FILE if same_bytes else MATCH_IDENTICAL_PIXELS)


def _member(item: Item, score: float, match: str) -> Member:
    return Member(item.path, "copy", float(score), item.width, item.height, item.bytes, match, item.mtime_ns, item.content_hash)
