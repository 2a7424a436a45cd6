"""`copyscan bench speed`: images per second of each stage alone and of `index` end to end.

Each measurement runs in a fresh Python process, so that one stage's caches, threads and peak
memory do not leak into the next, and so that peak RSS belongs to that stage alone. When several
models are compared, their measurements alternate (A, B, A, B ...) and medians are reported: the
machines this runs on are shared and noisy, and alternation spreads the noise over both.

Stages:
  discover  walk the folder (files/s)
  decode    read + decode + EXIF + resize to the model's input size, in the DataLoader workers,
            no model: the practical limit for the end-to-end figure
  model     the model alone on pixels decoded beforehand (images/s of inference)
  store     write the descriptors as Parquet shards and build + search the FAISS index
  index     `copyscan index` end to end on a fresh index folder; also its steady rate, from the
            first batch out of the model to the last, which leaves out the fixed costs of a run
            (imports, discovery, starting the decoders, building FAISS) that a folder of
            millions spreads over far more images than a benchmark can
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

STAGES = ("discover", "decode", "model", "store", "index")
MODEL_STAGE_IMAGES = 256  # inference speed settles well before this; more only costs time


@dataclass
class StageRun:
    stage: str
    model: str
    images: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    workers_peak_rss_mb: float
    runtime: str = ""
    steady_rate: float = 0.0  # index only: images/s between the first and the last model batch
    startup_s: float = 0.0  # index only: seconds until the first batch left the model

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SpeedReport:
    folder: str
    images: int
    cores: int
    options: dict[str, Any]
    runs: list[StageRun] = field(default_factory=list)
    profile_path: str | None = None

    def median(self, stage: str, model: str) -> StageRun | None:
        """The run whose rate is the median of this stage's repeats for this model."""
        runs = sorted((r for r in self.runs if r.stage == stage and r.model == model), key=lambda r: r.rate)
        if not runs:
            return None
        rate = statistics.median(r.rate for r in runs)
        return min(runs, key=lambda r: abs(r.rate - rate))

    def steady(self, model: str) -> float:
        """Median steady rate of this model's `index` runs (0 when none measured one)."""
        rates = [r.steady_rate for r in self.runs if r.stage == "index" and r.model == model]
        return statistics.median(rates) if rates else 0.0

    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.runs:
            if r.stage != "discover":
                seen.setdefault(r.model, None)
        return list(seen)

    def to_json(self) -> dict[str, Any]:
        summary = []
        for model in self.models():
            row: dict[str, Any] = {"model": model}
            for stage in STAGES[1:]:
                m = self.median(stage, model)
                if m:
                    row[stage] = {"images_per_s": round(m.rate, 2), "cpu_percent": round(m.cpu_percent),
                                  "peak_rss_mb": round(m.peak_rss_mb), "runtime": m.runtime}
                    if stage == "index":
                        row[stage].update(steady_images_per_s=round(self.steady(model), 2), startup_s=round(m.startup_s, 2))
            row.update(ratios(self, model))
            summary.append(row)
        disc = self.median("discover", "")
        return {
            "folder": self.folder, "images": self.images, "cores": self.cores, "options": self.options,
            "discover_files_per_s": round(disc.rate, 1) if disc else None, "models": summary,
            "runs": [{**asdict(r), "images_per_s": round(r.rate, 3)} for r in self.runs],
        }


def ratios(report: SpeedReport, model: str) -> dict[str, float]:
    """End to end (whole run, and steady) over model-only and over decode-only, from the medians."""
    out: dict[str, float] = {}
    e2e, inf, dec = (report.median(s, model) for s in ("index", "model", "decode"))
    if e2e and inf and inf.rate:
        out["index_over_model"] = round(e2e.rate / inf.rate, 3)
        steady = report.steady(model)
        if steady:
            out["steady_over_model"] = round(steady / inf.rate, 3)
    if e2e and dec and dec.rate:
        out["index_over_decode"] = round(e2e.rate / dec.rate, 3)
    return out


def bench_speed(folder: str | os.PathLike, models: list[str], limit: int = 1000, batch_size: int = 32,
                workers: int | None = None, device: str = "cpu", repeats: int = 3, stages: tuple[str, ...] = STAGES,
                runtime: str | None = None, profile: str | os.PathLike | None = None, progress=None) -> SpeedReport:
    """Measure `stages` for each model on up to `limit` images of `folder`, alternating models."""
    from .discover import discover
    from .embed import default_workers

    entries, _ = discover(folder)
    if not entries:
        raise UserError(f"{folder}: no images found")
    entries = sorted(entries, key=lambda e: e.path)[:limit]
    files = [e.path for e in entries]
    if workers is None:
        from .models.base import resolve_device

        workers = default_workers(gpu=resolve_device(device).type == "cuda")
    report = SpeedReport(str(folder), len(files), os.cpu_count() or 1, {
        "limit": limit, "batch_size": batch_size, "workers": workers, "device": device, "repeats": repeats,
        "runtime": runtime or os.environ.get("COPYSCAN_RUNTIME", "auto"),
    })
    sizes = {m: _input_size(m) for m in models}
    with tempfile.TemporaryDirectory(prefix="copyscan-speed-") as tmp:
        listing = Path(tmp) / "files.json"
        listing.write_text(json.dumps(files))
        common = {"files": str(listing), "batch_size": batch_size, "workers": workers, "device": device,
                  "runtime": runtime, "tmp": tmp}
        if "discover" in stages:
            for _ in range(repeats):
                report.runs.append(_child({**common, "stage": "discover", "folder": os.fspath(folder), "model": ""}))
        for rep in range(repeats):
            for model in models:
                for stage in stages:
                    if stage == "discover":
                        continue
                    spec = {**common, "stage": stage, "model": model, "size": sizes[model]}
                    if profile and stage == "index" and rep == 0 and model == models[0]:
                        spec["profile"] = os.fspath(profile)
                        report.profile_path = os.fspath(profile)
                    run = _child(spec)
                    report.runs.append(run)
                    if progress:
                        progress(run)
    return report


def _input_size(model: str) -> int:
    from .models import create_model

    return create_model(model, device="cpu", runtime="torch").input_size


def _child(spec: dict[str, Any]) -> StageRun:
    """Run one measurement in a fresh interpreter; it prints one JSON line."""
    proc = subprocess.run([sys.executable, "-m", "copyscan.speed", json.dumps(spec)], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"speed measurement of {spec['stage']} ({spec.get('model')}) failed: {tail}")
    return StageRun(**json.loads(lines[-1]))


# ---- inside the measuring process ----------------------------------------------------------------

def _usage() -> tuple[float, float, float]:
    """CPU seconds (this process and its finished workers), peak RSS of this process and of its
    largest worker, in MB. The peak is read from /proc (VmHWM), which starts afresh at exec;
    getrusage's own peak would still hold the parent's size from before the exec."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = me.ru_maxrss / 1024
    try:
        with open("/proc/self/status") as fh:
            peak = next(int(ln.split()[1]) / 1024 for ln in fh if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, peak, kids.ru_maxrss / 1024


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    stage = spec["stage"]
    files = json.loads(Path(spec["files"]).read_text())
    prepare = {"model": _prepare_model, "store": _prepare_store, "index": _prepare_index,
               "decode": _prepare_decode, "discover": _prepare_discover}[stage]
    work, images, runtime, *extra = prepare(spec, files)
    cpu0, _, kids_rss0 = _usage()
    t0 = time.perf_counter()
    if spec.get("profile"):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(work)
        seconds = time.perf_counter() - t0
        with open(spec["profile"], "w") as fh:
            pstats.Stats(prof, stream=fh).sort_stats("cumulative").print_stats(40)
    else:
        work()
        seconds = time.perf_counter() - t0
    cpu1, rss, kids_rss = _usage()
    return {"stage": stage, "model": spec.get("model", ""), "images": images, "seconds": seconds,
            "cpu_seconds": cpu1 - cpu0, "peak_rss_mb": rss,
            # Workers forked here count the pages they share with this process too.
            "workers_peak_rss_mb": kids_rss if kids_rss > kids_rss0 else 0.0, "runtime": runtime,
            **(extra[0](t0) if extra else {})}


def _prepare_discover(spec, files):
    from .discover import discover

    return (lambda: discover(spec["folder"])), len(files), ""


def decoders_of(spec) -> tuple[bool, bool]:
    """(through torch's DataLoader, for a GPU): which decoders the measured model gets in `index`
    (embed.decoded_batches), told without loading it. A model on a GPU, or any model under
    runtime "torch", is fed by the DataLoader (pinned memory for the GPU); on a CPU copyscan's
    models run on ONNX Runtime, fed by copyscan's own pool (a TorchScript file, which stays on
    torch there, is the exception this does not see)."""
    from .models.runtime import on_cpu, requested_runtime

    gpu = not on_cpu(spec["device"])
    return gpu or requested_runtime(spec.get("runtime")) == "torch", gpu


def _prepare_decode(spec, files):
    from functools import partial

    from .discover import FileEntry
    from .embed import _collate, _Files, decoded_batches

    entries = [FileEntry(p, 0, 0) for p in files]
    uses_torch, gpu = decoders_of(spec)

    def work():
        # The decoders the model gets in `index` (copyscan.embed): the pool for an ONNX model on the
        # CPU, torch's DataLoader (pinned memory on a GPU) for a torch model.
        for _ in decoded_batches(_Files(entries, spec["size"], 250_000_000), spec["batch_size"], spec["workers"], 0,
                                 partial(_collate, tensors=uses_torch), uses_torch=uses_torch, pin_memory=gpu):
            pass

    return work, len(files), "torch DataLoader" if uses_torch else "decode pool"


def _prepare_model(spec, files):
    import numpy as np
    import torch

    from .decode import DecodeError, decode_file
    from .models import create_model

    model = create_model(spec["model"], device=spec["device"], runtime=spec.get("runtime"))
    pixels = []
    for p in files[:MODEL_STAGE_IMAGES]:
        try:
            pixels.append(decode_file(p, model.input_size).pixels)
        except DecodeError:
            pass
    batches = [torch.from_numpy(np.stack(pixels[i:i + spec["batch_size"]])) for i in range(0, len(pixels), spec["batch_size"])]
    model.embed(batches[0])  # warm-up: lazy initialisation, kernel selection

    def work():
        for b in batches:
            model.embed(b)

    return work, len(pixels), model.info.runtime


def _prepare_store(spec, files):
    import numpy as np

    from . import ann
    from .indexing import SHARD_ROWS
    from .models import create_model
    from .store import IndexStore, Row, rows_to_table

    info = create_model(spec["model"], device="cpu", runtime="torch").info
    dim = info.dim
    n = len(files)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [Row(p, 1000 + i, i, f"{i:032x}", f"{i:032x}", 640, 480) for i, p in enumerate(files)]
    store = IndexStore(Path(spec["tmp"]) / f"store-{os.getpid()}")

    def work():
        for start in range(0, n, SHARD_ROWS):
            store.write_shard(store.next_shard_number(), rows_to_table(rows[start:start + SHARD_ROWS], vectors[start:start + SHARD_ROWS]), info)
        table = store.read_table(["descriptor"])
        index = ann.build_index(vectors[: table.num_rows], ann.choose_index(n, dim))
        for start in range(0, n, ann.SEARCH_BATCH):
            ann.search(index, vectors[start:start + ann.SEARCH_BATCH], 6)

    return work, n, ""


def _prepare_index(spec, files):
    from .api import index_folder
    from .extraction import Extraction
    from .models import create_model

    # A folder of links to the chosen files, so that `limit` applies to a real `index` run.
    folder = Path(spec["tmp"]) / f"photos-{os.getpid()}"
    folder.mkdir()
    for i, p in enumerate(files):
        os.symlink(p, folder / f"{i:07d}{Path(p).suffix.lower()}")
    model = create_model(spec["model"], device=spec["device"], runtime=spec.get("runtime"))
    index_dir = Path(spec["tmp"]) / f"index-{os.getpid()}"
    result = {}
    # When each batch left the model, and its size: the steady rate is read from these.
    batches: list[tuple[float, int]] = []
    model_embed = model.embed

    def timed_embed(batch):
        out = model_embed(batch)
        batches.append((time.perf_counter(), len(out)))
        return out

    model.embed = timed_embed

    def work():
        result["summary"] = index_folder(folder, index_dir=index_dir, model=model, extraction=Extraction(
            batch_size=spec["batch_size"], workers=spec["workers"], device=spec["device"]))

    def steady(t0: float) -> dict[str, float]:
        if len(batches) < 2:
            return {}
        images = sum(n for _, n in batches[1:])
        return {"steady_rate": images / (batches[-1][0] - batches[0][0]), "startup_s": batches[0][0] - t0}

    return work, len(files), model.info.runtime, steady


def format_table(report: SpeedReport) -> list[list[str]]:
    """Rows for a plain table: model, stage, images/s, CPU %, peak RSS."""
    rows = []
    disc = report.median("discover", "")
    if disc:
        rows.append(["(all)", "discover", f"{disc.rate:,.0f} files/s", f"{disc.cpu_percent:.0f}%", f"{disc.peak_rss_mb:,.0f} MB"])
    for model in report.models():
        for stage in STAGES[1:]:
            m = report.median(stage, model)
            if m:
                rss = f"{m.peak_rss_mb:,.0f} MB" + (f" (+{m.workers_peak_rss_mb:,.0f} MB/worker)" if m.workers_peak_rss_mb > 1 else "")
                label = stage + (f" [{m.runtime}]" if m.runtime else "")
                rows.append([model, label, f"{m.rate:,.1f} img/s", f"{m.cpu_percent:.0f}%", rss])
                if stage == "index" and m.steady_rate:
                    rows.append([model, f"index, steady (start-up {m.startup_s:.1f} s)", f"{report.steady(model):,.1f} img/s", "", ""])
    return rows


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
