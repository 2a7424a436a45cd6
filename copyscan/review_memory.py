"""What a person decided in a review, remembered for later dedupe runs of the same folder.

Kept in dedupe's own index folder of that folder as `review.csv` (kind,hash_a,hash_b): a pair of
files marked "not a copy" is never proposed again, and a file chosen to keep is preferred
again. Files are named by their content hash, so a rename keeps the memory and an edit (a new
file, really) forgets it.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from .groups_file import Decision, DedupeRun
from .store import atomic_write_bytes

MEMORY_FILE = "review.csv"
HEADER = ["kind", "hash_a", "hash_b"]


@dataclass
class Memory:
    rejected: set[frozenset[str]] = field(default_factory=set)  # pairs of content hashes: not copies
    preferred: set[str] = field(default_factory=set)  # content hashes chosen to keep


def load_memory(index_dir: str | os.PathLike) -> Memory:
    mem = Memory()
    path = Path(index_dir) / MEMORY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return mem
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("kind") == "not-a-copy" and row.get("hash_a") and row.get("hash_b"):
            mem.rejected.add(frozenset((row["hash_a"], row["hash_b"])))
        elif row.get("kind") == "keep" and row.get("hash_a"):
            mem.preferred.add(row["hash_a"])
    return mem


def remember(run: DedupeRun, decisions: list[Decision]) -> int:
    """Add a review's decisions to the memory of the run's index folder; returns the rows added.

    A file marked not-a-copy is rejected against every other file of its group.
    """
    if not run.index_dir or not decisions:
        return 0
    folder = Path(run.index_dir)
    mem = load_memory(folder)
    rows: list[list[str]] = []
    for d in decisions:
        records = {r.path: r for r in run.groups.get(d.group_id, [])}
        mine = records.get(d.path)
        if mine is None or not mine.content_hash:
            continue
        if d.decision == "keep" and mine.content_hash not in mem.preferred:
            mem.preferred.add(mine.content_hash)
            rows.append(["keep", mine.content_hash, ""])
        elif d.decision == "not-a-copy":
            for other in records.values():
                pair = frozenset((mine.content_hash, other.content_hash))
                if other.content_hash and other.content_hash != mine.content_hash and pair not in mem.rejected:
                    mem.rejected.add(pair)
                    rows.append(["not-a-copy", mine.content_hash, other.content_hash])
    if not rows:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MEMORY_FILE
    try:
        old = path.read_text(encoding="utf-8")
    except OSError:
        old = ""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    if not old:
        writer.writerow(HEADER)
    writer.writerows(rows)
    atomic_write_bytes(path, (old + buf.getvalue()).encode("utf-8"))
    return len(rows)
