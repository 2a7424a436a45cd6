"""Peak memory and time of dedupe's search and grouping on synthetic descriptors.

    python benchmarks/dedupe_memory.py                       # the cases of BENCHMARKS.md
    python benchmarks/dedupe_memory.py --cases 100k:128 20k:1280 --dup-fraction 0.05

Each case (N:dim) runs in a fresh Python process, so every figure starts from an empty heap:

1. N random unit vectors of `dim` float32, generated in chunks straight into one array (no
   float64 or second full copy), of which a planted fraction are near-duplicates of others
   (cosine about 0.86-0.98 to their original, 1 to 5 copies per original) and a few are
   byte-identical files (same vector, same content hash);
2. one `Item` per image, as `copyscan.dedupe` builds from the index;
3. `copyscan.search.find_pairs` (FAISS index chosen by `ann.choose_index`) and
   `copyscan.group.build_groups` at the threshold.

From N = 500k (`--large`) only a random 5% of the rows are searched by default
(`--large-query-sample`; every row still in the index): search time is linear in the number of
queries, so the full time is estimated from it, while memory is the same (index and vectors
are whole; the pairs of planted copies take a few MB). A full 1M search at the IVF settings
takes about 50 min at 128-d on two cores. `--large-query-sample 1` runs it all.

Each child reports its own peak resident memory (`getrusage(RUSAGE_SELF).ru_maxrss`, the
kernel's high-water mark for that process) after each stage; the parent prints a table. The
"imports" stage is numpy, FAISS and pyarrow (and torch, in the BENCHMARKS.md figures: measured
before issue 14, when `copyscan.api` imported it): the cost of the process before any descriptor.
Recall is the share of planted near-duplicate pairs found by the search (below 1 only where
the index is approximate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_CASES = ["100k:128", "100k:256", "100k:1280", "1M:128", "1M:256"]
GENERATE_CHUNK_FLOATS = 1 << 24  # floats generated at a time (64 MB): float32 throughout


def parse_case(text: str) -> tuple[int, int]:
    count, _, dim = text.partition(":")
    scale = {"k": 1_000, "m": 1_000_000}.get(count[-1:].lower(), 1)
    number = count[:-1] if scale != 1 else count
    try:
        return int(float(number) * scale), int(dim)
    except ValueError:
        raise SystemExit(f"bad case {text!r}: write N:dim, e.g. 100k:128 or 1M:256") from None


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def synthetic_descriptors(n: int, dim: int, dup_fraction: float, seed: int):
    """Unit vectors with planted copies: (vectors, copy_of) where copy_of[i] = original or -1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    chunk = max(1024, GENERATE_CHUNK_FLOATS // dim)
    vectors = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start:start + len(block)] = block
    copy_of = np.full(n, -1, np.int64)
    n_copies = int(n * dup_fraction)
    # Originals take 1-5 copies each; copies and originals are disjoint, both at random places.
    per_original = rng.integers(1, 6, size=n_copies)
    n_originals = int(np.searchsorted(np.cumsum(per_original), n_copies)) + 1
    chosen = rng.choice(n, size=n_originals + n_copies, replace=False)
    originals, copies = chosen[:n_originals], chosen[n_originals:]
    copy_of[copies] = np.repeat(originals, per_original[:n_originals])[:n_copies]
    for start in range(0, n_copies, chunk):
        rows = copies[start:start + chunk]
        # Noise of norm r gives a cosine of about 1 / sqrt(1 + r^2): 0.98 at r 0.2, 0.86 at 0.6.
        r = rng.uniform(0.2, 0.6, size=(len(rows), 1)).astype(np.float32)
        noise = rng.standard_normal((len(rows), dim), dtype=np.float32) * (r / np.sqrt(dim, dtype=np.float32))
        block = vectors[copy_of[rows]] + noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[rows] = block
    # One copy in ten is an exact file copy instead: same vector and same bytes.
    exact = copies[: n_copies // 10]
    vectors[exact] = vectors[copy_of[exact]]
    return vectors, copy_of, exact


def run_case(n: int, dim: int, dup_fraction: float, threshold: float, seed: int, query_sample: float) -> dict:
    """One case, in this (fresh) process; returns the figures as a dict."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from copyscan import ann
    from copyscan.search import find_pairs
    from copyscan.group import Item, build_groups

    rss = {"imports": peak_rss_mb()}
    t0 = time.perf_counter()
    vectors, copy_of, exact = synthetic_descriptors(n, dim, dup_fraction, seed)
    content = np.arange(n)
    content[exact] = copy_of[exact]
    rng = np.random.default_rng(seed + 1)
    sides = rng.integers(200, 4000, size=(n, 2)).tolist()
    sizes = rng.integers(10_000, 5_000_000, size=n).tolist()
    items = [
        Item(f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg", w, h, b, f"{c:032x}", f"{c:032x}")
        for i, ((w, h), b, c) in enumerate(zip(sides, sizes, content.tolist()))
    ]
    t_data = time.perf_counter() - t0
    rss["data"] = peak_rss_mb()

    choice = ann.choose_index(n, dim)
    t0 = time.perf_counter()
    # A sample of query rows (every row by default) searched against the whole index.
    query_rows = None
    if query_sample < 1.0:
        query_rows = np.sort(rng.choice(n, size=max(1, int(n * query_sample)), replace=False))
    pairs = find_pairs(vectors, threshold, query_rows)
    t_search = time.perf_counter() - t0
    rss["search"] = peak_rss_mb()

    t0 = time.perf_counter()
    groups = build_groups(items, pairs, threshold)
    t_group = time.perf_counter() - t0
    rss["grouping"] = peak_rss_mb()

    planted = np.nonzero(copy_of >= 0)[0]
    near = np.setdiff1d(planted, exact)
    if query_rows is not None:  # only pairs with an end among the queries could be found
        near = near[np.isin(near, query_rows) | np.isin(copy_of[near], query_rows)]
    key = lambda a, b: np.minimum(a, b) * n + np.maximum(a, b)  # noqa: E731
    found = np.isin(key(near, copy_of[near]), key(pairs.first, pairs.second))
    return {
        "n": n, "dim": dim, "index": choice.factory, "pairs": len(pairs), "groups": len(groups),
        "planted_copies": int(len(planted)), "recall": float(found.mean()) if len(near) else 1.0,
        "query_sample": query_sample, "data_s": t_data, "search_s": t_search, "group_s": t_group,
        "search_full_s": t_search / query_sample,
        "vectors_mb": vectors.nbytes / 2**20, "rss_mb": rss,
    }


def run_in_child(case: str, args: argparse.Namespace) -> dict:
    """Runs one case in a new interpreter; adds its wall time."""
    n, dim = parse_case(case)
    cmd = [sys.executable, __file__, "--child", f"{n}:{dim}", "--dup-fraction", str(args.dup_fraction),
           "--threshold", str(args.threshold), "--seed", str(args.seed),
           "--query-sample", str(query_sample_for(n, args))]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"n": n, "dim": dim, "error": f"exit {proc.returncode}", "wall_s": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = result["rss_mb"]["grouping"]
    result["wall_s"] = wall
    return result


def query_sample_for(n: int, args: argparse.Namespace) -> float:
    return args.large_query_sample if n >= args.large else 1.0


def print_table(results: list[dict]) -> None:
    head = ["N", "dim", "index", "queries", "vectors MB", "peak RSS MB", "search s", "search s (all N)", "group s", "wall s",
            "pairs", "groups", "recall"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        if "error" in r:
            print(f"| {r['n']:,} | {r['dim']} | {r['error']} |" + " |" * (len(head) - 3))
            continue
        print(
            f"| {r['n']:,} | {r['dim']} | {r['index']} | {r['query_sample']:.0%} | {r['vectors_mb']:,.0f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['search_s']:.1f} | {r['search_full_s']:.0f}{'' if r['query_sample'] == 1 else ' (est.)'} | {r['group_s']:.1f} | "
            f"{r['wall_s']:.1f} | {r['pairs']:,} | {r['groups']:,} | {r['recall']:.4f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="N:dim, e.g. 100k:128 1M:256")
    parser.add_argument("--dup-fraction", type=float, default=0.02, help="share of images that are planted copies")
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large", type=int, default=500_000, help="N from which only a sample of rows is searched")
    parser.add_argument("--large-query-sample", type=float, default=0.05,
                        help="share of rows searched for N >= --large (1 searches all; the full 1M run takes about an hour per case on 2 cores)")
    parser.add_argument("--query-sample", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, dim = parse_case(args.child)
        print(json.dumps(run_case(n, dim, args.dup_fraction, args.threshold, args.seed, args.query_sample)))
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"dup fraction {args.dup_fraction}, threshold {args.threshold}", flush=True)
    results = []
    for case in args.cases:
        results.append(run_in_child(case, args))
        r = results[-1]
        print(f"  {case}: peak RSS {r.get('peak_rss_mb', 0):,.0f} MB, {r['wall_s']:.1f} s "
              f"(stages: {r.get('rss_mb', r.get('error'))})", flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
