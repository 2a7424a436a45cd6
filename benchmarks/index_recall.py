"""Recall, memory and build time of each index kind that `--memory-budget` can choose.

    python benchmarks/index_recall.py                          # 1M x 128-d, every kind
    python benchmarks/index_recall.py --n 200k --kinds IVF-Flat IVF-SQ8

1. N synthetic unit vectors (benchmarks/dedupe_memory.py's generator: planted near-copies at
   cosine ~0.86-0.98, 1-5 per original, a tenth byte-identical) are written once to a .npy file.
2. For each kind, in a fresh process: `index_choice.build_index` from the memory-mapped file
   (timed, with the score margin measurement), the index written to disk (its size), then
   `pair_search.search_rows` for a set of query rows: every row of a planted group (originals
   and copies) plus as many random rows, threshold 0.75, approximate kinds re-scored exactly.
3. Recall = planted pairs found / planted pairs that exact search finds. Exact search is `Flat`
   over the same query rows (the first case, its own recall 1 by definition); every reported
   score is checked against the exact cosine (max |error| column: 0 up to float rounding).

Peak RSS is the child's ru_maxrss: it includes the pages of the memory-mapped vectors file
that the build read (the whole file, as every vector is added), so the index's own size is given
apart ("index MB": the file FAISS writes; for on-disk, RAM holds only its centroids).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["Flat", "IVF-Flat", "IVF-SQ8", "IVF-PQ", "IVF-PQ/8", "on-disk"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 2**20


def plan_for(kind: str, n: int, dim: int):
    from copyscan.index_choice import IndexPlan, candidates

    if kind == "Flat":  # the exact reference, whatever the size
        return IndexPlan("Flat", "Flat", memory_bytes=n * dim * 4)
    pq = [p for p in candidates(n, dim) if p.kind == "IVF-PQ"]
    if kind == "IVF-PQ":
        return pq[0]  # d/4 bytes
    if kind == "IVF-PQ/8":
        return pq[-1]  # d/8 bytes
    return next(p for p in candidates(n, dim) if p.kind == kind)


def child(args) -> dict:
    sys.path.insert(0, str(ROOT))
    import faiss
    import numpy as np

    from copyscan import pair_search
    from copyscan.index_choice import build_index, margin_for

    work = Path(args.work)
    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    queries = np.load(work / "queries.npy")
    n, dim = vectors.shape
    plan = plan_for(args.child, n, dim)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    index = build_index(plan, vectors, ondisk_path=str(work / f"{args.child.replace('/', '_')}.ivfdata"))
    margin = margin_for(plan, index, vectors)
    build_s = time.perf_counter() - t0
    path = work / f"{args.child.replace('/', '_')}.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    disk = (work / f"{args.child.replace('/', '_')}.ivfdata")
    t0 = time.perf_counter()
    pairs = pair_search.search_rows(index, vectors, queries, args.threshold, margin)
    search_s = time.perf_counter() - t0
    pairs = pairs.best_per_pair(n)
    error = np.abs(pairs.score - pair_search.rescore(vectors, pairs.first, pairs.second))
    np.save(work / f"pairs-{args.child.replace('/', '_')}.npy", np.stack([pairs.first, pairs.second]))
    path.unlink()
    disk.unlink(missing_ok=True)
    return {
        "kind": args.child, "factory": plan.factory, "nprobe": plan.nprobe, "estimate_mb": plan.memory_bytes / 2**20,
        "index_mb": size / 2**20, "disk_mb": plan.disk_bytes / 2**20, "build_s": build_s, "search_s": search_s,
        "queries": int(len(queries)), "margin": margin, "pairs": int(len(pairs)),
        "max_score_error": float(error.max()) if len(pairs) else 0.0,
        "peak_rss_mb": peak_rss_mb(), "start_rss_mb": base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="1M", help="vectors (1M, 200k ...)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dup-fraction", type=float, default=0.005)
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--kinds", nargs="+", default=[k for k in KINDS if k != "IVF-PQ/8"], choices=KINDS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from dedupe_memory import parse_case, synthetic_descriptors

    n, dim = parse_case(f"{args.n}:{args.dim}")
    work = Path(tempfile.mkdtemp(prefix="copyscan-index-recall-"))
    vectors, copy_of, _exact = synthetic_descriptors(n, dim, args.dup_fraction, seed=0)
    np.save(work / "vectors.npy", vectors)
    planted = np.nonzero(copy_of >= 0)[0]
    group_rows = np.union1d(planted, copy_of[planted])
    rng = np.random.default_rng(1)
    others = rng.choice(np.setdiff1d(np.arange(n), group_rows), size=min(len(group_rows), n - len(group_rows)), replace=False)
    queries = np.sort(np.concatenate([group_rows, others]))
    np.save(work / "queries.npy", queries)
    del vectors
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; N {n:,}, {dim}-d, "
          f"{len(planted):,} planted copies, {len(queries):,} query rows, threshold {args.threshold}; work {work}", flush=True)
    results, truth = [], None
    for kind in args.kinds:
        cmd = [sys.executable, __file__, "--child", kind, "--work", str(work), "--threshold", str(args.threshold)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            print(f"  {kind}: exit {proc.returncode}", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["wall_s"] = time.perf_counter() - t0
        found = np.load(work / f"pairs-{kind.replace('/', '_')}.npy")
        keys = set((found[0] * n + found[1]).tolist())
        if kind == "Flat" or truth is None:
            truth = keys
        r["recall"] = len(keys & truth) / max(1, len(truth))
        r["exact_pairs"] = len(truth)
        results.append(r)
        print(f"  {kind}: {json.dumps(r)}", flush=True)
    head = ["kind", "FAISS", "index MB", "est. MB", "on disk MB", "build s", "search s", "margin", "pairs", "recall", "max score error", "peak RSS MB"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in results:
        print(f"| {r['kind']} | {r['factory']} (nprobe {r['nprobe']}) | {r['index_mb']:,.0f} | {r['estimate_mb']:,.0f} | {r['disk_mb']:,.0f} | "
              f"{r['build_s']:.0f} | {r['search_s']:.0f} | {r['margin']:.3f} | {r['pairs']:,} | {r['recall']:.4f} | "
              f"{r['max_score_error']:.1e} | {r['peak_rss_mb']:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
