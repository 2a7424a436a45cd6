"""Extraction images/s on a GPU, beside the same machine's CPU path, in one run.

    python benchmarks/gpu_extraction.py PHOTOS [--model copyscan_lite0_128] [--repeats 3] \\
        [--batch-sizes 64,128,256] [--index] [--json out.json]

Three measurements, each repeated (GPU and CPU runs alternate within a repeat, so drift in the
machine's load spreads over both; medians are reported):

* `model`: the model alone on pixels decoded beforehand, per batch size (the GPU's ceiling);
* `pipeline`: discover -> decode (copyscan's decode workers) -> embed, in this process, the
  model loaded beforehand: the extraction rate `index` gets once it runs;
* `index` (with --index): `copyscan index PHOTOS --device D` as a user runs it, a fresh process
  and a fresh index folder each time, start-up, Parquet shards and FAISS included; and the same
  on 32 of the photos (`index_32`), whose time is nearly all fixed cost, beside a fresh process
  that only imports torch and starts CUDA (`cuda_start`): what a short folder pays on a GPU.

The CPU runs use the model as a CPU user gets it (`--runtime auto`: the int8 twin on ONNX
Runtime for a shipped model), with the CPU's default batch and workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from copyscan.discover import discover  # noqa: E402
from copyscan.embed import default_workers, embed_entries  # noqa: E402
from copyscan.models import DEFAULT_MODEL, create_model  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from startup import link_photos  # noqa: E402  (the first photos, linked into a scratch folder)


def _sync(model) -> None:
    if model.device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def model_rate(model, pixels: np.ndarray, batch: int) -> float:
    model.embed(pixels[:batch])  # warm-up: kernels chosen, memory allocated
    _sync(model)
    t = time.perf_counter()
    for i in range(0, len(pixels), batch):
        model.embed(pixels[i:i + batch])
    _sync(model)
    return len(pixels) / (time.perf_counter() - t)


def pipeline_rate(model, entries, batch: int, workers: int) -> tuple[int, float]:
    t = time.perf_counter()
    n = 0
    for out in embed_entries(entries, model, batch_size=batch, workers=workers):
        n += len(out.rows)
    return n, n / (time.perf_counter() - t)


def index_rate(folder: str, model: str, device: str, batch: int | None) -> float:
    work = tempfile.mkdtemp(prefix="gpu_extraction_")
    try:
        cmd = [sys.executable, "-m", "copyscan", "index", folder, "--index-dir", os.path.join(work, "index"),
               "--model", model, "--device", device]
        if batch:
            cmd += ["--batch-size", str(batch)]
        t = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        subprocess.run(cmd, check=True, cwd=work, stdout=subprocess.DEVNULL, env=env)
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", default="64,128,256", help="GPU batch sizes (comma-separated)")
    ap.add_argument("--cpu-batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="GPU decode workers (0: copyscan's default)")
    ap.add_argument("--model-images", type=int, default=1024, help="pixels decoded beforehand for the model stage")
    ap.add_argument("--index", action="store_true", help="also time `copyscan index` whole processes (needs faiss)")
    ap.add_argument("--gpu-device", default="cuda", help="the accelerated side (cpu: a dry run of this script)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    args.photos = os.path.abspath(args.photos)
    entries, _ = discover(args.photos)
    entries = sorted(entries, key=lambda e: e.path)
    gpu = create_model(args.model, args.gpu_device, runtime="torch")
    cpu = create_model(args.model, "cpu")
    gpu_workers = args.workers or default_workers(gpu=True)
    cpu_workers = default_workers(gpu=False)
    from copyscan.decode import decode_file

    sample = entries[: args.model_images]
    pixels = np.stack([decode_file(e.path, gpu.input_size).pixels for e in sample])
    import torch

    info = {"photos": len(entries), "model": args.model,
            "gpu": torch.cuda.get_device_name(0) if gpu.device.type == "cuda" else "none (dry run)",
            "cpu_cores": os.cpu_count(), "gpu_workers": gpu_workers, "cpu_workers": cpu_workers,
            "cpu_runtime": cpu.info.runtime, "torch": torch.__version__}
    print(json.dumps(info), flush=True)
    runs = []
    few_root = tempfile.mkdtemp(prefix="gpu_extraction_32_")
    few = os.path.join(few_root, "photos")
    link_photos(Path(args.photos), 32, Path(few))

    def record(**r):
        runs.append(r)
        print(json.dumps(r), flush=True)

    for rep in range(args.repeats):
        for b in batches:
            record(stage="model", device=args.gpu_device, batch=b, repeat=rep, images=len(pixels),
                   images_per_s=round(model_rate(gpu, pixels, b), 1))
        record(stage="model", device="cpu", batch=args.cpu_batch, repeat=rep, images=len(pixels),
               images_per_s=round(model_rate(cpu, pixels, args.cpu_batch), 1))
        for b in batches:
            n, rate = pipeline_rate(gpu, entries, b, gpu_workers)
            record(stage="pipeline", device=args.gpu_device, batch=b, repeat=rep, images=n, images_per_s=round(rate, 1))
        n, rate = pipeline_rate(cpu, entries, args.cpu_batch, cpu_workers)
        record(stage="pipeline", device="cpu", batch=args.cpu_batch, repeat=rep, images=n, images_per_s=round(rate, 1))
        if args.index:
            for device, b in ((args.gpu_device, max(batches)), ("cpu", None)):
                seconds = index_rate(args.photos, args.model, device, b)
                record(stage="index", device=device, batch=b or args.cpu_batch, repeat=rep, images=len(entries),
                       images_per_s=round(len(entries) / seconds, 1), seconds=round(seconds, 2))
                seconds = index_rate(few, args.model, device, b)
                record(stage="index_32", device=device, batch=b or args.cpu_batch, repeat=rep, images=32,
                       images_per_s=round(32 / seconds, 1), seconds=round(seconds, 2))
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch; torch.zeros(1, device='cuda' if torch.cuda.is_available() "
                            "else 'cpu').sum().item()"], check=True)
            record(stage="cuda_start", device=args.gpu_device, batch=0, repeat=rep, images=0, images_per_s=0.0,
                   seconds=round(time.perf_counter() - t, 2))
    shutil.rmtree(few_root, ignore_errors=True)
    medians = {}
    for r in runs:
        medians.setdefault((r["stage"], r["device"], r["batch"]), []).append(r)
    summary = [{"stage": s, "device": d, "batch": b,
                "median_images_per_s": round(statistics.median(r["images_per_s"] for r in v), 1),
                "median_seconds": round(statistics.median(r.get("seconds", 0.0) for r in v), 2)}
               for (s, d, b), v in medians.items()]
    print("\nstage       device  batch  median images/s  median s (index, start)")
    for row in summary:
        print(f"{row['stage']:<11} {row['device']:<7} {row['batch']:>5}  {row['median_images_per_s']:>15.1f}  "
              f"{row['median_seconds']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "runs": runs, "medians": summary}, indent=1))


if __name__ == "__main__":
    main()
