"""Recall of an IVF-SQ8 index with an HNSW coarse quantiser (index_choice's settings beyond 4096
lists), against exact search, by the quantiser's graph width (efSearch) and by nprobe.

    python benchmarks/coarse_quantizer.py --n 200k --nlist 8192 --train 65536 --ef 16 64 128
    python benchmarks/coarse_quantizer.py --n 1M --nlist 16384 --ef 64     # 10M's nlist, at 1M

N synthetic 128-d unit vectors (dedupe_memory.py's generator: 2% planted near-copies at cosine
0.86-0.98); the index is built as index_choice.build_index does for large nlist (k-means on
--train vectors assigned through an HNSW graph, 10 iterations) with the quantiser's efSearch set
to each --ef before the vectors are added. Queries: the rows of up to 20,000 planted pairs (both
ends); exact pairs: every pair scoring >= --threshold with an end among the queries, from a
brute-force inner product of the queries against all N. Recall = exact pairs that the index
search (pair_search.search_rows: threshold less the measured margin, re-scored exactly) found.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def exact_pairs(vectors, rows, threshold: float):
    """(first, second) keys of every pair >= threshold with an end in `rows`, by brute force."""
    import numpy as np

    n = len(vectors)
    keys = []
    block = max(1, (64 << 20) // (4 * n))  # queries at a time: a (block, N) float32 score matrix of 64 MB
    for a in range(0, len(rows), block):
        q = rows[a:a + block]
        scores = vectors[q] @ vectors.T
        i, j = np.nonzero(scores >= threshold)
        i = q[i]
        other = i != j
        i, j = i[other], j[other]
        keys.append(np.minimum(i, j) * n + np.maximum(i, j))
    return np.unique(np.concatenate(keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="200k")
    parser.add_argument("--nlist", type=int, default=8192)
    parser.add_argument("--train", type=int, default=262_144, help="k-means training vectors")
    parser.add_argument("--ef", type=int, nargs="+", default=[64])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--threshold", type=float, default=0.75)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import faiss
    import numpy as np
    from dedupe_memory import parse_case, synthetic_descriptors

    from copyscan import index_choice, pair_search

    n, dim = parse_case(f"{args.n}:128")
    vectors, copy_of, _ = synthetic_descriptors(n, dim, 0.02, seed=0)
    near = np.nonzero(copy_of >= 0)[0][:20000]
    rows = np.unique(np.concatenate([near, copy_of[near]]))
    t0 = time.perf_counter()
    truth = exact_pairs(vectors, rows, args.threshold)
    print(f"# N {n:,}, nlist {args.nlist}, train {args.train:,}; {len(rows):,} queries, {len(truth):,} exact pairs "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print("| efSearch | train s | add s | nprobe | search s | pairs found | recall |")
    print("|---|---|---|---|---|---|---|")
    for ef in args.ef:
        index = faiss.index_factory(dim, f"IVF{args.nlist}_HNSW{index_choice.HNSW_LINKS},SQ8", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        assigner = faiss.IndexHNSWFlat(dim, index_choice.HNSW_LINKS)
        ivf.clustering_index = assigner
        ivf.cp.min_points_per_centroid = 4
        sample = np.sort(np.random.default_rng(0).choice(n, min(n, args.train), replace=False))
        t0 = time.perf_counter()
        index.train(vectors[sample])
        train_s = time.perf_counter() - t0
        ivf.clustering_index = None
        faiss.downcast_index(ivf.quantizer).hnsw.efSearch = ef
        t0 = time.perf_counter()
        for a in range(0, n, index_choice.BUILD_CHUNK):
            index.add(vectors[a:a + index_choice.BUILD_CHUNK])
        add_s = time.perf_counter() - t0
        margin = index_choice.margin_for(index_choice.IndexPlan("IVF-SQ8", "", args.nlist, 0, exact_scores=False),
                                         index, vectors)
        for nprobe in args.nprobe:
            index_choice.set_nprobe(index, nprobe)
            t0 = time.perf_counter()
            pairs = pair_search.search_rows(index, vectors, rows, args.threshold, margin)
            search_s = time.perf_counter() - t0
            found = np.unique(pairs.first * n + pairs.second)
            recall = np.isin(truth, found).mean() if len(truth) else 1.0
            print(f"| {ef} | {train_s:.0f} | {add_s:.0f} | {nprobe} | {search_s:.1f} | {np.isin(found, truth).sum():,} | "
                  f"{recall:.4f} |", flush=True)
        del index, assigner


if __name__ == "__main__":
    main()
