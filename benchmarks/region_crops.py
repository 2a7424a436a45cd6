"""Which query crops, for which queries (issue 18; BENCHMARKS.md "Regions", the crop table).

Embeds a benchmark's references and queries whole, and each query's 13 crops (a 3 x 3 grid of 60%
of each side, a 2 x 2 grid of 75%), once, into CACHE; then scores, without running the model
again, a query's best match over its whole image and a chosen set of crops, for queries whose best
whole-image score is below a cut (others keep their whole-image matches). Also the references'
crops as extra rows (index --regions) against the queries' whole images. Plain cosines, exact
search, top 10 per query, DISC2021 micro AP and accuracy at rank 1 per edit.

    nice -n 19 python benchmarks/region_crops.py BENCH --model copyscan_lite0_128 --cache .bench/cache-lite
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan.discover import discover  # noqa: E402
from copyscan.embed import embed_entries, embed_regions  # noqa: E402
from copyscan.evaluate import load_labels  # noqa: E402
from copyscan.metrics import Predictions, evaluate, load_ground_truth, top1_hits  # noqa: E402
from copyscan.models import create_model  # noqa: E402
from copyscan.regions import grid_boxes  # noqa: E402

BOXES = grid_boxes(0.6, 3) + grid_boxes(0.75, 2)  # 0-8: 3 x 3 of 60% (4: the centre), 9-12: 2 x 2 of 75%
K = 10
EDITS = ("paste", "screenshot", "crop")


def whole(model, folder: Path, cache: Path, name: str) -> tuple[list[str], np.ndarray]:
    f = cache / f"{name}.npz"
    if f.exists():
        z = np.load(f, allow_pickle=True)
        return list(z["paths"]), z["d"]
    entries, _ = discover(str(folder))
    paths, ds = [], []
    t = time.perf_counter()
    for b in embed_entries(entries, model, 32, 2):
        paths += [r.path for r in b.rows]
        ds.append(b.descriptors)
    print(f"{name}: {len(paths)} embedded in {time.perf_counter() - t:.1f} s", flush=True)
    d = np.concatenate(ds)
    np.savez(f, paths=np.array(paths, object), d=d)
    return paths, d


def crops(model, paths: list[str], cache: Path, name: str) -> np.ndarray:
    f = cache / f"{name}.npz"
    if f.exists():
        return np.load(f)["d"]
    out = np.zeros((len(paths), len(BOXES), model.dim), np.float32)
    t = time.perf_counter()
    for b in embed_regions([(p, BOXES) for p in paths], model, 64, 2):
        seen: dict[int, int] = defaultdict(int)
        for o, d in zip(b.owner, b.descriptors):
            out[o, seen[o]] = d
            seen[o] += 1
    print(f"{name}: {len(paths)} x {len(BOXES)} crops in {time.perf_counter() - t:.1f} s", flush=True)
    np.savez(f, d=out)
    return out


class Cached:
    """A benchmark's whole images and query crops, embedded once into `cache`, its truth, and an
    exact index of its references."""

    def __init__(self, bench: Path, model, cache: Path):
        import faiss

        self.rp, self.rd = whole(model, bench / "references", cache, "refs")
        self.qp, self.qd = whole(model, bench / "queries", cache, "queries")
        self.qc = crops(model, self.qp, cache, "qcrops")
        self.gt = load_ground_truth(bench / "gt.csv")
        self.labels = load_labels(bench / "labels.csv")
        self.rid = [os.path.basename(p) for p in self.rp]
        self.qid = [os.path.basename(p) for p in self.qp]
        self.index = faiss.IndexFlatIP(self.rd.shape[1])
        self.index.add(self.rd)


def score_cells(best: list[dict[int, float]], qid: list[str], rid: list[str], gt, labels,
                edits: tuple[str, ...] = EDITS) -> str:
    """'micro AP | acc@1 | rank 1 of each edit' of each query's {reference: score} (its top K)."""
    rows = [(q, rid[r], s) for q, d in zip(qid, best) for r, s in sorted(d.items(), key=lambda t: -t[1])[:K]]
    p = Predictions.from_rows(rows)
    m = evaluate(gt, p, unknown_queries="error")
    t1 = top1_hits(gt, p)
    per = []
    for e in edits:
        qs = [q for q in gt.positive_queries if e in labels.get(q, [])]
        per.append(f"{sum(t1[q] for q in qs) / len(qs):.3f}")
    return f"{m.micro_ap:.4f} | {m.acc_at_1:.4f} | " + " | ".join(per)


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--model", default="copyscan_lite0_128")
    ap.add_argument("--cache", type=Path, required=True)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    model = create_model(args.model, "cpu")
    b = Cached(args.bench, model, args.cache)
    rp, rd, qp, qd, qc, gt, labels, rid, qid, index = b.rp, b.rd, b.qp, b.qd, b.qc, b.gt, b.labels, b.rid, b.qid, b.index
    gs, gi = index.search(qd, K)
    base = [dict(zip(i.tolist(), s.tolist())) for s, i in zip(gs, gi)]

    def score(best: list[dict[int, float]]) -> str:
        return "| " + score_cells(best, qid, rid, gt, labels) + " |"

    def with_crops(boxes: list[int], below: float) -> tuple[list[dict[int, float]], int]:
        cs, ci = index.search(qc[:, boxes].reshape(-1, rd.shape[1]), K)
        cs, ci = cs.reshape(len(qp), -1), ci.reshape(len(qp), -1)
        out, n = [], 0
        for q in range(len(qp)):
            d = dict(base[q])
            if gs[q, 0] < below:
                n += 1
                for s, i in zip(cs[q].tolist(), ci[q].tolist()):
                    d[i] = max(d.get(i, -9.0), s)
            out.append(d)
        return out, n

    print(f"\n{args.model} on {args.bench}: {len(qp)} queries, {len(rp)} references\n")
    print("| query crops | for queries scoring below | queries cropped | model calls per query | micro AP | acc@1 | "
          + " | ".join(f"{e} @1" for e in EDITS) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(EDITS))
    print(f"| none | | 0 | 1.00 {score(base)}")
    sets = {"centre 60%": [4], "3 x 3 of 60%": list(range(9)), "2 x 2 of 75%": list(range(9, 13)),
            "3 x 3 of 60% + 2 x 2 of 75%": list(range(13))}
    for label, boxes in sets.items():
        for below in ((0.45, 0.55, 0.65, 0.75, 2.0) if label == "centre 60%" else (0.65, 2.0)):
            best, n = with_crops(boxes, below)
            cut = "all" if below > 1 else f"{below:.2f}"
            print(f"| {label} | {cut} | {n} | {1 + n * len(boxes) / len(qp):.2f} {score(best)}")

    rc = crops(model, rp, args.cache, "rcrops")
    print("\nReferences' crops as extra index rows (query whole image against them), with and without "
          "the centre query crop below 0.65:\n")
    print("| reference crops | query crop | micro AP | acc@1 | " + " | ".join(f"{e} @1" for e in EDITS) + " |")
    print("|---|---|---|---|" + "---|" * len(EDITS))
    centre, _ = with_crops([4], 0.65)
    for label, boxes in (("none", []), ("centre 60%", [4]), ("2 x 2 of 75%", list(range(9, 13))), ("all 13", list(range(13)))):
        for qlabel, start in (("none", base), ("centre 60%", centre)):
            best = [dict(d) for d in start]
            if boxes:
                owner = np.repeat(np.arange(len(rp)), len(boxes))
                extra = faiss.IndexFlatIP(rd.shape[1])
                extra.add(np.ascontiguousarray(rc[:, boxes].reshape(-1, rd.shape[1])))
                s2, i2 = extra.search(qd, K * len(boxes))
                for q in range(len(qp)):
                    for s, i in zip(s2[q].tolist(), i2[q].tolist()):
                        r = int(owner[i])
                        best[q][r] = max(best[q].get(r, -9.0), s)
            print(f"| {label} | {qlabel} {score(best)}")


if __name__ == "__main__":
    main()
