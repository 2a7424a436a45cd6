"""Query time of `query --regions` settings against plain `query`, side by side (issue 18).

Plain and each setting alternate for ROUNDS rounds after a warm-up, on one index of the
benchmark's references (built with `--regions` on first use; an index built without it times the
settings where each verified reference is decoded again); the median time of each is divided by plain's.
A setting is NAME=FIELD=VALUE[,FIELD=VALUE...] of `RegionSettings` (Python literals):

    python benchmarks/regions_timing.py .bench/dev --index /tmp/regions-idx \\
        "c512=chunk=512" "w35=verify_band=(0.35,0.60)" [--rounds 3] [--model NAME]

Times only: micro AP comes from benchmarks/regions.py or, for many settings, region_sweep.py.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan import api  # noqa: E402
from copyscan.discover import resolve_root  # noqa: E402
from copyscan.models import create_model  # noqa: E402
from copyscan.region_search import RegionSettings  # noqa: E402


def parse_setting(text: str) -> tuple[str, RegionSettings]:
    name, _, fields = text.partition("=")
    values = {}
    # Split on commas that start a new FIELD= (values such as tuples contain commas too).
    parts, current = [], ""
    for piece in fields.split(","):
        if "=" in piece and current:
            parts.append(current)
            current = piece
        else:
            current = f"{current},{piece}" if current else piece
    if current:
        parts.append(current)
    for part in parts:
        key, _, value = part.partition("=")
        values[key.strip()] = ast.literal_eval(value.strip())
    return name, dataclasses.replace(RegionSettings(), **values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path)
    ap.add_argument("settings", nargs="*", help="NAME=FIELD=VALUE[,FIELD=VALUE...]; the defaults always run")
    ap.add_argument("--index", type=Path, required=True, help="index of the references (built when missing)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/copyscan-regions-timing"))
    ap.add_argument("--model", default="copyscan_lite0_128")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_intermixed_args()
    model = create_model(args.model)
    if not args.index.exists():
        # As a user of --regions indexes: region rows and the references' local features stored.
        api.index_folder(resolve_root(args.bench / "references"), index_dir=args.index, model=model, regions=True)
    queries = resolve_root(args.bench / "queries")
    variants = {"default": RegionSettings(), **dict(parse_setting(t) for t in args.settings)}

    def run(settings: RegionSettings | None, out: str) -> float:
        t = time.perf_counter()
        api.query_folder(queries, index_dir=args.index, output=args.out / out, threshold=-1.0, top_k=10, model=model,
                         report=False, regions=settings is not None, region_settings=settings)
        return time.perf_counter() - t

    run(None, "warm")
    seconds: dict[str, list[float]] = {"plain": [], **{k: [] for k in variants}}
    for _ in range(args.rounds):
        seconds["plain"].append(run(None, "plain"))
        for name, settings in variants.items():
            seconds[name].append(run(settings, name))
    plain = statistics.median(seconds["plain"])
    print("| run | seconds per round | median x plain |\n|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(values) / plain:.3f} |")


if __name__ == "__main__":
    main()
