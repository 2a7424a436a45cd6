"""Stage 7 at scale: groups from pair files too large to hold as Python objects.

`build_groups` (copyscan.group) wants one `Item` per image and the pairs in memory. At tens of
millions of images neither is needed whole:

* exact-copy clusters come from the hash columns in numpy (`exact_labels`): each hash string is
  encoded to an integer by Arrow, and clusters merge by repeated minimum-label passes;
* the pairs are read a batch at a time and reduced straight to the best score between two
  clusters (`stream_links`): memory grows with the distinct cluster links, not the pairs read;
* `ItemColumns` makes an `Item` only when grouping asks for one: for the images in some group.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import pyarrow as pa

from .group import Item, Pairs, cluster_links, groups_from_links
from .results import Group

COMPACT_EVERY = 1 << 22  # links gathered before they are reduced again (~100 MB)


class ItemColumns:
    """A read-only sequence of `Item`s over Arrow columns; an Item is built on access."""

    def __init__(self, paths, width, height, nbytes, content_hash, pixel_hash):
        """`paths`: a list of str, or an Arrow column of str or of path bytes (store's path_bytes)."""
        self.paths = paths
        self.width = np.asarray(width, np.int64)
        self.height = np.asarray(height, np.int64)
        self.bytes = np.asarray(nbytes, np.int64)
        self.content_hash = content_hash
        self.pixel_hash = pixel_hash

    def __len__(self) -> int:
        return len(self.width)

    def __getitem__(self, i: int) -> Item:
        return Item(_str(self.paths, i), int(self.width[i]), int(self.height[i]), int(self.bytes[i]),
                    _str(self.content_hash, i), _str(self.pixel_hash, i))


def _str(column, i: int) -> str:
    value = column[i]
    value = value.as_py() if isinstance(value, pa.Scalar) else value
    return os.fsdecode(value) if isinstance(value, bytes) else value  # a path_bytes column: the exact name


def hash_codes(column) -> np.ndarray:
    """An integer per row, equal for equal strings; -1 for an empty or missing hash (never merged).
    Computed by column_codes, without Arrow's dictionary encoding (1.2 GB at 10M rows)."""
    import pyarrow.compute as pc

    from .column_codes import value_codes

    array = column if isinstance(column, (pa.Array, pa.ChunkedArray)) else pa.array(column, pa.string())
    codes = value_codes(array)
    if len(codes):
        codes[pc.equal(array, "").fill_null(False).to_numpy(zero_copy_only=False)] = -1
    return codes


def exact_labels(content_hash, pixel_hash) -> np.ndarray:
    """Cluster number (0, 1, ...) per row: rows sharing a content or a pixel hash share one cluster
    (transitively), as group.exact_cluster_labels, in numpy."""
    keys = [hash_codes(content_hash), hash_codes(pixel_hash)]
    n = len(keys[0])
    label = np.arange(n, dtype=np.int64)
    while True:
        before = label
        for codes in keys:
            has = codes >= 0
            if not has.any():
                continue
            # The smallest label among the rows of each hash, given to all of them.
            smallest = np.full(int(codes.max()) + 1, n, dtype=np.int64)
            np.minimum.at(smallest, codes[has], label[has])
            label = label.copy() if label is before else label
            label[has] = np.minimum(label[has], smallest[codes[has]])
        if np.array_equal(label, before):
            break
    return np.unique(label, return_inverse=True)[1].astype(np.int64)


def stream_links(batches: Iterable[Pairs], labels: np.ndarray, threshold: float) -> Pairs:
    """The best score between each two linked clusters, over pairs read batch by batch."""
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    parts: list[Pairs] = []
    held = 0
    for batch in batches:
        links = cluster_links(batch, labels, threshold, n_clusters)
        parts.append(links)
        held += len(links)
        if held >= COMPACT_EVERY:
            parts = [_merge(parts, n_clusters)]
            held = len(parts[0])
    return _merge(parts, n_clusters) if parts else Pairs.empty()


def _merge(parts: list[Pairs], n: int) -> Pairs:
    return Pairs(np.concatenate([p.first for p in parts]), np.concatenate([p.second for p in parts]),
                 np.concatenate([p.score.astype(np.float32) for p in parts])).best_per_pair(n)


def build_groups_streamed(items: ItemColumns, batches: Iterable[Pairs], threshold: float) -> list[Group]:
    """build_groups over pair batches (e.g. pair_search.read_pairs) without an Item per image."""
    labels = exact_labels(items.content_hash, items.pixel_hash)
    return groups_from_links(items, labels, stream_links(batches, labels, threshold))
