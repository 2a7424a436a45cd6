"""Stage 3 (embed): decode files in worker processes and embed them in batches: the local engine.

`workers` processes run `decode_file`, so decoding overlaps with the model; each item carries
either pixels or the reason it failed, and failures never stop the run. A torch model gets them
from a torch DataLoader (pinned memory for a GPU); a model that needs no torch (an ONNX model on
the CPU, which is how copyscan's own models run there) from a process pool of this module, so
that `index` and `query` never import torch (1.2-2 s of start-up on a 2-core CPU).
`embed_entries` is what indexing.py calls an engine: entries in, `EmbeddedBatch`es out.
"""

from __future__ import annotations

import copy
import os
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .decode import DEFAULT_MAX_PIXELS, decode_or_reason, or_reason
from .discover import FileEntry, Skipped
from .errors import WorkerLost
from .regions import Box, region_pixels
from .store import Row

if TYPE_CHECKING:
    from .models.descriptor import DescriptorModel


# How much lower decode workers run than the model when both share the CPU. onnxruntime splits
# each layer over every core and waits for the slowest share, so a decoder taking a core mid-layer
# stalls the whole model; at a lower priority the decoders fill the gaps between layers and
# batches instead (measured on 2 cores: end to end 128.7 -> 134.8 images/s, model alone 147.4).
CPU_DECODE_NICENESS = 10


def default_workers(gpu: bool = False) -> int:
    """Decode processes: one a core on a CPU (up to 8: the model needs the cores too); on a GPU,
    where decoding is the limit, every core but the one that feeds the GPU (up to 16)."""
    cores = os.cpu_count() or 2
    if gpu:
        return max(1, min(16, cores - 1))
    return max(1, min(8, cores))


def start_worker(parent_pid: int, niceness: int, _worker_id: int = 0) -> None:
    """A decode worker's start-up (the DataLoader's or the pool's): end with the parent (kill -9
    of `copyscan index` must not leave decoders running), then step aside for the model
    (`niceness`, 0 on a GPU).

    Ctrl-C reaches the whole process group; the main process handles it (saves the shard, says
    how to resume) and stops the workers itself. A worker interrupted in the middle of handing
    over a batch printed a BrokenPipeError traceback from multiprocessing's resource sharer
    thread, so workers ignore SIGINT, and a pipe the main process closed is not reported."""
    import signal
    import sys

    from .lifeline import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _quiet_broken_pipe(sys.excepthook)
    die_with_parent(parent_pid)
    if niceness:
        lower_priority(niceness)


def _quiet_broken_pipe(hook):
    def excepthook(kind, value, tb):
        if issubclass(kind, (BrokenPipeError, ConnectionResetError, EOFError)):
            return  # the main process stopped reading (interrupted or done): nothing to report
        hook(kind, value, tb)

    return excepthook


def lower_priority(niceness: int, _worker_id: int = 0) -> None:
    """DataLoader worker start-up: add `niceness` to this process's; never fails the run."""
    try:
        os.nice(niceness)
    except (OSError, AttributeError):  # not allowed, or not a Unix
        pass


class _Listed:
    """A dataset whose items come from one list (`_ITEMS` names it). A pool task carries only its
    batch's part of that list (`part`): handing the whole dataset to each worker would pickle a
    list of millions of paths to every one of them where processes start by spawn or forkserver
    (macOS, Windows; Linux from Python 3.14), and keep a copy in each."""

    _ITEMS = ""
    first = 0  # the number of this part's first item in the whole (items keep their numbers)

    def part(self, a: int, b: int):
        """Items a .. b - 1, numbered as in the whole."""
        part = copy.copy(self)
        setattr(part, self._ITEMS, getattr(self, self._ITEMS)[a - self.first:b - self.first])
        part.first = a
        return part

    def numbers(self) -> range:
        return range(self.first, self.first + len(self))


class _Files(_Listed):
    _ITEMS = "entries"

    def __init__(self, entries: Sequence[FileEntry], size: int, max_pixels: int, boxes: Sequence[Box] = (),
                 local_features: bool = False):
        self.entries = entries
        self.size = size
        self.max_pixels = max_pixels
        self.boxes = boxes  # region crops to embed too (copyscan.regions)
        self.local_features = local_features  # ORB features too (copyscan.local_store)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        entry = self.entries[i - self.first]
        d, reason = decode_or_reason(entry.path, self.size, self.max_pixels)
        if d is None:
            return i, None, reason
        meta = (d.width, d.height, d.content_hash, d.pixel_hash)
        if self.local_features:
            # None only on an unexpected error: the writer then drops the file's old features,
            # and verification computes them itself.
            local, _ = or_reason(_local_features, entry.path)
            meta = (*meta, local)
        if self.boxes:
            regions, reason = or_reason(region_pixels, entry.path, self.size, self.boxes, self.max_pixels)
            if regions is None:
                return i, None, reason
            return i, (d.pixels, regions), meta
        return i, d.pixels, meta


def _local_features(path: str) -> bytes:
    """The file's ORB features as stored; none (zero keypoints) when OpenCV's decode fails where
    the model's succeeded, so that the next `index --regions` does not embed it again for them."""
    from .local_features import Features, file_features

    features = file_features(path) or Features.empty()
    return features.to_bytes()


def _collate(items, tensors: bool = False):
    """Decoded items -> (indices, pixels (B, H, W, 3) uint8 or None, metas, failures); `tensors`
    gives the pixels as a torch tensor (a DataLoader pins those for a GPU)."""
    good = [(i, px, meta) for i, px, meta in items if px is not None]
    bad = [(i, reason) for i, px, reason in items if px is None]
    if good and isinstance(good[0][1], tuple):  # whole images and their region crops, in one batch
        pixels = np.concatenate([np.stack([px[0] for _, px, _ in good])] + [px[1] for _, px, _ in good])
    else:
        pixels = np.stack([px for _, px, _ in good]) if good else None
    if tensors and pixels is not None:
        import torch

        pixels = torch.from_numpy(pixels)
    return [i for i, _, _ in good], pixels, [m for _, _, m in good], bad


# ---- the two ways batches are decoded ahead of the model ------------------------------------------

PREFETCH = 4  # batches decoded ahead, per worker


def decoded_batches(dataset, batch_size: int, workers: int, niceness: int, collate, *, uses_torch: bool,
                    pin_memory: bool = False) -> Iterator:
    """collate(items of one batch) for consecutive batches of `dataset`, in order, decoded by
    `workers` processes ahead of the consumer (0: in this process) at `niceness` above this one's."""
    if uses_torch:
        from torch.utils.data import DataLoader

        yield from DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
            prefetch_factor=PREFETCH if workers else None, persistent_workers=False,
            worker_init_fn=partial(start_worker, os.getpid(), niceness) if workers else None,
        )
        return
    starts = range(0, len(dataset), batch_size)
    if not workers:
        for a in starts:
            yield collate([dataset[i] for i in range(a, min(a + batch_size, len(dataset)))])
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(workers, mp_context=POOL_CONTEXT, initializer=start_worker,
                               initargs=(os.getpid(), niceness))
    window: deque = deque()
    todo = iter(starts)

    def submit(a: int) -> None:
        window.append(pool.submit(_decode_part, dataset.part(a, min(a + batch_size, len(dataset)))))

    try:
        for a in todo:
            submit(a)
            if len(window) >= PREFETCH * workers:
                break
        while window:
            try:
                items = window.popleft().result()
            except BrokenProcessPool:
                raise WorkerLost("a decode worker process stopped unexpectedly (killed, or out of memory); "
                                 "run the same command again to resume") from None
            a = next(todo, None)
            if a is not None:
                submit(a)
            yield collate(items)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# The start method of the decode pool's processes (None: the platform's default); tests set spawn.
POOL_CONTEXT = None


def _decode_part(part: _Listed) -> list:
    return [part[i] for i in part.numbers()]


@dataclass
class EmbeddedBatch:
    rows: list[Row]
    descriptors: np.ndarray  # (len(rows), dim) float32
    skipped: list[Skipped]
    # With `boxes`: (len(rows) * len(boxes), dim), row-major (each row's boxes in order).
    region_descriptors: np.ndarray | None = None
    # With `local_features`: each row's stored ORB features (local_features.Features.to_bytes) or None.
    local_features: list[bytes | None] | None = None
    stored: int = 0  # rows an engine's own workers already wrote as shards (not in `rows`)


def embed_entries(
    entries: Sequence[FileEntry],
    model: DescriptorModel,
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress=None,
    boxes: Sequence[Box] = (),
    local_features: bool = False,
) -> Iterator[EmbeddedBatch]:
    """Yield embedded batches in order of completion; `progress(n_done_in_batch)` is called per batch.

    `boxes` (copyscan.regions) also embeds those crops of every image, in the same batches;
    `local_features` computes each image's ORB features in the decode workers (local_store.py).
    """
    if not entries:
        return
    gpu = model.device.type == "cuda"
    workers = default_workers(gpu=gpu) if workers is None else workers
    uses_torch = getattr(model, "uses_torch", True)
    loader = decoded_batches(
        _Files(entries, model.input_size, max_pixels, tuple(boxes), local_features), batch_size, workers,
        # On a GPU the decoders are the pipeline's limit and keep their full priority.
        CPU_DECODE_NICENESS if model.device.type == "cpu" else 0,
        partial(_collate, tensors=uses_torch), uses_torch=uses_torch, pin_memory=gpu,
    )
    for indices, pixels, metas, bad in loader:
        rows = []
        for i, (w, h, ch, ph, *_) in zip(indices, metas):
            e = entries[i]
            rows.append(Row(e.path, e.bytes, e.mtime_ns, ch, ph, w, h))
        local = [m[4] for m in metas] if local_features else None
        descriptors = model.embed(pixels) if pixels is not None else np.zeros((0, model.dim), np.float32)
        skipped = [Skipped(entries[i].path, reason, entries[i].bytes, entries[i].mtime_ns) for i, reason in bad]
        if progress is not None:
            progress(len(indices) + len(bad))
        if boxes:
            yield EmbeddedBatch(rows, descriptors[: len(rows)], skipped, descriptors[len(rows):], local)
        else:
            yield EmbeddedBatch(rows, descriptors, skipped, local_features=local)


# ---- region crops (copyscan.regions) ------------------------------------------------------------


@dataclass
class RegionBatch:
    """Region descriptors of some images: rows `owner[i]` of the request, box `boxes[i]`."""

    owner: np.ndarray  # (n,) int64: which requested item each descriptor belongs to
    boxes: list[Box]
    descriptors: np.ndarray  # (n, dim) float32
    failed: list[tuple[int, str]]  # (item, reason): files that could not be decoded now


class _Requests(_Listed):
    """(path, boxes) requests: each file decoded once, at the resolution its smallest box needs."""

    _ITEMS = "requests"

    def __init__(self, requests: Sequence[tuple[str, Sequence[Box]]], size: int, max_pixels: int):
        self.requests = requests
        self.size = size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, i: int):
        path, boxes = self.requests[i - self.first]
        pixels, reason = or_reason(region_pixels, path, self.size, boxes, self.max_pixels)
        return i, pixels, reason or None


def _collate_requests(items):
    return items  # each item keeps its own stack of crops


def _threaded(dataset: _Requests, per_batch: int, threads: int):
    """The dataset's items in lists of `per_batch`, prepared on `threads` threads ahead of the
    consumer (Pillow releases the GIL while it decodes and resizes). Meant for the few hundred
    requests of one chunk: every item is submitted at once."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="copyscan-crops") as pool:
        batch = []
        for item in pool.map(dataset.__getitem__, range(len(dataset))):
            batch.append(item)
            if len(batch) == per_batch:
                yield batch
                batch = []
        if batch:
            yield batch


def embed_regions(
    requests: Sequence[tuple[str, Sequence[Box]]],
    model,
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 0,
) -> Iterator[RegionBatch]:
    """Embed the boxes of each (path, boxes) request; yields batches of about `batch_size` crops.

    Files are decoded again (once each, at the resolution the smallest box needs) in worker
    processes, as in copyscan.embed, or with `workers` 0 and `threads` on that many threads of
    this process (no process start-up: for the few crops of one chunk of queries).
    """
    if not requests:
        return
    workers = default_workers(gpu=model.device.type == "cuda") if workers is None else workers
    per_file = max(1, max(len(b) for _, b in requests))
    dataset = _Requests(requests, model.input_size, max_pixels)
    per_batch = max(1, batch_size // per_file)
    if workers == 0 and threads > 0:
        loader = _threaded(dataset, per_batch, threads)
    else:
        loader = decoded_batches(dataset, per_batch, workers, CPU_DECODE_NICENESS if model.device.type == "cpu" else 0,
                                 _collate_requests, uses_torch=getattr(model, "uses_torch", True))
    for items in loader:
        owner: list[int] = []
        boxes: list[Box] = []
        stacks = []
        failed = []
        for i, pixels, reason in items:
            if pixels is None:
                failed.append((i, reason))
                continue
            owner.extend([i] * len(pixels))
            boxes.extend(requests[i][1])
            stacks.append(pixels)
        if stacks:
            descriptors = model.embed(np.concatenate(stacks))
        else:
            descriptors = np.zeros((0, model.dim), np.float32)
        yield RegionBatch(np.asarray(owner, dtype=np.int64), boxes, descriptors, failed)
