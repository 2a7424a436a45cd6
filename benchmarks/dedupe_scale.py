"""Peak memory and time of dedupe at scale: the sliced pair search against a memory-mapped index
sized by a memory budget, pairs on Parquet, grouping streamed over them (copyscan.dedupe_scale's
path, without decoding or a model).

    python benchmarks/dedupe_scale.py --n 1M                        # one case
    python benchmarks/dedupe_scale.py --n 10M --memory-budget 4G    # the 10M case of BENCHMARKS.md

1. The parent writes N synthetic 128-d unit vectors (dedupe_memory.py's generator: 2% planted
   near-copies, a tenth of them byte-identical) to WORK/vectors.npy, and the rows' path, content
   hash and pixel hash as Arrow columns (what the store's Parquet shards give dedupe).
2. A fresh child process runs, timing each stage and reading its peak RSS after each:
   `pair_search.prepare` (index kind chosen by --memory-budget, built from the mapped file in
   chunks), `run_local` over a sample of the query slices (--slice-sample; search time is linear
   in the slices, so the full time is extrapolated and marked), then `group_stream`'s grouping
   over the pair files with `ItemColumns` (no Python object per image).
3. Recall: planted near-copy pairs with an end in a searched slice that were found.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 2**20


def write_case(work: Path, n: int, dim: int, dup_fraction: float) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dedupe_memory import synthetic_descriptors

    vectors, copy_of, exact = synthetic_descriptors(n, dim, dup_fraction, seed=0)
    np.save(work / "vectors.npy", vectors)
    del vectors
    np.save(work / "copy_of.npy", copy_of)
    content = np.arange(n)
    content[exact] = copy_of[exact]
    rng = np.random.default_rng(1)
    for start in range(0, n, 1_000_000):
        stop = min(n, start + 1_000_000)
        hashes = pa.array([f"{c:032x}" for c in content[start:stop].tolist()], pa.string())
        table = pa.table({
            "path_bytes": pa.array([f"/photos/{i // 1000:05d}/IMG_{i:08d}.jpg".encode() for i in range(start, stop)], pa.binary()),
            "width": pa.array(rng.integers(200, 4000, stop - start), pa.int32()),
            "height": pa.array(rng.integers(200, 4000, stop - start), pa.int32()),
            "bytes": pa.array(rng.integers(10_000, 5_000_000, stop - start), pa.int64()),
            "content_hash": hashes, "pixel_hash": hashes,
        })
        pq.write_table(table, work / f"rows-{start // 1_000_000:04d}.parquet")


def child(args) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from copyscan import pair_search
    from copyscan.group_stream import ItemColumns, build_groups_streamed
    from copyscan.index_choice import parse_size

    work = Path(args.work)
    rss = {"imports": peak_rss_mb()}
    times = {}
    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    n = len(vectors)
    t0 = time.perf_counter()
    search = pair_search.prepare(work, vectors, threshold=args.threshold, budget=parse_size(args.memory_budget),
                                 source="bench")
    times["build_s"] = time.perf_counter() - t0
    rss["index built"] = peak_rss_mb()
    index_mb = search.index_path.stat().st_size / 2**20
    ondisk = work / "index.ivfdata"
    del vectors
    jobs = search.all_jobs()
    step = max(1, round(1 / args.slice_sample))
    sample = jobs[::step]
    t0 = time.perf_counter()
    index = pair_search.open_index(str(search.index_path), search.nprobe, search.kind != "on-disk")
    for job in sample:
        pair_search.run_slice(job, index)
    del index
    times["search_s"] = time.perf_counter() - t0
    times["search_all_s"] = times["search_s"] * len(jobs) / len(sample)
    rss["search"] = peak_rss_mb()
    t0 = time.perf_counter()
    table = pa.concat_tables([pq.read_table(p) for p in sorted(work.glob("rows-*.parquet"))])
    items = ItemColumns(table.column("path_bytes"), table.column("width").to_numpy(), table.column("height").to_numpy(),
                        table.column("bytes").to_numpy(), table.column("content_hash"), table.column("pixel_hash"))
    files = [f for f in search.files() if f.exists()]
    groups = build_groups_streamed(items, pair_search.read_pairs(files), args.threshold)
    times["group_s"] = time.perf_counter() - t0
    rss["grouping"] = peak_rss_mb()
    pairs = pair_search.load_pairs(files, n)
    copy_of = np.load(work / "copy_of.npy")
    searched = np.zeros(n, bool)
    for job in sample:
        searched[job.start:job.stop] = True
    near = np.nonzero(copy_of >= 0)[0]
    near = near[searched[near] | searched[copy_of[near]]]
    key = lambda a, b: np.minimum(a, b) * n + np.maximum(a, b)  # noqa: E731
    found = np.isin(key(near, copy_of[near]), key(pairs.first, pairs.second))
    return {"n": n, "kind": search.kind, "nprobe": search.nprobe, "margin": search.margin, "index_mb": index_mb,
            "ondisk_mb": ondisk.stat().st_size / 2**20 if ondisk.exists() else 0.0,
            "slices": len(jobs), "slices_searched": len(sample), "pairs": len(pairs), "groups": len(groups),
            "recall": float(found.mean()) if len(near) else 1.0, "rss_mb": rss, "peak_rss_mb": max(rss.values()), **times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="1M")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dup-fraction", type=float, default=0.02)
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--memory-budget", default="auto", help="as copyscan's --memory-budget (auto: a quarter of free memory)")
    parser.add_argument("--slice-sample", type=float, default=0.05, help="share of the query slices searched (1: all)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.write:
        write_case(Path(args.work), int(args.n), args.dim, args.dup_fraction)
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dedupe_memory import parse_case

    n, dim = parse_case(f"{args.n}:{args.dim}")
    work = Path(tempfile.mkdtemp(prefix="copyscan-dedupe-scale-"))
    t0 = time.perf_counter()
    # The data are made in a process of their own: a child's ru_maxrss starts at its parent's
    # resident size when it forks, so the measuring child must come from a small parent.
    subprocess.run([sys.executable, __file__, "--write", "--work", str(work), "--n", str(n), "--dim", str(dim),
                    "--dup-fraction", str(args.dup_fraction)], check=True)
    print(f"# N {n:,} x {dim}-d, budget {args.memory_budget}, slice sample {args.slice_sample}; data written in "
          f"{time.perf_counter() - t0:.0f} s to {work}", flush=True)
    cmd = [sys.executable, __file__, "--child", "--work", str(work), "--threshold", str(args.threshold),
           "--memory-budget", args.memory_budget, "--slice-sample", str(args.slice_sample)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"child exit {proc.returncode}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["wall_s"] = time.perf_counter() - t0
    print(json.dumps(r))
    print("| N | index | index MB | peak RSS MB (imports / built / search / grouping) | build s | search s (sampled -> all) | group s | pairs | groups | recall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    s = r["rss_mb"]
    print(f"| {r['n']:,} | {r['kind']} (nprobe {r['nprobe']}, margin {r['margin']:.3f}) | {r['index_mb'] + r['ondisk_mb']:,.0f} | "
          f"{s['imports']:,.0f} / {s['index built']:,.0f} / {s['search']:,.0f} / {s['grouping']:,.0f} | {r['build_s']:.0f} | "
          f"{r['search_s']:.0f} ({r['slices_searched']}/{r['slices']} slices) -> ~{r['search_all_s']:,.0f} | {r['group_s']:.0f} | "
          f"{r['pairs']:,} | {r['groups']:,} | {r['recall']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
