"""The Python API: index a folder, query it, dedupe a folder. The CLI is a thin layer over this.

    import copyscan
    copyscan.index_folder("refs")                       # into the default index
    copyscan.query_folder("uploads", output="out")      # out/matches.csv, out/report.html
    copyscan.dedupe("photos", output="dup", threshold=0.75)
    copyscan.index_folder("refs", extraction=copyscan.Extraction(batch_size=64, device="cuda"))

Every argument after the folder is keyword-only; decoding and embedding settings travel in one
`Extraction`. The stages themselves live in their own modules (see ARCHITECTURE.md): this module
only strings them together and returns the summaries of results.py.
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .background import PostOptions, configure
from .discover import discover, display_path, resolve_root, under
from .errors import Interrupted, UserError
from .extraction import Extraction
from .indexing import commit, index_into
from .models import DEFAULT_MODEL, LazyModel
from .outputs import GROUPS_CSV, GROUPS_JSON, MatchesWriter, write_groups_csv, write_groups_json
from .progress import Throughput, progress_bar
from .results import DedupeSummary, IndexSummary, QueryResult, QuerySummary
from .score import DEFAULT_THRESHOLD, DEFAULT_TOP_K
from .search import LoadedIndex, collection_pairs, model_ref
from .search import load_index as _load
from .store import IndexStore

if TYPE_CHECKING:
    from .models.base import DescriptorModel

REPORT_ITEMS = 2000  # queries or groups drawn in an HTML report; the CSV always has all
INDEX_DIR_ENV = "COPYSCAN_INDEX_DIR"



def default_index_dir() -> Path:
    """`$COPYSCAN_INDEX_DIR`, else `.copyscan/index` in the current folder."""
    env = os.environ.get(INDEX_DIR_ENV)
    return Path(env).expanduser() if env else Path(".copyscan") / "index"


def _store(index_dir: str | os.PathLike | None) -> IndexStore:
    return IndexStore(index_dir or default_index_dir())


def index_folder(
    folder: str | os.PathLike,
    *,
    index_dir: str | os.PathLike | None = None,
    model: str | os.PathLike | DescriptorModel = DEFAULT_MODEL,
    extraction: Extraction | None = None,
    post: PostOptions | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    memory_budget: int | str | None = None,
) -> IndexSummary:
    """Embed new and changed images under `folder` into the index; drop rows of removed files.

    Files already indexed with the same size and mtime are not decoded again, nor are files
    that failed before and have not changed; a folder with nothing new loads no model.
    Interrupting keeps finished shards: the next run resumes where this one stopped. `post` sets
    up (or switches off) whitening and score normalisation, kept in the index for later queries
    (see copyscan.background). `engine` "ray" runs decoding and embedding on a Ray cluster
    (`ray_address`, default: a local one; copyscan.engines.ray_engine). `memory_budget` (bytes or
    "8G"; default a share of the memory available) decides the FAISS index (index_choice).
    """
    from .index_choice import parse_size

    extraction = extraction or Extraction()
    root = resolve_root(folder)
    store = _store(index_dir)
    lazy = LazyModel(model, extraction.device)
    budget = parse_size(memory_budget)
    if post is not None and post.given():
        _set_postprocess(store, lazy, post, root, extraction, rebuild=False)
    return index_into(store, root, lazy, extraction, engine=_engine(engine, store, ray_address), memory_budget=budget)


def _engine(name: str, store: IndexStore, ray_address: str | None):
    if name == "local":
        if ray_address:
            raise UserError("--ray-address goes with --engine ray")
        return None
    if name == "ray":
        from .engines.ray_engine import RayEngine

        return RayEngine(store.folder, address=ray_address)
    raise UserError(f"--engine must be local or ray, not {name!r}")


def _set_postprocess(store: IndexStore, model: LazyModel, post: PostOptions, folder: str, extraction: Extraction,
                     rebuild: bool = True) -> None:
    """Fit or switch off the index's post-processing; with `rebuild`, the FAISS file follows
    (index_folder leaves that to the index job, which rebuilds a stale FAISS file)."""
    store.lock()
    try:
        store.check_model(model.identity())
        configure(store, model.get(), post, [*store.roots(), folder], extraction)
        if rebuild:
            commit(store, model.get().info, [], store.skipped_count())
    finally:
        store.unlock()


def load_index(index_dir: str | os.PathLike | None = None) -> LoadedIndex:
    """Open an index for searching; rebuilds the FAISS index in memory if the shards changed since."""
    return _load(_store(index_dir))


def query_folder(
    folder: str | os.PathLike,
    *,
    index_dir: str | os.PathLike | None = None,
    output: str | os.PathLike = "copyscan-query",
    threshold: float | None = None,
    top_k: int = DEFAULT_TOP_K,
    model: str | os.PathLike | DescriptorModel | None = None,
    extraction: Extraction | None = None,
    report: bool = True,
    post: PostOptions | None = None,
) -> QuerySummary:
    """Match every image under `folder` against the index: OUT/matches.csv and OUT/report.html.

    A match is kept when its score is at least `threshold` (-1 keeps every top-k match; None:
    the index's suggested threshold with post-processing, else DEFAULT_THRESHOLD). A file
    matched against itself (same path) is left out. With score normalisation in the index, a
    score is the cosine less the query's background bias (see copyscan.score).
    """
    from .search import query_batches

    clock = Throughput()
    extraction = extraction or Extraction()
    store = _store(index_dir)
    loaded = _load(store)
    lazy = LazyModel(model if model is not None else loaded.model_ref, extraction.device)
    store.check_model(lazy.identity())
    if post is not None and post.given():
        _set_postprocess(store, lazy, post, resolve_root(folder), extraction)
        loaded = _load(store)
    m = lazy.get()
    threshold = loaded.threshold if threshold is None else threshold
    entries, skipped = discover(folder)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = QuerySummary(str(out), queries=len(entries), score=loaded.score)
    shown: list[tuple[float, int, QueryResult]] = []  # best results for the HTML page, bounded
    bar = progress_bar(extraction.progress, len(entries), f"querying with {m.name}")
    with MatchesWriter(out) as writer, bar:
        summary.csv_path = str(writer.path)
        for results, batch_skipped in query_batches(loaded, entries, m, extraction, top_k, threshold, bar.advance):
            skipped.extend(batch_skipped)
            summary.queries -= len(batch_skipped)  # unreadable files were never searched
            for result in results:
                writer.write(result)
                if not result.matches:
                    continue
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
            "Model": m.name, "Index": str(store.folder), "Score": summary.score, "Threshold": threshold, "Top-k": top_k,
            "Queries": summary.queries, "Queries with a match": summary.with_match, "Matches": summary.matches,
            "Skipped files": len(skipped),
        }
        summary.report_path = str(write_query_report(out, results, figures))
    summary.seconds = clock.seconds
    return summary


def dedupe(
    folder: str | os.PathLike,
    *,
    output: str | os.PathLike = "copyscan-dedupe",
    threshold: float | None = None,
    index_dir: str | os.PathLike | None = None,
    model: str | os.PathLike | DescriptorModel | None = None,
    extraction: Extraction | None = None,
    report: bool = True,
    post: PostOptions | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    memory_budget: int | str | None = None,
) -> DedupeSummary:
    """Find groups of copies inside `folder`: OUT/groups.csv, OUT/groups.json, OUT/report.html.

    The folder is first indexed (incrementally) into the index; nothing in it is modified. The
    pairs are searched in the FAISS file that indexing left, not in a second index; with
    `engine` "ray", a `memory_budget`, or a very large folder, in slices against an index of the
    folder sized by the budget, the pairs on disk (copyscan.dedupe_scale).
    """
    from .dedupe_scale import SLICED_FROM, sliced_groups
    from .index_choice import parse_size
    from .score import pairs_of, references_of

    import numpy as np

    from .group import Item, build_groups
    from .store import descriptors_of, paths_of

    clock = Throughput()
    root = resolve_root(folder)
    store = _store(index_dir)
    if model is None:
        model = model_ref(store) if store.exists() else DEFAULT_MODEL
    budget = parse_size(memory_budget)
    index_summary = index_folder(root, index_dir=store.folder, model=model, extraction=extraction, post=post,
                                 engine=engine, ray_address=ray_address, memory_budget=budget)
    loaded = _load(store)
    threshold = loaded.threshold if threshold is None else threshold
    table = store.read_table(["width", "height", "bytes", "content_hash", "pixel_hash", "descriptor"])
    rows = np.asarray([i for i, p in enumerate(paths_of(table)) if under(p, root)], dtype=np.int64)
    table = table.take(rows)
    if engine == "ray" or budget is not None or len(rows) >= SLICED_FROM:
        descriptors = descriptors_of(table)
        references = references_of(loaded.post, descriptors)
        queries = pairs_of(loaded.post, descriptors)
        groups = sliced_groups(table, references, None if np.array_equal(queries, references) else queries,
                               threshold=threshold, output=Path(output), source=f"{root}|{store.faiss_fingerprint(loaded.manifest)}",
                               engine=engine, ray_address=ray_address, memory_budget=budget)
        return _dedupe_outputs(output, index_summary, loaded, root, threshold, len(rows), groups, report, clock)
    items = [
        Item(p, w, h, b, ch, ph)
        for p, w, h, b, ch, ph in zip(
            paths_of(table), table.column("width").to_pylist(), table.column("height").to_pylist(),
            table.column("bytes").to_pylist(), table.column("content_hash").to_pylist(), table.column("pixel_hash").to_pylist(),
        )
    ]
    pairs = collection_pairs(loaded, rows, descriptors_of(table), threshold)
    groups = build_groups(items, pairs)
    return _dedupe_outputs(output, index_summary, loaded, root, threshold, len(items), groups, report, clock)


def _dedupe_outputs(output, index_summary: IndexSummary, loaded: LoadedIndex, root: str, threshold: float, images: int,
                    groups: list, report: bool, clock: Throughput) -> DedupeSummary:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = DedupeSummary(str(out), index_summary, images, groups, score=loaded.score)
    summary.copies = sum(len(g.copies) for g in groups)
    summary.exact_copies = sum(1 for g in groups for c in g.copies if c.match != "near")
    summary.csv_path = str(out / GROUPS_CSV)
    write_groups_csv(out / GROUPS_CSV, groups)
    write_groups_json(out / GROUPS_JSON, groups, threshold, index_summary.model, summary.score)
    if report:
        from .report import write_dedupe_report

        figures = {
            "Model": index_summary.model, "Folder": display_path(root), "Score": summary.score, "Threshold": threshold,
            "Images": images, "Groups": len(groups), "Copies": summary.copies, "Exact copies": summary.exact_copies,
            "Skipped files": len(index_summary.skipped),
        }
        summary.report_path = str(write_dedupe_report(out, groups, figures, max_items=REPORT_ITEMS))
    summary.seconds = clock.seconds
    return summary


__all__ = [
    "DEFAULT_THRESHOLD", "DEFAULT_TOP_K", "DedupeSummary", "Extraction", "IndexSummary", "Interrupted", "LoadedIndex",
    "PostOptions", "QuerySummary", "dedupe", "default_index_dir", "index_folder", "load_index", "query_folder",
]
