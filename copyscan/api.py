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
import pyarrow as pa
import pyarrow.compute as pc

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
from .region_search import annotate_groups, image_pairs, place_boxes
from .region_search import BOX_COLUMNS, GROUP_BOX_COLUMNS, INDEX_BOXES, Candidate, PendingQuery, Refiner, RegionSettings, RowTable, format_box, global_only_params, merge_hits
from .region_search import search as search_rows
from .regions import with_region_rows
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
    regions: bool = False,
) -> IndexSummary:
    """Embed new and changed images under `folder` into the index; drop rows of removed files.

    `regions` also stores region rows (crops of each image, copyscan.regions) beside each image's
    row, for `query --regions` and `dedupe --regions`; images indexed without them are embedded again.

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
        return _index_locked(store, root, m, batch_size, workers, progress, max_pixels, regions)
    finally:
        store.unlock()


def _index_locked(store, root, model, batch_size, workers, progress, max_pixels, regions=False) -> IndexSummary:
    clock = Throughput()
    flush_rows = _flush_rows()
    store.check_model(model.info)
    entries, found_skips = discover(root)
    known = store.known_files()
    boxes = INDEX_BOXES if regions else ()
    if regions:  # images indexed without region rows count as changed
        known = {p: v for p, v in known.items() if p in store.paths_with_regions()}
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
    buffer_regions: list[np.ndarray] = []  # with --regions: each row's region number and box
    buffer_boxes: list[np.ndarray] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        if buffer_rows:
            # Taken out of the buffer before the write: a Ctrl-C landing after the shard is on
            # disk must not make the interrupt handler's flush write the same rows again. One
            # landing before the rename loses this shard's rows, which the next run embeds.
            rows, descs = list(buffer_rows), list(buffer_desc)
            kinds, kind_boxes = list(buffer_regions), list(buffer_boxes)
            buffer_rows.clear()
            buffer_desc.clear()
            buffer_regions.clear()
            buffer_boxes.clear()
            if kinds:
                table = rows_to_table(rows, np.concatenate(descs), np.concatenate(kinds), np.concatenate(kind_boxes))
                summary.embedded += int((np.concatenate(kinds) == 0).sum())
            else:
                table = rows_to_table(rows, np.concatenate(descs))
                summary.embedded += len(rows)
            store.write_shard(store.next_shard_number(), table)
        store.write_skipped(keep_skips + new_skips)
        last_flush = time.monotonic()

    bar = _progress_bar(progress, len(todo), f"indexing with {model.name}")
    try:
        with bar, _sigterm_as_interrupt():
            for batch in embed_entries(todo, model, batch_size, workers, max_pixels, progress=bar.advance, boxes=boxes):
                clock.add(len(batch.rows))
                if boxes:
                    rows, descs, kinds, kind_boxes = with_region_rows(batch.rows, batch.descriptors, batch.region_descriptors, boxes)
                    buffer_rows.extend(rows)
                    buffer_desc.append(descs)
                    buffer_regions.append(kinds)
                    buffer_boxes.append(kind_boxes)
                else:
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
    table = store.read_table(["descriptor", "region"])
    # The shards keep the model's own descriptors; FAISS holds them post-processed.
    vectors = load_postprocess(store, store.read_manifest()).transform(descriptors_of(table))
    region_rows = int(pc.sum(pc.fill_null(pc.not_equal(table.column("region"), 0), False)).as_py() or 0)
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
    counts = {"images": len(vectors) - region_rows, "shards": len(store.shard_paths()), "skipped": skipped}
    if region_rows:
        counts["region_rows"] = region_rows
    store.write_manifest(model.info, counts, meta, roots)
    return len(vectors) - region_rows, choice.factory


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
    rows: RowTable | None = None  # each FAISS row's path, region number and box

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
    table = store.read_table(["descriptor", "region", "box"] if _stale(store, manifest) else ["region", "box"])
    paths = paths_of(table)
    if _stale(store, manifest):
        index = ann.build_index(post.transform(descriptors_of(table)))
    else:
        index = ann.load_index(str(store.faiss_path))
    return LoadedIndex(store, manifest, index, paths, post, RowTable.from_table(table, paths))


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
    regions: bool = False,
    region_settings: RegionSettings | None = None,
) -> QuerySummary:
    """Match every image under `folder` against the index: OUT/matches.csv and OUT/report.html.

    A match is kept when its score is at least `threshold` (-1 keeps every top-k match; None:
    the index's suggested threshold with post-processing, else DEFAULT_THRESHOLD). A file
    matched against itself (same path) is left out. With score normalisation in the index, a
    score is the cosine less the query's background bias (see copyscan.postprocess).
    `regions` also scores crops of uncertain queries, the index's region rows and verified boxes
    (copyscan.region_search); every match gets the box of the copy on each side.
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
    rows_info = loaded.rows
    settings = region_settings or RegionSettings()
    # Search sees whole-image rows only, whatever else the index holds, unless asked to score the
    # references' region rows too (they do not pay for queries: see RegionSettings).
    use_region_rows = regions and settings.reference_regions
    params = None if use_region_rows else global_only_params(loaded.index, rows_info)
    per_image = rows_info.per_image if use_region_rows else 1
    refiner = (Refiner(m, loaded.index, rows_info, loaded.post, settings, report_floor=floor,
                       batch_size=batch_size, workers=0, max_pixels=max_pixels) if regions else None)
    pending: list[tuple[object, PendingQuery]] = []
    with open(out / "matches.csv", "w", newline="", encoding="utf-8") as fh, bar:
        writer = csv.writer(fh)
        writer.writerow(["query_path", "reference_path", "score", "rank", *BOX_COLUMNS])

        def emit(row, candidates: dict[str, Candidate]) -> None:
            result = QueryResult(row.path, width=row.width, height=row.height)
            for ref, c in sorted(candidates.items(), key=lambda t: -t[1].score):
                if c.score < floor or len(result.matches) == top_k:
                    continue
                result.matches.append(Match(ref, c.score, len(result.matches) + 1, c.query_box, c.reference_box))
                writer.writerow([display_path(row.path), display_path(ref), f"{c.score:.6f}", len(result.matches),
                                 *format_box(c.query_box), *format_box(c.reference_box)])
            if result.matches:
                summary.with_match += 1
                summary.matches += len(result.matches)
                item = (result.matches[0].score, clock.count, result)
                clock.add(1)
                if len(shown) < REPORT_ITEMS:
                    heapq.heappush(shown, item)
                else:
                    heapq.heappushpop(shown, item)

        def refine_pending() -> None:
            refiner.refine([p for _, p in pending], top_k + 1)
            for row, p in pending:
                p.candidates.pop(row.path, None)  # a file matched against itself (found by a crop)
                emit(row, p.candidates)
            pending.clear()

        for batch in embed_entries(entries, m, batch_size, workers, max_pixels, progress=bar.advance):
            skipped.extend(batch.skipped)
            summary.queries -= len(batch.skipped)  # unreadable files were never searched
            if not batch.rows:
                continue
            queries = loaded.post.transform(batch.descriptors)
            scores, ids = search_rows(loaded.index, queries, (top_k + 1) * per_image, params)
            scores = scores - loaded.post.bias(queries)[:, None]
            for row, vector, s_row, i_row in zip(batch.rows, queries, scores, ids):
                candidates: dict[str, Candidate] = {}
                merge_hits(candidates, s_row, i_row, rows_info)
                candidates.pop(row.path, None)  # a file matched against itself
                if refiner is None:
                    emit(row, candidates)
                else:
                    pending.append((row, PendingQuery(row.path, vector, candidates)))
            if refiner is not None and len(pending) >= refiner.settings.chunk:
                refine_pending()
        if refiner is not None and pending:
            refine_pending()
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
    regions: bool = False,
) -> DedupeSummary:
    """Find groups of copies inside `folder`: OUT/groups.csv, OUT/groups.json, OUT/report.html.

    The folder is first indexed (incrementally) into the index; nothing in it is modified.
    `regions` also pairs an image's region rows with other whole images (a photo inside a
    screenshot), and gives each copy the box where it sits (copyscan.region_search).
    """
    clock = Throughput()
    root = resolve_root(folder)
    store = IndexStore(index_dir or default_index_dir())
    if model is None:
        model = _existing_model_ref(store) or DEFAULT_MODEL
    m = _model(model, device)
    index_summary = index_folder(root, store.folder, m, batch_size, workers, device, progress, max_pixels, post, regions)
    table = store.read_table(["width", "height", "bytes", "content_hash", "pixel_hash", "descriptor", "region", "box"], root=root)
    row_info = RowTable.from_table(table, paths_of(table))
    region_table = table
    regions = regions and row_info.has_regions
    table = table.filter(pa.array(row_info.regions == 0))  # one row per image: the whole image's
    paths = paths_of(table)
    post_process = load_postprocess(store, store.read_manifest())
    threshold = default_threshold(store.read_manifest()) if threshold is None else threshold
    vectors = post_process.transform(descriptors_of(table))
    items = [
        Item(p, w, h, b, ch, ph)
        for p, w, h, b, ch, ph in zip(
            paths, table.column("width").to_pylist(), table.column("height").to_pylist(), table.column("bytes").to_pylist(),
            table.column("content_hash").to_pylist(), table.column("pixel_hash").to_pylist(),
        )
    ]
    if regions:
        # Every row (whole images and regions) against every row; then per image pair, the best.
        item_of_path = {p: i for i, p in enumerate(paths)}
        item_of_row = np.asarray([item_of_path.get(p, -1) for p in row_info.paths], dtype=np.int64)
        raw = _find_pairs_normalised(post_process.transform(descriptors_of(region_table)), threshold, post_process)
        found = image_pairs(raw.first, raw.second, raw.score, row_info, item_of_row)
        place_boxes(found, paths)
        pairs = Pairs(found.first, found.second, found.score)
    else:
        pairs = _find_pairs_normalised(vectors, threshold, post_process)
    groups = build_groups(items, pairs, threshold)
    if regions:
        annotate_groups(groups, found, item_of_path)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = DedupeSummary(str(out), index_summary, len(items), groups)
    summary.copies = sum(len(g.copies) for g in groups)
    summary.exact_copies = sum(1 for g in groups for c in g.copies if c.match != "near")
    summary.csv_path = str(out / "groups.csv")
    write_groups_csv(out / "groups.csv", groups)
    write_groups_json(out / "groups.json", groups, threshold, m.name)
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


def write_groups_csv(path: Path, groups: list[Group]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["group_id", "path", "role", "score", "width", "height", "bytes", *GROUP_BOX_COLUMNS])
        for g in groups:
            for mem in g.members:
                writer.writerow([g.group_id, display_path(mem.path), mem.role, f"{mem.score:.6f}", mem.width, mem.height, mem.bytes,
                                 *format_box(mem.box), *format_box(mem.keep_box)])


def write_groups_json(path: Path, groups: list[Group], threshold: float, model: str) -> None:
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
                     "width": mem.width, "height": mem.height, "bytes": mem.bytes,
                     "box": list(mem.box), "keep_box": list(mem.keep_box), "box_area": round(mem.box_area, 4)}
                    for mem in g.members
                ],
            }
            for g in groups
        ],
    }
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = [
    "DEFAULT_THRESHOLD", "DedupeSummary", "IndexError_", "IndexSummary", "Interrupted", "LoadedIndex", "QuerySummary",
    "dedupe", "default_index_dir", "find_pairs", "index_folder", "load_index", "query_folder",
]
