"""`query`'s default (regions: crops of uncertain queries, geometric verification) against
`query --no-regions` (whole images only), on one plain index, alternated: micro AP and query time.

    python benchmarks/query_regions.py BENCH [BENCH ...] [--model copyscan_lite0_128] [--rounds 3] [--work DIR]

Each BENCH (`copyscan bench synth`) gets one index of its references, built as `copyscan index`
builds it (no --regions: no stored local features, no region rows); its queries are then
searched with and without regions in turn, `--rounds` times after a warm-up, top 10 per query
at any score, and scored with DISC2021 micro AP. Query time is the `query_folder` call (decoding,
model, search, crops, verification, matches.csv); x plain is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan.api import index_folder, query_folder  # noqa: E402
from copyscan.discover import resolve_root  # noqa: E402
from copyscan.evaluate import _predictions_from_matches  # noqa: E402
from copyscan.extraction import Extraction  # noqa: E402
from copyscan.metrics import evaluate, load_ground_truth  # noqa: E402


def run(bench: Path, model: str, rounds: int, work: Path) -> dict:
    refs, queries = resolve_root(bench / "references"), resolve_root(bench / "queries")
    quiet = Extraction(progress=False)
    index_folder(refs, index_dir=work / "index", model=model, extraction=quiet)
    gt = load_ground_truth(bench / "gt.csv")
    times: dict[bool, list[float]] = {False: [], True: []}
    aps: dict[bool, float] = {}
    for r in range(rounds + 1):  # round 0 warms up (page cache, model load) and is not timed
        for regions in (False, True):
            out = work / f"q-{int(regions)}"
            t0 = time.perf_counter()
            query_folder(queries, index_dir=work / "index", output=out, threshold=-1.0, top_k=10, report=False,
                         extraction=quiet, regions=regions)
            if r:
                times[regions].append(time.perf_counter() - t0)
            aps[regions] = evaluate(gt, _predictions_from_matches(out / "matches.csv", queries, refs)).micro_ap
    ratio = statistics.median(b / a for a, b in zip(times[False], times[True]))
    return {"bench": bench.name, "ap": aps, "times": times, "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benches", type=Path, nargs="+")
    ap.add_argument("--model", default="copyscan_lite0_128")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    print(f"| benchmark | `--no-regions` micro AP | `query` (regions) micro AP | query s, no regions | query s, regions | x no regions |")
    print("|---|---|---|---|---|---|")
    for bench in args.benches:
        with tempfile.TemporaryDirectory(prefix="copyscan-qr-", dir=args.work) as tmp:
            r = run(bench, args.model, args.rounds, Path(tmp))
        fmt = lambda v: " / ".join(f"{x:.1f}" for x in v)  # noqa: E731
        print(f"| {r['bench']} | {r['ap'][False]:.4f} | {r['ap'][True]:.4f} | {fmt(r['times'][False])} | "
              f"{fmt(r['times'][True])} | {r['ratio']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
