"""Pair precision and recall of `copyscan dedupe` on a `bench synth` benchmark's references and
queries put in one folder (the model card's dedupe check of the default threshold).

    python benchmarks/dedupe_bench.py bench/disc-mini --thresholds 0.6,0.65,0.7,0.75 [--model NAME] [--work DIR] [--regions] [--no-verify]

The folder holds links to every reference and query. A true pair is a copy and its reference
(gt.csv); a predicted pair is two images in one dedupe group (groups are transitive). The index
is built once; each threshold regroups it.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import copyscan  # noqa: E402


def link_folder(bench: Path, work: Path) -> Path:
    folder = work / "photos"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for sub in ("references", "queries"):
        for f in sorted((bench / sub).iterdir()):
            os.symlink(f.resolve(), folder / f.name)
    return folder


def true_pairs(bench: Path) -> set[frozenset[str]]:
    with open(bench / "gt.csv", newline="", encoding="utf-8") as fh:
        return {frozenset((r["query_id"], r["reference_id"])) for r in csv.DictReader(fh) if r["reference_id"]}


def score(groups, truth: set[frozenset[str]]) -> dict:
    predicted = set()
    for g in groups:
        names = sorted(os.path.basename(m.path) for m in g.members)
        predicted |= {frozenset(p) for p in itertools.combinations(names, 2)}
    hits = len(predicted & truth)
    return {"predicted_pairs": len(predicted), "true_pairs": len(truth),
            "pair_precision": hits / len(predicted) if predicted else None, "pair_recall": hits / len(truth)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path)
    ap.add_argument("--thresholds", default="0.6,0.65,0.7,0.75")
    ap.add_argument("--model", default=None, help="default: copyscan's default model")
    ap.add_argument("--work", type=Path, default=Path("/tmp/copyscan-dedupe-bench"))
    ap.add_argument("--regions", action="store_true", help="dedupe --regions (region rows, crops)")
    ap.add_argument("--no-verify", action="store_true", help="dedupe --no-verify (uncertain pairs not verified)")
    args = ap.parse_args()
    work = args.work
    folder = link_folder(args.bench, work)
    truth = true_pairs(args.bench)
    index = work / "index"
    if index.exists():
        shutil.rmtree(index)
    model = args.model or copyscan.DEFAULT_MODEL
    print("| model | regions | verify | threshold | pair precision | pair recall | predicted pairs | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for t in [float(x) for x in args.thresholds.split(",")]:
        t0 = time.perf_counter()
        result = copyscan.dedupe(folder, output=work / f"out-{t}", threshold=t, index_dir=index, model=model, report=False,
                                 regions=args.regions, verify=not args.no_verify)
        s = score(result.groups, truth)
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {model} | {'yes' if args.regions else 'no'} | {'no' if args.no_verify else 'yes'} | {t} | {fmt(s['pair_precision'])} | {fmt(s['pair_recall'])} | {s['predicted_pairs']} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)
        print(json.dumps({"model": model, "regions": args.regions, "verify": not args.no_verify, "threshold": t, **s}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
