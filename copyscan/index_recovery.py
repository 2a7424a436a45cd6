"""What the shards of an index say about themselves, for a manifest that is lost, damaged or
out of step with them. The store (store.py) asks and writes; this module only reads shards.

Every shard carries its model's identity (name, weights SHA-256, dimension, preprocessing) in its
Parquet key-value metadata, under SHARD_META_KEY, so the manifest is derived data:

* `survey`: manifest.json missing, empty or not JSON -> the shards' one identity and rows, for
  the store to rebuild the manifest from. Shards of two models are refused, as in a whole index.
* `sort_orphans`: a writer killed between renaming a shard into place and listing it leaves an
  unlisted shard. Above the listed ones, it is finished work of this model: adopted. Below
  them, it is a compaction leftover (its rows were dropped on purpose): deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .discover import display_path
from .errors import IndexFolderError

SHARD_META_KEY = b"copyscan"  # Parquet key-value metadata of a shard: its model's identity (JSON)
MISSING = "missing"
DAMAGED = "damaged"


def manifest_problem(path: Path) -> str | None:
    """None for a manifest that parses as a JSON object; else MISSING or DAMAGED (empty,
    truncated, not JSON)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return MISSING
    except (OSError, UnicodeDecodeError, ValueError):
        return DAMAGED
    return None if isinstance(doc, dict) else DAMAGED


def shard_identity(path: Path) -> dict[str, Any] | None:
    """The identity a shard carries (None: written before shards had one). Reads the footer
    only; raises OSError / ArrowInvalid for an unreadable file."""
    raw = (pq.read_schema(path).metadata or {}).get(SHARD_META_KEY)
    return json.loads(raw) if raw else None


def identity_key(identity: dict[str, Any]) -> tuple:
    """What must be equal for two sets of descriptors to share an index."""
    m = identity["model"]
    return m["name"], m["weights_sha256"], int(m["dim"]), json.dumps(identity.get("preprocessing"), sort_keys=True)


def describe(identity: dict[str, Any]) -> str:
    m = identity["model"]
    return f"{m['name']} ({m['dim']}-d, weights {m['weights_sha256'][:12]})"


@dataclass
class Survey:
    identity: dict[str, Any]  # {"model": ..., "preprocessing": ...}, shared by every readable shard
    shards: list[Path]  # the readable ones, in number order
    rows: int  # rows in them (superseded rows included)
    unreadable: list[Path]


def survey(shards: list[Path], manifest: Path, problem: str) -> Survey:
    """Read every shard's identity for a `problem` ("missing", "damaged") manifest; refuse what
    cannot be rebuilt, saying why and what to do."""
    shown = display_path(str(manifest))
    folder = display_path(str(manifest.parent))
    if not shards:
        if problem == MISSING:
            raise IndexFolderError(f"no copyscan index at {folder}: build one with `copyscan index DIR`")
        raise IndexFolderError(f"{shown} is damaged and the index has no shards to rebuild it from: "
                               f"delete {folder} and run `copyscan index DIR` again")
    good: list[tuple[Path, dict, int]] = []
    bad: list[Path] = []
    for shard in shards:
        try:
            identity = shard_identity(shard)
            rows = pq.ParquetFile(shard).metadata.num_rows
        except (OSError, pa.ArrowInvalid, ValueError):
            bad.append(shard)
            continue
        if identity is None:
            raise IndexFolderError(
                f"{shown} is {problem} and shard {display_path(str(shard))} was written by an older copyscan, "
                "without its model's identity: rebuild the index into a new folder with `copyscan index DIR --index-dir NEW`"
            )
        good.append((shard, identity, rows))
    if not good:
        raise IndexFolderError(f"{shown} is {problem} and every shard of {folder} is unreadable: "
                               "delete the folder and run `copyscan index DIR` again")
    first_shard, first, _ = good[0]
    for shard, identity, _ in good[1:]:
        if identity_key(identity) != identity_key(first):
            raise IndexFolderError(
                f"{shown} is {problem}, and the shards hold two models: {first_shard.name} {describe(first)}, "
                f"{shard.name} {describe(identity)}; an index holds one model: move the shards of one of them "
                "to another folder"
            )
    return Survey({"model": first["model"], "preprocessing": first.get("preprocessing")},
                  [s for s, _, _ in good], sum(r for _, _, r in good), bad)


def sort_orphans(orphans: list[Path], listed_top: int, identity: dict[str, Any],
                 number) -> tuple[list[Path], list[Path]]:
    """(to adopt, to delete) among unlisted shards; `listed_top` is the highest listed shard
    number and `number(path)` a shard's number. An orphan of another model is refused."""
    adopt, delete = [], []
    for shard in orphans:
        try:
            found = shard_identity(shard) if number(shard) > listed_top else None
        except (OSError, pa.ArrowInvalid, ValueError):
            found = None  # unreadable: nothing to keep
        if found is not None and identity_key(found) != identity_key(identity):
            raise IndexFolderError(
                f"shard {display_path(str(shard))} holds descriptors of {describe(found)}, not of this index's "
                f"{describe(identity)}; move it out of {display_path(str(shard.parent))}"
            )
        (delete if found is None else adopt).append(shard)
    return adopt, delete


__all__ = ["DAMAGED", "MISSING", "SHARD_META_KEY", "Survey", "describe", "identity_key", "manifest_problem",
           "shard_identity", "sort_orphans", "survey"]
