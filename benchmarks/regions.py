"""Regions and geometric verification, side by side in one run (issue 18; BENCHMARKS.md "Regions").

For each model, on one benchmark (`copyscan bench synth` layout):

    plain                      index and query without --regions
    --regions                  index --regions (region rows, the references' local features
                               stored) and query --regions (crops of uncertain queries, uncertain
                               best matches verified, boxes placed)
    query --regions only       a plain index queried with --regions: each verified reference's
                               features computed at query time (the narrower unstored band)
    - verify band              --regions without verifying uncertain best matches
                               (RegionSettings.verify_band None: only boxes placed)
    + region rows              the references' region rows scored too
    best match only            (--runner-up) --regions without verifying a close runner-up
                               (RegionSettings.runner_up_within None), timed in the same rounds

micro AP, accuracy at rank 1 (overall and per edit), query images/s (the query call's wall time,
model loaded and warmed up; plain and --regions alternate for `--rounds`, the median ratio is
quoted), index time and size on disk. Then the box check: references pasted at known positions onto
distractor photos, queried with --regions; over the pastes whose reference is the best match (at
the default threshold, and at any score), the IoU of the reported query box with the true one.

    nice -n 19 python benchmarks/regions.py BENCH --distractors ../shared/data/imagenette-val \\
        --models copyscan_lite0_128,sscd_r50_int8 --out .bench/regions
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan import api  # noqa: E402
from copyscan.discover import discover, resolve_root  # noqa: E402
from copyscan.evaluate import _predictions_from_matches, load_labels, per_edit_table  # noqa: E402
from copyscan.metrics import evaluate, load_ground_truth, pairs_found  # noqa: E402
from copyscan.models import create_model  # noqa: E402
from copyscan.region_search import RegionSettings  # noqa: E402
from copyscan.regions import iou  # noqa: E402

EDITS_SHOWN = ("paste", "screenshot", "crop", "pad", "meme")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "copyscan.lock")


def build_index(bench: Path, model, work: Path, regions: bool) -> dict:
    idx = work / f"index-{'regions' if regions else 'plain'}"
    t = time.perf_counter()
    indexed = api.index_folder(resolve_root(bench / "references"), index_dir=idx, model=model, regions=regions)
    return {"path": idx, "seconds": time.perf_counter() - t, "bytes": folder_bytes(idx), "images": indexed.total}


def run_query(bench: Path, model, work: Path, idx: dict, name: str, gt, labels, regions: bool,
              settings: RegionSettings | None = None, queries: Path | None = None) -> dict:
    """One query run over the benchmark's queries (all scored, top 10), timed and scored."""
    ref_root = resolve_root(bench / "references")
    query_root = resolve_root(queries or bench / "queries")
    out = work / f"query-{name}"
    t = time.perf_counter()
    queried = api.query_folder(query_root, index_dir=idx["path"], output=out, threshold=-1.0, top_k=10, model=model,
                               report=False, regions=regions, region_settings=settings)
    seconds = time.perf_counter() - t
    if queries is not None:  # a warm-up
        return {"seconds": seconds}
    predictions = _predictions_from_matches(out / "matches.csv", query_root, ref_root)
    metrics = evaluate(gt, predictions, unknown_queries="error")
    edits = {r.edit: r.acc_at_1 for r in per_edit_table(gt, predictions, metrics, labels)}
    # Does the default threshold keep its meaning? The pairs scoring at least it, and the copies among them.
    at_threshold = int((predictions.scores >= api.DEFAULT_THRESHOLD).sum())
    copies_at_threshold = len(pairs_found(gt, predictions, api.DEFAULT_THRESHOLD))
    return {
        "pairs_at_threshold": at_threshold, "copies_at_threshold": copies_at_threshold,
        "name": name, "regions": regions, "settings": asdict(settings) if settings else None,
        "micro_ap": metrics.micro_ap, "acc_at_1": metrics.acc_at_1, "recall_at_p90": metrics.recall_at_p90,
        "rank1_per_edit": edits, "queries": queried.queries, "query_seconds": seconds,
        "queries_per_s": queried.queries / seconds, "index_bytes": idx["bytes"], "index_seconds": idx["seconds"],
    }


def make_pastes(refs: list[str], backgrounds: list[str], out: Path, n: int, seed: int = 0) -> list[dict]:
    """`n` references pasted (30-80% of the background's size) at known positions; the truth list."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    truth = []
    for k in range(n):
        ref = refs[k % len(refs)]
        img = Image.open(ref).convert("RGB")
        bg = Image.open(rng.choice(backgrounds)).convert("RGB")
        longer = max(img.size) * rng.uniform(1.0, 1.3)
        scale = longer / max(bg.size)
        bg = bg.resize((max(64, round(bg.width * scale)), max(64, round(bg.height * scale))), Image.Resampling.BILINEAR)
        fill = rng.uniform(0.3, 0.8)
        s = min(bg.width * fill / img.width, bg.height * fill / img.height)
        shown = img.resize((max(8, round(img.width * s)), max(8, round(img.height * s))), Image.Resampling.BILINEAR)
        x, y = rng.randint(0, bg.width - shown.width), rng.randint(0, bg.height - shown.height)
        bg.paste(shown, (x, y))
        name = f"P{k:04d}.jpg"
        bg.save(out / name, quality=90)
        truth.append({"query": str((out / name).resolve()), "reference": str(Path(ref).resolve()),
                      "box": (x / bg.width, y / bg.height, (x + shown.width) / bg.width, (y + shown.height) / bg.height)})
    return truth


def box_check(truth: list[dict], idx: Path, model, work: Path, threshold: float) -> dict:
    """IoU of the reported box (rank 1, at `threshold`) with the paste's true box, over the pastes
    whose reference is that match."""
    folder = Path(truth[0]["query"]).parent
    out = work / f"query-pastes-{threshold}"
    api.query_folder(folder, index_dir=idx, output=out, threshold=threshold, top_k=5, model=model, report=False, regions=True)
    best: dict[str, tuple[str, tuple]] = {}
    with open(out / "matches.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["rank"] == "1":
                box = tuple(float(r[c]) for c in ("query_x0", "query_y0", "query_x1", "query_y1"))
                best[str(Path(r["query_path"]).resolve())] = (str(Path(r["reference_path"]).resolve()), box)
    ious = [iou(best[t["query"]][1], t["box"]) for t in truth if t["query"] in best and best[t["query"]][0] == t["reference"]]
    return {"threshold": threshold, "pastes": len(truth), "found": len(ious),
            "iou_median": float(np.median(ious)) if ious else None,
            "share_iou_ge_0.5": float(np.mean([v >= 0.5 for v in ious])) if ious else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--models", default="copyscan_lite0_128,sscd_r50_int8")
    ap.add_argument("--distractors", type=Path, required=True, help="photos to paste the references onto")
    ap.add_argument("--pastes", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path(".bench/regions"))
    ap.add_argument("--rounds", type=int, default=2, help="plain / --regions query pairs timed")
    ap.add_argument("--core", action="store_true", help="plain and --regions only (not without the band, no region rows)")
    ap.add_argument("--reuse", action="store_true", help="keep OUT/MODEL's indexes (indexing is incremental)")
    ap.add_argument("--runner-up", action="store_true",
                    help="time --regions without the runner-up's verification too, alternated in the same rounds")
    ap.add_argument("--boxes-only", action="store_true", help="only the box check (with --reuse: on the existing index)")
    args = ap.parse_args()
    gt = load_ground_truth(args.bench / "gt.csv")
    labels = load_labels(args.bench / "labels.csv")
    args.out.mkdir(parents=True, exist_ok=True)
    refs = sorted(e.path for e in discover(args.bench / "references")[0])
    backgrounds = sorted(e.path for e in discover(args.distractors)[0])
    truth = make_pastes(refs, backgrounds, args.out / "pastes", args.pastes)
    (args.out / "pastes-truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    warm = args.out / "warm"  # a few queries, for the warm-up
    shutil.rmtree(warm, ignore_errors=True)
    warm.mkdir(parents=True)
    for p in sorted((args.bench / "queries").iterdir())[:64]:
        shutil.copy(p, warm / p.name)
    report = {"bench": str(args.bench), "command": " ".join(sys.argv), "models": {}}
    for name in args.models.split(","):
        model = create_model(name, "cpu")
        # A model file (a candidate checkpoint) gets a folder named after its folder and file.
        work = args.out / (f"{Path(name).parent.name}-{Path(name).stem}" if os.path.exists(name) else name)
        if not args.reuse:
            shutil.rmtree(work, ignore_errors=True)
        plain_idx = build_index(args.bench, model, work, False)
        region_idx = build_index(args.bench, model, work, True)
        if args.boxes_only:
            for threshold in (api.DEFAULT_THRESHOLD, -1.0):
                b = box_check(truth, region_idx["path"], model, work, threshold)
                report["models"][name] = {"box_check": report["models"].get(name, {}).get("box_check", []) + [b]}
                print(f"{name} box check: {b}", flush=True)
            continue
        # Warm-up (model, ONNX session, page cache), then plain and --regions alternate, so that
        # the other jobs on a shared machine weigh on both alike; the median ratio is quoted.
        for regions, idx in ((False, plain_idx), (True, region_idx)):
            run_query(args.bench, model, work, idx, "warm", gt, labels, regions, queries=warm)
        rounds, best_only = [], []
        for r in range(args.rounds):
            rounds.append((run_query(args.bench, model, work, plain_idx, "plain", gt, labels, False),
                           run_query(args.bench, model, work, region_idx, "regions", gt, labels, True, RegionSettings())))
            if args.runner_up:
                best_only.append(run_query(args.bench, model, work, region_idx, "regions-best-only", gt, labels, True,
                                           RegionSettings(runner_up_within=None)))
        plain, regions = rounds[-1]
        ratio = float(np.median([b["query_seconds"] / a["query_seconds"] for a, b in rounds]))
        plain_s = float(np.median([a["query_seconds"] for a, _ in rounds]))
        rows = [("plain", plain), ("--regions", regions)]
        if best_only:
            # against the plain run of its own round, as --regions is
            best_ratio = float(np.median([c["query_seconds"] / a["query_seconds"] for (a, _), c in zip(rounds, best_only)]))
            rows.append(("--regions, best match only verified", dict(best_only[-1], time_ratio=best_ratio)))
        boxes = [box_check(truth, region_idx["path"], model, work, api.DEFAULT_THRESHOLD)]
        if not args.core:
            rows.append(("query --regions on a plain index", run_query(
                args.bench, model, work, plain_idx, "regions-plain-index", gt, labels, True, RegionSettings())))
            rows.append(("--regions without the verify band", run_query(
                args.bench, model, work, region_idx, "regions-noband", gt, labels, True, RegionSettings(verify_band=None))))
            rows.append(("--regions + references' region rows (index --regions)", run_query(
                args.bench, model, work, region_idx, "regions-rows", gt, labels, True, RegionSettings(reference_regions=True))))
            boxes.append(box_check(truth, region_idx["path"], model, work, -1.0))
        report["models"][name] = {"runs": [r for _, r in rows], "rounds": rounds, "best_only_rounds": best_only,
                                  "median_time_ratio": ratio,
                                  "box_check": boxes}
        print(f"\n## {name}")
        print("| run | micro AP | acc@1 | " + " | ".join(f"{e} @1" for e in EDITS_SHOWN)
              + " | query img/s | query time x plain | index MB |")
        print("|---|---|---|" + "---|" * len(EDITS_SHOWN) + "---|---|---|")
        for label, r in rows:
            edits = " | ".join(f"{r['rank1_per_edit'].get(e, float('nan')):.3f}" for e in EDITS_SHOWN)
            # plain 1; --regions the median of the alternated rounds; the others against plain's median.
            x = 1.0 if r is plain else ratio if r is regions else r.get("time_ratio", r["query_seconds"] / plain_s)
            print(f"| {label} | {r['micro_ap']:.4f} | {r['acc_at_1']:.4f} | {edits} | {r['queries_per_s']:.1f} | "
                  f"{x:.2f} | {r['index_bytes'] / 1e6:.2f} |")
        for label, r in rows:
            print(f"{label}: {r['copies_at_threshold']} copies among the {r['pairs_at_threshold']} pairs scoring "
                  f">= {api.DEFAULT_THRESHOLD}")
        print(f"time ratio --regions / plain per round: {[round(b['query_seconds'] / a['query_seconds'], 2) for a, b in rounds]}")
        print(f"index seconds: plain {plain_idx['seconds']:.1f}, --regions {region_idx['seconds']:.1f}; "
              f"MB: plain {plain_idx['bytes'] / 1e6:.2f}, --regions {region_idx['bytes'] / 1e6:.2f}")
        for b in boxes:
            print(f"box check: {b}")
        sys.stdout.flush()
    (args.out / ("boxes.json" if args.boxes_only else "regions.json")).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
