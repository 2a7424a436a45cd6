"""The Python API: index a folder, query it, dedupe a folder. The CLI is a thin layer over this.

    import copyscan
    copyscan.index_folder("refs")                       # into the default index
    copyscan.query_folder("uploads", output="out")      # out/matches.csv, out/report.html
    copyscan.dedupe("photos", output="dup", threshold=0.75)
"""

from __future__ import annotations

import csv
import heapq
import json
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
from .embed import Throughput, embed_entries
from .group import Item, Pairs, build_groups
from .models import DEFAULT_MODEL, DescriptorModel, create_model, list_models
from .postprocess import PostProcess
from .results import Group, Match, QueryResult
from .oserrors import WriteError
from .outputs import RunOutputs
from .store import IndexError_, IndexStore, Row, atomic_write, descriptors_of, paths_of, rows_to_table
from .validate import check_number, check_sizes, check_threshold

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
    notes: list[str] = field(default_factory=list)  # e.g. a lost manifest rebuilt from the shards


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
    notes: list[str] = field(default_factory=list)  # e.g. a lost manifest rebuilt from the shards


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
    check_sizes(batch_size=batch_size, workers=workers)
    _check_post(post)
    root = resolve_root(folder)
    store = IndexStore(index_dir or default_index_dir())
    new_folder = not store.folder.exists()
    new_index = not store.exists()
    store.lock()
    done = False
    try:
        m = _model(model, device)
        if post is not None and post.given():
            store.check_model(m.info)
            configure_postprocess(store, m, post, _scored_roots(store, root), batch_size, workers, progress)
        summary = _index_locked(store, root, m, batch_size, workers, progress, max_pixels)
        done = True
        return summary
    finally:
        if not done and new_index:
            # A new index that failed before saving any image (a full disk, a protected folder)
            # leaves nothing behind that a later run with another model would trip over.
            store.discard_if_empty(remove_folder=new_folder)
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
            store.write_shard(store.next_shard_number(), rows_to_table(rows, np.concatenate(descs)), model.info)
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
    except WriteError as exc:
        saved = f" ({summary.embedded} images were saved; the same command resumes)" if summary.embedded else ""
        raise WriteError(f"{exc}{saved}", exc.path, exc.errno) from None
    flush()

    # Rows whose file is gone, or changed and now unreadable, are dropped.
    now_bad = {s.path for s in new_skips}
    dead = {p for p in known if under(p, root) and (p not in present or p in now_bad)}
    dropped = store.compact(dead)  # also drops rows superseded by re-embedded files, which are not removals
    summary.removed = len(dead)
    summary.skipped = sorted((s for s in keep_skips + new_skips if under(s.path, root)), key=lambda s: s.path)
    skipped_count = len(keep_skips) + len(new_skips)
    manifest = store.read_manifest()
    if not summary.embedded and not dropped and _up_to_date(store, manifest, root, skipped_count):
        # Nothing changed: nothing is written (a read-only index stays usable).
        summary.total, summary.faiss = int(manifest["faiss"]["count"]), str(manifest["faiss"]["type"])
    else:
        summary.total, summary.faiss = _rebuild_faiss(store, model, roots=[root], skipped=skipped_count)
    summary.notes = list(store.notes)
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


def _up_to_date(store: IndexStore, manifest: dict, root: str, skipped: int) -> bool:
    """True when the manifest and the FAISS file already describe the shards as they are."""
    faiss_meta = manifest.get("faiss", {})
    return ("count" in faiss_meta and "type" in faiss_meta and root in manifest.get("roots", [])
            and int(manifest.get("counts", {}).get("skipped", -1)) == skipped and not _stale(store, manifest))


def _check_post(post: PostOptions | None) -> None:
    if post is not None and post.beta is not None:
        check_number(post.beta, "--beta")


def _rebuild_faiss(store: IndexStore, model: DescriptorModel, roots: list[str], skipped: int) -> tuple[int, str]:
    table = store.read_table(["descriptor"])
    # The shards keep the model's own descriptors; FAISS holds them post-processed.
    vectors = load_postprocess(store, store.read_manifest()).transform(descriptors_of(table))
    choice = ann.choose_index(len(vectors), vectors.shape[1])
    index = ann.build_index(vectors, choice)
    atomic_write(store.faiss_path, lambda fh: ann.write_index_to(index, fh))
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
    check_sizes(top_k=top_k, batch_size=batch_size, workers=workers)
    _check_post(post)
    if threshold is not None:
        check_number(threshold, "--threshold")
    loaded = load_index(index_dir)
    # Before any work, against the scale the index will have after this command's options.
    check_threshold(threshold, _expected_postprocess(loaded.store, post), default=default_threshold(loaded.manifest))
    m = _model_for_index(loaded, model, device)
    if post is not None and post.given():
        _set_postprocess(loaded.store, m, post, resolve_root(folder), batch_size, workers, progress)
        loaded = load_index(index_dir)
        check_threshold(threshold, loaded.manifest.get("postprocess"), default=default_threshold(loaded.manifest))
    threshold = default_threshold(loaded.manifest) if threshold is None else threshold
    floor = -np.inf if threshold <= -1 else threshold  # normalised scores can fall below -1
    entries, skipped = discover(folder)
    out = Path(output)
    summary = QuerySummary(str(out), queries=len(entries), csv_path=str(out / "matches.csv"))
    shown: list[tuple[float, int, QueryResult]] = []  # best results for the HTML page, bounded
    bar = _progress_bar(progress, len(entries), f"querying with {m.name}")
    # All or nothing: matches.csv and the report appear together, or a failed run leaves the
    # previous ones as they were (see outputs.py).
    with RunOutputs(out) as outputs, outputs.open("matches.csv") as fh, bar:
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
        fh.close()
        summary.skipped = skipped
        summary.notes = list(loaded.store.notes)
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
) -> DedupeSummary:
    """Find groups of copies inside `folder`: OUT/groups.csv, OUT/groups.json, OUT/report.html.

    The folder is first indexed (incrementally) into the index; nothing in it is modified.
    """
    clock = Throughput()
    check_sizes(batch_size=batch_size, workers=workers)
    _check_post(post)
    root = resolve_root(folder)
    store = IndexStore(index_dir or default_index_dir())
    if threshold is not None:
        # Checked before hours of indexing against the scale the index will have, and again after.
        check_number(threshold, "--threshold")
        check_threshold(threshold, _expected_postprocess(store, post))
    if model is None:
        model = _existing_model_ref(store) or DEFAULT_MODEL
    m = _model(model, device)
    index_summary = index_folder(root, store.folder, m, batch_size, workers, device, progress, max_pixels, post)
    table = store.read_table(["width", "height", "bytes", "content_hash", "pixel_hash", "descriptor"], root=root)
    paths = paths_of(table)
    manifest = store.read_manifest()
    post_process = load_postprocess(store, manifest)
    check_threshold(threshold, manifest.get("postprocess"), default=default_threshold(manifest))
    threshold = default_threshold(manifest) if threshold is None else threshold
    vectors = post_process.transform(descriptors_of(table))
    items = [
        Item(p, w, h, b, ch, ph)
        for p, w, h, b, ch, ph in zip(
            paths, table.column("width").to_pylist(), table.column("height").to_pylist(), table.column("bytes").to_pylist(),
            table.column("content_hash").to_pylist(), table.column("pixel_hash").to_pylist(),
        )
    ]
    pairs = _find_pairs_normalised(vectors, threshold, post_process)
    groups = build_groups(items, pairs, threshold)
    out = Path(output)
    summary = DedupeSummary(str(out), index_summary, len(items), groups)
    summary.copies = sum(len(g.copies) for g in groups)
    summary.exact_copies = sum(1 for g in groups for c in g.copies if c.match != "near")
    summary.csv_path = str(out / "groups.csv")
    with RunOutputs(out) as outputs:  # all or nothing, as in query_folder
        with outputs.open("groups.csv") as fh:
            _write_groups_rows(fh, groups)
        outputs.write_text("groups.json", groups_json(groups, threshold, m.name))
        if report:
            from .report import write_dedupe_report

            figures = {
                "Model": m.name, "Folder": display_path(root), "Threshold": threshold, "Images": len(items),
                "Groups": len(groups), "Copies": summary.copies, "Exact copies": summary.exact_copies,
                "Skipped files": len(index_summary.skipped),
            }
            summary.report_path = str(write_dedupe_report(out, groups, figures, max_items=REPORT_ITEMS))
    summary.seconds = clock.seconds
    return summary


def _expected_postprocess(store: IndexStore, post: PostOptions | None) -> dict | None:
    """The post-processing entry the index will have after this command's options: what decides
    the scale of its scores, known before any work (see validate.score_range)."""
    from .postprocess import DEFAULT_BETA

    stored = (store.read_manifest().get("postprocess") if store.exists() else None) or {}
    if post is None or not post.given():
        return stored
    score_norm = post.score_norm if post.score_norm is not None else stored.get("score_norm", post.background is not None)
    beta = post.beta if post.beta is not None else stored.get("beta", DEFAULT_BETA)
    return {"score_norm": score_norm, "beta": beta}


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


def _write_groups_rows(fh, groups: list[Group]) -> None:
    writer = csv.writer(fh)
    writer.writerow(["group_id", "path", "role", "score", "width", "height", "bytes"])
    for g in groups:
        for mem in g.members:
            writer.writerow([g.group_id, display_path(mem.path), mem.role, f"{mem.score:.6f}", mem.width, mem.height, mem.bytes])


def groups_json(groups: list[Group], threshold: float, model: str) -> str:
    doc = {
        "threshold": threshold,
        "model": model,
        "groups": [
            {
                "group_id": g.group_id,
                "keep": display_path(g.keep.path),
                "keep_reason": g.keep_reason,
                "members": [
                    {"path": display_path(mem.path), "role": mem.role, "score": round(mem.score, 6), "match": mem.match,
                     "width": mem.width, "height": mem.height, "bytes": mem.bytes}
                    for mem in g.members
                ],
            }
            for g in groups
        ],
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


__all__ = [
    "DEFAULT_THRESHOLD", "DedupeSummary", "IndexError_", "IndexSummary", "Interrupted", "LoadedIndex", "QuerySummary",
    "dedupe", "default_index_dir", "find_pairs", "index_folder", "load_index", "query_folder",
]
