"""Stage 5 at scale: pick the FAISS index by a memory budget, build it in chunks, and say how far
its scores may be from the exact ones.

The way autofaiss chooses: estimate, for each candidate, the bytes it holds per vector plus its
fixed overhead (centroids, codebooks) and the peak while it is built (the training sample), then
take the most exact candidate that fits the budget. Most exact first:

    Flat        4*d bytes a vector; exact. Only while an all-against-all search is affordable
                (ann.EXACT_BUDGET_FLOP), as before: beyond that it fits but takes days.
    IVF-Flat    4*d + 8 (id); scores exact, a little recall lost to the lists not probed.
    IVF-SQ8     d + 8; 8-bit scalar codes, scores within ~0.01 of the cosine.
    IVF-PQ      m + 8 (m sub-quantisers of 8 bits, m = d/2 ... d/16); scores within ~0.1.
    on-disk     IVF-SQ8 codes in a file next to the index (faiss OnDiskInvertedLists), mapped
                into memory page by page: RAM holds only the centroids.

With SQ8 or PQ codes the score FAISS returns is approximate, so a threshold would lose its
meaning. The search therefore asks for everything above `threshold - margin` (the margin measured
on a sample when the index is built: the 99.9th percentile of |exact - approximate| over real
neighbours, times 1.5) and every candidate pair is re-scored exactly from the stored descriptors
(copyscan.pair_search.rescore): what is reported is always the true cosine. The exact-score
refine step is the descriptors on disk rather than faiss.IndexRefineFlat, which would hold a
float copy of every vector in memory and undo the saving.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass

import numpy as np

from .errors import UserError

# Share of the memory available when the command starts that the index may use by default: the
# rest is for the process (~0.6 GB of libraries), the pairs, grouping and the rest of the machine.
DEFAULT_BUDGET_SHARE = 0.25
BUILD_CHUNK = 262_144  # vectors added to the index at a time (128 MB at 128-d): bounds the build's peak
TRAIN_PER_LIST = 64  # k-means training points per inverted list (faiss warns below 39)
# Beyond LARGE_NLIST lists (from ~3M vectors) the build and the search are made affordable the way
# autofaiss and FAISS's billion-scale recipes do for large nlist: the coarse quantiser is an HNSW
# graph over the centroids (assigning a vector costs a graph walk, not nlist inner products; k-means
# assigns through one too), the k-means sample is bounded (TRAIN_MAX, 16+ points a list), and a
# fixed number of lists is probed (LARGE_NPROBE) instead of nlist / 16, whose all-against-all search
# grows as N^2 / 16 (days at 10M on 2 cores). Recall of planted copies at these settings:
# BENCHMARKS.md, "Dedupe at scale".
LARGE_NLIST = 4096
LARGE_NPROBE = 64
TRAIN_MAX = 262_144  # 128 MB of training vectors at 128-d (64 a list at 4096 lists)
HNSW_LINKS = 32  # neighbours per node of the quantiser's graph
# How wide the quantiser's graph walk is when a vector is assigned its list (and, at least, when a
# query picks its lists). A vector put in a list that is not its nearest is missed whatever nprobe:
# recall against exact search at 200k vectors, 8192 lists, nprobe 64 (256): 0.918 (0.921) at
# faiss's default 16, 0.993 (0.995) at 64, 0.9986 (0.9997) at 128, for 5 / 17 / 57 s of adding on
# the loaded VM (benchmarks/coarse_quantizer.py). At 16,384 lists: 0.967 at 64 and 0.9915 at 128
# (1.7 x the add time) at 1M; 0.954 of planted pairs at 64 at 10M, 0.960 at nprobe 256 and 1,024
# (BENCHMARKS.md, "Dedupe at scale"). 128 is the likely better default; its 10M build is unmeasured.
QUANTIZER_EF = 64
FIXED_OVERHEAD = 64 << 20  # FAISS's own buffers, search results of one slice
MIN_MARGIN = {"IVF-SQ8": 0.01, "IVF-PQ": 0.05, "on-disk": 0.01}

KINDS = ("Flat", "IVF-Flat", "IVF-SQ8", "IVF-PQ", "on-disk")


class BudgetError(UserError):
    """A memory budget that cannot be parsed or that no index fits."""


@dataclass(frozen=True)
class IndexPlan:
    kind: str  # one of KINDS
    factory: str  # faiss.index_factory string
    nlist: int = 0
    nprobe: int = 0
    memory_bytes: int = 0  # estimated resident size of the built index
    build_bytes: int = 0  # estimated peak while building (index + training sample + one chunk)
    disk_bytes: int = 0  # codes kept on disk (on-disk only)
    exact_scores: bool = True  # False: scores are approximate and pairs must be re-scored
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (MemAvailable; else free pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def default_memory_budget() -> int:
    return int(available_memory() * DEFAULT_BUDGET_SHARE)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int | None) -> int | None:
    """'8G', '512M', '1.5GB', '2GiB' or a number of bytes -> bytes; None or 'auto' -> None."""
    if text is None or isinstance(text, int):
        return text
    if text.strip().lower() in ("", "auto"):
        return None
    m = _SIZE.match(text)
    if not m:
        raise BudgetError(f"--memory-budget {text!r} is not a size: write e.g. 8G, 512M or 2.5GB")
    value = float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower())
    return int(value)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def ivf_lists(n: int) -> int:
    """nlist = 4 * sqrt(N) rounded to a power of two (faiss's guideline 4-16 sqrt(N)), with at
    least 39 training points a list (below that k-means warns or fails), at least 1."""
    rule = 2 ** int(round(math.log2(max(1.0, 4 * math.sqrt(max(n, 1))))))
    cap = 2 ** int(math.log2(max(1, n // 39)))
    return max(1, min(rule, cap))


def default_nprobe(nlist: int) -> int:
    if nlist > LARGE_NLIST:
        return LARGE_NPROBE
    return min(nlist, max(16, nlist // 16))


def train_size(n: int, nlist: int) -> int:
    """k-means training vectors: 64 a list, at most TRAIN_MAX beyond LARGE_NLIST lists."""
    size = min(n, TRAIN_PER_LIST * max(nlist, 1))
    return min(size, max(TRAIN_MAX, 16 * nlist)) if nlist > LARGE_NLIST else size


def coarse(nlist: int) -> str:
    """The factory prefix of the inverted file: a flat quantiser, or an HNSW one for large nlist."""
    return f"IVF{nlist}_HNSW{HNSW_LINKS}" if nlist > LARGE_NLIST else f"IVF{nlist}"


def pq_sizes(dim: int) -> list[int]:
    """Sub-quantiser counts for IVF-PQ, largest (most exact) first: d/4 and d/8 where they divide d.

    Not d/2: at half the bytes of SQ8 its training costs minutes per 100k vectors for little gain.
    Not below d/8: the score error (margin ~0.45 at 128-d PQ16 by measure_margin) makes the
    candidate set explode before re-scoring."""
    return [m for m in (dim // 4, dim // 8) if m >= 8 and dim % m == 0]


def candidates(n: int, dim: int) -> list[IndexPlan]:
    """Every index kind with its memory estimate, most exact first."""
    from .ann import EXACT_BUDGET_FLOP

    nlist = ivf_lists(n)
    nprobe = default_nprobe(nlist)
    centroids = nlist * dim * 4 + (nlist * HNSW_LINKS * 2 * 4 if nlist > LARGE_NLIST else 0)  # (+ graph links)
    train = train_size(n, nlist) * dim * 4
    chunk = min(n, BUILD_CHUNK) * dim * 4
    ids = 8
    plans: list[IndexPlan] = []
    if float(n) * n * dim <= EXACT_BUDGET_FLOP or n < 10_000:
        size = n * dim * 4
        plans.append(IndexPlan("Flat", "Flat", memory_bytes=size, build_bytes=size + chunk,
                               reason=f"exact search affordable (N*N*d = {float(n) * n * dim:.1e})"))
    ivf = coarse(nlist)
    size = n * (dim * 4 + ids) + centroids
    plans.append(IndexPlan("IVF-Flat", f"{ivf},Flat", nlist, nprobe, size, size + train + chunk))
    size = n * (dim + ids) + centroids + 2 * dim * 4
    plans.append(IndexPlan("IVF-SQ8", f"{ivf},SQ8", nlist, nprobe, size, size + train + chunk, exact_scores=False))
    for m in pq_sizes(dim):
        codebook = 256 * dim * 4
        size = n * (m + ids) + centroids + codebook
        plans.append(IndexPlan("IVF-PQ", f"{ivf},PQ{m}", nlist, nprobe, size, size + train + chunk, exact_scores=False))
    # On disk: centroids and the list directory in RAM; codes on disk, paged in as lists are probed.
    resident = centroids + nlist * 64 + 2 * dim * 4
    plans.append(IndexPlan("on-disk", f"{ivf},SQ8", nlist, nprobe, resident, resident + train + chunk,
                           disk_bytes=n * (dim + ids), exact_scores=False))
    return plans


def plan_index(n: int, dim: int, budget: int | None = None) -> IndexPlan:
    """The most exact index whose build peak fits `budget` bytes (default: default_memory_budget())."""
    budget = default_memory_budget() if budget is None else budget
    options = candidates(n, dim)
    for plan in options:
        if plan.build_bytes + FIXED_OVERHEAD <= budget:
            return _explained(plan, budget, options)
    smallest = options[-1]
    raise BudgetError(
        f"--memory-budget {human(budget)} is too small for {n:,} vectors of {dim}-d: even the on-disk index "
        f"needs {human(smallest.build_bytes + FIXED_OVERHEAD)} while it is built; give at least that"
    )


def _explained(plan: IndexPlan, budget: int, options: list[IndexPlan]) -> IndexPlan:
    skipped = [f"{p.kind} {human(p.build_bytes + FIXED_OVERHEAD)}" for p in options[:options.index(plan)]]
    why = f"budget {human(budget)}: {plan.kind} needs {human(plan.build_bytes + FIXED_OVERHEAD)}"
    if skipped:
        why += " (too big: " + ", ".join(skipped) + ")"
    if plan.reason:
        why += "; " + plan.reason
    return IndexPlan(**{**plan.as_dict(), "reason": why})


def build_index(plan: IndexPlan, vectors: np.ndarray, *, ondisk_path: str | None = None, seed: int = 0):
    """Train and fill the index of `plan` from `vectors` ((N, d) float32; a np.memmap is read a
    chunk at a time, so the vectors never have to be in memory whole). `ondisk_path` is where the
    on-disk kind keeps its codes."""
    import faiss

    n, dim = vectors.shape
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if "PQ" in plan.factory:
        # PQ's 256-centroid k-means per sub-quantiser on the whole sample takes minutes on a small
        # machine (faiss 1.15, 2 cores: 170 s for 50k vectors); 64 points a centroid are enough.
        pq = faiss.downcast_index(faiss.extract_index_ivf(index)).pq
        pq.cp.max_points_per_centroid = 64
    assigner = None
    if plan.nlist > LARGE_NLIST:
        ivf = faiss.extract_index_ivf(index)
        # k-means assigns its sample through an HNSW graph of the centroids too (rebuilt each
        # iteration: seconds), not by nlist inner products a point; 16+ points a list suffice.
        assigner = faiss.IndexHNSWFlat(dim, HNSW_LINKS)  # held here: faiss does not own it
        ivf.clustering_index = assigner
        ivf.cp.min_points_per_centroid = 16
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        size = train_size(n, plan.nlist)
        rows = np.sort(rng.choice(n, size=size, replace=False))
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        release_pages(vectors)
    if assigner is not None:
        ivf = faiss.extract_index_ivf(index)
        ivf.clustering_index = None
        del assigner
        faiss.downcast_index(ivf.quantizer).hnsw.efSearch = QUANTIZER_EF
    if plan.kind == "on-disk":
        if not ondisk_path:
            raise ValueError("the on-disk index needs ondisk_path")
        if os.path.exists(ondisk_path):
            os.unlink(ondisk_path)  # a previous build's lists: this one starts empty
        ivf = faiss.extract_index_ivf(index)
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, ondisk_path)
        # The index owns the lists from here (freed with it), so Python must not free them too.
        ivf.replace_invlists(lists, True)
        lists.this.disown()
    with _quiet_stdout() if plan.kind == "on-disk" else nullcontext():
        for start in range(0, n, BUILD_CHUNK):
            index.add(np.ascontiguousarray(vectors[start:start + BUILD_CHUNK], dtype=np.float32))
            release_pages(vectors)
    set_nprobe(index, plan.nprobe)
    return index


def write_vectors(path, n: int, dim: int, blocks, queries_path=None) -> None:
    """The (n, dim) float32 .npy file at `path` (and a second one at `queries_path`) filled from
    `blocks`, an iterable of row blocks in order ((vectors, queries) tuples), each block's pages
    handed to the file rather than kept resident: a build can then map it (build_index) without
    the vectors ever being in memory whole."""
    outs = [np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))]
    if queries_path is not None:
        outs.append(np.lib.format.open_memmap(queries_path, mode="w+", dtype=np.float32, shape=(n, dim)))
    at = 0
    for block in blocks:
        size = len(block[0])
        if at + size > n:
            raise ValueError(f"more than the {n} rows announced")
        for out, part in zip(outs, block):
            out[at:at + size] = part
            out.flush()
            release_pages(out)
        at += size
    if at != n:
        raise ValueError(f"{at} rows written, {n} announced")
    del outs


def release_pages(vectors: np.ndarray) -> None:
    """Drop the pages of a memory-mapped vectors file that this process has read: they stay in
    the page cache, but no longer count in its resident memory, which would otherwise grow to the
    whole file (5 GB at 10M x 128-d) as a build or a search reads it. No-op for an array."""
    import mmap

    handle = getattr(vectors, "_mmap", None)
    if handle is None and isinstance(getattr(vectors, "base", None), mmap.mmap):
        handle = vectors.base
    if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


@contextmanager
def _quiet_stdout():
    """Silence C-level stdout: OnDiskInvertedLists prints a "resizing ..." line each time its file
    grows, and has no switch for it."""
    import sys

    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def set_nprobe(index, nprobe: int) -> None:
    import faiss

    if nprobe:
        faiss.extract_index_ivf(index).nprobe = nprobe


def measure_margin(index, vectors: np.ndarray, *, sample: int = 512, k: int = 20, seed: int = 1) -> float:
    """How far below the exact cosine an approximate score can fall, measured on this index:
    1.5 x the 99.9th percentile of |exact - approximate| over the top-k neighbours of a sample of
    its own vectors (never below MIN_MARGIN of its kind). 0 for an exact index."""
    n = len(vectors)
    if n == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    approx, ids = index.search(queries, min(k, n))
    ok = ids >= 0
    exact = np.einsum("qd,qkd->qk", queries, np.asarray(vectors[np.where(ok, ids, 0).ravel()], np.float32)
                      .reshape(len(rows), ids.shape[1], -1))
    release_pages(vectors)
    err = np.abs(exact - approx)[ok]
    return float(1.5 * np.quantile(err, 0.999)) if err.size else 0.0


def margin_for(plan: IndexPlan, index, vectors: np.ndarray) -> float:
    if plan.exact_scores:
        return 0.0
    return max(MIN_MARGIN.get(plan.kind, 0.01), measure_margin(index, vectors))
