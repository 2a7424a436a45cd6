"""Stage 6 at scale: every pair above a threshold, searched one query slice at a time against an
index on disk, each slice's pairs written to its own Parquet file.

    WORK/vectors.npy              the (N, d) float32 vectors searched (memory-mapped by each slice)
    WORK/index.faiss              the index over them (index_choice), memory-mapped by each slice
    WORK/pairs/pairs-NNNNNN.parquet   first < second (row numbers), score: one file per slice

A slice is the unit of work and of retry: it reads its own rows of the vectors, searches them
(ann.search_above_flat: every neighbour above the threshold, k growing as needed), re-scores the
candidates exactly from the vectors when the index's scores are approximate (threshold lowered by
the index's margin for the search, then the true cosine decides), and writes its file under a
temporary name, renamed when complete. Slices run in a loop here, or as Ray tasks
(copyscan.engines.ray_engine.run_slices); a file already present is a slice already done, so a
killed run resumes. Memory per slice: the index (mapped: pages are shared and can be dropped),
the slice's vectors and its pairs; the vectors file is mapped afresh for each slice so that rows
touched by the re-scoring do not pile up in the process.

A pair found from both ends appears in two files; readers keep the best (Pairs.best_per_pair or,
streaming, copyscan.group_stream).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .group import Pairs

SLICE_ROWS = 65_536  # queries per slice: ~1-3 min of search on one core at 1M vectors
RESCORE_CHUNK = 65_536  # pairs re-scored at a time: two (chunk, d) float32 blocks
PAIR_SCHEMA = pa.schema([pa.field("first", pa.int64()), pa.field("second", pa.int64()), pa.field("score", pa.float32())])


@dataclass(frozen=True)
class SliceJob:
    """Everything a worker needs to run one slice, as plain data (it travels to Ray tasks)."""

    vectors_path: str
    index_path: str
    start: int
    stop: int
    threshold: float
    margin: float
    nprobe: int
    out_path: str
    queries_path: str = ""  # the rows' query form, where it differs from the indexed vectors
    mmap: bool = True  # map the index file; not for the on-disk kind, whose lists are mapped already


def rescore(vectors: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The exact inner product of each pair of rows, computed in chunks (float32)."""
    return rescore_between(vectors, first, vectors, second)


def rescore_between(queries: np.ndarray, rows: np.ndarray, references: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The exact inner product of queries[rows[k]] and references[ids[k]], in chunks (float32)."""
    out = np.empty(len(rows), np.float32)
    for a in range(0, len(rows), RESCORE_CHUNK):
        b = a + RESCORE_CHUNK
        out[a:b] = np.einsum("ij,ij->i", np.asarray(queries[rows[a:b]], np.float32),
                             np.asarray(references[ids[a:b]], np.float32))
    return out


def search_rows(index, vectors: np.ndarray, rows: np.ndarray, threshold: float, margin: float,
                queries: np.ndarray | None = None) -> Pairs:
    """Pairs (first < second) with an end among `rows` (sorted row numbers) scoring at least
    `threshold`. `vectors` are the indexed (reference) vectors; `queries` the same rows in the
    form a collection searches itself with (score.pair_vectors), when that differs."""
    from . import ann

    queries = vectors if queries is None else queries
    firsts, seconds, scores = [], [], []
    for a in range(0, len(rows), ann.SEARCH_BATCH):
        batch = rows[a:a + ann.SEARCH_BATCH]
        contiguous = len(batch) and batch[-1] - batch[0] == len(batch) - 1
        block = np.ascontiguousarray(queries[batch[0]:batch[-1] + 1] if contiguous else queries[batch], dtype=np.float32)
        hit, ids, found = ann.search_above_flat(index, block, threshold - margin)
        if margin > 0:  # approximate scores: the exact score decides
            found = rescore_between(block, hit, vectors, ids)
            keep = found >= threshold
            hit, ids, found = hit[keep], ids[keep], found[keep]
        hit = batch[hit]
        other = hit != ids  # an image is its own best neighbour
        hit, ids, found = hit[other], ids[other], found[other]
        firsts.append(np.minimum(hit, ids))
        seconds.append(np.maximum(hit, ids))
        scores.append(found.astype(np.float32))
    if not firsts:
        return Pairs.empty()
    return Pairs(np.concatenate(firsts), np.concatenate(seconds), np.concatenate(scores))


def open_vectors(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def open_index(path: str, nprobe: int, mmap: bool = True):
    import faiss

    from .index_choice import set_nprobe

    # IO_FLAG_MMAP on an index with OnDiskInvertedLists crashes faiss 1.15 (segfault): those map
    # their file themselves anyway.
    index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
    set_nprobe(index, nprobe)
    return index


def run_slice(job: SliceJob, index=None) -> int:
    """Search one slice and write its pairs file; returns the number of pairs. Idempotent: a rerun
    rewrites the same file, so a retried task never doubles a pair."""
    index = index if index is not None else open_index(job.index_path, job.nprobe, job.mmap)
    vectors = open_vectors(job.vectors_path)
    queries = open_vectors(job.queries_path) if job.queries_path else None
    pairs = search_rows(index, vectors, np.arange(job.start, job.stop), job.threshold, job.margin, queries)
    del vectors, queries  # unmap: the pages this slice touched leave the process
    table = pa.table({"first": pairs.first, "second": pairs.second, "score": pairs.score.astype(np.float32)},
                     schema=PAIR_SCHEMA)
    tmp = job.out_path + f".{os.getpid()}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, job.out_path)
    return len(pairs)


@dataclass
class PairSearch:
    """A pair search laid out in a work folder; `jobs()` lists the slices still to run."""

    work: Path
    n: int
    threshold: float
    margin: float
    nprobe: int
    slice_rows: int = SLICE_ROWS
    source: str = ""  # what the vectors were made from (a fingerprint): another source starts afresh
    kind: str = ""  # the index kind, for reports

    @property
    def vectors_path(self) -> Path:
        return self.work / "vectors.npy"

    @property
    def index_path(self) -> Path:
        return self.work / "index.faiss"

    @property
    def queries_path(self) -> Path:
        return self.work / "queries.npy"

    @property
    def pair_dir(self) -> Path:
        return self.work / "pairs"

    def slice_path(self, number: int) -> Path:
        return self.pair_dir / f"pairs-{number:06d}.parquet"

    def all_jobs(self) -> list[SliceJob]:
        return [
            SliceJob(str(self.vectors_path), str(self.index_path), start, min(self.n, start + self.slice_rows),
                     self.threshold, self.margin, self.nprobe, str(self.slice_path(number)),
                     str(self.queries_path) if self.queries_path.exists() else "", self.kind != "on-disk")
            for number, start in enumerate(range(0, self.n, self.slice_rows))
        ]

    def jobs(self) -> list[SliceJob]:
        return [j for j in self.all_jobs() if not os.path.exists(j.out_path)]

    def files(self) -> list[Path]:
        return [Path(j.out_path) for j in self.all_jobs()]

    def save(self) -> None:
        self.pair_dir.mkdir(parents=True, exist_ok=True)
        doc = {k: v for k, v in asdict(self).items() if k != "work"}
        (self.work / "search.json").write_text(json.dumps(doc) + "\n")


def prepare(work: str | os.PathLike, vectors: np.ndarray, *, threshold: float, budget: int | None = None,
            slice_rows: int = SLICE_ROWS, source: str = "", plan=None, queries: np.ndarray | None = None) -> PairSearch:
    """prepare_streamed over `vectors` (and `queries`) held by the caller: an array, or the work
    folder's own vectors file already mapped (then not written again)."""
    n, dim = vectors.shape

    def blocks():
        for a in range(0, n, RESCORE_CHUNK):
            yield vectors[a:a + RESCORE_CHUNK], None if queries is None else queries[a:a + RESCORE_CHUNK]

    written = isinstance(vectors, np.memmap) and Path(vectors.filename) == Path(work) / "vectors.npy"
    if written and queries is not None:
        raise ValueError("queries beside the work folder's own vectors file: pass the vectors as an array")
    return prepare_streamed(work, n, dim, None if written else blocks, threshold=threshold, budget=budget,
                            slice_rows=slice_rows, source=source, plan=plan, with_queries=queries is not None)


def prepare_streamed(work: str | os.PathLike, n: int, dim: int, blocks, *, threshold: float, budget: int | None = None,
                     slice_rows: int = SLICE_ROWS, source: str = "", plan=None, with_queries: bool = False) -> PairSearch:
    """Lay out a pair search over N vectors of `dim` in `work`: the vectors file, written from
    `blocks()` (an iterable of (vectors, queries or None) row blocks, in order: no more than one
    block in memory; None when WORK/vectors.npy holds them already), the index the memory budget
    allows, its margin. A work folder already holding the same search (same source, threshold,
    size) is reused as it is, without calling `blocks`, so that an interrupted search resumes."""
    import faiss

    from .index_choice import build_index, margin_for, plan_index, write_vectors

    work = Path(work)
    plan = plan or plan_index(n, dim, budget)
    probe = PairSearch(work, n, float(threshold), 0.0, plan.nprobe, slice_rows, source, plan.kind)
    saved = _saved(work)
    if saved and {**saved, "margin": 0.0} == {k: v for k, v in asdict(probe).items() if k != "work"} \
            and probe.index_path.exists() and probe.vectors_path.exists():
        return PairSearch(work, **saved)
    work.mkdir(parents=True, exist_ok=True)
    (work / "search.json").unlink(missing_ok=True)  # written again last, once the index is whole
    for old in (probe.pair_dir.glob("pairs-*.parquet") if probe.pair_dir.is_dir() else []):
        old.unlink()  # another search's pairs
    probe.queries_path.unlink(missing_ok=True)
    if blocks is not None:
        write_vectors(probe.vectors_path, n, dim, blocks(), probe.queries_path if with_queries else None)
    mapped = open_vectors(str(probe.vectors_path))
    index = build_index(plan, mapped, ondisk_path=str(work / "index.ivfdata"))
    margin = margin_for(plan, index, mapped)
    faiss.write_index(index, str(probe.index_path))
    del index, mapped
    search = PairSearch(work, n, float(threshold), margin, plan.nprobe, slice_rows, source, plan.kind)
    search.save()
    return search


def _saved(work: Path) -> dict | None:
    try:
        return json.loads((work / "search.json").read_text())
    except (OSError, ValueError):
        return None


def run_local(search: PairSearch, progress=None) -> None:
    """Every slice still to do, one after another in this process (the index opened once)."""
    todo = search.jobs()
    if not todo:
        return
    index = open_index(str(search.index_path), search.nprobe, search.kind != "on-disk")
    for job in todo:
        run_slice(job, index)
        if progress is not None:
            progress(job.stop - job.start)


def read_pairs(files: list[Path], batch_rows: int = 1 << 20) -> Iterator[Pairs]:
    """The pairs of `files`, a record batch at a time (both-end duplicates not removed)."""
    for path in files:
        reader = pq.ParquetFile(path)
        for batch in reader.iter_batches(batch_size=batch_rows):
            yield Pairs(batch.column(0).to_numpy(), batch.column(1).to_numpy(), batch.column(2).to_numpy())


def load_pairs(files: list[Path], n: int) -> Pairs:
    """All pairs of `files` in memory, one row per pair (the best score of its two ends)."""
    parts = list(read_pairs(files))
    if not parts:
        return Pairs.empty()
    both = Pairs(np.concatenate([p.first for p in parts]), np.concatenate([p.second for p in parts]),
                 np.concatenate([p.score for p in parts]))
    return both.best_per_pair(n)
