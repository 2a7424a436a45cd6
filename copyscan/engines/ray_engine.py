"""The index job's engine on Ray Data: `copyscan index DIR --engine ray [--ray-address ADDR]`.

The same stages as the local engine, as one Ray Data pipeline (the shape img2dataset and
clip-retrieval use):

    from_items(entries) -> map_batches(decode)           CPU tasks: read, hash, decode, resize
                        -> map_batches(Embedder)          an actor pool holding the model
                                                          (a GPU per actor where the cluster has them)
                        -> map_batches(write_shard)       each task writes its own Parquet shard
    driver: collects what each shard task reports (rows written, files skipped, its shard) and
            lists the shards in the manifest as they come; then the index job
            (copyscan.indexing) compacts, builds FAISS and commits the manifest last.

Shards are the store's usual Parquet files (store.rows_to_table: same schema and metadata, the
model's identity in it), written by the tasks with `listed=False`: a worker never touches the
manifest, and a shard is read only once the driver has listed it (IndexStore.list_shards; one a
killed driver never listed is adopted or dropped by the next writer, as any unlisted shard). Named `part-NNNNNN-TAG.parquet`: NNNNNN is this run's shard number, TAG a digest of the paths in
the shard. A task that Ray retries (its worker died) therefore rewrites the same file, atomically,
and never adds a second copy of its rows; a killed run loses only the shards in flight, and the
next run (local or Ray) embeds just what is missing, as `plan` compares files with the shards.

The index folder must be on storage that every node of the cluster sees (one machine, or a
shared file system), as for img2dataset's output folder. Ray is imported only here, so the CLI
and the local engine never load it (`pip install "copyscan[ray]"`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterator, Sequence

import numpy as np

from ..discover import FileEntry, Skipped
from ..errors import UserError

# Retries of a task whose worker process died, and restarts of a dead model actor. Ray's own
# defaults retry tasks 3 times but never restart an actor.
TASK_RETRIES = 3
ACTOR_RESTARTS = 3


class RayUnavailable(UserError):
    """--engine ray without Ray installed, or a cluster that cannot be reached."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailable(
            "--engine ray needs Ray Data: pip install \"copyscan[ray]\" (or pip install \"ray[data]\")"
        ) from None
    return ray


def connect(address: str | None = None) -> bool:
    """Join the cluster at `address` (or a running local one, or start one on this machine).
    Returns True when this call started Ray (the caller then shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise RayUnavailable(f"cannot start or reach {where}: {exc}; check --ray-address (ray status on the head node)") from None
    return True


# ---- the pipeline's functions (run in Ray workers) -------------------------------------------------


def decode_batch(batch: dict[str, np.ndarray], *, size: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Decode stage: one row per file in, the same rows out with pixels (zeros where it failed)
    and the reason it failed ('' where it did not)."""
    from ..decode import decode_or_reason

    n = len(batch["path"])
    pixels = np.zeros((n, size, size, 3), np.uint8)
    width = np.zeros(n, np.int32)
    height = np.zeros(n, np.int32)
    content, pixel_hash, reason = [""] * n, [""] * n, [""] * n
    for i, path in enumerate(batch["path"]):
        decoded, why = decode_or_reason(os.fsdecode(bytes(path)), size, max_pixels)
        if decoded is None:
            reason[i] = why
            continue
        pixels[i], width[i], height[i] = decoded.pixels, decoded.width, decoded.height
        content[i], pixel_hash[i] = decoded.content_hash, decoded.pixel_hash
    return {**batch, "pixels": pixels, "width": width, "height": height, "content_hash": np.asarray(content, object),
            "pixel_hash": np.asarray(pixel_hash, object), "reason": np.asarray(reason, object)}


class Embedder:
    """Embed stage: one model per actor, loaded once (copyscan.models.create_model)."""

    def __init__(self, model_ref: str, device: str):
        from ..models import create_model

        self.model = create_model(model_ref, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray([r == "" for r in batch["reason"]], dtype=bool)
        descriptors = np.zeros((len(ok), self.model.dim), np.float32)
        if ok.any():
            descriptors[ok] = self.model.embed(np.ascontiguousarray(batch["pixels"][ok]))
        out = {k: v for k, v in batch.items() if k != "pixels"}  # pixels go no further than the model
        out["descriptor"] = descriptors
        return out


def shard_tag(paths: Sequence[bytes]) -> str:
    """A name for the shard of these files, the same whichever task (or retry) writes it."""
    h = hashlib.blake2b(digest_size=8)
    for p in sorted(paths):
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.hexdigest()


def write_shard(batch: dict[str, np.ndarray], *, index_dir: str, number: int, info) -> dict[str, np.ndarray]:
    """Shard-writer stage: the embedded rows of this batch as one shard of the index, carrying the
    model's identity `info` in its metadata but not listed in the manifest (the driver lists it);
    returns what the driver needs: per file, whether it was stored or why not, and the shard."""
    from ..store import IndexStore, Row, rows_to_table

    ok = np.asarray([r == "" for r in batch["reason"]], dtype=bool)
    paths = [bytes(p) for p in batch["path"]]
    rows = [
        Row(os.fsdecode(paths[i]), int(batch["bytes"][i]), int(batch["mtime_ns"][i]), str(batch["content_hash"][i]),
            str(batch["pixel_hash"][i]), int(batch["width"][i]), int(batch["height"][i]))
        for i in np.nonzero(ok)[0]
    ]
    name = ""
    if rows:
        table = rows_to_table(rows, np.asarray(batch["descriptor"], np.float32)[ok])
        name = IndexStore(index_dir).write_shard(number, table, info, tag=shard_tag([paths[i] for i in np.nonzero(ok)[0]]),
                                                 listed=False).name
    return {"path": batch["path"], "bytes": batch["bytes"], "mtime_ns": batch["mtime_ns"], "reason": batch["reason"],
            "shard": np.asarray([name] * len(paths), dtype=object)}


# ---- the engine (runs in the driver) ---------------------------------------------------------------


def _quiet_progress(ray) -> None:
    """copyscan draws its own progress bar; Ray Data's (and its per-operator log lines) would
    interleave with it on the terminal."""
    import logging

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


class RayEngine:
    """An indexing.Engine: `RayEngine(index_dir, address=...)` passed to indexing.index_into.

    `embedder` is the actor class of the embed stage (Embedder; tests give a subclass that dies).
    `actors`: the size of the model pool (default: one per GPU of the cluster, else 1 per 4 CPUs).
    """

    def __init__(self, index_dir: str | os.PathLike, *, address: str | None = None, actors: int | None = None,
                 embedder: type = Embedder, shard_rows: int | None = None):
        self.index_dir = str(index_dir)
        self.address = address
        self.actors = actors
        self.embedder = embedder
        self.shard_rows = shard_rows

    def __call__(self, entries: Sequence[FileEntry], model, extraction, advance: Callable[[int], None]) -> Iterator:
        from ..embed import EmbeddedBatch
        from ..indexing import flush_rows
        from ..store import IndexStore

        ray = import_ray()
        started = connect(self.address)
        _quiet_progress(ray)
        try:
            store = IndexStore(self.index_dir)
            number = store.next_shard_number()  # the driver holds the lock
            info = model.identity()
            dataset = self.pipeline(ray, entries, _model_ref(model), model.device, info.input_size,
                                    extraction.batch_size, extraction.max_pixels, number, self.shard_rows or flush_rows(),
                                    info)
            for out in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                # The workers' shards are read once listed: the driver lists them as they come
                # (a run stopped halfway keeps what it listed; the next writer adopts the rest).
                store.list_shards(sorted({str(n) for n in out["shard"] if n}))
                reasons = out["reason"]
                bad = [i for i, r in enumerate(reasons) if r != ""]
                skipped = [Skipped(os.fsdecode(bytes(out["path"][i])), str(reasons[i]), int(out["bytes"][i]),
                                   int(out["mtime_ns"][i])) for i in bad]
                advance(len(reasons))
                yield EmbeddedBatch([], np.zeros((0, info.dim), np.float32), skipped, stored=len(reasons) - len(bad))
        finally:
            if started:
                ray.shutdown()

    def pipeline(self, ray, entries, model_ref: str, device: str, size: int, batch_size: int, max_pixels: int,
                 number: int, shard_rows: int, info):
        """The Ray Data pipeline of one run (lazy: it runs as the driver iterates it)."""
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = self.actors or (gpus if gpus else max(1, cpus // 4))
        items = [{"path": os.fsencode(e.path), "bytes": e.bytes, "mtime_ns": e.mtime_ns} for e in entries]
        # Blocks of about one shard each, so that every stage has work for every worker early on.
        blocks = max(1, min(len(items), -(-len(items) // max(1, min(shard_rows, 256)))))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        ds = ds.map_batches(decode_batch, fn_kwargs={"size": size, "max_pixels": max_pixels}, batch_size=batch_size,
                            batch_format="numpy", num_cpus=1, max_retries=TASK_RETRIES)
        ds = ds.map_batches(self.embedder, fn_constructor_kwargs={"model_ref": model_ref,
                                                                  "device": "cuda" if gpus else "cpu"},
                            batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                            num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
                            max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES)
        return ds.map_batches(write_shard, fn_kwargs={"index_dir": self.index_dir, "number": number, "info": info},
                              batch_size=shard_rows, batch_format="numpy", num_cpus=1,
                              max_retries=TASK_RETRIES)


def _model_ref(model) -> str:
    """What a worker passes to create_model: the run's model name or file (a loaded model object
    cannot travel to other machines, but its registered name or source file can)."""
    ref = model.ref
    if isinstance(ref, (str, os.PathLike)):
        return os.fspath(ref)
    from ..models import list_models

    info = ref.info
    if info.name in {s.name for s in list_models()}:
        return info.name
    if info.source and os.path.exists(info.source):
        return info.source
    raise UserError(f"--engine ray needs a model by name or file; {info.name} was given as a loaded object")


# ---- dedupe at scale: pair-search slices as Ray tasks ------------------------------------------------


def run_slices(search, *, address: str | None = None, advance: Callable[[int], None] | None = None) -> None:
    """Every slice of a pair_search.PairSearch still to do, as one Ray task each (retried if its
    worker dies; a slice rewrites its own file, so a retry never doubles a pair). The work folder
    must be on storage that every node sees."""
    from ..pair_search import run_slice

    ray = import_ray()
    started = connect(address)
    try:
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(run_slice)
        pending = {task.remote(job): job for job in search.jobs()}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                ray.get(ref)  # raises if the slice failed for good
                job = pending.pop(ref)
                if advance is not None:
                    advance(job.stop - job.start)
    finally:
        if started:
            ray.shutdown()
