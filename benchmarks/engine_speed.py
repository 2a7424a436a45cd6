"""Images per second of `copyscan index` with the local engine and with `--engine ray`, side by
side on this machine (Ray's overhead as a ratio).

    python benchmarks/engine_speed.py /work/shared/data/imagenette-val --rounds 2

Each round indexes the same folder into a fresh index with each engine in turn (local, then
ray), so both see the same load. A local Ray cluster with as many CPUs as the machine is started
once before the rounds (its start-up is reported apart: a real cluster is started once for many
runs). Rate = images embedded / wall time of `copyscan.index_folder` (discovery, model load,
pipeline start, shards, FAISS and manifest included). Medians over the rounds; the ratio is
ray / local of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default=None, help="default: copyscan's default model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import ray

    from copyscan import api
    from copyscan.extraction import Extraction
    from copyscan.models import DEFAULT_MODEL

    model = args.model or DEFAULT_MODEL
    cpus = os.cpu_count() or 2
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - t0
    scratch = Path(tempfile.mkdtemp(prefix="copyscan-engine-speed-"))
    # Warm-up: the ONNX export of the model is cached once, outside the timed runs.
    warm = scratch / "warm"
    warm.mkdir()
    for p in sorted(args.folder.rglob("*"))[:4]:
        if p.is_file():
            shutil.copy(p, warm / p.name)
    api.index_folder(warm, index_dir=scratch / "warm-idx", model=model, extraction=Extraction(batch_size=args.batch_size))
    rates: dict[str, list[float]] = {"local": [], "ray": []}
    runs = []
    for r in range(args.rounds):
        for engine in ("local", "ray"):
            idx = scratch / f"{engine}-{r}"
            t0 = time.perf_counter()
            s = api.index_folder(args.folder, index_dir=idx, model=model, extraction=Extraction(batch_size=args.batch_size),
                                 engine=engine)
            wall = time.perf_counter() - t0
            rates[engine].append(s.embedded / wall)
            runs.append({"round": r, "engine": engine, "embedded": s.embedded, "wall_s": wall, "images_per_s": s.embedded / wall})
            print(f"  round {r} {engine}: {s.embedded} images in {wall:.1f} s = {s.embedded / wall:.1f} images/s", flush=True)
            shutil.rmtree(idx)
    ray.shutdown()
    local, ray_rate = statistics.median(rates["local"]), statistics.median(rates["ray"])
    load = os.getloadavg()
    result = {"cpus": cpus, "machine": platform.processor() or platform.machine(), "ray_init_s": ray_start, "runs": runs,
              "local_median": local, "ray_median": ray_rate, "ray_over_local": ray_rate / local, "loadavg": load}
    print(f"| engine | images/s (median of {args.rounds}) | ratio |\n|---|---|---|\n| local | {local:.1f} | 1.00 |\n"
          f"| ray | {ray_rate:.1f} | {ray_rate / local:.2f} |")
    print(f"Ray start-up (once): {ray_start:.1f} s; load average at the end {load[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
