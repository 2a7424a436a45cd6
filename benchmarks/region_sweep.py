"""Which `RegionSettings` for a model: crops, cut and verification replayed from caches (issue 18).

`query --regions` (copyscan.region_search.Refiner) replayed without running the model twice: the
whole images and the query crops come from region_crops.py's cache (plus a few more centred crops
here), and each geometric verification a setting asks for (ORB + RANSAC of the query and one
reference, its boxes re-embedded on each side, as the Refiner does) is computed once and cached in
CACHE/verify.pkl. Per setting: micro AP, accuracy at rank 1, rank 1 of a few edits, and its cost
in model calls and verified pairs per query (plain = 1 call). Plain cosines, exact search, top 10
per query, as `eval` runs (no threshold: every top-10 match is scored).

    nice -n 19 python benchmarks/region_sweep.py BENCH --cache .bench/cache-lite --tables crops,verify
    nice -n 19 python benchmarks/region_sweep.py BENCH --cache .bench/cache-lite --tables inliers,budget,band
    nice -n 19 python benchmarks/region_sweep.py BENCH --cache .bench/cache-lite --tables band --feature-side 384

Tables: crops (crop sets and cuts, no verification), verify (the boxes re-embedded, the previous
rule), inliers and budget (verified pairs scored by their inliers, on more or fewer pairs), band
(the chosen shape around its defaults), discount (a crop's score counted less), precision (copies
among verified pairs by inliers, and among pairs by cosine), shift (every band and the anchor
moved together, for a model on another cosine scale), anchor (only the verified score's anchor
moved), lower (wider bands with fewer crops), revert (a crop win that fails verification taken back),
penalty (a failed verification lowers the score), anchor70, stored (wider bands and fewer crops, for
references whose local features are stored), first (the band verified before the crops), cropfrom
(no crops for queries that resemble nothing), cheap (the current shape and wider bands, for
--orb and --feature-side: cheaper local features).
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from region_crops import EDITS, K, Cached, score_cells  # noqa: E402

from copyscan.embed import embed_regions  # noqa: E402
from copyscan.models import create_model  # noqa: E402
from copyscan.regions import crop, grid_boxes  # noqa: E402

# Centred crops of other sizes, beside region_crops.py's 13 (index 4 there is the centred 60%).
CENTRED = {0.5: grid_boxes(0.5, 1)[0], 0.7: grid_boxes(0.7, 1)[0], 0.8: grid_boxes(0.8, 1)[0]}
CROP_SETS = {
    "centre 50%": [("c", 0.5)], "centre 60%": [("g", 4)], "centre 70%": [("c", 0.7)], "centre 80%": [("c", 0.8)],
    "centre 50% + 70%": [("c", 0.5), ("c", 0.7)], "centre 60% + 80%": [("g", 4), ("c", 0.8)],
    "2 x 2 of 75%": [("g", i) for i in range(9, 13)], "3 x 3 of 60%": [("g", i) for i in range(9)],
}
SHOWN = EDITS + ("pad", "meme")


@dataclass(frozen=True)
class Setting:
    crops: str  # a key of CROP_SETS, or "none"
    cut: float  # queries whose best whole-image score is below this get the crops
    place_from: float = 0.45  # a best match a crop won, scoring at least this, is verified
    band: tuple[float, float] | None = None  # a best match scoring in [lo, hi) is verified too
    low_crops: str | None = None  # more crops for queries whose best (after the first crops) is below low_cut
    low_cut: float = 0.0
    verify_top: int = 1  # how many of the best matches are verified (by the rules above)
    # A verified pair with at least `inliers[0]` RANSAC inliers scores at least
    # inliers[1] + inliers[2] x log2(inliers / inliers[0]), at most 0.99; None: boxes re-embedded only.
    inliers: tuple[int, float, float] | None = None
    embed_boxes: bool = True  # the verified boxes re-embedded and scored (2 model calls a pair)
    crop_discount: float = 0.0  # a crop's score counts this much less than a whole image's
    fail_penalty: float = 0.0  # a verified pair whose inliers stay below the floor loses this much
    revert_crops: bool = False  # a crop-won best match that fails verification falls back to its whole-image score
    # The whole image's best match in the band verified first; a query it lifts gets no crops.
    verify_first: bool = False
    crop_from: float = -9.0  # queries get crops only from this best whole-image score up to `cut`


def _rgb(path: str):
    """The image at `path` in colour, for re-embedding a verified box (verification reads gray)."""
    from copyscan.decode import open_image, read_bytes
    from copyscan.local_features import FEATURE_SIDE

    return open_image(read_bytes(path), FEATURE_SIDE)[0]


class Verifier:
    """ORB + RANSAC of a (query, reference) pair and its re-embedded boxes, cached on disk."""

    def __init__(self, model, cache: Path, tag: str = ""):
        self.model = model
        self.file = cache / f"verify{tag}.pkl"
        self.pairs: dict[tuple[str, str], tuple | None] = pickle.loads(self.file.read_bytes()) if self.file.exists() else {}
        self.features: dict[str, tuple] = {}
        self.new = 0
        self.seconds = 0.0

    def _feats(self, path: str):
        from copyscan import local_features as lf

        if path not in self.features:
            img = lf.open_gray(path)
            self.features[path] = None if img is None else (img, lf.features_of(img))
        return self.features[path]

    def get(self, query: str, reference: str, qvec: np.ndarray, rvec: np.ndarray):
        """(inliers, query box, reference box, score of the query box, score of the reference box) or None."""
        key = (query, reference)
        if key not in self.pairs:
            from copyscan import verify as geo

            t = time.perf_counter()
            q, r = self._feats(query), self._feats(reference)
            v = None if q is None or r is None else geo.verify(q[1], r[1])
            if v is None:
                self.pairs[key] = None
            else:
                size = self.model.input_size
                qi, ri = _rgb(query), _rgb(reference)
                d = self.model.embed(np.stack([crop(qi, v.query_box, size), crop(ri, v.reference_box, size)]))
                self.pairs[key] = (v.inliers, v.query_box, v.reference_box, float(d[0] @ rvec), float(d[1] @ qvec))
            self.new += 1
            self.seconds += time.perf_counter() - t
            if len(self.features) > 3000:
                self.features.clear()
        return self.pairs[key]

    def save(self) -> None:
        if self.new:
            self.file.write_bytes(pickle.dumps(self.pairs))


def centred_crops(model, paths: list[str], cache: Path) -> dict[float, np.ndarray]:
    f = cache / "qcrops-centred.npz"
    sides = sorted(CENTRED)
    if f.exists():
        d = np.load(f)["d"]
    else:
        d = np.zeros((len(paths), len(sides), model.dim), np.float32)
        boxes = [CENTRED[s] for s in sides]
        seen = np.zeros(len(paths), np.int64)
        for b in embed_regions([(p, boxes) for p in paths], model, 64, 2):
            for o, v in zip(b.owner, b.descriptors):
                d[o, seen[o]] = v
                seen[o] += 1
        np.savez(f, d=d)
    return {s: d[:, i] for i, s in enumerate(sides)}


def precision_table(b: Cached, verifier: Verifier, top: int = 3) -> None:
    """Copies among the pairs scoring at least a cosine (plain top 10), and among the pairs
    verified with at least so many inliers (the best `top` of whole image and centred 60% crop,
    every query verified)."""
    gs, gi = b.index.search(b.qd, K)
    cs, ci = b.index.search(np.ascontiguousarray(b.qc[:, 4]), K)  # the centred 60% crop
    copy = lambda q, r: (b.qid[q], b.rid[r]) in b.gt.pairs  # noqa: E731
    print("\n| whole-image cosine at least | pairs | copies |\n|---|---|---|")
    for t in (0.65, 0.7, 0.75, 0.8):
        hits = [(q, int(r)) for q in range(len(b.qp)) for s, r in zip(gs[q], gi[q]) if s >= t]
        print(f"| {t} | {len(hits)} | {sum(copy(q, r) for q, r in hits)} |")
    counts = {f: [0, 0] for f in (15, 20, 25, 30, 40)}
    for q in range(len(b.qp)):
        cand: dict[int, float] = {}
        for s, r in list(zip(gs[q], gi[q])) + list(zip(cs[q], ci[q])):
            cand[int(r)] = max(cand.get(int(r), -9.0), float(s))
        for r, _ in sorted(cand.items(), key=lambda t: -t[1])[:top]:
            v = verifier.get(b.qp[q], b.rp[r], b.qd[q], b.rd[r])
            for f in counts:
                if v is not None and v[0] >= f:
                    counts[f][0] += 1
                    counts[f][1] += copy(q, r)
    verifier.save()
    print(f"\n| verified (the best {top} of every query) with inliers at least | pairs | copies |\n|---|---|---|")
    for f, (n, c) in counts.items():
        print(f"| {f} | {n} | {c} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--model", default="copyscan_lite0_128")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--tables", default="crops,verify,inliers", help="which groups of settings: crops, verify, inliers")
    ap.add_argument("--feature-side", type=int, default=None, help="local_features.FEATURE_SIDE for this run")
    ap.add_argument("--orb", default=None, help="local_features.ORB_LEVELS,ORB_SCALE[,ORB_FAST] for this run (e.g. 5,1.3)")
    ap.add_argument("--max-features", type=int, default=None, help="local_features.MAX_FEATURES for this run")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    from copyscan import local_features as lf

    if args.feature_side:
        lf.FEATURE_SIDE = args.feature_side
    if args.max_features:
        lf.MAX_FEATURES = args.max_features
    if args.orb:
        levels, scale, *fast = args.orb.split(",")
        lf.ORB_LEVELS, lf.ORB_SCALE = int(levels), float(scale)
        if fast:
            lf.ORB_FAST = int(fast[0])
    model = create_model(args.model, "cpu")
    b = Cached(args.bench, model, args.cache)
    rp, rd, qp, qd, grid, gt, labels, rid, qid, index = b.rp, b.rd, b.qp, b.qd, b.qc, b.gt, b.labels, b.rid, b.qid, b.index
    centred: dict[float, np.ndarray] = {}  # embedded when a crop set first needs them
    kk = K + 1  # the Refiner searches top_k + 1
    gs, gi = index.search(qd, kk)
    tag = ("" if not args.feature_side else f"-{args.feature_side}") + ("" if not args.orb else f"-orb{args.orb}") \
        + ("" if not args.max_features else f"-kp{args.max_features}")
    verifier = Verifier(model, args.cache, tag)

    hits: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def crop_hits(name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in hits:
            if not centred and any(kind == "c" for kind, _ in CROP_SETS[name]):
                centred.update(centred_crops(model, qp, args.cache))
            vecs = np.stack([grid[:, i] if kind == "g" else centred[i] for kind, i in CROP_SETS[name]], 1)
            s, i = index.search(np.ascontiguousarray(vecs.reshape(-1, rd.shape[1])), kk)
            hits[name] = (s.reshape(len(qp), -1), i.reshape(len(qp), -1))
        return hits[name]

    def replay(st: Setting) -> tuple[list[dict[int, float]], float, float, int]:
        """Each query's reference -> best score, model calls and verified pairs per query."""
        calls = len(qp)
        verified = 0
        out = []
        cs = ci = ls = li = None
        if st.crops != "none":
            cs, ci = crop_hits(st.crops)
        if st.low_crops:
            ls, li = crop_hits(st.low_crops)
        for q in range(len(qp)):
            cand = {int(r): (float(s), "global") for s, r in zip(gs[q], gi[q])}
            whole = {r: v[0] for r, v in cand.items()}
            best = float(gs[q, 0])
            lifted_first = False
            if st.verify_first and st.band is not None and st.band[0] <= best < st.band[1] and st.inliers is not None:
                r0 = int(gi[q, 0])
                v = verifier.get(qp[q], rp[r0], qd[q], rd[r0])
                verified += 1
                if v is not None and v[0] >= st.inliers[0]:
                    lifted_first = True
                    cand[r0] = (max(best, min(0.99, st.inliers[1] + st.inliers[2] * float(np.log2(v[0] / st.inliers[0])))),
                                "verified")
            if cs is not None and st.crop_from <= best < st.cut and not lifted_first:
                calls += len(CROP_SETS[st.crops])
                for s, r in zip(cs[q].tolist(), ci[q].tolist()):
                    s -= st.crop_discount
                    if s > cand.get(r, (-9.0, ""))[0]:
                        cand[r] = (s, "region")
            if ls is not None and max(v[0] for v in cand.values()) < st.low_cut:
                calls += len(CROP_SETS[st.low_crops])
                for s, r in zip(ls[q].tolist(), li[q].tolist()):
                    if s > cand.get(r, (-9.0, ""))[0]:
                        cand[r] = (s, "region")
            ranked = sorted(cand.items(), key=lambda t: -t[1][0])[:st.verify_top]
            for r, (s, how) in ranked:
                if how == "verified":
                    continue  # verified first
                coarse = how == "region" and s >= st.place_from
                band = st.band is not None and st.band[0] <= s < st.band[1]
                if not (coarse or band):
                    continue
                verified += 1
                v = verifier.get(qp[q], rp[r], qd[q], rd[r])
                failed = v is None or st.inliers is None or v[0] < st.inliers[0]
                if st.fail_penalty and failed:
                    cand[r] = (s - st.fail_penalty, how)
                if st.revert_crops and failed and how == "region":
                    cand[r] = (whole.get(r, -9.0), "global")
                if v is None:
                    continue
                new = s
                if st.embed_boxes:
                    calls += 2
                    new = max(new, v[3], v[4])
                if st.inliers is not None and v[0] >= st.inliers[0]:
                    new = max(new, min(0.99, st.inliers[1] + st.inliers[2] * float(np.log2(v[0] / st.inliers[0]))))
                cand[r] = (new, "verified")
            out.append({r: s for r, (s, _) in cand.items()})
        return out, calls / len(qp), verified / len(qp), 0

    def score(best: list[dict[int, float]]) -> str:
        return score_cells(best, qid, rid, gt, labels, SHOWN)

    copies = np.array([q in gt.positive_queries for q in qid])
    print(f"\n{args.model} on {args.bench}: {len(qp)} queries ({copies.sum()} copies), {len(rp)} references")
    print("best whole-image score, share of queries below: "
          + ", ".join(f"{c}: {np.mean(gs[:, 0] < c):.2f} (copies {np.mean(gs[copies, 0] < c):.2f})"
                      for c in (0.45, 0.55, 0.65, 0.75, 0.85)))
    tables = args.tables.split(",")
    if "precision" in tables:  # are verified pairs copies as often as pairs scoring the threshold?
        precision_table(b, verifier)
    print("\n| crops | cut | verify crop-won from | verify band | low-band crops | model calls / query | "
          "verified pairs / query | micro AP | acc@1 | " + " | ".join(f"{e} @1" for e in SHOWN) + " |")
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(SHOWN))

    def row(st: Setting) -> None:
        t = time.perf_counter()
        best, calls, ver, _ = replay(st)
        band = "" if st.band is None else f"[{st.band[0]:.2f}, {st.band[1]:.2f})" + (f" top {st.verify_top}" if st.verify_top > 1 else "")
        if st.inliers is not None:
            band += f"; >= {st.inliers[0]} inliers: {st.inliers[1]:.2f} + {st.inliers[2]:.2f}/doubling"
        if not st.embed_boxes:
            band += "; boxes not re-embedded"
        if st.crop_discount:
            band += f"; crops - {st.crop_discount:.2f}"
        if st.fail_penalty:
            band += f"; unverified - {st.fail_penalty:.2f}"
        if st.revert_crops:
            band += "; unverified crop wins reverted"
        low = "" if not st.low_crops else f"{st.low_crops} below {st.low_cut:.2f}"
        place = "-" if st.place_from > 1 else f"{st.place_from:.2f}"
        print(f"| {st.crops} | {st.cut:.2f} | {place} | {band} | {low} | {calls:.2f} | {ver:.2f} | {score(best)} |",
              flush=True)
        verifier.save()
        if time.perf_counter() - t > 20:
            print(f"  ({time.perf_counter() - t:.0f} s, {verifier.seconds:.0f} s verifying so far)", file=sys.stderr)

    row(Setting("none", 0.0, place_from=9.0))
    settings = []
    if "crops" in tables:
        for name in CROP_SETS:
            for cut in (0.55, 0.65, 0.75, 0.85, 2.0):
                settings.append(Setting(name, cut, place_from=9.0))  # crops alone, no verification
        for name in ("centre 60%", "centre 70%", "centre 50% + 70%"):
            for cut in (0.65, 0.75):
                settings.append(Setting(name, cut, low_crops="3 x 3 of 60%", low_cut=0.5))
    if "verify" in tables:
        for cut in (0.65, 0.75, 0.85):
            for place in (0.45, 0.55):
                settings.append(Setting("centre 60%", cut, place_from=place))
        for lo, hi in itertools.product((0.45, 0.55, 0.65), (0.75, 0.85, 0.95)):
            settings.append(Setting("centre 60%", 0.75, band=(lo, hi)))
    if "inliers" in tables:
        for crops_, cut in (("none", 0.0), ("centre 60%", 0.65), ("centre 70%", 0.65)):
            for band in ((0.3, 0.85), (0.45, 0.85), (0.3, 0.95)):
                for top in (1, 2, 3):
                    for inl in ((20, 0.75, 0.1), (25, 0.75, 0.1), (40, 0.75, 0.1), (20, 0.8, 0.05)):
                        for embed in (False, True):
                            settings.append(Setting(crops_, cut, place_from=0.3, band=band, verify_top=top,
                                                    inliers=inl, embed_boxes=embed))
    if "budget" in tables:  # inlier scores without re-embedding, on fewer pairs
        inl = (20, 0.75, 0.1)
        for cut in (0.55, 0.65):
            for place in (0.3, 0.45, 9.0):
                for band in ((0.35, 0.65), (0.35, 0.75), (0.45, 0.65), (0.45, 0.75), (0.5, 0.7), None):
                    for top in ((1, 2) if band else (1,)):
                        settings.append(Setting("centre 60%", cut, place_from=place, band=band, verify_top=top,
                                                inliers=inl, embed_boxes=False))
    if "shift" in tables:  # every band and the verified anchor moved together (a model on another scale)
        for d in (0.05, 0.0, -0.05, -0.1, -0.15, -0.2):
            settings.append(Setting("centre 60%", 0.55 + d, place_from=0.45 + d, band=(0.38 + d, 0.6 + d),
                                    inliers=(20, 0.75 + d, 0.1), embed_boxes=False))
    if "anchor" in tables:  # the bands as they are, the verified score anchored at another threshold
        for a in (0.75, 0.7, 0.65, 0.6):
            settings.append(Setting("centre 60%", 0.55, place_from=0.45, band=(0.38, 0.6), inliers=(20, a, 0.1),
                                    embed_boxes=False))
        settings.append(Setting("centre 60%", 0.55, place_from=0.45, band=(0.35, 0.6), inliers=(20, 0.75, 0.1),
                                embed_boxes=False))
    if "discount" in tables:
        for cut in (0.55, 0.65, 0.75):
            for d in (0.0, 0.02, 0.05, 0.08, 0.12):
                settings.append(Setting("centre 60%", cut, place_from=9.0, crop_discount=d))
                settings.append(Setting("centre 60%", cut, place_from=9.0, crop_discount=d, band=(0.35, 0.65),
                                        inliers=(20, 0.75, 0.1), embed_boxes=False))
        for d in (0.0, 0.05, 0.1):
            settings.append(Setting("2 x 2 of 75%", 0.65, place_from=9.0, crop_discount=d))
            settings.append(Setting("centre 50% + 70%", 0.65, place_from=9.0, crop_discount=d))
    if "band" in tables:  # the chosen shape: centre 60% crops, verification of the best match in a band
        inl = (20, 0.75, 0.1)
        for cut in (0.55, 0.65):
            for band in ((0.3, 0.6), (0.35, 0.55), (0.35, 0.6), (0.35, 0.65), (0.4, 0.6), (0.4, 0.65)):
                for place in (0.45, 9.0):
                    settings.append(Setting("centre 60%", cut, place_from=place, band=band, inliers=inl,
                                            embed_boxes=False))
        for cut in (0.45, 0.5):
            settings.append(Setting("centre 60%", cut, place_from=0.45, band=(0.38, 0.6), inliers=(20, 0.75, 0.1),
                                    embed_boxes=False))
        for lo in (0.36, 0.37, 0.38, 0.39):
            settings.append(Setting("centre 60%", 0.55, place_from=0.45, band=(lo, 0.6), inliers=(20, 0.75, 0.1),
                                    embed_boxes=False))
        for inl in ((15, 0.75, 0.1), (25, 0.75, 0.1), (30, 0.75, 0.1), (20, 0.7, 0.1), (20, 0.75, 0.0)):
            settings.append(Setting("centre 60%", 0.65, place_from=0.45, band=(0.35, 0.6), inliers=inl,
                                    embed_boxes=False))
    if "lower" in tables:  # a wider band, paid for with fewer crops (for a default that finds more copies whole)
        for cut in (0.45, 0.5, 0.55):
            for band in ((0.30, 0.60), (0.32, 0.60), (0.30, 0.58), (0.32, 0.62), (0.34, 0.62)):
                settings.append(Setting("centre 60%", cut, place_from=0.45, band=band, inliers=(20, 0.75, 0.1),
                                        embed_boxes=False))
    if "penalty" in tables:  # a best match that fails verification scored lower
        for band in ((0.38, 0.6), (0.35, 0.6), (0.3, 0.6)):
            for pen in (0.0, 0.03, 0.06, 0.1, 0.2):
                for floor in (15, 20):
                    settings.append(Setting("centre 60%", 0.55, place_from=0.45, band=band, inliers=(floor, 0.75, 0.1),
                                            embed_boxes=False, fail_penalty=pen))
    if "revert" in tables:  # a crop-won best match that fails verification loses the crop's lift
        for cut in (0.55, 0.65, 0.75, 1.0):
            for place in (0.45, 0.35):
                for band in ((0.38, 0.6), (0.35, 0.6)):
                    settings.append(Setting("centre 60%", cut, place_from=place, band=band, inliers=(20, 0.70, 0.1),
                                            embed_boxes=False, revert_crops=True))
    if "anchor70" in tables:  # a model whose default threshold is 0.70 (the verified score's anchor)
        for cut in (0.55, 0.6):
            for band in ((0.38, 0.6), (0.35, 0.6), (0.35, 0.65), (0.33, 0.6), (0.33, 0.65), (0.3, 0.65)):
                settings.append(Setting("centre 60%", cut, place_from=0.45, band=band, inliers=(20, 0.70, 0.1),
                                        embed_boxes=False))
    if "cheap" in tables:  # the current shape and wider bands (run with --orb / --feature-side for cheaper features)
        for cut in (0.5, 0.55):
            for band in ((0.38, 0.6), (0.35, 0.6), (0.32, 0.6), (0.3, 0.6)):
                for floor in (15, 20):
                    settings.append(Setting("centre 60%", cut, place_from=0.45, band=band, inliers=(floor, 0.75, 0.1),
                                            embed_boxes=False))
    if "top2" in tables:  # the two best matches in the band verified, not only the best
        for band in ((0.38, 0.6), (0.4, 0.6), (0.42, 0.6), (0.35, 0.6)):
            for top in (1, 2):
                settings.append(Setting("centre 60%", 0.55, place_from=0.45, band=band, verify_top=top,
                                        inliers=(20, 0.70, 0.1), embed_boxes=False))
    if "anchor67" in tables:  # a model whose default threshold is 0.67 (session 4's default)
        for cut in (0.55, 0.6):
            for band in ((0.38, 0.6), (0.36, 0.6), (0.35, 0.6), (0.38, 0.62), (0.35, 0.62)):
                settings.append(Setting("centre 60%", cut, place_from=0.45, band=band, inliers=(20, 0.67, 0.1),
                                        embed_boxes=False))
        for cut in (0.45, 0.5):  # fewer crops pay for a wider band
            for band in ((0.35, 0.6), (0.33, 0.6), (0.35, 0.58), (0.36, 0.58)):
                settings.append(Setting("centre 60%", cut, place_from=0.45, band=band, inliers=(20, 0.67, 0.1),
                                        embed_boxes=False))
        for band in ((0.36, 0.58), (0.35, 0.58), (0.35, 0.56)):
            settings.append(Setting("centre 60%", 0.55, place_from=0.45, band=band, inliers=(20, 0.67, 0.1),
                                    embed_boxes=False))
    if "stored" in tables:  # wider bands, for references whose features are stored (half the cost a pair)
        for cut in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55):
            for band in ((0.38, 0.6), (0.30, 0.6), (0.28, 0.6), (0.30, 0.65), (0.32, 0.65), (0.28, 0.65), (0.30, 0.70),
                         (0.25, 0.70)):
                settings.append(Setting("centre 60%", cut, place_from=0.45, band=band, inliers=(20, 0.70, 0.1),
                                        embed_boxes=False))
    if "first" in tables:  # the band verified before the crops: a lifted query is not cropped
        for cut in (0.45, 0.55):
            for band in ((0.30, 0.65), (0.30, 0.60), (0.25, 0.65)):
                for first in (False, True):
                    settings.append(Setting("centre 60%", cut, place_from=0.45, band=band, inliers=(20, 0.70, 0.1),
                                            embed_boxes=False, verify_first=first))
    if "cropfrom" in tables:  # no crops for queries whose best whole-image score is very low
        for lo in (-9.0, 0.2, 0.25, 0.3, 0.32, 0.34, 0.36):
            settings.append(Setting("centre 60%", 0.45, place_from=0.45, band=(0.30, 0.65), inliers=(20, 0.70, 0.1),
                                    embed_boxes=False, crop_from=lo))
    if "anchorhigh" in tables:  # verified pairs ranked higher (above the threshold) or rising faster with inliers
        for anchor, step in ((0.70, 0.1), (0.75, 0.1), (0.80, 0.1), (0.85, 0.05), (0.70, 0.2), (0.75, 0.15)):
            settings.append(Setting("centre 60%", 0.55, place_from=0.45, band=(0.38, 0.6), inliers=(20, anchor, step),
                                    embed_boxes=False))
    for s in settings:
        row(s)


if __name__ == "__main__":
    main()
