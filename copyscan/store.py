"""Stage 4: the index folder on disk.

    IDX/manifest.json          what built it (model, checksum, dimension, preprocessing), counts,
                               and the list of live shards: a shard not listed is never read
    IDX/shards/part-NNNNNN.parquet   one row per image: path, size, mtime, hashes, descriptor; its
                               Parquet metadata names the model (see index_recovery.py), so a
                               lost or damaged manifest is rebuilt from the shards
    IDX/skipped.csv            files that could not be used, with the reason
    IDX/index.faiss            the search index over all live rows (see ann.py)
    IDX/copyscan.lock          held by the one process writing

Every file is written to a temporary name, fsynced and renamed, so a killed run leaves either
the old file or the new one. Shards are immutable once written except for compaction, which
rewrites one in place atomically. When a path appears in several shards (a changed file
re-embedded), the row in the highest-numbered shard is the live one; compaction later drops
the older rows. A new shard is listed in the manifest right after it is renamed into place; a
writer killed in between leaves it unlisted, and the next writer adopts it (see `lock`).
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
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from .discover import Skipped, display_path, under
from .oserrors import is_user_fixable, remove_quietly, writing

FORMAT = "copyscan-index"
FORMAT_VERSION = 1
SHARD_RE = re.compile(r"^part-(\d{6,})\.parquet$")
if TYPE_CHECKING:
    from .models.base import ModelInfo

SHARD_META_KEY = b"copyscan"  # Parquet key-value metadata of a shard: the model's identity (JSON)


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


def atomic_write_bytes(path: Path, data: bytes, where: str = "--index-dir") -> None:
    """Write via a temporary file, fsync, rename. A full disk or a write-protected folder ends
    in a WriteError naming `path` (with `where`, the option that chose the folder), and the
    temporary file is gone either way."""
    atomic_write(path, lambda fh: fh.write(data), where)


def atomic_write(path: Path, write: Callable[[IO[bytes]], object], where: str = "--index-dir") -> None:
    """atomic_write_bytes for content that `write(fh)` streams (a FAISS index, never all in memory)."""
    tmp = None
    try:
        with writing(path, where):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            remove_quietly(tmp)
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
        # Set by `lock` when the folder cannot be written at all (a read-only disk, a protected
        # folder): a run with nothing to change still works; one that must write fails there.
        self.read_only = False
        self.notes: list[str] = []  # what a reader should be told (a manifest rebuilt from the shards)

    # ---- lifecycle -------------------------------------------------------------------------

    def exists(self) -> bool:
        # Shards without a manifest are an index too: its manifest is rebuilt from them.
        return self.manifest_path.exists() or bool(self.shard_files())

    def lock(self, timeout: float = 0.0) -> None:
        """Take the writer's lock; a second writer fails fast with a clear message.

        Holding it, the writer tidies what a killed writer left: temporary files, shards written
        but not yet listed in the manifest (adopted when they hold this index's model), and a
        lost or damaged manifest (rebuilt from the shards)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.folder / "copyscan.lock"))
            self._lock.acquire(timeout=timeout)
        except Timeout:
            self._lock = None
            raise IndexError_(
                f"another copyscan process is writing to {self.folder}; wait for it to finish and run this again"
            ) from None
        except OSError as exc:
            self._lock = None
            if not is_user_fixable(exc) or not (self.folder.is_dir() and self.exists()):
                with writing(self.folder, "--index-dir"):
                    raise
            # Nobody can write here, so nobody else is writing either: go on reading.
            self.read_only = True
            return
        try:
            self._remove_leftover_temp_files()
            self._repair()
        except BaseException:
            self.unlock()
            raise

    def _repair(self) -> None:
        if not self.exists():
            return
        from .index_recovery import adopt_orphans, manifest_problem

        if manifest_problem(self) is not None:
            manifest = self.read_manifest()  # rebuilt from the shards (or refused: other models)
            self._write_manifest_doc(manifest)
        adopt_orphans(self)

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

    def discard_if_empty(self, remove_folder: bool) -> None:
        """After a new index failed before its first shard: remove the files it began with, then
        let go of the lock (call holding it). Nothing is removed once a shard exists: saved work."""
        if self._lock is None or self.shard_files():
            self.unlock()
            return
        for name in ("manifest.json", "skipped.csv", "index.faiss"):
            remove_quietly(self.folder / name)
        try:
            self.shard_dir.rmdir()
        except OSError:
            pass  # not there, or not empty
        self.unlock()
        if remove_folder and [p.name for p in self.folder.iterdir()] == ["copyscan.lock"]:
            remove_quietly(self.folder / "copyscan.lock")
            try:
                self.folder.rmdir()
            except OSError:
                pass  # another run has just begun here

    def read_manifest(self) -> dict[str, Any]:
        from .index_recovery import manifest_problem, recover_manifest

        problem = manifest_problem(self)
        if problem is not None:
            return recover_manifest(self, problem)
        manifest = json.loads(self.manifest_path.read_text())
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

    def shard_files(self) -> list[Path]:
        """Every shard file on disk, listed in the manifest or not, in number order."""
        if not self.shard_dir.is_dir():
            return []
        shards = [p for p in self.shard_dir.iterdir() if SHARD_RE.match(p.name)]
        return sorted(shards, key=shard_number)

    def shard_paths(self) -> list[Path]:
        """The live shards: those the manifest lists (all on disk for a manifest from before lists)."""
        files = self.shard_files()
        if not files:
            return []
        listed = self.read_manifest().get("shards")
        if listed is None:
            return files
        names = set(listed)
        return [p for p in files if p.name in names]

    def next_shard_number(self) -> int:
        # Above every file on disk, listed or not: an unlisted one is never overwritten.
        shards = self.shard_files()
        return shard_number(shards[-1]) + 1 if shards else 0

    def write_shard(self, number: int, table: pa.Table, info: ModelInfo) -> Path:
        """Write a shard (carrying `info`, the model's identity, in its metadata) and list it in
        the manifest. If it cannot be listed it is removed again: never a shard nobody reads."""
        with writing(self.shard_dir, "--index-dir"):
            self.shard_dir.mkdir(parents=True, exist_ok=True)
        target = self.shard_dir / f"part-{number:06d}.parquet"
        meta = dict(table.schema.metadata or {})
        meta[SHARD_META_KEY] = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **identity_of(info)}).encode()
        table = table.replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        atomic_write_bytes(target, sink.getvalue().to_pybytes())
        if self.manifest_path.exists():
            listing = [*(p.name for p in self.shard_paths()), target.name]
            try:
                self._set_listing(listing)
            except KeyboardInterrupt:
                # The shard is whole and its rows have left the caller's buffer: finish listing
                # it (a few ms), then let Ctrl-C through; the run stops with this work saved.
                self._set_listing(listing)
                raise
            except Exception:
                remove_quietly(target)
                raise
        return target

    def _set_listing(self, names: list[str]) -> None:
        manifest = self.read_manifest()
        manifest["shards"] = sorted(set(names), key=lambda n: int(SHARD_RE.match(n).group(1)))
        self._write_manifest_doc(manifest)

    def read_table(self, columns: list[str] | None = None, root: str | None = None) -> pa.Table:
        """All live rows (latest shard wins for a path), in shard then row order; optionally only under `root`.

        The `path_bytes` column is always included: it is the row's identity.
        """
        cols = None if columns is None else list(dict.fromkeys(["path_bytes", *columns]))
        tables = []
        for shard in self.shard_paths():
            try:
                tables.append(pq.read_table(shard, columns=cols))
            except (OSError, pa.ArrowInvalid) as exc:
                raise IndexError_(f"shard {shard} is unreadable ({exc}); delete it and run `copyscan index` again") from None
        if not tables:
            return _empty(cols, self._dim_or_none())
        table = pa.concat_tables(tables)
        keys = table.column("path_bytes").to_pylist()
        last: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            last[key] = i
        keep = np.fromiter((i for i, key in enumerate(keys) if last[key] == i), dtype=np.int64)
        if root is not None:
            keep = np.asarray([i for i in keep if under(os.fsdecode(keys[i]), root)], dtype=np.int64)
        if len(keep) != table.num_rows:
            table = table.take(pa.array(keep, type=pa.int64()))
        return table

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
                # read_table keeps the shard's metadata (the model's identity) in the schema.
                table = pq.read_table(shard).take(pa.array(keep, type=pa.int64()))
                sink = pa.BufferOutputStream()
                pq.write_table(table, sink, compression="zstd")
                atomic_write_bytes(shard, sink.getvalue().to_pybytes())
            else:
                # Unlisted first, then deleted: a kill in between leaves an unlisted shard below
                # the listed ones, which the next writer deletes (see index_recovery.adopt_orphans).
                if self.manifest_path.exists():
                    self._set_listing([p.name for p in self.shard_paths() if p != shard])
                with writing(shard, "--index-dir"):
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
        data = buf.getvalue().encode("utf-8")
        # Unchanged: not written at all (a run that changes nothing writes nothing; a read-only
        # index stays usable).
        try:
            if self.skipped_path.read_bytes() == data:
                return
        except OSError:
            pass
        with writing(self.folder, "--index-dir"):
            self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.skipped_path, data)

    # ---- manifest ---------------------------------------------------------------------------

    def write_manifest(self, info: ModelInfo, counts: dict[str, int], faiss_meta: dict[str, Any], roots: list[str]) -> dict[str, Any]:
        from . import __version__

        old = self.read_manifest() if self.exists() else {}
        listed = [p.name for p in self.shard_paths()] if old else []
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "copyscan_version": __version__,
            "created": old.get("created") or _now(),
            "updated": _now(),
            **identity_of(info),
            "metric": "inner_product (cosine of L2-normalised descriptors)",
            "counts": counts,
            "roots": sorted(set(roots) | set(old.get("roots", []))),
            "faiss": faiss_meta,
            "shards": listed,
        }
        if old.get("postprocess"):  # set by set_manifest_entry; kept until switched off there
            manifest["postprocess"] = old["postprocess"]
        self._write_manifest_doc(manifest)
        return manifest

    def _write_manifest_doc(self, manifest: dict[str, Any]) -> None:
        manifest = {k: v for k, v in manifest.items() if k != "recovered"}
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())

    def set_manifest_entry(self, key: str, value: Any) -> None:
        """Set (or, with None, remove) one top-level entry of an existing manifest."""
        manifest = self.read_manifest()
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
        manifest["updated"] = _now()
        self._write_manifest_doc(manifest)


def shard_number(path: Path) -> int:
    return int(SHARD_RE.match(path.name).group(1))


def identity_of(info: ModelInfo) -> dict[str, Any]:
    """The model's identity as the manifest and every shard's metadata carry it."""
    return {
        "model": {
            "name": info.name,
            "weights_sha256": info.weights_sha256,
            "dim": info.dim,
            "runtime": info.runtime,
            "source": info.source,
        },
        "preprocessing": info.preprocessing(),
    }


def shard_identity(path: Path) -> dict[str, Any] | None:
    """The identity a shard carries in its Parquet metadata (None: written before shards had one).
    Reads the footer only; raises OSError / ArrowInvalid for an unreadable file."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(SHARD_META_KEY)
    return json.loads(raw) if raw else None


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


def _empty(columns: list[str] | None, dim: int | None) -> pa.Table:
    s = schema(dim or 1)
    names = columns or s.names
    return pa.table({n: pa.array([], type=s.field(n).type) for n in names})


def rows_to_table(rows: list[Row], descriptors: np.ndarray) -> pa.Table:
    dim = descriptors.shape[1]
    flat = pa.array(np.ascontiguousarray(descriptors, dtype=np.float32).reshape(-1), type=pa.float32())
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
