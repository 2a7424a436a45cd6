"""Re-encode a folder of training photos as WebP, same names and sub-folders, to carry them to a
lent GPU machine (the device tool carries 64 MiB in all: imagenette-train's 5,000 JPEGs are 52 MB,
at WebP quality 52 they are 28 MB, PSNR about 31 dB; sizes are kept).

    python training/pack_photos.py ../shared/data/imagenette-train .gpu/train --quality 52

The sorted order of the files (train_hard.py's hold-out split) is unchanged: only the extension
differs. See training/gpu_train.sh for the rest of what travels.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan.train.data import list_images  # noqa: E402


def _one(job: tuple[str, str, int]) -> int:
    src, dst, quality = job
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").save(dst + ".tmp", "WEBP", quality=quality, method=6)
    os.replace(dst + ".tmp", dst)
    return os.path.getsize(dst)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("dest")
    ap.add_argument("--quality", type=int, default=52)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    # The photos train_hard.py trains on: the same discovery, so the same files in the same order.
    jobs = [(os.path.join(args.source, rel), os.path.join(args.dest, os.path.splitext(rel)[0] + ".webp"), args.quality)
            for rel in list_images(args.source)]
    with ProcessPoolExecutor(args.workers) as pool:
        total = sum(pool.map(_one, jobs, chunksize=64))
    print(f"{len(jobs)} photos, {total / 1e6:.1f} MB in {args.dest}")


if __name__ == "__main__":
    main()
