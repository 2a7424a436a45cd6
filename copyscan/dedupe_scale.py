"""Dedupe's pairs and groups for collections too large for one in-memory search: the pair search
in query slices against a memory-mapped index (pair_search), run as a loop here or as Ray tasks
(`--engine ray`), pairs written to Parquet, groups streamed over them (group_stream).

Used by api.dedupe with `--engine ray`, with `--memory-budget`, or from SLICED_FROM images up.
The index folder is read shard by shard (store.live_rows, store.descriptor_blocks): paths, sizes
and hashes stay Arrow columns, and the vectors go to the memory-mapped file one shard at a time,
so no Python object per image and no second copy of the descriptors is ever held. The work
folder (OUT/pairs/) keeps the vectors, the index and the pair files while the run lasts: an
interrupted dedupe resumes at the first slice not written. Afterwards the vectors and the index
are removed and the pair files stay (columns first, second, score: row numbers within the
folder, in the order of groups.csv's source table).

The steps (`read_rows`, `prepare_search`, `run_search`, `group`) are separate so that a
benchmark can measure each; `sliced_dedupe` runs them in order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .group_stream import ItemColumns, build_groups_streamed, hash_codes
from .pair_search import PairSearch, prepare_streamed, read_pairs, run_local
from .results import Group
from .store import IndexStore, LiveRows

SLICED_FROM = 1_000_000  # images from which dedupe searches in slices even when not asked to
WORK_DIR = "pairs"
ITEM_COLUMNS = ["width", "height", "bytes", "content_hash", "pixel_hash"]


def read_rows(store: IndexStore, root: str) -> tuple[LiveRows, dict[str, list[str]]]:
    """The whole-image rows under `root`, one name per file (symlinks and hard links to one file
    are one file), and the other names of each file kept."""
    from .same_files import collapse_same_files

    rows = store.live_rows(ITEM_COLUMNS, root=root, whole_images=True)
    # Only names whose content hash another row shares can name one file: those few become
    # Python objects, to be stat'ed.
    codes = hash_codes(rows.table.column("content_hash"))
    has = codes >= 0
    if not has.any():
        return rows, {}
    shared = np.nonzero(has & (np.bincount(codes[has])[np.where(has, codes, 0)] > 1))[0]
    if not len(shared):
        return rows, {}

    taken = rows.table.take(shared)
    paths = [os.fsdecode(p) for p in taken.column("path_bytes").to_pylist()]
    one_name, aliases = collapse_same_files(paths, taken.column("content_hash").to_pylist())
    if len(one_name) == len(shared):
        return rows, aliases
    drop = np.setdiff1d(shared, shared[np.asarray(one_name, dtype=np.int64)])
    return rows.take(np.setdiff1d(np.arange(len(rows)), drop)), aliases


def prepare_search(store: IndexStore, rows: LiveRows, post, *, threshold: float, output: Path, source: str,
                   memory_budget: int | None = None) -> PairSearch:
    """The pair search's work folder: vectors written shard by shard from the store (and their
    pair form, where score normalisation makes it differ), the index the budget allows."""
    from .score import pairs_of, references_of

    probe = np.zeros((1, store.stored_model().dim), np.float32)
    probe[0, 0] = 1.0
    dim = references_of(post, probe).shape[1]

    def blocks():
        for descriptors in store.descriptor_blocks(rows):
            yield references_of(post, descriptors), (pairs_of(post, descriptors) if post.score_norm else None)

    return prepare_streamed(Path(output) / WORK_DIR, len(rows), dim, blocks, threshold=threshold,
                            budget=memory_budget, source=source, with_queries=bool(post.score_norm))


def run_search(search: PairSearch, *, engine: str = "local", ray_address: str | None = None) -> None:
    if engine == "ray":
        from .engines.ray_engine import run_slices

        run_slices(search, address=ray_address)
    else:
        run_local(search)


def group(rows: LiveRows, search: PairSearch, threshold: float) -> list[Group]:
    """Groups over the pair files, an Item made only for the images in some group."""
    table = rows.table
    items = ItemColumns(table.column("path_bytes"), table.column("width").to_numpy(), table.column("height").to_numpy(),
                        table.column("bytes").to_numpy(), table.column("content_hash"), table.column("pixel_hash"))
    return build_groups_streamed(items, read_pairs([f for f in search.files() if f.exists()]), threshold)


def clean_up(search: PairSearch) -> None:
    for scratch in (search.vectors_path, search.queries_path, search.index_path, search.work / "index.ivfdata"):
        scratch.unlink(missing_ok=True)


def sliced_dedupe(store: IndexStore, root: str, post, *, threshold: float, output: Path, source: str,
                  engine: str = "local", ray_address: str | None = None,
                  memory_budget: int | None = None) -> tuple[list[Group], int, dict[str, list[str]]]:
    """(groups, images, other names of each file) of the images under `root` in `store`."""
    rows, aliases = read_rows(store, root)
    search = prepare_search(store, rows, post, threshold=threshold, output=output, source=source,
                            memory_budget=memory_budget)
    run_search(search, engine=engine, ray_address=ray_address)
    groups = group(rows, search, threshold)
    clean_up(search)
    return groups, len(rows), aliases
