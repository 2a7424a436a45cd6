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

import dataclasses
import heapq
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .background import PostOptions, configure, expected_entry
from .discover import discover, display_path, resolve_root, under
from .errors import Interrupted, UserError
from .extraction import Extraction
from .indexing import commit, index_into
from .models import DEFAULT_MODEL, LazyModel
from .output_folder import RunOutputs
from .outputs import GROUPS_CSV, GROUPS_JSON, MATCHES_CSV, MatchesWriter, write_groups_csv, write_groups_json
from .progress import Throughput, progress_bar
from .results import DedupeSummary, IndexSummary, QueryResult, QuerySummary
from .score import DEFAULT_THRESHOLD, DEFAULT_TOP_K
from .search import LoadedIndex, collection_pairs, default_threshold, model_ref
from .search import load_index as _load
from .store import IndexStore
from .validate import check_number, check_sizes, check_threshold

if TYPE_CHECKING:
    from .models.base import DescriptorModel
    from .region_search import RegionSettings

REPORT_ITEMS = 2000  # queries or groups drawn in an HTML report; the CSV always has all
INDEX_DIR_ENV = "COPYSCAN_INDEX_DIR"



def default_index_dir() -> Path:
    """`$COPYSCAN_INDEX_DIR`, else `.copyscan/index` in the current folder."""
    env = os.environ.get(INDEX_DIR_ENV)
    return Path(env).expanduser() if env else Path(".copyscan") / "index"


def default_dedupe_index_dir(root: str | os.PathLike) -> Path:
    """dedupe's own index of one folder: `dedupe/NAME-HASH` beside the default index, so that
    `dedupe ./photos` never adds ./photos to the reference index that `query` searches."""
    import hashlib
    import re

    root = resolve_root(root)
    digest = hashlib.blake2b(os.fsencode(root), digest_size=6).hexdigest()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(root.rstrip(os.sep)) or "root")[:40]
    return default_index_dir().parent / "dedupe" / f"{name}-{digest}"


def _store(index_dir: str | os.PathLike | None) -> IndexStore:
    return IndexStore(index_dir or default_index_dir())


def index_folder(
    folder: str | os.PathLike,
    *,
    index_dir: str | os.PathLike | None = None,
    model: str | os.PathLike | DescriptorModel = DEFAULT_MODEL,
    extraction: Extraction | None = None,
    post: PostOptions | None = None,
    regions: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    memory_budget: int | str | None = None,
) -> IndexSummary:
    """Embed new and changed images under `folder` into the index; drop rows of removed files.

    Files already indexed with the same size and mtime are not decoded again, nor are files
    that failed before and have not changed; a folder with nothing new loads no model.
    Interrupting keeps finished shards: the next run resumes where this one stopped. `post` sets
    up (or switches off) whitening and score normalisation, kept in the index for later queries
    (see copyscan.background). `regions` also stores region rows (crops of each image) beside each
    image's row, for `dedupe --regions`; images indexed without them are embedded again. `engine`
    "ray" runs decoding and embedding on a Ray cluster (`ray_address`, default: a local one;
    copyscan.engines.ray_engine). `memory_budget` (bytes or "8G"; default a share of the memory
    available) decides the FAISS index (index_choice).
    """
    from .index_choice import parse_size

    extraction = _checked(extraction, post)
    if regions and engine == "ray":
        raise UserError("--regions cannot be combined with --engine ray (the Ray engine stores whole images only)")
    if regions:
        from .region_search import INDEX_BOXES

        extraction = dataclasses.replace(extraction, boxes=INDEX_BOXES, local_features=True)
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


def _checked(extraction: Extraction | None, post: PostOptions | None, top_k: int | None = None,
             threshold: float | None = None) -> Extraction:
    """The numbers a user gave, checked before any work (validate.py); the Extraction to use."""
    extraction = extraction or Extraction()
    check_sizes(top_k=top_k, batch_size=extraction.batch_size, workers=extraction.workers)
    if post is not None and post.beta is not None:
        check_number(post.beta, "--beta")
    if threshold is not None:
        check_number(threshold, "--threshold")
    return extraction


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
    regions: bool = True,
    region_settings: RegionSettings | None = None,
) -> QuerySummary:
    """Match every image under `folder` against the index: OUT/matches.csv and OUT/report.html.

    A match is kept when its score is at least `threshold` (-1 keeps every top-k match; None:
    the index's suggested threshold with post-processing, else the model's calibrated threshold,
    `copyscan.models.model_threshold`, else DEFAULT_THRESHOLD). A file
    matched against itself (same path) is left out. With score normalisation in the index, a
    score is the cosine less the query's background bias (see copyscan.score). `regions` (on by
    default, as in the CLI; False: whole images only, about half the time) also scores crops of
    uncertain queries and lifts and places copies by geometric verification
    (copyscan.region_search; `region_settings` tunes it); each match carries its boxes.
    """
    from .search import query_batches

    clock = Throughput()
    extraction = _checked(extraction, post, top_k, threshold)
    store = _store(index_dir)
    loaded = _load(store)
    # Before any work, against the scale the index will have after this command's options.
    check_threshold(threshold, expected_entry(store, post), default=loaded.threshold)
    lazy = LazyModel(model if model is not None else loaded.model_ref, extraction.device)
    store.check_model(lazy.identity())
    if post is not None and post.given():
        _set_postprocess(store, lazy, post, resolve_root(folder), extraction)
        loaded = _load(store)
        check_threshold(threshold, store.postprocess_entry(), default=loaded.threshold)
    m = lazy.get()
    threshold = loaded.threshold if threshold is None else threshold
    entries, skipped = discover(folder)
    out = Path(output)
    summary = QuerySummary(str(out), queries=len(entries), score=loaded.score, notes=list(store.notes))
    shown: list[tuple[float, int, QueryResult]] = []  # best results for the HTML page, bounded
    bar = progress_bar(extraction.progress, len(entries), f"querying with {m.name}")
    # All or nothing: matches.csv and the report appear together, or a failed run leaves the
    # previous ones as they were (output_folder.py).
    with RunOutputs(out) as outputs:
        with MatchesWriter(out, outputs.staged(MATCHES_CSV)) as writer, bar:
            summary.csv_path = str(writer.path)
            if regions:
                from .region_search import query_batches_with_regions

                batches = query_batches_with_regions(loaded, entries, m, extraction, top_k, threshold, region_settings,
                                                     bar.advance)
            else:
                batches = query_batches(loaded, entries, m, extraction, top_k, threshold, bar.advance)
            for results, batch_skipped in batches:
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
    keep: str = "original",
    protect: list[str | os.PathLike] | None = None,
    regions: bool = False,
    verify: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
    memory_budget: int | str | None = None,
) -> DedupeSummary:
    """Find groups of copies inside `folder`: OUT/groups.csv, OUT/groups.json, OUT/report.html.

    The folder is first indexed (incrementally) into its own index (`default_dedupe_index_dir`
    unless `index_dir` is given); nothing in it is modified. The pairs are searched in the FAISS
    file that indexing left, not in a second index. `keep` is a rule of copyscan.keep.KEEP_RULES;
    files under a `protect` folder are kept and never marked copies. Pairs rejected in an earlier
    review of this folder are not proposed again (copyscan.review_memory). `regions` indexes
    region rows too and pairs an image's regions with the other whole images (a photo inside a
    screenshot); each copy gets the box where it sits (copyscan.region_search). `verify` (on by
    default) checks each ungrouped image's best partner scoring just below the threshold, and a
    runner-up close behind it, with local features (copyscan.verify), and groups the pair when its geometry agrees: copies the
    descriptor doubts (a crop, a paste, a screenshot) join their group with their box. With `engine`
    "ray", a `memory_budget`, or a very large folder, the pairs are searched in slices against an
    index of the folder sized by the budget, the pairs on disk (copyscan.dedupe_scale); that path
    keeps the image of highest resolution (no `keep` rule, no remembered rejections) and takes
    no `regions` and no `verify`.
    """
    import numpy as np

    from .dedupe_scale import SLICED_FROM, sliced_dedupe
    from .index_choice import parse_size
    from .keep import mark_protected
    from .same_files import attach_aliases, collapse_same_files
    from .store import paths_of

    clock = Throughput()
    extraction = _checked(extraction, post, threshold=threshold)
    root = resolve_root(folder)
    protect_dirs = [resolve_root(p) for p in (protect or [])]
    for p in protect_dirs:
        if not os.path.isdir(p):
            raise UserError(f"--protect {display_path(p)}: no such folder")
    store = _store(index_dir or default_dedupe_index_dir(root))
    # Before hours of indexing, against the scale the index will have; again once it is built.
    check_threshold(threshold, expected_entry(store, post))
    if model is None:
        model = model_ref(store) if store.exists() else DEFAULT_MODEL
    budget = parse_size(memory_budget)
    if regions and (engine == "ray" or budget is not None):
        raise UserError("--regions cannot be combined with --engine ray or --memory-budget (dedupe in slices)")
    index_summary = index_folder(root, index_dir=store.folder, model=model, extraction=extraction, post=post,
                                 regions=regions, engine=engine, ray_address=ray_address, memory_budget=budget)
    manifest = store.read_manifest()
    sliced = engine == "ray" or budget is not None or (store.image_count(manifest) >= SLICED_FROM and not regions)
    if sliced:
        # Dedupe in slices (copyscan.dedupe_scale): the index folder read shard by shard, the
        # pairs on disk, grouped without an Item per image; the kept image is the highest
        # resolution (group.by_resolution).
        from .postprocess import describe_score, load_stored

        entry = store.postprocess_entry(manifest)
        default = default_threshold(store, manifest)
        check_threshold(threshold, entry, default=default)
        threshold = default if threshold is None else threshold
        score = describe_score(entry)
        groups, images, aliases = sliced_dedupe(store, root, load_stored(store), threshold=threshold, output=Path(output),
                                                source=f"{root}|{store.faiss_fingerprint(manifest)}", engine=engine,
                                                ray_address=ray_address, memory_budget=budget)
    else:
        loaded = _load(store)
        check_threshold(threshold, store.postprocess_entry(loaded.manifest), default=loaded.threshold)
        threshold = loaded.threshold if threshold is None else threshold
        score = loaded.score
        full = store.read_table(["width", "height", "bytes", "mtime_ns", "content_hash", "pixel_hash", "descriptor"])
        paths = paths_of(full)
        in_root = np.asarray([under(p, root) for p in paths], dtype=bool)
        whole = loaded.rows.regions == 0  # one item per image: its whole-image row
        candidates = np.nonzero(in_root & whole)[0].tolist()
        # Symlinks and hard links to one file are one file: only one of its names is grouped.
        hashes = full.column("content_hash").to_pylist()
        one_name, aliases = collapse_same_files([paths[i] for i in candidates], [hashes[i] for i in candidates])
        rows = np.asarray([candidates[k] for k in one_name], dtype=np.int64)
        table = full.take(rows)
        groups, images = _grouped(loaded, store, table, full, rows, in_root, whole, threshold, keep, protect_dirs, regions,
                                  verify, progress=extraction.progress)
    mark_protected(groups, protect_dirs)
    attach_aliases(groups, aliases)
    out = Path(output)
    summary = DedupeSummary(str(out), index_summary, images, groups, score=score)
    summary.copies = sum(len(g.copies) for g in groups)
    summary.exact_copies = sum(1 for g in groups for c in g.copies if c.match != "near")
    summary.csv_path = str(out / GROUPS_CSV)
    with RunOutputs(out) as outputs:  # all or nothing, as in query_folder
        write_groups_csv(outputs.staged(GROUPS_CSV), groups)
        write_groups_json(outputs.staged(GROUPS_JSON), groups, threshold, index_summary.model, summary.score, root=root,
                          index_dir=str(store.folder), keep_rule=keep, protect=protect_dirs)
        if report:
            from .report import human_bytes, reclaimable, write_dedupe_report

            figures = {
                "Model": index_summary.model, "Folder": display_path(root), "Score": summary.score, "Threshold": threshold,
                "Images": images, "Groups": len(groups), "Copies": summary.copies, "Exact copies": summary.exact_copies,
                "Reclaimable": human_bytes(sum(reclaimable(g) for g in groups)), "Skipped files": len(index_summary.skipped),
            }
            summary.report_path = str(write_dedupe_report(out, groups, figures, max_items=REPORT_ITEMS))
    # Only once the new groups are in place: an earlier review's decisions name the old groups.
    _set_aside_old_decisions(out)
    summary.seconds = clock.seconds
    return summary


def _grouped(loaded: LoadedIndex, store: IndexStore, table, full, rows, in_root, whole, threshold: float, keep: str,
             protect_dirs: list[str], regions: bool, verify: bool, progress: bool = False) -> tuple[list, int]:
    """dedupe's in-memory path: pairs from the loaded FAISS index (and region pairs with
    `regions`, verified uncertain pairs with `verify`), groups with the `keep` chooser and the
    remembered rejections; (groups, images)."""
    import numpy as np

    from .group import Item, build_groups
    from .keep import facts_of, make_chooser
    from .review_memory import load_memory
    from .same_files import refine_pixel_hashes
    from .store import descriptors_of, paths_of

    items = [
        Item(p, w, h, b, ch, ph, mt)
        for p, w, h, b, ch, ph, mt in zip(
            paths_of(table), table.column("width").to_pylist(), table.column("height").to_pylist(),
            table.column("bytes").to_pylist(), table.column("content_hash").to_pylist(), table.column("pixel_hash").to_pylist(),
            table.column("mtime_ns").to_pylist(),
        )
    ]
    paths = [it.path for it in items]
    boxed = regions or verify  # pairs that may carry the box of the copy on each side
    if boxed:
        from .region_search import (RegionSettings, annotate_groups, place_boxes, region_collection_pairs, stored_features,
                                    verify_uncertain)

        item_of_row = np.full(len(in_root), -1, dtype=np.int64)
        item_of_row[rows] = np.arange(len(rows))
        if regions:
            for i in np.nonzero(in_root & ~whole)[0]:  # region rows belong to their image's item
                item_of_row[i] = item_of_row[loaded.rows.global_of[loaded.paths[i]]]
        # (the region rows of another name of a grouped file stay out with that name; without
        # `regions`, region rows an earlier `--regions` run stored stay out too)
        all_rows = np.nonzero(in_root & (item_of_row >= 0))[0].astype(np.int64)
        all_descriptors = descriptors_of(full.take(all_rows))
        found = region_collection_pairs(loaded, all_rows, all_descriptors, item_of_row, threshold)
        stored = stored_features(loaded)  # each image's local features, where index --regions kept them
        if regions:
            place_boxes(found, paths, stored=stored, place_below=RegionSettings().dedupe_place_below)
        if verify:  # after place_boxes: a verified pair already has its box
            verify_uncertain(loaded, all_rows, all_descriptors, item_of_row, found, paths, threshold,
                             progress=progress, stored=stored)
        pairs = found.pairs()
    else:
        pairs = collection_pairs(loaded, rows, descriptors_of(table), threshold)
    items = refine_pixel_hashes(items, zip(pairs.first.tolist(), pairs.second.tolist()))
    memory = load_memory(store.folder)
    facts_fn = facts_of
    if boxed:  # a photo filling 30% of a screenshot holds 30% of its pixels of detail
        from .region_search import content_boxes

        boxes = content_boxes(found, paths)
        facts_fn = lambda path: facts_of(path, within=boxes.get(path))  # noqa: E731
    groups = build_groups(items, pairs, choose=make_chooser(keep, protect_dirs, memory.preferred, facts_fn=facts_fn),
                          rejected=memory.rejected)
    if boxed:
        annotate_groups(groups, found, {p: i for i, p in enumerate(paths)})
    return groups, len(items)


def _set_aside_old_decisions(out: Path) -> None:
    """Decisions name a run's group numbers, which a new run deals out afresh: an earlier review's
    OUT/decisions.csv is kept as decisions-previous.csv, never applied to the new groups (what it
    decided is remembered in the index and shaped the new groups already)."""
    from .groups_file import DECISIONS_CSV

    old = out / DECISIONS_CSV
    if old.exists():
        os.replace(old, out / f"{old.stem}-previous{old.suffix}")


__all__ = [
    "DEFAULT_THRESHOLD", "DEFAULT_TOP_K", "DedupeSummary", "Extraction", "IndexSummary", "Interrupted", "LoadedIndex",
    "PostOptions", "QuerySummary", "dedupe", "default_dedupe_index_dir", "default_index_dir", "index_folder", "load_index", "query_folder",
]
