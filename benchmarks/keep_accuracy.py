"""Keep accuracy on issue 13's folder: is the original kept in every group of copies?

Builds the folder from real photos: 300 unrelated photos plus 15 originals with 8 copies each
(benchmarks/keep_family.py: resize 50 %, JPEG q30, crop 80 %, grayscale, mirror, a 720x1280
phone screenshot, a text overlay, a PNG re-save). Every file gets a neutral random name, so that
no path tells which is the original. Two timings of the files:

* copies-newer: each copy written an hour after the one before, after its original (as happens);
* same-mtime:   every file with one mtime (a `cp -r` without -p): only the pictures tell.

Then runs `copyscan dedupe` (default model and threshold) with each copyscan checkout given
(e.g. main and this branch) and reports, per checkout and timing: families whose original is
kept (the keep accuracy), groups that keep a copy, copies found with their original.

    python benchmarks/keep_accuracy.py ../shared/data/imagenet-sample /tmp/keepbench \\
        --code /work/main --code .

Not a CI test (it embeds ~800 real photos); tests/test_keep.py is the synthetic small version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from keep_family import COPY_KINDS, make_copies  # noqa: E402

EXTS = {".jpg", ".jpeg", ".png"}


def build(src: Path, out: Path, unrelated: int, originals: int, seed: int, timing: str) -> dict:
    rng = random.Random(seed)
    photos = sorted(p for p in src.rglob("*") if p.suffix.lower() in EXTS)
    if len(photos) < unrelated + originals:
        sys.exit(f"{src} has {len(photos)} photos; need {unrelated + originals}")
    rng.shuffle(photos)
    folder = out / "photos"
    shutil.rmtree(out, ignore_errors=True)
    folder.mkdir(parents=True)
    names: set[str] = set()

    def name(ext: str) -> Path:
        while True:
            n = f"img_{rng.getrandbits(40):010x}{ext}"
            if n not in names:
                names.add(n)
                return folder / n

    truth = {"families": [], "timing": timing}
    base = 1.6e9
    for k, p in enumerate(photos[:originals]):
        orig = name(".jpg")
        shutil.copyfile(p, orig)
        tmp = out / "tmp"
        tmp.mkdir(exist_ok=True)
        made = make_copies(orig, tmp, "c", random.Random(seed * 1000 + k))
        copies = {}
        for j, kind in enumerate(COPY_KINDS):
            dst = name(made[kind].suffix)
            shutil.move(made[kind], dst)
            t = base + k * 1e6 + ((j + 1) * 3600 if timing == "copies-newer" else 0)
            os.utime(dst, (t, t))
            copies[kind] = str(dst)
        os.utime(orig, (base + k * 1e6, base + k * 1e6))
        truth["families"].append({"original": str(orig), "copies": copies})
    for p in photos[originals:originals + unrelated]:
        dst = name(".jpg")
        shutil.copyfile(p, dst)
        os.utime(dst, (base, base))
    shutil.rmtree(out / "tmp", ignore_errors=True)
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def run_dedupe(code: Path, folder: Path, out: Path, index: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(code.resolve())}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "copyscan", "dedupe", str(folder), "-o", str(out), "--index-dir", str(index), "-q"],
                   check=True, env=env, cwd=str(out.parent), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def score(out: Path, truth: dict) -> dict:
    doc = json.loads((out / "groups.json").read_text())
    role, group_of, keep_of = {}, {}, {}
    for g in doc["groups"]:
        for m in g["members"]:
            role[m["path"]] = m["role"]
            group_of[m["path"]] = g["group_id"]
            for a in m.get("aliases", []):
                role[a["path"]] = m["role"]
        keep_of[g["group_id"]] = g["keep"]
    family_of = {}
    for n, fam in enumerate(truth["families"]):
        for p in [fam["original"], *fam["copies"].values()]:
            family_of[p] = n
    kept_original = sum(role.get(f["original"]) == "keep" for f in truth["families"])
    copy_kept = [keep_of[g] for g in keep_of if keep_of[g] in family_of and not any(keep_of[g] == f["original"] for f in truth["families"])]
    kinds_kept: dict[str, int] = {}
    for p in copy_kept:
        kind = next(k for f in truth["families"] for k, v in f["copies"].items() if v == p)
        kinds_kept[kind] = kinds_kept.get(kind, 0) + 1
    found = sum(group_of.get(c) is not None and group_of.get(c) == group_of.get(f["original"])
                for f in truth["families"] for c in f["copies"].values())
    wrong = sum(1 for g in doc["groups"] if len({family_of.get(m["path"], -1 - i) for i, m in enumerate(g["members"])}) > 1)
    return {"families": len(truth["families"]), "original_kept": kept_original, "groups_keeping_a_copy": len(copy_kept),
            "copy_kinds_kept": kinds_kept, "copies_with_their_original": found,
            "copies": sum(len(f["copies"]) for f in truth["families"]), "groups": len(doc["groups"]), "mixed_groups": wrong}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="folder of real photos (e.g. ../shared/data/imagenet-sample)")
    ap.add_argument("out", type=Path, help="work folder (replaced)")
    ap.add_argument("--code", type=Path, action="append", required=True, help="a copyscan checkout to run; repeatable")
    ap.add_argument("--unrelated", type=int, default=300)
    ap.add_argument("--originals", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing", action="append", choices=["copies-newer", "same-mtime"])
    args = ap.parse_args()
    results = []
    for timing in args.timing or ["copies-newer", "same-mtime"]:
        work = args.out / timing
        truth = build(args.src, work, args.unrelated, args.originals, args.seed, timing)
        for code in args.code:
            tag = code.resolve().name
            seconds = run_dedupe(code, work / "photos", work / f"dedupe-{tag}", work / "index")
            r = {"code": str(code), "timing": timing, "seconds": round(seconds, 1), **score(work / f"dedupe-{tag}", truth)}
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{'code':<24} {'timing':<13} {'original kept':>14} {'groups keeping a copy':>22}  copy kinds kept")
    for r in results:
        print(f"{r['code']:<24} {r['timing']:<13} {r['original_kept']:>7}/{r['families']:<6} {r['groups_keeping_a_copy']:>22}  {r['copy_kinds_kept']}")


if __name__ == "__main__":
    main()
