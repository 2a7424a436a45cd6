"""An index folder that lost its manifest, or has shards the manifest does not list.

Every shard carries its model's identity (name, weights SHA-256, dimension, preprocessing) in its
Parquet metadata, so the manifest is derived data that can be rebuilt:

* `recover_manifest`: manifest.json missing, empty or not JSON -> a manifest rebuilt in memory
  from the shards, which must all hold one model (two models are refused, as in a whole index).
  Readers use it as is; a writer (under the lock) saves it.
* `adopt_orphans`: a writer killed between renaming a shard into place and listing it leaves an
  unlisted shard. Above the listed ones, it is finished work of this model: listed again. Below
  them, it is a compaction leftover (its rows were dropped on purpose): deleted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from .discover import display_path
from .oserrors import writing

if TYPE_CHECKING:
    from .store import IndexStore

MISSING = "missing"
DAMAGED = "damaged"


def manifest_problem(store: "IndexStore") -> str | None:
    """None for a manifest that parses as JSON; else MISSING or DAMAGED (empty, truncated, not JSON)."""
    try:
        text = store.manifest_path.read_text()
    except FileNotFoundError:
        return MISSING
    except IsADirectoryError:
        return DAMAGED
    except UnicodeDecodeError:
        return DAMAGED
    try:
        doc = json.loads(text)
    except ValueError:
        return DAMAGED
    return None if isinstance(doc, dict) else DAMAGED


def _identity_key(identity: dict[str, Any]) -> tuple:
    m = identity["model"]
    return m["name"], m["weights_sha256"], int(m["dim"]), json.dumps(identity.get("preprocessing"), sort_keys=True)


def _describe(identity: dict[str, Any]) -> str:
    m = identity["model"]
    return f"{m['name']} ({m['dim']}-d, weights {m['weights_sha256'][:12]})"


def read_identities(store: "IndexStore", problem: str) -> tuple[list[tuple[Path, dict, int]], list[Path]]:
    """(shard, identity, rows) of every readable shard on disk, and the unreadable ones."""
    from .store import IndexError_, shard_identity

    good, bad = [], []
    for shard in store.shard_files():
        try:
            identity = shard_identity(shard)
            rows = pq.ParquetFile(shard).metadata.num_rows
        except (OSError, pa.ArrowInvalid, ValueError):
            bad.append(shard)
            continue
        if identity is None:
            raise IndexError_(
                f"{display_path(str(store.manifest_path))} is {problem} and shard {display_path(str(shard))} "
                "was written by an older copyscan, without its model's identity: rebuild the index into a new folder "
                "with `copyscan index DIR --index-dir NEW`"
            )
        good.append((shard, identity, rows))
    return good, bad


def recover_manifest(store: "IndexStore", problem: str) -> dict[str, Any]:
    """A manifest rebuilt from the shards' metadata (in memory; see the module docstring)."""
    from . import __version__
    from .store import FORMAT, FORMAT_VERSION, IndexError_

    shown = display_path(str(store.manifest_path))
    if not store.shard_files():
        if problem == MISSING:
            raise IndexError_(f"no copyscan index at {store.folder}: build one with `copyscan index DIR`")
        raise IndexError_(f"{shown} is damaged and the index has no shards to rebuild it from: "
                          f"delete {display_path(str(store.folder))} and run `copyscan index DIR` again")
    good, bad = read_identities(store, problem)
    if not good:
        raise IndexError_(f"{shown} is {problem} and every shard of {display_path(str(store.folder))} is unreadable: "
                          "delete the folder and run `copyscan index DIR` again")
    first_shard, first, _ = good[0]
    for shard, identity, _ in good[1:]:
        if _identity_key(identity) != _identity_key(first):
            raise IndexError_(
                f"{shown} is {problem}, and the shards hold two models: {first_shard.name} {_describe(first)}, "
                f"{shard.name} {_describe(identity)}; an index holds one model: move the shards of one of them "
                "to another folder"
            )
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "copyscan_version": __version__,
        "created": now,
        "updated": now,
        "model": first["model"],
        "preprocessing": first.get("preprocessing"),
        "metric": "inner_product (cosine of L2-normalised descriptors)",
        "counts": {"images": sum(rows for _, _, rows in good), "shards": len(good), "skipped": len(store.read_skipped())},
        "roots": [],
        "faiss": {"status": f"manifest {problem}: rebuilt from the shards"},  # FAISS is stale: rebuilt
        "shards": [shard.name for shard, _, _ in good],
        "recovered": problem,
    }
    post = _recover_postprocess(store, first["model"]["weights_sha256"], int(first["model"]["dim"]))
    if post:
        manifest["postprocess"] = post
    note = (f"{shown} was {problem}: rebuilt from {len(good)} shards ({_describe(first)})"
            + (f"; {len(bad)} unreadable shards left out" if bad else ""))
    if note not in store.notes:
        store.notes.append(note)
    return manifest


def _recover_postprocess(store: "IndexStore", weights_sha256: str, dim: int) -> dict[str, Any] | None:
    """The manifest entry of the post-processing file, from the file itself (settings inside)."""
    from .background import MANIFEST_KEY, POST_FILE  # noqa: F401  (the names the entry uses)
    from .postprocess import PostProcess, sha256_of

    path = store.folder / POST_FILE
    try:
        data = path.read_bytes()
        post = PostProcess.from_bytes(data, str(path))
    except Exception:  # absent or damaged: the index simply has no post-processing
        return None
    if post.model_sha256 != weights_sha256:
        return None
    out_dim = post.out_dim(dim)
    return {
        "file": POST_FILE, "sha256": sha256_of(data), "whiten": post.whiten, "score_norm": post.score_norm, "dim": None,
        "dim_out": out_dim, "beta": post.beta, "ranks": list(post.ranks), "background": None,
        "background_images": post.background_count, "threshold": post.extra.get("threshold"),
        "pipeline": (f"PCAW{out_dim},L2norm" if post.whiten else "L2norm") + (f" + score norm (beta {post.beta:g})" if post.score_norm else ""),
    }


def adopt_orphans(store: "IndexStore") -> None:
    """List again the unlisted shards a killed writer finished; delete compaction leftovers and
    unreadable unlisted shards. The caller holds the writer's lock."""
    from .store import IndexError_, shard_identity, shard_number

    manifest = store.read_manifest()
    listed = manifest.get("shards")
    if listed is None:  # a manifest from before shards were listed: every shard is live
        return
    names = set(listed)
    top = max((shard_number(Path(n)) for n in names), default=-1)
    key = _identity_key(manifest)
    adopt = []
    for shard in store.shard_files():
        if shard.name in names:
            continue
        try:
            identity = shard_identity(shard) if shard_number(shard) > top else None
        except (OSError, pa.ArrowInvalid, ValueError):
            identity = None  # unreadable: nothing to keep
        if identity is not None and _identity_key(identity) != key:
            raise IndexError_(
                f"shard {display_path(str(shard))} holds descriptors of {_describe(identity)}, not of this index's "
                f"{_describe(manifest)}; move it out of {display_path(str(store.shard_dir))}"
            )
        if identity is None:
            with writing(shard, "--index-dir"):
                shard.unlink(missing_ok=True)
        else:
            adopt.append(shard.name)
    if adopt:
        store._set_listing([*listed, *adopt])


__all__ = ["DAMAGED", "MISSING", "adopt_orphans", "manifest_problem", "recover_manifest"]
