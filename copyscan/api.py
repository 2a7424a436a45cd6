"""The Python API: index a folder, query it, dedupe a folder. The CLI is a thin layer over this.

    import copyscan
    copyscan.index_folder("refs")                       # into the default index
    copyscan.query_folder("uploads", output="out")      # out/matches.csv, out/report.html
    copyscan.dedupe("photos", output="dup", threshold=0.75)
"""

from __future__ import annotations

import csv
import heapq
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from . import ann
from .background import PostOptions
from .background import configure as configure_postprocess
from .background import load as load_postprocess
from .decode import DEFAULT_MAX_PIXELS
from .discover import Skipped, discover, display_path, resolve_root, under
from .errors import UserError
from .embed import Throughput, embed_entries
from .group import Item, Pairs, build_groups
from .models import DEFAULT_MODEL, DescriptorModel, create_model, list_models
from .postprocess import PostProcess
from .results import Group, Match, QueryResult
from .store import IndexError_, IndexStore, Row, descriptors_of, paths_of, rows_to_table

DEFAULT_THRESHOLD = 0.75
DEFAULT_TOP_K = 5
SHARD_ROWS = 2048  # rows per Parquet shard (or $COPYSCAN_FLUSH_ROWS) ...
SHARD_SECONDS = 30.0  # ... or fewer, so that a killed run loses at most this much work
FLUSH_ROWS_ENV = "COPYSCAN_FLUSH_ROWS"


class Interrupted(RuntimeError):
    """Ctrl-C during indexing; the work done so far is saved."""


def default_index_dir() -> Path:
    """`$COPYSCAN_INDEX_DIR`, else `.copyscan/index` in the current folder."""
    env = os.environ.get("COPYSCAN_INDEX_DIR")
    return Path(env).expanduser() if env else Path(".copyscan") / "index"


def default_dedupe_index_dir(root: str) -> Path:
    """dedupe's own index of one folder: `dedupe/NAME-HASH` beside the default index, so that
    `dedupe ./photos` never adds ./photos to the reference index that `query` searches."""
    import hashlib
    import re

    digest = hashlib.blake2b(os.fsencode(root), digest_size=6).hexdigest()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(root.rstrip(os.sep)) or "root")[:40]
    return default_index_dir().parent / "dedupe" / f"{name}-{digest}"


@dataclass
class IndexSummary:
    index_dir: str
    model: str
    found: int = 0  # image files found under the folder
    embedded: int = 0  # embedded in this run
    unchanged: int = 0  # already in the index, same size and mtime
    removed: int = 0  # rows dropped because their file is gone or changed into a bad one
    skipped: list[Skipped] = field(default_factory=list)  # under this folder, with reasons
    total: int = 0  # live rows in the whole index
    seconds: float = 0.0
    rate: float = 0.0  # images embedded per second in this run
    faiss: str = ""


@dataclass
class QuerySummary:
    output: str
    queries: int = 0
    with_match: int = 0
    matches: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    csv_path: str = ""
    report_path: str = ""


@dataclass
class DedupeSummary:
    output: str
    index: IndexSummary | None = None
    images: int = 0
    groups: list[Group] = field(default_factory=list)
    copies: int = 0
    exact_copies: int = 0
    seconds: float = 0.0
    csv_path: str = ""
    report_path: str = ""


def _model(model: str | DescriptorModel, device: str) -> DescriptorModel:
    return create_model(model, device) if isinstance(model, (str, os.PathLike)) else model


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # A polite kill (SIGTERM) saves work like Ctrl-C does.
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def index_folder(
    folder: str | os.PathLike,
    index_dir: str | os.PathLike | None = None,
    model: str | DescriptorModel = DEFAULT_MODEL,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    post: PostOptions | None = None,
) -> IndexSummary:
    """Embed new and changed images under `folder` into the index; drop rows of removed files.

    Files already indexed with the same size and mtime are not decoded again, nor are files
    that failed before and have not changed. Interrupting keeps finished shards: the next run
    resumes where this one stopped. `post` sets up (or switches off) whitening and score
    normalisation, kept in the index for later queries (see copyscan.background).
    """
    root = resolve_root(folder)
    store = IndexStore(index_dir or default_index_dir())
    store.lock()
    try:
        m = _model(model, device)
        if post is not None and post.given():
            store.check_model(m.info)
            configure_postprocess(store, m, post, _scored_roots(store, root), batch_size, workers, progress)
        return _index_locked(store, root, m, batch_size, workers, progress, max_pixels)
    finally:
        store.unlock()


def _index_locked(store, root, model, batch_size, workers, progress, max_pixels) -> IndexSummary:
    clock = Throughput()
    flush_rows = _flush_rows()
    store.check_model(model.info)
    entries, found_skips = discover(root)
    known = store.known_files()
    old_skips = store.read_skipped()
    old_skip_at = {s.path: (s.bytes, s.mtime_ns) for s in old_skips}
    present = {e.path for e in entries}
    todo = [e for e in entries if known.get(e.path) != (e.bytes, e.mtime_ns) and old_skip_at.get(e.path) != (e.bytes, e.mtime_ns)]
    unchanged = len(entries) - len(todo)
    # Skip records outside this folder stay; inside it, those of unchanged bad files stay.
    keep_skips = [s for s in old_skips if not under(s.path, root) or (s.path in present and s.path not in {e.path for e in todo})]
    new_skips: list[Skipped] = list(found_skips)
    summary = IndexSummary(str(store.folder), model.name, found=len(entries), unchanged=unchanged)
    if not store.exists():
        # Written before any shard, so that a resumed run is checked against the same model.
        store.write_manifest(model.info, {"images": 0, "shards": 0, "skipped": 0}, {"status": "not built"}, [root])

    buffer_rows: list[Row] = []
    buffer_desc: list[np.ndarray] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        if buffer_rows:
            # Taken out of the buffer before the write: a Ctrl-C landing after the shard is on
            # disk must not make the interrupt handler's flush write the same rows again. One
            # landing before the rename loses this shard's rows, which the next run embeds.
            rows, descs = list(buffer_rows), list(buffer_desc)
            buffer_rows.clear()
            buffer_desc.clear()
            store.write_shard(store.next_shard_number(), rows_to_table(rows, np.concatenate(descs)))
            summary.embedded += len(rows)
        store.write_skipped(keep_skips + new_skips)
        last_flush = time.monotonic()

    bar = _progress_bar(progress, len(todo), f"indexing with {model.name}")
    try:
        with bar, _sigterm_as_interrupt():
            for batch in embed_entries(todo, model, batch_size, workers, max_pixels, progress=bar.advance):
                clock.add(len(batch.rows))
                buffer_rows.extend(batch.rows)
                buffer_desc.append(batch.descriptors)
                new_skips.extend(batch.skipped)
                if len(buffer_rows) >= flush_rows or time.monotonic() - last_flush >= SHARD_SECONDS:
                    flush()
    except KeyboardInterrupt:
        flush()
        raise Interrupted(
            f"interrupted: {summary.embedded} images saved in {store.folder}; run the same command again to resume"
        ) from None
    flush()

    # Rows whose file is gone, or changed and now unreadable, are dropped.
    now_bad = {s.path for s in new_skips}
    dead = {p for p in known if under(p, root) and (p not in present or p in now_bad)}
    store.compact(dead)  # also drops rows superseded by re-embedded files, which are not removals
    summary.removed = len(dead)
    summary.skipped = sorted((s for s in keep_skips + new_skips if under(s.path, root)), key=lambda s: s.path)
    summary.total, summary.faiss = _rebuild_faiss(store, model, roots=[root], skipped=len(keep_skips) + len(new_skips))
    summary.seconds = clock.seconds
    summary.rate = clock.rate
    return summary


def _flush_rows() -> int:
    """Rows per shard: SHARD_ROWS, or $COPYSCAN_FLUSH_ROWS (smaller shards lose less to a kill)."""
    text = os.environ.get(FLUSH_ROWS_ENV, "").strip()
    if not text:
        return SHARD_ROWS
    if not text.isdigit() or int(text) < 1:
        raise IndexError_(f"{FLUSH_ROWS_ENV} must be a whole number of rows of at least 1, not {text!r}")
    return int(text)


def _rebuild_faiss(store: IndexStore, model: DescriptorModel, roots: list[str], skipped: int) -> tuple[int, str]:
    table = store.read_table(["descriptor"])
    # The shards keep the model's own descriptors; FAISS holds them post-processed.
    vectors = load_postprocess(store, store.read_manifest()).transform(descriptors_of(table))
    choice = ann.choose_index(len(vectors), vectors.shape[1])
    index = ann.build_index(vectors, choice)
    tmp = str(store.faiss_path) + ".tmp"
    ann.save_index(index, tmp)
    os.replace(tmp, store.faiss_path)
    meta = {
        "type": choice.factory,
        "rule": choice.reason,
        "nprobe": choice.nprobe,
        "count": len(vectors),
        "shards_fingerprint": _faiss_fingerprint(store, store.read_manifest()),
    }
    counts = {"images": len(vectors), "shards": len(store.shard_paths()), "skipped": skipped}
    store.write_manifest(model.info, counts, meta, roots)
    return len(vectors), choice.factory


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n: int) -> None:
        pass


class _RichBar:
    def __init__(self, total: int, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[cyan]{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False,
        )
        self.task = self.progress.add_task(label, total=total, rate="")
        self.start = time.perf_counter()
        self.done = 0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def advance(self, n: int) -> None:
        self.done += n
        rate = self.done / max(1e-9, time.perf_counter() - self.start)
        self.progress.update(self.task, advance=n, rate=f"{rate:6.1f} img/s")


def _progress_bar(enabled: bool, total: int, label: str):
    return _RichBar(total, label) if enabled and total else _NoBar()


# ---- searching --------------------------------------------------------------------------------


@dataclass
class LoadedIndex:
    store: IndexStore
    manifest: dict
    index: object  # faiss.Index
    paths: list[str]
    post: PostProcess = field(default_factory=PostProcess)  # the index's stored post-processing

    @property
    def model_ref(self) -> str:
        """What to pass to create_model to get the model that built this index."""
        m = self.manifest["model"]
        registered = {s.name for s in list_models()}
        return m["name"] if m["name"] in registered else m["source"]


def load_index(index_dir: str | os.PathLike | None = None) -> LoadedIndex:
    """Open an index for searching; rebuilds the FAISS file in memory if shards changed since."""
    store = IndexStore(index_dir or default_index_dir())
    manifest = store.read_manifest()
    post = load_postprocess(store, manifest)
    table = store.read_table(["descriptor"] if _stale(store, manifest) else [])
    paths = paths_of(table)
    if _stale(store, manifest):
        index = ann.build_index(post.transform(descriptors_of(table)))
    else:
        index = ann.load_index(str(store.faiss_path))
    return LoadedIndex(store, manifest, index, paths, post)


def _stale(store: IndexStore, manifest: dict) -> bool:
    meta = manifest.get("faiss", {})
    return not store.faiss_path.exists() or meta.get("shards_fingerprint") != _faiss_fingerprint(store, manifest)


def default_threshold(manifest: dict) -> float:
    """DEFAULT_THRESHOLD for cosines; with post-processing, the score that 1 in 100,000 pairs of
    background images reaches (recorded when it was fitted): normalised scores are on another scale."""
    entry = manifest.get("postprocess") or {}
    return float(entry.get("threshold", DEFAULT_THRESHOLD))


def _faiss_fingerprint(store: IndexStore, manifest: dict) -> str:
    """The shards' fingerprint, plus the post-processing file's checksum when one is set: a FAISS
    file built from other transformed vectors is as stale as one built from other shards."""
    shards = store.shard_fingerprint()
    entry = manifest.get("postprocess")
    return f"{shards}+{entry['sha256'][:16]}" if entry else shards


def _scored_roots(store: IndexStore, *folders: str) -> list[str]:
    """The folders whose images are scored: the index's roots and this command's folders."""
    roots = store.read_manifest().get("roots", []) if store.exists() else []
    return [*roots, *folders]


def _set_postprocess(store: IndexStore, model: DescriptorModel, post: PostOptions, folder: str,
                     batch_size: int, workers: int | None, progress: bool) -> None:
    """Refit or switch off an existing index's post-processing, and rebuild FAISS to match."""
    store.lock()
    try:
        configure_postprocess(store, model, post, _scored_roots(store, folder), batch_size, workers, progress)
        counts = store.read_manifest().get("counts", {})
        _rebuild_faiss(store, model, roots=[], skipped=int(counts.get("skipped", 0)))
    finally:
        store.unlock()


def _model_for_index(loaded: LoadedIndex, model: str | DescriptorModel | None, device: str) -> DescriptorModel:
    m = _model(model if model is not None else loaded.model_ref, device)
    loaded.store.check_model(m.info)
    return m


def query_folder(
    folder: str | os.PathLike,
    index_dir: str | os.PathLike | None = None,
    output: str | os.PathLike = "copyscan-query",
    threshold: float | None = None,
    top_k: int = DEFAULT_TOP_K,
    model: str | DescriptorModel | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = False,
    report: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    post: PostOptions | None = None,
) -> QuerySummary:
    """Match every image under `folder` against the index: OUT/matches.csv and OUT/report.html.

    A match is kept when its score is at least `threshold` (-1 keeps every top-k match; None:
    the index's suggested threshold with post-processing, else DEFAULT_THRESHOLD). A file
    matched against itself (same path) is left out. With score normalisation in the index, a
    score is the cosine less the query's background bias (see copyscan.postprocess).
    """
    clock = Throughput()
    loaded = load_index(index_dir)
    m = _model_for_index(loaded, model, device)
    if post is not None and post.given():
        _set_postprocess(loaded.store, m, post, resolve_root(folder), batch_size, workers, progress)
        loaded = load_index(index_dir)
    threshold = default_threshold(loaded.manifest) if threshold is None else threshold
    floor = -np.inf if threshold <= -1 else threshold  # normalised scores can fall below -1
    entries, skipped = discover(folder)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = QuerySummary(str(out), queries=len(entries), csv_path=str(out / "matches.csv"))
    shown: list[tuple[float, int, QueryResult]] = []  # best results for the HTML page, bounded
    bar = _progress_bar(progress, len(entries), f"querying with {m.name}")
    with open(out / "matches.csv", "w", newline="", encoding="utf-8") as fh, bar:
        writer = csv.writer(fh)
        writer.writerow(["query_path", "reference_path", "score", "rank"])
        for batch in embed_entries(entries, m, batch_size, workers, max_pixels, progress=bar.advance):
            skipped.extend(batch.skipped)
            summary.queries -= len(batch.skipped)  # unreadable files were never searched
            if not batch.rows:
                continue
            queries = loaded.post.transform(batch.descriptors)
            scores, ids = ann.search(loaded.index, queries, top_k + 1)
            scores = scores - loaded.post.bias(queries)[:, None]
            for row, s_row, i_row in zip(batch.rows, scores, ids):
                result = QueryResult(row.path, width=row.width, height=row.height)
                for s, i in zip(s_row, i_row):
                    if i < 0 or s < floor or loaded.paths[i] == row.path or len(result.matches) == top_k:
                        continue
                    result.matches.append(Match(loaded.paths[i], float(s), len(result.matches) + 1))
                    writer.writerow([display_path(row.path), display_path(loaded.paths[i]), f"{s:.6f}", len(result.matches)])
                if result.matches:
                    summary.with_match += 1
                    summary.matches += len(result.matches)
                    item = (result.matches[0].score, clock.count, result)
                    clock.add(1)
                    if len(shown) < REPORT_ITEMS:
                        heapq.heappush(shown, item)
                    else:
                        heapq.heappushpop(shown, item)
    summary.skipped = skipped
    if report:
        from .report import write_query_report

        results = [r for _, _, r in sorted(shown, key=lambda t: -t[0])]
        figures = {
            "Model": m.name, "Index": str(loaded.store.folder), "Threshold": threshold, "Top-k": top_k,
            "Queries": summary.queries, "Queries with a match": summary.with_match, "Matches": summary.matches,
            "Skipped files": len(skipped),
        }
        summary.report_path = str(write_query_report(out, results, figures))
    summary.seconds = clock.seconds
    return summary


REPORT_ITEMS = 2000  # queries or groups drawn in an HTML report; the CSV always has all


def dedupe(
    folder: str | os.PathLike,
    output: str | os.PathLike = "copyscan-dedupe",
    threshold: float | None = None,
    index_dir: str | os.PathLike | None = None,
    model: str | DescriptorModel | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = False,
    report: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    post: PostOptions | None = None,
    keep: str = "original",
    protect: list[str | os.PathLike] | None = None,
) -> DedupeSummary:
    """Find groups of copies inside `folder`: OUT/groups.csv, OUT/groups.json, OUT/report.html.

    The folder is first indexed (incrementally) into its own index (`default_dedupe_index_dir`
    unless `index_dir` is given); nothing in it is modified. `keep` is a rule of
    copyscan.keep.KEEP_RULES; files under a `protect` folder are kept and never marked copies.
    Pairs rejected in an earlier review of this folder are not proposed again.
    """
    from .groups_file import write_groups_csv, write_groups_json
    from .same_files import attach_aliases, collapse_same_files, refine_pixel_hashes
    from .keep import make_chooser, mark_protected
    from .review_memory import load_memory

    clock = Throughput()
    root = resolve_root(folder)
    protect_dirs = [resolve_root(p) for p in (protect or [])]
    for p in protect_dirs:
        if not os.path.isdir(p):
            raise UserError(f"--protect {display_path(p)}: no such folder")
    store = IndexStore(index_dir or default_dedupe_index_dir(root))
    if model is None:
        model = _existing_model_ref(store) or DEFAULT_MODEL
    m = _model(model, device)
    index_summary = index_folder(root, store.folder, m, batch_size, workers, device, progress, max_pixels, post)
    table = store.read_table(["width", "height", "bytes", "mtime_ns", "content_hash", "pixel_hash", "descriptor"], root=root)
    paths = paths_of(table)
    post_process = load_postprocess(store, store.read_manifest())
    threshold = default_threshold(store.read_manifest()) if threshold is None else threshold
    items = [
        Item(p, w, h, b, ch, ph, mt)
        for p, w, h, b, ch, ph, mt in zip(
            paths, table.column("width").to_pylist(), table.column("height").to_pylist(), table.column("bytes").to_pylist(),
            table.column("content_hash").to_pylist(), table.column("pixel_hash").to_pylist(), table.column("mtime_ns").to_pylist(),
        )
    ]
    # Symlinks and hard links to one file are one file: only one of its names is grouped.
    one_name, aliases = collapse_same_files(paths, [it.content_hash for it in items])
    items = [items[i] for i in one_name]
    vectors = post_process.transform(descriptors_of(table))[np.asarray(one_name, dtype=np.int64)]
    pairs = _find_pairs_normalised(vectors, threshold, post_process)
    items = refine_pixel_hashes(items, zip(pairs.first.tolist(), pairs.second.tolist()))
    memory = load_memory(store.folder)
    chooser = make_chooser(keep, protect_dirs, memory.preferred)
    groups = build_groups(items, pairs, threshold, choose=chooser, rejected=memory.rejected)
    mark_protected(groups, protect_dirs)
    attach_aliases(groups, aliases)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = DedupeSummary(str(out), index_summary, len(items), groups)
    summary.copies = sum(len(g.copies) for g in groups)
    summary.exact_copies = sum(1 for g in groups for c in g.copies if c.match != "near")
    summary.csv_path = str(out / "groups.csv")
    write_groups_csv(out / "groups.csv", groups)
    write_groups_json(out / "groups.json", groups, threshold, m.name, root=root, index_dir=str(store.folder),
                      keep_rule=keep, protect=protect_dirs)
    if report:
        from .report import write_dedupe_report

        figures = {
            "Model": m.name, "Folder": display_path(root), "Threshold": threshold, "Images": len(items),
            "Groups": len(groups), "Copies": summary.copies, "Exact copies": summary.exact_copies,
            "Skipped files": len(index_summary.skipped),
        }
        figures["Reclaimable"] = _human_bytes_total(groups)
        summary.report_path = str(write_dedupe_report(out, groups, figures, max_items=REPORT_ITEMS))
    summary.seconds = clock.seconds
    return summary


def _existing_model_ref(store: IndexStore) -> str | None:
    if not store.exists():
        return None
    m = store.read_manifest()["model"]
    return m["name"] if m["name"] in {s.name for s in list_models()} else m["source"]


def _find_pairs_normalised(vectors: np.ndarray, threshold: float, post: PostProcess) -> Pairs:
    """find_pairs where a pair (i, j) scores its cosine less beta x (b_i + b_j) / 2 (both ends
    are queries in dedupe; see copyscan.postprocess); plain find_pairs without score norm."""
    if not post.score_norm:
        return find_pairs(vectors, threshold)
    bias = post.bias(vectors)
    # No pair whose cosine is below threshold + min(bias) can reach the threshold once normalised.
    raw = find_pairs(vectors, threshold + (float(bias.min()) if len(bias) else 0.0))
    score = raw.score - (bias[raw.first] + bias[raw.second]) / 2
    keep = score >= threshold
    return Pairs(raw.first[keep], raw.second[keep], score[keep].astype(np.float32))


def find_pairs(vectors: np.ndarray, threshold: float, query_rows: np.ndarray | None = None) -> Pairs:
    """All pairs (i < j) scoring at least `threshold`, by neighbour search: never an N x N matrix.

    Hits stream batch by batch into flat numpy arrays (no Python object per pair). A pair found
    from both ends is kept once, with the higher of its two scores (they can differ in the last
    bits of a float32). `query_rows` limits the search to the pairs with at least one end among
    those rows (new images against a whole collection; a sample, to time a large run).
    """
    n = len(vectors)
    if n < 2:
        return Pairs.empty()
    index = ann.build_index(vectors)
    queries = np.arange(n) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in range(0, len(queries), ann.SEARCH_BATCH):
        batch = queries[start:start + ann.SEARCH_BATCH]
        rows, ids, found = ann.search_above_flat(index, vectors[batch], threshold)
        rows = batch[rows]
        other = rows != ids  # an image is its own best neighbour
        rows, ids = rows[other], ids[other]
        firsts.append(np.minimum(rows, ids))
        seconds.append(np.maximum(rows, ids))
        scores.append(found[other])
    if not firsts:
        return Pairs.empty()
    del index  # the FAISS copy of the vectors goes before the pairs are merged
    both_ends = Pairs(np.concatenate(firsts), np.concatenate(seconds), np.concatenate(scores))
    return both_ends.best_per_pair(n)


def _human_bytes_total(groups: list[Group]) -> str:
    from .report import human_bytes, reclaimable

    return human_bytes(sum(reclaimable(g) for g in groups))


__all__ = [
    "DEFAULT_THRESHOLD", "DedupeSummary", "IndexError_", "IndexSummary", "Interrupted", "LoadedIndex", "QuerySummary",
    "dedupe", "default_dedupe_index_dir", "default_index_dir", "find_pairs", "index_folder", "load_index", "query_folder",
]
