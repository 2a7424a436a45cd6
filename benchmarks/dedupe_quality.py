"""Pair precision and recall of `copyscan dedupe` on real photos mixed with edited copies of some.

    python benchmarks/dedupe_quality.py ../shared/data/imagenet-sample --copies 200 --threshold 0.75

Makes a work folder with every photo of SRC plus `--edits-per-photo` edited copies of `--copies`
of them (seeded), runs `copyscan.dedupe` on it into a fresh index, and scores the groups:

* pair precision / recall: pairs of images put in one group, against pairs with one source;
* per-edit recall: for each kind of edit, how often the copy landed in its original's group;
* index throughput (images/s) of the run.

The edits here are a small fixed set for the core benchmark; the copy-edit library of the eval
issue supersedes them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

import copyscan


def _crop(im: Image.Image, keep: float, rng: random.Random) -> Image.Image:
    w, h = im.size
    cw, ch = int(w * keep), int(h * keep)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return im.crop((x, y, x + cw, y + ch))


def _text(im: Image.Image, rng: random.Random) -> Image.Image:
    im = im.copy()
    d = ImageDraw.Draw(im)
    w, h = im.size
    for _ in range(3):
        d.text((rng.randint(0, w // 2), rng.randint(0, h - 20)), "COPYSCAN " * 2, fill=(255, 255, 0))
    return im


def _screenshot(im: Image.Image, rng: random.Random) -> Image.Image:
    w, h = im.size
    canvas = Image.new("RGB", (int(w * 1.3), int(h * 1.5)), (240, 240, 240))
    d = ImageDraw.Draw(canvas)
    d.rectangle((0, 0, canvas.width, int(h * 0.15)), fill=(30, 30, 30))
    canvas.paste(im, ((canvas.width - w) // 2, int(h * 0.25)))
    return canvas


EDITS = {
    "resize_0.5": lambda im, rng: im.resize((max(1, im.width // 2), max(1, im.height // 2))),
    "crop_0.8": lambda im, rng: _crop(im, 0.8, rng),
    "crop_0.6": lambda im, rng: _crop(im, 0.6, rng),
    "jpeg_q20": lambda im, rng: im,  # saved at quality 20 below
    "blur_2": lambda im, rng: im.filter(ImageFilter.GaussianBlur(2)),
    "rotate_10": lambda im, rng: im.rotate(10, expand=True, fillcolor=(0, 0, 0)),
    "grayscale": lambda im, rng: ImageOps.grayscale(im).convert("RGB"),
    "brightness_1.5": lambda im, rng: ImageEnhance.Brightness(im).enhance(1.5),
    "text_overlay": _text,
    "border_pad": lambda im, rng: ImageOps.expand(im, border=max(8, im.width // 8), fill=(255, 255, 255)),
    "screenshot": _screenshot,
    "hflip": lambda im, rng: ImageOps.mirror(im),
}


def build(src: Path, work: Path, copies: int, per_photo: int, seed: int) -> dict[str, tuple[str, str]]:
    """Returns path -> (source id, edit name) for every image of the work folder."""
    rng = random.Random(seed)
    photos = sorted(p for p in src.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    truth: dict[str, tuple[str, str]] = {}
    (work / "originals").mkdir(parents=True)
    (work / "copies").mkdir()
    for p in photos:
        dst = work / "originals" / p.name
        os.symlink(p.resolve(), dst)
        truth[str(dst)] = (p.stem, "original")
    for p in rng.sample(photos, min(copies, len(photos))):
        im = Image.open(p).convert("RGB")
        for name in rng.sample(sorted(EDITS), per_photo):
            edited = EDITS[name](im, rng)
            dst = work / "copies" / f"{p.stem}__{name}.jpg"
            edited.save(dst, quality=20 if name == "jpeg_q20" else 85)
            truth[str(dst)] = (p.stem, name)
    return truth


def score(truth: dict[str, tuple[str, str]], groups) -> dict:
    group_of = {m.path: g.group_id for g in groups for m in g.members}
    predicted = set()
    for g in groups:
        for a, b in itertools.combinations(sorted(m.path for m in g.members), 2):
            predicted.add((a, b))
    by_source = defaultdict(list)
    for path, (sid, _) in truth.items():
        by_source[sid].append(path)
    actual = {tuple(sorted(pair)) for paths in by_source.values() for pair in itertools.combinations(paths, 2)}
    tp = len(predicted & actual)
    per_edit = defaultdict(lambda: [0, 0])
    originals = {sid: path for path, (sid, edit) in truth.items() if edit == "original"}
    for path, (sid, edit) in truth.items():
        if edit == "original":
            continue
        per_edit[edit][1] += 1
        g = group_of.get(path)
        per_edit[edit][0] += int(g is not None and g == group_of.get(originals[sid]))
    return {
        "predicted_pairs": len(predicted),
        "true_pairs": len(actual),
        "precision": tp / len(predicted) if predicted else 1.0,
        "recall": tp / len(actual) if actual else 1.0,
        "per_edit": {k: v[0] / v[1] for k, v in sorted(per_edit.items())},
        "per_edit_n": {k: v[1] for k, v in sorted(per_edit.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("--copies", type=int, default=200, help="photos that get edited copies")
    ap.add_argument("--edits-per-photo", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=copyscan.DEFAULT_THRESHOLD)
    ap.add_argument("--model", default=copyscan.DEFAULT_MODEL)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "photos"
        truth = build(args.src, work, args.copies, args.edits_per_photo, args.seed)
        t0 = time.perf_counter()
        result = copyscan.dedupe(work, output=Path(tmp) / "out", threshold=args.threshold, index_dir=Path(tmp) / "idx",
                                 model=args.model, extraction=copyscan.Extraction(workers=args.workers), report=False)
        wall = time.perf_counter() - t0
        s = score(truth, result.groups)
    n_copies = sum(s["per_edit_n"].values())
    print(f"model {args.model}, threshold {args.threshold}, {len(truth)} images ({len(truth) - n_copies} originals, {n_copies} edited copies)")
    print(f"index: {result.index.embedded} images in {result.index.seconds:.1f} s = {result.index.rate:.1f} images/s; dedupe total {wall:.1f} s")
    print(f"groups {len(result.groups)}; pairs predicted {s['predicted_pairs']}, true {s['true_pairs']}")
    print(f"pair precision {s['precision']:.3f}  pair recall {s['recall']:.3f}")
    print("recall per edit (copy grouped with its original):")
    for k, v in s["per_edit"].items():
        print(f"  {k:<16} {v:.2f}  (n={s['per_edit_n'][k]})")


if __name__ == "__main__":
    main()
