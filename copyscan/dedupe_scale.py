"""Dedupe's pairs and groups for collections too large for one in-memory search: the pair search
in query slices against a memory-mapped index (pair_search), run as a loop here or as Ray tasks
(`--engine ray`), pairs written to Parquet, groups streamed over them (group_stream).

Used by api.dedupe with `--engine ray`, with `--memory-budget`, or from SLICED_FROM images up.
The work folder (OUT/pairs/) keeps the vectors, the index and the pair files while the run lasts:
an interrupted dedupe resumes at the first slice not written. Afterwards the vectors and the
index are removed and the pair files stay (columns first, second, score: row numbers within the
folder, in the order of groups.csv's source table).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from .group_stream import ItemColumns, build_groups_streamed
from .pair_search import prepare, read_pairs, run_local
from .results import Group

SLICED_FROM = 1_000_000  # images from which dedupe searches in slices even when not asked to
WORK_DIR = "pairs"


def sliced_groups(table: pa.Table, references: np.ndarray, queries: np.ndarray | None, *,
                  threshold: float, output: Path, source: str, engine: str = "local", ray_address: str | None = None,
                  memory_budget: int | None = None) -> list[Group]:
    """Groups of the folder rows in `table` (columns path_bytes, width, height, bytes,
    content_hash, pixel_hash: no Python object per row), from `references` (the indexed form of their vectors) searched
    with `queries` (their pair form, when it differs)."""
    work = Path(output) / WORK_DIR
    search = prepare(work, references, threshold=threshold, budget=memory_budget, source=source, queries=queries)
    if engine == "ray":
        from .engines.ray_engine import run_slices

        run_slices(search, address=ray_address)
    else:
        run_local(search)
    items = ItemColumns(table.column("path_bytes"), table.column("width").to_numpy(), table.column("height").to_numpy(),
                        table.column("bytes").to_numpy(), table.column("content_hash"), table.column("pixel_hash"))
    groups = build_groups_streamed(items, read_pairs(search.files()), threshold)
    for scratch in (search.vectors_path, search.queries_path, search.index_path, work / "index.ivfdata"):
        scratch.unlink(missing_ok=True)
    return groups
