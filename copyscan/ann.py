"""Stage 5 (index): the FAISS index, its type chosen by size, and neighbour search with a score floor.

The rule (in the spirit of autofaiss, which picks by memory and latency budget):

* exact inner product (`Flat`) while an all-against-all search of the collection costs at most
  `EXACT_BUDGET_FLOP` multiply-adds (N * N * d <= 2e13: about 100k images at 1280-d or 200k at
  512-d, a few minutes on two CPU cores). Exact search returns every neighbour above a threshold.
* above that, an inverted file (`IVF{nlist},Flat`) with nlist = 4 * sqrt(N) rounded to a power of
  two, trained on up to 64 points per list, searched with nprobe = nlist / 16 (at least 16). Only
  the lists nearest each query are scanned, which cuts the cost by about nlist / nprobe at a
  small loss of recall; the scores it returns are still exact inner products, so a threshold means
  the same as with `Flat`.

FAISS returns the final score: the vectors it holds and the queries it gets are in the score
rule's form (score.py), so `search_above_flat`'s floor is the one place a threshold is applied.
This module knows FAISS, not the index folder: store.py saves and loads the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

EXACT_BUDGET_FLOP = 2e13
SEARCH_BATCH = 4096  # queries per FAISS call from the callers
RESULT_BUDGET = 1 << 22  # (query, neighbour) cells per FAISS call while k grows: ~50 MB


@dataclass
class IndexChoice:
    kind: str  # "Flat" or "IVF"
    factory: str
    nlist: int = 0
    nprobe: int = 0
    reason: str = ""


def choose_index(n: int, dim: int) -> IndexChoice:
    cost = float(n) * n * dim
    if cost <= EXACT_BUDGET_FLOP or n < 10_000:
        return IndexChoice("Flat", "Flat", reason=f"exact: N*N*d = {cost:.1e} <= {EXACT_BUDGET_FLOP:.0e}")
    nlist = 2 ** int(round(math.log2(4 * math.sqrt(n))))
    nprobe = max(16, nlist // 16)
    return IndexChoice(
        "IVF", f"IVF{nlist},Flat", nlist, nprobe,
        reason=f"approximate: N*N*d = {cost:.1e} > {EXACT_BUDGET_FLOP:.0e}; nlist {nlist}, nprobe {nprobe}",
    )


def build_index(vectors: np.ndarray, choice: IndexChoice | None = None, seed: int = 0) -> faiss.Index:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    choice = choice or choose_index(n, dim)
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, size=min(n, 64 * choice.nlist), replace=False)]
        index.train(sample)
    if n:
        index.add(vectors)
    set_nprobe(index, choice.nprobe)
    return index


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    if nprobe:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = nprobe


def save_index(index: faiss.Index, path: str) -> None:
    faiss.write_index(index, path)


def load_index(path: str, nprobe: int = 0) -> faiss.Index:
    """A saved index; an IVF one searches `nprobe` lists (as chosen when it was built)."""
    index = faiss.read_index(path)
    set_nprobe(index, nprobe)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` neighbours of each query: (scores, ids), ids -1 where the index has fewer."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    return index.search(queries, k)


def search_above(index: faiss.Index, queries: np.ndarray, threshold: float, k: int = 32,
                 max_k: int = 100_000) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every neighbour scoring at least `threshold`, per query, as (ids, scores) sorted by score.

    The per-query view of `search_above_flat` (see there for how k grows and memory stays bounded).
    """
    rows, ids, scores = search_above_flat(index, queries, threshold, k, max_k)
    # search_above_flat returns hits grouped by query row, each query's best first.
    bounds = np.searchsorted(rows, np.arange(len(queries) + 1))
    return [(ids[a:b], scores[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def search_above_flat(index: faiss.Index, queries: np.ndarray, threshold: float, k: int = 32,
                      max_k: int = 100_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query row, neighbour id, score) with score >= `threshold`, as three flat arrays.

    Sorted by query row, then by score (best first). Starts at `k` neighbours and grows k fourfold
    for the queries whose k-th neighbour still scores above the threshold (an image with 300
    copies gets all 300). Growth happens in chunks of at most `RESULT_BUDGET` (query, neighbour)
    cells and only hits are kept, as flat arrays rather than one Python object per query, so
    memory stays bounded even when thousands of images are near-identical.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = index.ntotal
    found_rows: list[np.ndarray] = []
    found_ids: list[np.ndarray] = []
    found_scores: list[np.ndarray] = []
    pending = np.arange(len(queries)) if n else np.arange(0)
    k = max(1, min(k, n))
    while len(pending):
        chunk = max(1, RESULT_BUDGET // k)
        grow: list[np.ndarray] = []
        for start in range(0, len(pending), chunk):
            rows = pending[start:start + chunk]
            scores, ids = index.search(queries[rows], k)
            hit = (ids >= 0) & (scores >= threshold)
            # A query whose every neighbour is a hit may have more: ask again with a larger k.
            full = hit.all(axis=1) if k < min(n, max_k) else np.zeros(len(rows), dtype=bool)
            grow.append(rows[full])
            hit[full] = False
            row_of_hit, col_of_hit = np.nonzero(hit)
            found_rows.append(rows[row_of_hit])
            found_ids.append(ids[row_of_hit, col_of_hit].astype(np.int64))
            found_scores.append(scores[row_of_hit, col_of_hit].astype(np.float32))
        pending = np.concatenate(grow) if grow else np.arange(0)
        k = min(n, max_k, k * 4)
    if not found_rows:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    rows = np.concatenate(found_rows).astype(np.int64)
    ids = np.concatenate(found_ids)
    scores = np.concatenate(found_scores)
    # Rounds interleave rows; each query's hits all come from its last round, in FAISS's order
    # (best first), so a stable sort by row keeps that order within a query.
    order = np.argsort(rows, kind="stable")
    return rows[order], ids[order], scores[order]
