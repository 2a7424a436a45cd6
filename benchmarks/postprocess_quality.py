"""What PCA whitening and score normalisation do to micro AP on a copy-detection benchmark.

    copyscan bench synth ../shared/data/imagenet-sample /tmp/bench \\
        --references 1000 --distractor-source ../shared/data/imagenette-val
    python benchmarks/postprocess_quality.py /tmp/bench ../shared/data/imagenette-train \\
        [--background-count 1000] [--model lite0_gem] [--work /tmp/pp-work]

References, queries and background images are embedded once (cached as index folders under
--work); every variant is then fitted on the background and scored in memory exactly as
`copyscan eval BENCH --background DIR` scores it (top-10 per query, DISC2021 micro AP).
The background is --background-count photos spread evenly over the sorted files of its folder,
linked into WORK/background-COUNT; it must share no photo with the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan import ann, api  # noqa: E402
from copyscan.discover import discover  # noqa: E402
from copyscan.metrics import Predictions, evaluate, load_ground_truth  # noqa: E402
from copyscan.postprocess import PostProcess, fit  # noqa: E402
from copyscan.score import queries_of, references_of  # noqa: E402
from copyscan.store import IndexStore, descriptors_of, paths_of  # noqa: E402

TOP_K = 10


def embed_folder(folder: Path, work: Path, name: str, model: str) -> tuple[list[str], np.ndarray]:
    """(ids relative to `folder`, raw descriptors), embedded once into WORK/name."""
    idx = work / name
    api.index_folder(folder, index_dir=idx, model=model)
    table = IndexStore(idx).read_table(["descriptor"], root=str(folder.absolute()))
    ids = [Path(os.path.relpath(p, folder.absolute())).as_posix() for p in paths_of(table)]
    return ids, descriptors_of(table)


def link_background(source: Path, count: int, work: Path) -> Path:
    """WORK/background with `count` links to photos spread evenly over `source`'s sorted files."""
    entries, _ = discover(source)
    step = max(1, len(entries) // count)
    chosen = [e.path for e in entries[::step][:count]]
    folder = work / f"background-{count}"  # one folder per count: its links are named by position
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(chosen):
        link = folder / f"B{i:05d}{Path(path).suffix.lower()}"
        if not link.exists():
            link.symlink_to(os.path.abspath(path))
    return folder


def score(post: PostProcess, q_ids, q_vec, r_ids, r_vec, gt) -> dict:
    # The score rule of `copyscan query` (score.py): FAISS returns the final scores.
    refs = references_of(post, r_vec)
    index = ann.build_index(refs)
    sims, ids = ann.search(index, queries_of(post, q_vec), TOP_K)
    rows = [(q_ids[i], r_ids[j], float(s)) for i in range(len(q_ids)) for s, j in zip(sims[i], ids[i]) if j >= 0]
    m = evaluate(gt, Predictions.from_rows(rows), unknown_queries="error")
    return {"micro_ap": m.micro_ap, "recall_at_p90": m.recall_at_p90, "threshold_at_p90": m.threshold_at_p90,
            "acc_at_1": m.acc_at_1, "dim": post.out_dim(r_vec.shape[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path)
    ap.add_argument("background_source", type=Path)
    ap.add_argument("--background-count", type=int, default=1000)
    ap.add_argument("--model", default="lite0_gem")
    ap.add_argument("--work", type=Path, default=Path("/tmp/copyscan-postprocess-bench"))
    ap.add_argument("--dims", default="64,128,256", help="whitened dimensions to try besides the default")
    ap.add_argument("--betas", default="0.5,1.0", help="score-normalisation betas to try")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    gt = load_ground_truth(args.bench / "gt.csv")
    start = time.perf_counter()
    r_ids, r_vec = embed_folder(args.bench / "references", args.work, "references", args.model)
    q_ids, q_vec = embed_folder(args.bench / "queries", args.work, "queries", args.model)
    bg_folder = link_background(args.background_source, args.background_count, args.work)
    _, b_vec = embed_folder(bg_folder, args.work, f"bg-{args.background_count}", args.model)
    print(f"{args.model}: {len(r_ids)} references, {len(q_ids)} queries, {len(b_vec)} background "
          f"(embedded in {time.perf_counter() - start:.0f} s)")

    variants: list[tuple[str, dict]] = [("none", dict(whiten=False, score_norm=False))]
    variants.append(("whiten", dict(whiten=True, score_norm=False)))
    for d in (int(x) for x in args.dims.split(",") if x):
        variants.append((f"whiten dim {d}", dict(whiten=True, score_norm=False, dim=d)))
    for beta in (float(x) for x in args.betas.split(",") if x):
        variants.append((f"score norm beta {beta:g}", dict(whiten=False, score_norm=True, beta=beta)))
        variants.append((f"whiten + score norm beta {beta:g}", dict(whiten=True, score_norm=True, beta=beta)))
        for d in (int(x) for x in args.dims.split(",") if x):
            variants.append((f"whiten dim {d} + score norm beta {beta:g}", dict(whiten=True, score_norm=True, beta=beta, dim=d)))

    results = {}
    print(f"{'variant':40s} {'dim':>5s} {'micro AP':>9s} {'R@P90':>7s} {'thr@P90':>8s} {'acc@1':>7s}")
    for name, kw in variants:
        post = PostProcess() if not (kw["whiten"] or kw["score_norm"]) else fit(b_vec, **kw)
        r = score(post, q_ids, q_vec, r_ids, r_vec, gt)
        results[name] = r
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{name:40s} {r['dim']:5d} {r['micro_ap']:9.3f} {fmt(r['recall_at_p90']):>7s} "
              f"{fmt(r['threshold_at_p90']):>8s} {r['acc_at_1']:7.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
