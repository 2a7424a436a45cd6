"""Stage 4: the index folder on disk.

    IDX/manifest.json          what built it (model, checksum, dimension, preprocessing) and counts
    IDX/shards/part-NNNNNN.parquet   one row per image: path, size, mtime, hashes, descriptor
    IDX/skipped.csv            files that could not be used, with the reason
    IDX/index.faiss            the search index over all live rows (see ann.py)
    IDX/copyscan.lock          held by the one process writing

Every file is written to a temporary name, fsynced and renamed, so a killed run leaves either
the old file or the new one. Shards are immutable once written except for compaction, which
rewrites one in place atomically. When a path appears in several shards (a changed file
re-embedded), the row in the highest-numbered shard is the live one; compaction later drops
the older rows. The manifest is derived data, written last.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from .discover import Skipped, display_path, under
from .models.base import ModelInfo

FORMAT = "copyscan-index"
FORMAT_VERSION = 1
SHARD_RE = re.compile(r"^part-(\d{6,})\.parquet$")


class IndexError_(RuntimeError):
    """An index folder that cannot be used as asked; the message says why and what to do."""


def schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("path", pa.string()),  # printable (non-UTF-8 bytes replaced)
        pa.field("path_bytes", pa.binary()),  # exact file name bytes, for opening the file
        pa.field("bytes", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("content_hash", pa.string()),
        pa.field("pixel_hash", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("descriptor", pa.list_(pa.float32(), dim)),
    ])


@dataclass
class Row:
    path: str
    bytes: int
    mtime_ns: int
    content_hash: str
    pixel_hash: str
    width: int
    height: int


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def to_path_bytes(path: str) -> bytes:
    return os.fsencode(path)


class IndexStore:
    """Reads and writes one index folder. Create with `IndexStore(folder)`; `open_for_model` checks."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser().absolute()
        self.shard_dir = self.folder / "shards"
        self.manifest_path = self.folder / "manifest.json"
        self.skipped_path = self.folder / "skipped.csv"
        self.faiss_path = self.folder / "index.faiss"
        self._lock: FileLock | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def lock(self, timeout: float = 0.0) -> None:
        """Take the writer's lock; a second writer fails fast with a clear message."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.folder / "copyscan.lock"))
        try:
            self._lock.acquire(timeout=timeout)
        except Timeout:
            self._lock = None
            raise IndexError_(
                f"another copyscan process is writing to {self.folder}; wait for it to finish and run this again"
            ) from None
        self._remove_leftover_temp_files()

    def _remove_leftover_temp_files(self) -> None:
        # Holding the lock, any temporary file here belongs to a writer that was killed mid-write
        # (atomic_write_bytes's ".NAME.XXXX.tmp", the FAISS "index.faiss.tmp"): never read, so
        # harmless, but they would pile up over many interrupted runs.
        for folder in (self.folder, self.shard_dir):
            if not folder.is_dir():
                continue
            for leftover in folder.iterdir():
                if leftover.name.endswith(".tmp") and (leftover.name.startswith(".") or leftover == Path(str(self.faiss_path) + ".tmp")):
                    leftover.unlink(missing_ok=True)

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise IndexError_(f"no copyscan index at {self.folder}: build one with `copyscan index DIR`") from None
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{self.manifest_path} is unreadable ({exc}); rebuild the index into a new folder") from None
        if manifest.get("format") != FORMAT:
            raise IndexError_(f"{self.folder} is not a copyscan index (no '{FORMAT}' manifest)")
        if int(manifest.get("format_version", 0)) != FORMAT_VERSION:
            raise IndexError_(
                f"{self.folder} has index format v{manifest.get('format_version')}, this copyscan reads v{FORMAT_VERSION}; "
                "rebuild it with this version into a new folder"
            )
        return manifest

    def check_model(self, info: ModelInfo) -> None:
        """Refuse to mix models or dimensions in one index."""
        if not self.exists():
            return
        m = self.read_manifest()["model"]
        if m["name"] != info.name or m["weights_sha256"] != info.weights_sha256 or int(m["dim"]) != info.dim:
            raise IndexError_(
                f"{self.folder} holds descriptors of model {m['name']} ({m['dim']}-d, weights {m['weights_sha256'][:12]}), "
                f"not {info.name} ({info.dim}-d, weights {info.weights_sha256[:12]}); use that model, or another --index-dir"
            )

    # ---- shards -----------------------------------------------------------------------------

    def shard_paths(self) -> list[Path]:
        if not self.shard_dir.is_dir():
            return []
        shards = [p for p in self.shard_dir.iterdir() if SHARD_RE.match(p.name)]
        return sorted(shards, key=lambda p: int(SHARD_RE.match(p.name).group(1)))

    def next_shard_number(self) -> int:
        shards = self.shard_paths()
        return int(SHARD_RE.match(shards[-1].name).group(1)) + 1 if shards else 0

    def write_shard(self, number: int, table: pa.Table) -> Path:
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        target = self.shard_dir / f"part-{number:06d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        atomic_write_bytes(target, sink.getvalue().to_pybytes())
        return target

    def read_table(self, columns: list[str] | None = None, root: str | None = None) -> pa.Table:
        """All live rows (latest shard wins for a path), in shard then row order; optionally only under `root`.

        The `path_bytes` column is always included: it is the row's identity.
        """
        cols = None if columns is None else list(dict.fromkeys(["path_bytes", *columns]))
        tables = []
        for shard in self.shard_paths():
            try:
                tables.append(_read_shard(shard, cols))
            except (OSError, pa.ArrowInvalid) as exc:
                raise IndexError_(f"shard {shard} is unreadable ({exc}); delete it and run `copyscan index` again") from None
        if not tables:
            return _empty(cols, self._dim_or_none())
        # Shards written before region rows existed lack their columns: null there, read as whole images.
        table = pa.concat_tables(tables, promote_options="default")
        keys = table.column("path_bytes").to_pylist()
        # A path's live rows are all its rows in the newest shard holding it (its whole-image row
        # and any region rows, copyscan.regions).
        shard_of = np.repeat(np.arange(len(tables)), [t.num_rows for t in tables])
        last: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            last[key] = shard_of[i]
        keep = np.fromiter((i for i, key in enumerate(keys) if last[key] == shard_of[i]), dtype=np.int64)
        if root is not None:
            keep = np.asarray([i for i in keep if under(os.fsdecode(keys[i]), root)], dtype=np.int64)
        if len(keep) != table.num_rows:
            table = table.take(pa.array(keep, type=pa.int64()))
        return table

    def paths_with_regions(self) -> set[str]:
        """Paths whose live rows include region rows (copyscan.regions)."""
        t = self.read_table(["region"])
        regions = t.column("region").to_pylist()
        return {os.fsdecode(p) for p, r in zip(t.column("path_bytes").to_pylist(), regions) if r}

    def known_files(self) -> dict[str, tuple[int, int]]:
        """path -> (bytes, mtime_ns) of every live row."""
        t = self.read_table(["bytes", "mtime_ns"])
        return {
            os.fsdecode(p): (b, m)
            for p, b, m in zip(t.column("path_bytes").to_pylist(), t.column("bytes").to_pylist(), t.column("mtime_ns").to_pylist())
        }

    def compact(self, dead: set[str]) -> int:
        """Drop rows of `dead` paths and rows superseded by later shards; rewrites affected shards."""
        dead_keys = {to_path_bytes(p) for p in dead}
        shards = self.shard_paths()
        later: set[bytes] = set()
        dropped = 0
        # Walk newest first: a path seen in a newer shard is superseded in every older one.
        for shard in reversed(shards):
            keys = pq.read_table(shard, columns=["path_bytes"]).column("path_bytes").to_pylist()
            keep = [i for i, k in enumerate(keys) if k not in dead_keys and k not in later]
            later.update(keys)
            if len(keep) == len(keys):
                continue
            dropped += len(keys) - len(keep)
            if keep:
                table = pq.read_table(shard).take(pa.array(keep, type=pa.int64()))
                sink = pa.BufferOutputStream()
                pq.write_table(table, sink, compression="zstd")
                atomic_write_bytes(shard, sink.getvalue().to_pybytes())
            else:
                shard.unlink()
        return dropped

    def shard_fingerprint(self) -> str:
        parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in self.shard_paths()]
        return _digest("|".join(parts))

    def _dim_or_none(self) -> int | None:
        try:
            return int(self.read_manifest()["model"]["dim"])
        except IndexError_:
            return None

    # ---- skipped files ----------------------------------------------------------------------

    def read_skipped(self) -> list[Skipped]:
        if not self.skipped_path.exists():
            return []
        with open(self.skipped_path, newline="", encoding="utf-8") as fh:
            return [
                Skipped(os.fsdecode(bytes.fromhex(r["path_hex"])), r["reason"], int(r["bytes"]), int(r["mtime_ns"]))
                for r in csv.DictReader(fh)
            ]

    def write_skipped(self, skipped: Iterable[Skipped]) -> None:
        rows = sorted(skipped, key=lambda s: s.path)
        buf = _StringSink()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "reason", "bytes", "mtime_ns", "path_hex"])
        for s in rows:
            writer.writerow([display_path(s.path), s.reason, s.bytes, s.mtime_ns, os.fsencode(s.path).hex()])
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.skipped_path, buf.getvalue().encode("utf-8"))

    # ---- manifest ---------------------------------------------------------------------------

    def write_manifest(self, info: ModelInfo, counts: dict[str, int], faiss_meta: dict[str, Any], roots: list[str]) -> dict[str, Any]:
        from . import __version__

        old = self.read_manifest() if self.exists() else {}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "copyscan_version": __version__,
            "created": old.get("created") or _now(),
            "updated": _now(),
            "model": {
                "name": info.name,
                "weights_sha256": info.weights_sha256,
                "dim": info.dim,
                "runtime": info.runtime,
                "source": info.source,
            },
            "preprocessing": info.preprocessing(),
            "metric": "inner_product (cosine of L2-normalised descriptors)",
            "counts": counts,
            "roots": sorted(set(roots) | set(old.get("roots", []))),
            "faiss": faiss_meta,
        }
        if old.get("postprocess"):  # set by set_manifest_entry; kept until switched off there
            manifest["postprocess"] = old["postprocess"]
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        return manifest

    def set_manifest_entry(self, key: str, value: Any) -> None:
        """Set (or, with None, remove) one top-level entry of an existing manifest."""
        manifest = self.read_manifest()
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
        manifest["updated"] = _now()
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())


class _StringSink:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    def getvalue(self) -> str:
        return "".join(self.parts)


def _digest(text: str) -> str:
    import hashlib

    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_shard(shard: Path, columns: list[str] | None) -> pa.Table:
    if columns is None:
        return pq.read_table(shard)
    present = set(pq.read_schema(shard).names)
    table = pq.read_table(shard, columns=[c for c in columns if c in present])
    for name in columns:  # optional columns (region rows) of an older shard
        if name not in present and name in REGION_FIELDS:
            table = table.append_column(REGION_FIELDS[name], pa.nulls(table.num_rows, REGION_FIELDS[name].type))
    return table


def _empty(columns: list[str] | None, dim: int | None) -> pa.Table:
    s = schema(dim or 1)
    names = columns or s.names
    types = {f.name: f.type for f in [*s, *REGION_FIELDS.values()]}
    return pa.table({n: pa.array([], type=types[n]) for n in names})


# Optional columns of region rows (copyscan.regions): 0 and null box for a whole image, k >= 1 for
# the image's k-th region, with its box (x0, y0, x1, y1 in fractions of width and height).
REGION_FIELDS = {
    "region": pa.field("region", pa.int16()),
    "box": pa.field("box", pa.list_(pa.float32(), 4)),
}


def rows_to_table(rows: list[Row], descriptors: np.ndarray, regions: np.ndarray | None = None,
                  boxes: np.ndarray | None = None) -> pa.Table:
    """A shard's table; `regions` (n,) and `boxes` (n, 4) add the region columns."""
    dim = descriptors.shape[1]
    flat = pa.array(np.ascontiguousarray(descriptors, dtype=np.float32).reshape(-1), type=pa.float32())
    table = _rows_table(rows, flat, dim)
    if regions is not None:
        box_flat = pa.array(np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1), type=pa.float32())
        table = table.append_column(REGION_FIELDS["region"], pa.array(np.asarray(regions, dtype=np.int16)))
        table = table.append_column(REGION_FIELDS["box"], pa.FixedSizeListArray.from_arrays(box_flat, 4))
    return table


def _rows_table(rows: list[Row], flat: pa.Array, dim: int) -> pa.Table:
    return pa.table(
        {
            "path": pa.array([display_path(r.path) for r in rows], pa.string()),
            "path_bytes": pa.array([to_path_bytes(r.path) for r in rows], pa.binary()),
            "bytes": pa.array([r.bytes for r in rows], pa.int64()),
            "mtime_ns": pa.array([r.mtime_ns for r in rows], pa.int64()),
            "content_hash": pa.array([r.content_hash for r in rows], pa.string()),
            "pixel_hash": pa.array([r.pixel_hash for r in rows], pa.string()),
            "width": pa.array([r.width for r in rows], pa.int32()),
            "height": pa.array([r.height for r in rows], pa.int32()),
            "descriptor": pa.FixedSizeListArray.from_arrays(flat, dim),
        },
        schema=schema(dim),
    )


def descriptors_of(table: pa.Table) -> np.ndarray:
    """The descriptor column as a (N, dim) float32 array, without a Python-level copy per row."""
    col = table.column("descriptor").combine_chunks()
    dim = col.type.list_size
    if len(col) == 0:
        return np.zeros((0, dim), np.float32)
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def paths_of(table: pa.Table) -> list[str]:
    return [os.fsdecode(b) for b in table.column("path_bytes").to_pylist()]
