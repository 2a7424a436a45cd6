"""Regions and geometric verification, side by side in one run (issue 18; BENCHMARKS.md "Regions").

For each model, on one benchmark (`copyscan bench synth` layout):

    plain     index and query without --regions
    query     query --regions on the plain index (query crops + verification only)
    full      index --regions and query --regions (also the references' region rows)

micro AP, accuracy at rank 1 (overall and per edit), query images/s (the query command's wall
time, model loaded) and index size on disk. Then the box check: references pasted at known
positions onto distractor photos, queried with --regions; for every paste whose reference comes
first, the IoU of the reported query box with the true one.

    nice -n 19 python benchmarks/regions.py BENCH --distractors ../shared/data/imagenette-val \\
        --models copyscan_lite0_128,sscd_r50_int8 --out .bench/regions
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan import api  # noqa: E402
from copyscan.discover import discover, resolve_root  # noqa: E402
from copyscan.evaluate import _predictions_from_matches, load_labels, per_edit_table  # noqa: E402
from copyscan.metrics import evaluate, load_ground_truth  # noqa: E402
from copyscan.models import create_model  # noqa: E402
from copyscan.region_search import RegionSettings  # noqa: E402
from copyscan.regions import iou  # noqa: E402

EDITS_SHOWN = ("paste", "screenshot", "crop", "pad", "meme")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "copyscan.lock")


def run_config(bench: Path, model, work: Path, index_regions: bool, query_regions: bool, gt, labels,
               band: tuple[float, float] | None = None) -> dict:
    """index_regions also scores the references' region rows (RegionSettings.reference_regions);
    `band` verifies uncertain best matches (RegionSettings.verify_band)."""
    idx = work / f"index-{'regions' if index_regions else 'plain'}"
    ref_root = resolve_root(bench / "references")
    query_root = resolve_root(bench / "queries")
    t = time.perf_counter()
    indexed = api.index_folder(ref_root, idx, model, regions=index_regions)
    index_s = time.perf_counter() - t
    out = work / f"query-{'R' if index_regions else 'P'}{'R' if query_regions else 'P'}{'B' if band else ''}"
    t = time.perf_counter()
    settings = RegionSettings(reference_regions=index_regions, verify_band=band)
    queried = api.query_folder(query_root, idx, out, -math.inf, 10, model, report=False, regions=query_regions,
                               region_settings=settings)
    query_s = time.perf_counter() - t
    predictions = _predictions_from_matches(out / "matches.csv", query_root, ref_root)
    metrics = evaluate(gt, predictions, unknown_queries="error")
    edits = {r.edit: r.acc_at_1 for r in per_edit_table(gt, predictions, metrics, labels)}
    return {
        "index_regions": index_regions, "query_regions": query_regions,
        "micro_ap": metrics.micro_ap, "acc_at_1": metrics.acc_at_1, "recall_at_p90": metrics.recall_at_p90,
        "rank1_per_edit": edits, "queries": queried.queries, "query_seconds": query_s,
        "queries_per_s": queried.queries / query_s, "index_seconds": index_s, "index_bytes": folder_bytes(idx),
        "index_images": indexed.total, "verify_band": band,
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


def box_check(truth: list[dict], idx: Path, model, work: Path) -> dict:
    folder = Path(truth[0]["query"]).parent
    out = work / "query-pastes"
    api.query_folder(folder, idx, out, -math.inf, 5, model, report=False, regions=True)
    best: dict[str, tuple[str, tuple]] = {}
    with open(out / "matches.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["rank"] == "1":
                box = tuple(float(r[c]) for c in ("query_x0", "query_y0", "query_x1", "query_y1"))
                best[str(Path(r["query_path"]).resolve())] = (str(Path(r["reference_path"]).resolve()), box, float(r["score"]))
    hits = [t for t in truth if t["query"] in best and best[t["query"]][0] == t["reference"]]
    ious = [iou(best[t["query"]][1], t["box"]) for t in hits]
    above = [iou(best[t["query"]][1], t["box"]) for t in hits if best[t["query"]][2] >= api.DEFAULT_THRESHOLD]
    return {"pastes": len(truth), "found_rank1": len(ious), "iou_median": float(np.median(ious)) if ious else None,
            "share_iou_ge_0.5": float(np.mean([v >= 0.5 for v in ious])) if ious else None,
            "found_at_threshold": len(above),
            "share_iou_ge_0.5_at_threshold": float(np.mean([v >= 0.5 for v in above])) if above else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--models", default="copyscan_lite0_128,sscd_r50_int8")
    ap.add_argument("--distractors", type=Path, required=True, help="photos to paste the references onto")
    ap.add_argument("--pastes", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path(".bench/regions"))
    args = ap.parse_args()
    gt = load_ground_truth(args.bench / "gt.csv")
    labels = load_labels(args.bench / "labels.csv")
    args.out.mkdir(parents=True, exist_ok=True)
    refs = sorted(e.path for e in discover(args.bench / "references")[0])
    backgrounds = sorted(e.path for e in discover(args.distractors)[0])
    truth = make_pastes(refs, backgrounds, args.out / "pastes", args.pastes)
    report = {"bench": str(args.bench), "command": " ".join(sys.argv), "models": {}}
    for name in args.models.split(","):
        model = create_model(name, "cpu")
        work = args.out / name
        shutil.rmtree(work, ignore_errors=True)
        rows = [run_config(args.bench, model, work, False, False, gt, labels),
                run_config(args.bench, model, work, False, True, gt, labels),
                run_config(args.bench, model, work, False, True, gt, labels, band=(0.45, 0.75)),
                run_config(args.bench, model, work, True, True, gt, labels)]
        boxes = box_check(truth, work / "index-plain", model, work)
        report["models"][name] = {"configs": rows, "box_check": boxes}
        print(f"\n## {name}")
        print("| index / query | micro AP | acc@1 | " + " | ".join(f"{e} @1" for e in EDITS_SHOWN)
              + " | query img/s | query time x | index MB |")
        print("|---|---|---|" + "---|" * len(EDITS_SHOWN) + "---|---|---|")
        for r in rows:
            label = f"{'regions' if r['index_regions'] else 'plain'} / {'regions' if r['query_regions'] else 'plain'}"
            label += " + verify band" if r["verify_band"] else ""
            edits = " | ".join(f"{r['rank1_per_edit'].get(e, float('nan')):.3f}" for e in EDITS_SHOWN)
            print(f"| {label} | {r['micro_ap']:.4f} | {r['acc_at_1']:.4f} | {edits} | {r['queries_per_s']:.1f} | "
                  f"{r['query_seconds'] / rows[0]['query_seconds']:.2f} | {r['index_bytes'] / 1e6:.2f} |")
        print(f"box check: {boxes}")
        sys.stdout.flush()
    (args.out / "regions.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
