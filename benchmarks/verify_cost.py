"""Cost of geometric verification per pair (issue 18; BENCHMARKS.md "Regions").

For the pastes that benchmarks/regions.py made (PASTES/pastes-truth.json: a reference pasted at a
known place onto another photo), times each step of copyscan.verify on (paste, its reference) and
(paste, a wrong reference) pairs: decoding an image for features, ORB features, matching + RANSAC.
Medians in milliseconds, one core's worth (the model is not involved).

    nice -n 19 python benchmarks/verify_cost.py .bench/regions [--feature-side 384,512]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan.decode import open_image, read_bytes  # noqa: E402
from copyscan.regions import iou  # noqa: E402
from copyscan import local_features as lf  # noqa: E402
from copyscan import verify as geo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the --out folder of benchmarks/regions.py")
    ap.add_argument("--feature-side", default=str(lf.FEATURE_SIDE), help="sides to compare, one after the other (a,b)")
    args = ap.parse_args()
    truth = json.loads((args.out / "pastes-truth.json").read_text())
    for side in args.feature_side.split(","):
        lf.FEATURE_SIDE = int(side)  # read by features_of at each call
        measure(truth, lf.FEATURE_SIDE)


def measure(truth: list[dict], side: int) -> None:
    decode, feats, match_true, match_false = [], [], [], []
    placed = []
    cache = {}
    for k, t in enumerate(truth):
        for path in (t["query"], t["reference"]):
            if path in cache:
                continue
            a = time.perf_counter()
            img, _, _ = open_image(read_bytes(path), side)
            b = time.perf_counter()
            cache[path] = lf.features_of(img)
            c = time.perf_counter()
            decode.append(b - a)
            feats.append(c - b)
        wrong = truth[(k + 1) % len(truth)]["reference"]
        if wrong not in cache:
            cache[wrong] = lf.features_of(open_image(read_bytes(wrong), side)[0])
        a = time.perf_counter()
        v = geo.verify(cache[t["query"]], cache[t["reference"]])
        b = time.perf_counter()
        w = geo.verify(cache[t["query"]], cache[wrong])
        c = time.perf_counter()
        match_true.append(b - a)
        match_false.append(c - b)
        placed.append(v is not None and iou(v.query_box, tuple(t["box"])) >= 0.5)
        if w is not None:
            placed.append(False)  # never seen so far; counted against the share if it happens
    ms = lambda xs: f"{1000 * float(np.median(xs)):.1f}"  # noqa: E731
    print(f"{len(truth)} pastes, ORB {lf.MAX_FEATURES} features at {side} px")
    print("| step | median ms |")
    print("|---|---|")
    print(f"| decode one image for features | {ms(decode)} |")
    print(f"| ORB features of one image | {ms(feats)} |")
    print(f"| match + RANSAC, the paste and its reference | {ms(match_true)} |")
    print(f"| match + RANSAC, the paste and a wrong reference | {ms(match_false)} |")
    per_pair = np.median(decode) * 2 + np.median(feats) * 2 + np.median(match_true)
    print(f"| a pair from scratch (2 decodes, 2 feature sets, 1 match) | {1000 * per_pair:.1f} |")
    print(f"pastes placed (verified, IoU >= 0.5) with the right reference: {np.mean(placed[:len(truth)]):.3f}")


if __name__ == "__main__":
    main()
