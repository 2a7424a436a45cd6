"""Peak memory and time of dedupe at scale, from the index folder to the groups: copyscan's own
at-scale path (copyscan.dedupe_scale, what `copyscan dedupe --memory-budget ...` / `--engine`
runs once indexing is done), on an index folder of synthetic rows; no decoding, no model.

    python benchmarks/dedupe_scale.py --n 1M                        # one case
    python benchmarks/dedupe_scale.py --n 10M --memory-budget 4G --slice-sample 0.015   # BENCHMARKS.md's 10M case

1. A first process writes an index folder through copyscan.store (real Parquet shards of
   --shard-rows rows, the size the index job writes, with the model identity in their metadata,
   and a manifest listing them): synthetic paths, sizes, hashes and N synthetic 128-d unit
   descriptors (dedupe_memory.py's generator: 2% planted near-copies at cosine 0.86-0.98, a tenth
   of them byte-identical files sharing a content hash).
2. A fresh process (its ru_maxrss starts small) runs dedupe_scale's steps in order, timing each
   and reading its peak RSS after each: `read_rows` (the live rows under the root as Arrow
   columns, one name per file), `prepare_search` (the vectors file written shard by shard, then
   the index the budget allows, built from the mapped file), a sample of the query slices
   (--slice-sample: every k-th slice, run by pair_search.run_slice as run_local does; memory does
   not depend on how many slices run, each maps, searches and unmaps the same way; search time is
   linear in the slices, so the full time is extrapolated and marked), then `group` (streamed
   over the pair files).
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
PHOTOS = "/photos"  # the synthetic rows' folder (nothing is read there)


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of any child it waited for, in MB."""
    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * scale / 2**20


def synthetic_path(i: int) -> str:
    return f"{PHOTOS}/{i // 1000:05d}/IMG_{i:08d}.jpg"


def write_case(work: Path, n: int, dim: int, dup_fraction: float, shard_rows: int) -> None:
    """An index folder of n synthetic rows in work/index, through copyscan.store."""
    import numpy as np
    import pyarrow as pa

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dedupe_memory import synthetic_descriptors

    from copyscan.identity import ModelInfo
    from copyscan.store import NOT_BUILT, IndexStore, schema

    vectors, copy_of, exact = synthetic_descriptors(n, dim, dup_fraction, seed=0)
    np.save(work / "copy_of.npy", copy_of)
    content = np.arange(n)
    content[exact] = copy_of[exact]
    info = ModelInfo("synthetic", dim, 160, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "0" * 64, "none", "benchmarks/dedupe_scale.py")
    store = IndexStore(work / "index")
    store.lock()
    store.write_manifest(info, {"images": n, "shards": 0, "skipped": 0}, dict(NOT_BUILT), [PHOTOS])
    rng = np.random.default_rng(1)
    names = []
    for number, start in enumerate(range(0, n, shard_rows)):
        stop = min(n, start + shard_rows)
        paths = [synthetic_path(i) for i in range(start, stop)]
        hashes = pa.array([f"{c:032x}" for c in content[start:stop].tolist()], pa.string())
        size = stop - start
        table = pa.table({
            "path": pa.array(paths, pa.string()),
            "path_bytes": pa.array([p.encode() for p in paths], pa.binary()),
            "bytes": pa.array(rng.integers(10_000, 5_000_000, size), pa.int64()),
            "mtime_ns": pa.array(np.full(size, 1_700_000_000 * 10**9), pa.int64()),
            "content_hash": hashes,
            "pixel_hash": pa.array([f"{c:032x}p" for c in content[start:stop].tolist()], pa.string()),
            "width": pa.array(rng.integers(200, 4000, size), pa.int32()),
            "height": pa.array(rng.integers(200, 4000, size), pa.int32()),
            "descriptor": pa.FixedSizeListArray.from_arrays(pa.array(vectors[start:stop].reshape(-1), pa.float32()), dim),
        }, schema=schema(dim))
        names.append(store.write_shard(number, table, info, listed=False).name)
    store.list_shards(names)
    store.commit_manifest(info, n, 0, dict(NOT_BUILT), [PHOTOS])
    store.unlock()


def child(args) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from copyscan import dedupe_scale, pair_search
    from copyscan.index_choice import parse_size
    from copyscan.postprocess import load_stored
    from copyscan.store import IndexStore

    work = Path(args.work)
    rss = {"imports": peak_rss_mb()}
    times = {}
    store = IndexStore(work / "index")
    t0 = time.perf_counter()
    rows, aliases = dedupe_scale.read_rows(store, PHOTOS)
    times["read_s"] = time.perf_counter() - t0
    rss["rows read"] = peak_rss_mb()
    _log("rows read", rss, times)
    n = len(rows)
    # Row k of the folder is synthetic row k (shard order, nothing dropped): recall needs that.
    assert rows.table.column("path_bytes")[n - 1].as_py().decode() == synthetic_path(n - 1)
    t0 = time.perf_counter()
    vectors_done = []

    class Timed:  # when the store's blocks are all written: the rest of prepare is the build
        def __init__(self, store):
            self.store = store

        def __getattr__(self, name):
            return getattr(self.store, name)

        def descriptor_blocks(self, rows):
            yield from self.store.descriptor_blocks(rows)
            vectors_done.append(time.perf_counter())

    search = dedupe_scale.prepare_search(Timed(store), rows, load_stored(store), threshold=args.threshold,
                                         output=work / "out", source="bench", memory_budget=parse_size(args.memory_budget))
    end = time.perf_counter()
    if vectors_done:
        times["vectors_s"] = vectors_done[0] - t0
        times["build_s"] = end - vectors_done[0]
    else:  # the work folder held this search already (an earlier run): reused, nothing built
        times["vectors_s"] = times["build_s"] = 0.0
        times["reused_s"] = end - t0
    rss["index built"] = peak_rss_mb()
    _log("index built", rss, times)
    index_mb = search.index_path.stat().st_size / 2**20
    ondisk = search.work / "index.ivfdata"
    jobs = search.all_jobs()
    step = max(1, round(1 / args.slice_sample))
    sample = jobs[::step]
    t0 = time.perf_counter()
    nprobe = args.nprobe or search.nprobe
    index = pair_search.open_index(str(search.index_path), nprobe, search.kind != "on-disk")
    for job in sample:
        t1 = time.perf_counter()
        found = pair_search.run_slice(job, index)
        print(f"# slice {job.start:,}-{job.stop:,}: {found:,} pairs in {time.perf_counter() - t1:.0f} s, "
              f"peak RSS {peak_rss_mb():,.0f} MB", file=sys.stderr, flush=True)
    del index
    times["search_s"] = time.perf_counter() - t0
    times["search_all_s"] = times["search_s"] * len(jobs) / len(sample)
    rss["search"] = peak_rss_mb()
    _log("search", rss, times)
    t0 = time.perf_counter()
    groups = dedupe_scale.group(rows, search, args.threshold)
    times["group_s"] = time.perf_counter() - t0
    rss["grouping"] = peak_rss_mb()
    files = [f for f in search.files() if f.exists()]
    pairs = pair_search.load_pairs(files, n)
    copy_of = np.load(work / "copy_of.npy")
    searched = np.zeros(n, bool)
    for job in sample:
        searched[job.start:job.stop] = True
    near = np.nonzero(copy_of >= 0)[0]
    near = near[searched[near] | searched[copy_of[near]]]
    key = lambda a, b: np.minimum(a, b) * n + np.maximum(a, b)  # noqa: E731
    found = np.isin(key(near, copy_of[near]), key(pairs.first, pairs.second))
    with open(search.work / "search.json") as fh:
        saved = json.load(fh)
    by_nprobe = recall_by_nprobe(search, copy_of, args.threshold, args.recall_nprobe) if args.recall_nprobe else []
    return {"n": n, "kind": search.kind, "nprobe": nprobe, "recall_by_nprobe": by_nprobe, "margin": search.margin, "index_mb": index_mb,
            "ondisk_mb": ondisk.stat().st_size / 2**20 if ondisk.exists() else 0.0, "saved": saved,
            "factory": _factory(search.index_path),
            "slices": len(jobs), "slices_searched": len(sample), "pairs": len(pairs), "groups": len(groups),
            "planted_in_sample": int(len(near)), "recall": float(found.mean()) if len(near) else 1.0,
            "rss_mb": rss, "peak_rss_mb": max(rss.values()), **times}


def recall_by_nprobe(search, copy_of, threshold: float, values: list[int], pairs: int = 2000) -> list[dict]:
    """Recall of the first `pairs` planted pairs, searched from both ends (pair_search.search_rows,
    re-scored as the slices are) at each nprobe; after the measured phases (not in their peaks)."""
    import numpy as np

    from copyscan import pair_search

    near = np.nonzero(copy_of >= 0)[0][:pairs]
    rows = np.unique(np.concatenate([near, copy_of[near]]))
    n = len(copy_of)
    key = lambda a, b: np.minimum(a, b) * n + np.maximum(a, b)  # noqa: E731
    out = []
    for nprobe in values:
        index = pair_search.open_index(str(search.index_path), nprobe, search.kind != "on-disk")
        vectors = pair_search.open_vectors(str(search.vectors_path))
        t0 = time.perf_counter()
        found = pair_search.search_rows(index, vectors, rows, threshold, search.margin)
        seconds = time.perf_counter() - t0
        recall = float(np.isin(key(near, copy_of[near]), key(found.first, found.second)).mean())
        out.append({"nprobe": nprobe, "queries": int(len(rows)), "seconds": seconds, "recall": recall})
        print(f"# nprobe {nprobe}: recall {recall:.4f} of {len(near):,} planted pairs, {len(rows):,} queries in "
              f"{seconds:.0f} s", file=sys.stderr, flush=True)
        del index, vectors
    return out


def _log(phase: str, rss: dict, times: dict) -> None:
    """Each phase's figures as it ends (stderr), so that a run stopped early still says them."""
    print(f"# {time.strftime('%H:%M:%S')} {phase}: " + json.dumps({"rss_mb": rss, **times}), file=sys.stderr, flush=True)


def _factory(path: Path) -> str:
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # Flat
        return type(index).__name__
    quantizer = type(faiss.downcast_index(ivf.quantizer)).__name__
    return f"{type(index).__name__} nlist {ivf.nlist}, quantizer {quantizer}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="1M")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dup-fraction", type=float, default=0.02)
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--shard-rows", type=int, default=2048, help="rows per shard (the index job's default)")
    parser.add_argument("--memory-budget", default="auto", help="as copyscan's --memory-budget (auto: a quarter of free memory)")
    parser.add_argument("--slice-sample", type=float, default=0.05, help="share of the query slices searched (1: all)")
    parser.add_argument("--nprobe", type=int, default=0, help="lists probed by the slices (0: the index's own)")
    parser.add_argument("--recall-nprobe", type=int, nargs="*", default=[],
                        help="after the phases: recall of 2,000 planted pairs at each of these nprobe")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (index folder, pair files)")
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.write:
        write_case(Path(args.work), int(args.n), args.dim, args.dup_fraction, args.shard_rows)
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dedupe_memory import parse_case

    n, dim = parse_case(f"{args.n}:{args.dim}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="copyscan-dedupe-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # The data are made in a process of their own: a child's ru_maxrss starts at its parent's
    # resident size when it forks, so the measuring child must come from a small parent.
    if not (work / "index" / "manifest.json").exists():
        subprocess.run([sys.executable, __file__, "--write", "--work", str(work), "--n", str(n), "--dim", str(dim),
                        "--dup-fraction", str(args.dup_fraction), "--shard-rows", str(args.shard_rows)], check=True)
    print(f"# N {n:,} x {dim}-d, budget {args.memory_budget}, slice sample {args.slice_sample}; index folder written in "
          f"{time.perf_counter() - t0:.0f} s to {work}/index", flush=True)
    cmd = [sys.executable, __file__, "--child", "--work", str(work), "--threshold", str(args.threshold),
           "--memory-budget", args.memory_budget, "--slice-sample", str(args.slice_sample), "--nprobe", str(args.nprobe),
           "--recall-nprobe", *map(str, args.recall_nprobe)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"child exit {proc.returncode}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["wall_s"] = time.perf_counter() - t0
    print(json.dumps(r), flush=True)
    print("| N | index | index MB | peak RSS MB (imports / rows read / built / search / grouping) | read s | vectors s | build s "
          "| search s (sampled -> all) | group s | pairs | groups | recall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    s = r["rss_mb"]
    print(f"| {r['n']:,} | {r['kind']} {r['factory']} (nprobe {r['nprobe']}, margin {r['margin']:.3f}) | "
          f"{r['index_mb'] + r['ondisk_mb']:,.0f} | {s['imports']:,.0f} / {s['rows read']:,.0f} / {s['index built']:,.0f} / "
          f"{s['search']:,.0f} / {s['grouping']:,.0f} | {r['read_s']:.0f} | {r['vectors_s']:.0f} | {r['build_s']:.0f} | "
          f"{r['search_s']:.0f} ({r['slices_searched']}/{r['slices']} slices) -> ~{r['search_all_s']:,.0f} | {r['group_s']:.0f} | "
          f"{r['pairs']:,} | {r['groups']:,} | {r['recall']:.4f} ({r['planted_in_sample']:,} planted) |")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
