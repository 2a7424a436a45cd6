"""Stage 4 (store): the index folder on disk. The one owner of its layout and of the manifest's keys:
no other module spells a file name below or a manifest key.

    IDX/manifest.json          what built it (model, checksum, dimension, preprocessing), counts,
                               roots, the FAISS file's metadata, the post-processing entry, and
                               the list of live shards: a shard not listed is never read
    IDX/shards/part-NNNNNN.parquet   one row per image: path, size, mtime, hashes, descriptor; its
                               Parquet metadata names the model (key "copyscan"), so a lost or
                               damaged manifest is rebuilt from the shards (index_recovery.py)
    IDX/skipped.csv            files that could not be used, with the reason
    IDX/index.faiss            the search index over all live rows (built by indexing.py, see ann.py)
    IDX/postprocess.npz        the fitted post-processing (see postprocess.py, background.py)
    IDX/background/            the background photos' descriptors: an index folder of its own
    IDX/local_features.sqlite  `index --regions`: each image's ORB features (local_store.py)
    IDX/copyscan.lock          held by the one process writing

Every file is written to a temporary name, fsynced and renamed, so a killed run leaves either
the old file or the new one. Shards are immutable once written except for compaction, which
rewrites one in place atomically. When a path appears in several shards (a changed file
re-embedded), the row in the highest-numbered shard is the live one; compaction later drops
the older rows. A new shard is listed in the manifest right after it is renamed into place; a
writer killed in between leaves it unlisted, and the next writer adopts it (see `lock`). A full
disk or a write-protected folder ends in a WriteError naming the path (oserrors.py).
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
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from .discover import Skipped, display_path, under
from .errors import IndexFolderError
from .identity import ModelInfo
from .index_recovery import SHARD_META_KEY, describe, manifest_problem, sort_orphans, survey
from .oserrors import fsync_dir, is_user_fixable, remove_quietly, writing
from .version import __version__

FORMAT = "copyscan-index"
FORMAT_VERSION = 1
# part-NNNNNN.parquet from the local writer; part-NNNNNN-TAG.parquet from a distributed engine's
# tasks, which share the run's number NNNNNN and tell their shards apart by TAG (a digest of the
# rows' paths, so that a retried task rewrites its own shard instead of adding a second one).
SHARD_RE = re.compile(r"^part-(\d{6,})(?:-([0-9a-f]{8,64}))?\.parquet$")
MANIFEST_FILE = "manifest.json"
SHARD_DIR = "shards"
SKIPPED_FILE = "skipped.csv"
FAISS_FILE = "index.faiss"
ONDISK_LISTS_FILE = "index.ivfdata"
LOCK_FILE = "copyscan.lock"
POST_FILE = "postprocess.npz"
BACKGROUND_DIR = "background"
LOCAL_FEATURES_FILE = "local_features.sqlite"
POST_KEY = "postprocess"  # the manifest entry of the post-processing (background.py fills it)
NOT_BUILT = {"status": "not built"}
# What the FAISS file holds: 2 = vectors in score.py's form (two extra columns with score
# normalisation). A file without it (written before issue 14) is stale and gets rebuilt.
FAISS_LAYOUT = 2  # the "faiss" entry of a manifest written before any FAISS file
SHARDS_KEY = "shards"  # the manifest entry listing the live shards

IndexError_ = IndexFolderError  # the old name, for code written before errors.py


@dataclass(frozen=True)
class StoredModel:
    """The model an index was built with, as its manifest records it."""

    name: str
    source: str
    weights_sha256: str
    dim: int
    runtime: str = ""


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
    fsync_dir(path.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def to_path_bytes(path: str) -> bytes:
    return os.fsencode(path)


@dataclass
class LiveRows:
    """Rows picked from the live shards (IndexStore.live_rows): `table` holds their columns, in
    shard then row order; `picks[k]` are their row numbers within `shards[k]`."""

    shards: list[Path]
    picks: list[np.ndarray]
    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    def take(self, rows: np.ndarray) -> LiveRows:
        """The rows at positions `rows` (sorted, increasing) of this selection."""
        rows = np.asarray(rows, dtype=np.int64)
        ends = np.cumsum([len(p) for p in self.picks])
        cuts = np.searchsorted(rows, ends)
        starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
        picks = [pick[rows[a:b] - start] for pick, start, a, b in zip(self.picks, starts, np.concatenate([[0], cuts[:-1]]), cuts)]
        table = self.table.take(pa.array(rows, type=pa.int64())).combine_chunks()
        return LiveRows(self.shards, picks, table)


class IndexStore:
    """Reads and writes one index folder: `IndexStore(folder)`; `check_model` refuses another model."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser().absolute()
        self.shard_dir = self.folder / SHARD_DIR
        self.manifest_path = self.folder / MANIFEST_FILE
        self.skipped_path = self.folder / SKIPPED_FILE
        self.faiss_path = self.folder / FAISS_FILE
        self.post_path = self.folder / POST_FILE
        self.background_dir = self.folder / BACKGROUND_DIR  # an index folder of its own
        self.local_features_path = self.folder / LOCAL_FEATURES_FILE  # local_store.py
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
            self._lock = FileLock(str(self.folder / LOCK_FILE))
            self._lock.acquire(timeout=timeout)
        except Timeout:
            self._lock = None
            raise IndexFolderError(
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
        if manifest_problem(self.manifest_path) is not None:
            self._write_manifest_doc(self.read_manifest())  # rebuilt from the shards (or refused)
        self._adopt_orphans()

    def _adopt_orphans(self) -> None:
        """List again the unlisted shards a killed writer finished; delete compaction leftovers
        and unreadable unlisted shards (index_recovery.sort_orphans). Holding the lock."""
        manifest = self.read_manifest()
        listed = manifest.get(SHARDS_KEY)
        if listed is None:  # a manifest from before shards were listed: every shard is live
            return
        names = set(listed)
        top = max((shard_number(Path(n)) for n in names), default=-1)
        orphans = [p for p in self.shard_files() if p.name not in names]
        adopt, delete = sort_orphans(orphans, top, manifest, shard_number)
        for shard in delete:
            with writing(shard, "--index-dir"):
                shard.unlink(missing_ok=True)
        if adopt:
            self.set_listing([*listed, *(p.name for p in adopt)])

    def _remove_leftover_temp_files(self) -> None:
        # Holding the lock, any temporary file here belongs to a writer that was killed mid-write
        # (atomic_write_bytes's ".NAME.XXXX.tmp", the FAISS "index.faiss.tmp"): never read, so
        # harmless, but they would pile up over many interrupted runs.
        for folder in (self.folder, self.shard_dir):
            if not folder.is_dir():
                continue
            for leftover in folder.iterdir():
                if leftover.name.endswith(".tmp") and (leftover.name.startswith(".") or leftover == self._faiss_tmp_path()):
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
        for path in (self.manifest_path, self.skipped_path, self.faiss_path):
            remove_quietly(path)
        try:
            self.shard_dir.rmdir()
        except OSError:
            pass  # not there, or not empty
        self.unlock()
        if remove_folder and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
            remove_quietly(self.folder / LOCK_FILE)
            try:
                self.folder.rmdir()
            except OSError:
                pass  # another run has just begun here

    def read_manifest(self) -> dict[str, Any]:
        problem = manifest_problem(self.manifest_path)
        if problem is not None:
            return self._rebuilt_manifest(problem)
        manifest = json.loads(self.manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise IndexFolderError(f"{self.folder} is not a copyscan index (no '{FORMAT}' manifest)")
        if int(manifest.get("format_version", 0)) != FORMAT_VERSION:
            raise IndexFolderError(
                f"{self.folder} has index format v{manifest.get('format_version')}, this copyscan reads v{FORMAT_VERSION}; "
                "rebuild it with this version into a new folder"
            )
        return manifest

    def _rebuilt_manifest(self, problem: str) -> dict[str, Any]:
        """The manifest rebuilt from the shards' own metadata (in memory; a writer saves it)."""
        found = survey(self.shard_files(), self.manifest_path, problem)
        now = _now()
        manifest: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "copyscan_version": __version__, "created": now,
            "updated": now, **found.identity, "metric": "inner_product (what the score is: faiss.score)",
            "counts": {"images": found.rows, "shards": len(found.shards), "skipped": len(self.read_skipped())},
            "roots": [], "faiss": {"status": f"manifest {problem}: rebuilt from the shards"},  # stale: rebuilt
            SHARDS_KEY: [p.name for p in found.shards],
        }
        entry = self._postprocess_from_file(found.identity["model"])
        if entry:
            manifest[POST_KEY] = entry
        note = (f"{display_path(str(self.manifest_path))} was {problem}: rebuilt from {len(found.shards)} shards "
                f"({describe(found.identity)})" + (f"; {len(found.unreadable)} unreadable shards left out" if found.unreadable else ""))
        if note not in self.notes:
            self.notes.append(note)
        return manifest

    def _postprocess_from_file(self, model: dict[str, Any]) -> dict[str, Any] | None:
        """The post-processing entry, from the settings inside its file (the background folder's
        path is not among them: refitting asks for --background again)."""
        from .postprocess import PostProcess, make_entry, sha256_of

        try:
            data = self.post_path.read_bytes()
            post = PostProcess.from_bytes(data, str(self.post_path))
            if post.model_sha256 != model["weights_sha256"]:
                return None
            entry = make_entry(post, int(model["dim"]), post.whiten, post.score_norm, None, post.beta, None)
        except Exception:  # absent or damaged: the index simply has no post-processing
            return None
        return {"file": POST_FILE, "sha256": sha256_of(data), **entry}

    def check_model(self, info: ModelInfo) -> None:
        """Refuse to mix models or dimensions in one index."""
        if not self.exists():
            return
        m = self.stored_model()
        if m.name != info.name or m.weights_sha256 != info.weights_sha256 or m.dim != info.dim:
            raise IndexFolderError(
                f"{self.folder} holds descriptors of model {m.name} ({m.dim}-d, weights {m.weights_sha256[:12]}), "
                f"not {info.name} ({info.dim}-d, weights {info.weights_sha256[:12]}); use that model, or another --index-dir"
            )

    # ---- shards -----------------------------------------------------------------------------

    def shard_files(self) -> list[Path]:
        """Every shard file on disk, listed in the manifest or not, in number order."""
        if not self.shard_dir.is_dir():
            return []
        shards = [p for p in self.shard_dir.iterdir() if SHARD_RE.match(p.name)]
        return sorted(shards, key=_shard_order)

    def shard_paths(self, manifest: dict[str, Any] | None = None) -> list[Path]:
        """The live shards: those the manifest lists (all on disk for a manifest from before lists)."""
        files = self.shard_files()
        if not files:
            return []
        listed = (manifest or self.read_manifest()).get(SHARDS_KEY)
        if listed is None:
            return files
        names = set(listed)
        return [p for p in files if p.name in names]

    def next_shard_number(self) -> int:
        # Above every file on disk, listed or not: an unlisted one is never overwritten.
        shards = self.shard_files()
        return shard_number(shards[-1]) + 1 if shards else 0

    def write_shard(self, number: int, table: pa.Table, info: ModelInfo, tag: str | None = None,
                    listed: bool = True) -> Path:
        """Write a shard (carrying `info`, the model's identity, in its metadata) and list it in
        the manifest. If it cannot be listed it is removed again: never a shard nobody reads.

        `tag` (hex, see SHARD_RE): one of several shards of one run under one `number` (the Ray
        engine's tasks). `listed=False`: write the shard only, leaving the manifest alone (a
        worker's shard; the driver lists it with `list_shards`). Until listed it is not read, and
        the next writer adopts or drops it like any unlisted shard."""
        with writing(self.shard_dir, "--index-dir"):
            self.shard_dir.mkdir(parents=True, exist_ok=True)
        target = self.shard_dir / (f"part-{number:06d}-{tag}.parquet" if tag else f"part-{number:06d}.parquet")
        meta = dict(table.schema.metadata or {})
        meta[SHARD_META_KEY] = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **identity_of(info)}).encode()
        sink = pa.BufferOutputStream()
        pq.write_table(table.replace_schema_metadata(meta), sink, compression="zstd")
        listing = ([*(p.name for p in self.shard_paths()), target.name]
                   if listed and self.manifest_path.exists() else None)
        try:
            atomic_write_bytes(target, sink.getvalue().to_pybytes())
            if listing is not None:
                self.set_listing(listing)
        except KeyboardInterrupt:
            # Once renamed into place the shard is whole, and its rows have left the caller's
            # buffer: list it (a few ms), then let Ctrl-C through; the run stops with it saved.
            if listing is not None and target.exists():
                self.set_listing(listing)
            raise
        except Exception:
            remove_quietly(target)  # (numbered above every file on disk: it is this call's)
            raise
        return target

    def set_listing(self, names: list[str]) -> None:
        """Record `names` as the live shards."""
        self._set_manifest_entry(SHARDS_KEY, sorted(set(names), key=lambda n: _shard_order(Path(n))))

    def list_shards(self, names: Sequence[str]) -> None:
        """Add shards written with `listed=False` (by an engine's workers) to the live ones."""
        if names and self.manifest_path.exists():
            self.set_listing([*(p.name for p in self.shard_paths()), *names])

    def read_table(self, columns: list[str] | None = None, root: str | None = None) -> pa.Table:
        """All live rows (latest shard wins for a path), in shard then row order; optionally only under `root`.

        The `path_bytes` column is always included: it is the row's identity.
        """
        cols = None if columns is None else list(dict.fromkeys(["path_bytes", *columns]))
        tables = [self._read_checked(shard, cols) for shard in self.shard_paths()]
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

    def live_rows(self, columns: list[str], *, root: str | None = None, whole_images: bool = False) -> LiveRows:
        """The rows `read_table(columns, root)` gives (latest shard wins for a path, shard then row
        order), read one shard at a time and kept as Arrow columns: no Python object per row and
        no descriptor (read them with `descriptor_blocks`). `whole_images` leaves region rows out.

        For collections too large for read_table's dict of every path (dedupe at scale, the index
        job's FAISS build): which path's newest shard is which is worked out on 64-bit keys of the
        path column (_newest_rows)."""
        import pyarrow.compute as pc

        cols = list(dict.fromkeys(["path_bytes", *columns]))
        read = list(dict.fromkeys([*cols, "region"])) if whole_images else cols
        prefix = None if root is None else os.fsencode(root.rstrip(os.sep) or os.sep)
        shards, picks, regions = [], [], []
        chunks: dict[str, list[pa.Array]] = {c: [] for c in cols}  # column by column, shard by shard
        for number, shard in enumerate(self.shard_paths()):
            if number % 256 == 255:
                _release_arrow_memory()  # the read buffers of the shards so far
            table = self._read_checked(shard, read)
            keep = np.arange(table.num_rows, dtype=np.int64)
            if prefix is not None:  # discover.under, on the path bytes
                paths = table.column("path_bytes")
                inside = pc.or_(pc.equal(paths, pa.scalar(prefix, pa.binary())),
                                pc.starts_with(paths, pattern=prefix.rstrip(os.fsencode(os.sep)) + os.fsencode(os.sep)))
                keep = np.nonzero(inside.to_numpy(zero_copy_only=False))[0]
                table = table.take(pa.array(keep, type=pa.int64()))
            shards.append(shard)
            picks.append(keep)
            if whole_images:
                regions.append(table.column("region").fill_null(0).to_numpy(zero_copy_only=False))
            for c in cols:
                chunks[c].extend(table.column(c).chunks)
        if not shards:
            return LiveRows([], [], _empty(cols, self._dim_or_none()))
        shard_of = np.repeat(np.arange(len(picks)), [len(p) for p in picks])
        keep = _newest_rows(pa.chunked_array(chunks["path_bytes"], pa.binary()), shard_of)
        if whole_images:
            keep &= np.concatenate(regions) == 0
        starts = np.concatenate([[0], np.cumsum([len(p) for p in picks])])
        picks = [pick[keep[a:b]] for pick, a, b in zip(picks, starts[:-1], starts[1:])]
        mask = None if keep.all() else pa.array(keep)
        del keep
        # One array per column (random access by row is fast: group_stream.ItemColumns), each
        # built and its shard chunks let go before the next: never two copies of every column.
        arrays = {}
        for c in cols:
            parts = chunks.pop(c)
            whole = pa.concat_arrays(parts) if parts else pa.array([], _empty([c], None).schema.field(c).type)
            del parts
            arrays[c] = whole if mask is None else whole.filter(mask)
            del whole
        _release_arrow_memory()
        return LiveRows(shards, picks, pa.table(arrays))

    def descriptor_blocks(self, rows: LiveRows) -> Iterator[np.ndarray]:
        """The descriptors of `rows` (live_rows), one (n, dim) float32 block per shard, in order."""
        for shard, pick in zip(rows.shards, rows.picks):
            if len(pick):
                table = self._read_checked(shard, ["descriptor"])
                yield descriptors_of(table if len(pick) == table.num_rows else table.take(pa.array(pick, type=pa.int64())))

    def _read_checked(self, shard: Path, columns: list[str]) -> pa.Table:
        try:
            return _read_shard(shard, columns)
        except (OSError, pa.ArrowInvalid) as exc:
            raise IndexFolderError(f"shard {shard} is unreadable ({exc}); delete it and run `copyscan index` again") from None

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
            keys = _read_shard(shard, ["path_bytes"]).column("path_bytes").to_pylist()
            keep = [i for i, k in enumerate(keys) if k not in dead_keys and k not in later]
            later.update(keys)
            if len(keep) == len(keys):
                continue
            dropped += len(keys) - len(keep)
            if keep:
                # The shard's metadata (the model's identity) stays in the schema.
                table = _read_shard(shard).take(pa.array(keep, type=pa.int64()))
                sink = pa.BufferOutputStream()
                pq.write_table(table, sink, compression="zstd")
                atomic_write_bytes(shard, sink.getvalue().to_pybytes())
            else:
                # Unlisted first, then deleted: a kill in between leaves an unlisted shard below
                # the listed ones, which the next writer deletes (_adopt_orphans).
                if self.manifest_path.exists():
                    self.set_listing([p.name for p in self.shard_paths() if p != shard])
                with writing(shard, "--index-dir"):
                    shard.unlink()
        return dropped

    def shard_fingerprint(self, manifest: dict[str, Any] | None = None) -> str:
        parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in self.shard_paths(manifest)]
        return _digest("|".join(parts))

    def _dim_or_none(self) -> int | None:
        try:
            return self.stored_model().dim
        except IndexFolderError:
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
        with writing(self.folder, "--index-dir"):
            self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.skipped_path, buf.getvalue().encode("utf-8"))

    # ---- manifest ---------------------------------------------------------------------------

    def write_manifest(self, info: ModelInfo, counts: dict[str, int], faiss_meta: dict[str, Any], roots: list[str]) -> dict[str, Any]:
        old = self.read_manifest() if self.exists() else {}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "copyscan_version": __version__,
            "created": old.get("created") or _now(),
            "updated": _now(),
            **identity_of(info),
            "metric": "inner_product (what the score is: faiss.score)",
            "counts": counts,
            "roots": sorted(set(roots) | set(old.get("roots", []))),
            "faiss": faiss_meta,
            SHARDS_KEY: [p.name for p in self.shard_paths(old)] if old else [],
        }
        if old.get(POST_KEY):  # set by set_postprocess; kept until clear_postprocess
            manifest[POST_KEY] = old[POST_KEY]
        self._write_manifest_doc(manifest)
        return manifest

    def commit_manifest(self, info: ModelInfo, images: int, skipped: int, faiss_meta: dict[str, Any], roots: list[str],
                        region_rows: int = 0) -> dict[str, Any]:
        """The manifest after a run: counts of live images, shards and skipped files (and of region
        rows, when there are any), the FAISS entry."""
        counts = {"images": images, "shards": len(self.shard_paths()), "skipped": skipped}
        if region_rows:
            counts["region_rows"] = region_rows
        return self.write_manifest(info, counts, faiss_meta, roots)

    def start_manifest(self, info: ModelInfo, roots: list[str]) -> None:
        """A new index's first manifest, written before any shard (FAISS "not built"), so that a
        resumed run is checked against the same model and a post-processing entry has a home."""
        if not self.exists():
            self.write_manifest(info, {"images": 0, "shards": 0, "skipped": 0}, dict(NOT_BUILT), roots)

    def _write_manifest_doc(self, manifest: dict[str, Any]) -> None:
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())

    # ---- what the manifest says -------------------------------------------------------------

    def stored_model(self, manifest: dict[str, Any] | None = None) -> StoredModel:
        m = (manifest or self.read_manifest())["model"]
        return StoredModel(m["name"], m.get("source", ""), m["weights_sha256"], int(m["dim"]), m.get("runtime", ""))

    def roots(self, manifest: dict[str, Any] | None = None) -> list[str]:
        """The folders ever indexed into this index (none when it does not exist yet)."""
        if manifest is None and not self.exists():
            return []
        return list((manifest or self.read_manifest()).get("roots", []))

    def counts(self, manifest: dict[str, Any] | None = None) -> dict[str, int]:
        return dict((manifest or self.read_manifest()).get("counts", {}))

    def image_count(self, manifest: dict[str, Any] | None = None) -> int:
        """Live rows when the manifest was last written (what the FAISS file holds)."""
        return int(self.counts(manifest).get("images", 0))

    def skipped_count(self, manifest: dict[str, Any] | None = None) -> int:
        return int(self.counts(manifest).get("skipped", 0))

    def faiss_type(self, manifest: dict[str, Any] | None = None) -> str:
        return str(self.faiss_meta(manifest).get("type", ""))

    # ---- the FAISS file ---------------------------------------------------------------------

    def faiss_meta(self, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict((manifest or self.read_manifest()).get("faiss", {}))

    def faiss_fingerprint(self, manifest: dict[str, Any] | None = None) -> str:
        """The shards' fingerprint, plus the post-processing file's checksum when one is set: a FAISS
        file built from other transformed vectors is as stale as one built from other shards."""
        entry = self.postprocess_entry(manifest)
        shards = self.shard_fingerprint(manifest)
        return f"{shards}+{entry['sha256'][:16]}" if entry else shards

    def faiss_is_fresh(self, manifest: dict[str, Any] | None = None) -> bool:
        manifest = manifest or self.read_manifest()
        meta = self.faiss_meta(manifest)
        return (self.faiss_path.exists() and meta.get("layout") == FAISS_LAYOUT
                and meta.get("shards_fingerprint") == self.faiss_fingerprint(manifest))

    def save_faiss(self, index: Any, kind: str, rule: str, nprobe: int, count: int, score: str,
                   margin: float = 0.0, kind_name: str = "") -> dict[str, Any]:
        """Write the FAISS file atomically; returns its manifest entry (for write_manifest).
        `margin`: how far below the exact score the index's scores may be (0: exact scores)."""
        from . import ann

        atomic_write(self.faiss_path, lambda fh: ann.write_index_to(index, fh))
        return {"type": kind, "rule": rule, "nprobe": nprobe, "count": count, "score": score, "layout": FAISS_LAYOUT,
                "margin": margin, "choice": kind_name, "shards_fingerprint": self.faiss_fingerprint()}

    def scratch_vectors_path(self) -> Path:
        """Where the FAISS build's vectors wait, mapped, while it runs (removed after; a killed
        build's copy is a leftover temporary file the next writer removes)."""
        return self.folder / f".{FAISS_FILE}.vectors.tmp"

    def ondisk_lists_path(self) -> Path:
        """Where an on-disk FAISS index (index_choice) keeps its inverted lists."""
        return self.folder / ONDISK_LISTS_FILE

    def faiss_margin(self, manifest: dict[str, Any] | None = None) -> float:
        """0 for an index with exact scores; else the margin its approximate scores need."""
        return float(self.faiss_meta(manifest).get("margin") or 0.0)

    def load_faiss(self, manifest: dict[str, Any] | None = None) -> Any:
        """The stored FAISS index, searched with the nprobe recorded when it was built."""
        from . import ann

        return ann.load_index(str(self.faiss_path), int(self.faiss_meta(manifest).get("nprobe") or 0))

    def _faiss_tmp_path(self) -> Path:
        return Path(str(self.faiss_path) + ".tmp")

    # ---- post-processing entry --------------------------------------------------------------

    def postprocess_entry(self, manifest: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The post-processing settings (background.py's entry), or None when none is set."""
        if manifest is None and not self.exists():
            return None
        return (manifest or self.read_manifest()).get(POST_KEY) or None

    def postprocess_file(self, manifest: dict[str, Any] | None = None) -> tuple[Path, str] | None:
        """(the transform file, its SHA-256 as recorded), or None when none is set."""
        entry = self.postprocess_entry(manifest)
        return (self.folder / entry["file"], entry["sha256"]) if entry else None

    def set_postprocess(self, data: bytes, sha256: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Write the transform file and record it (with `entry`'s settings) in the manifest."""
        atomic_write_bytes(self.post_path, data)
        entry = {"file": POST_FILE, "sha256": sha256, **entry}
        self._set_manifest_entry(POST_KEY, entry)
        return entry

    def clear_postprocess(self) -> None:
        if self.postprocess_entry():
            self._set_manifest_entry(POST_KEY, None)
        self.post_path.unlink(missing_ok=True)

    def _set_manifest_entry(self, key: str, value: Any) -> None:
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


class _StringSink:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    def getvalue(self) -> str:
        return "".join(self.parts)


def _read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    # ParquetFile, not pq.read_table: read_table goes through pyarrow.dataset, whose import pulls
    # in pandas (0.2-0.7 s of every command here, more than reading the shards).
    with pq.ParquetFile(path) as fh:
        if columns is None:
            return fh.read()
        present = set(fh.schema_arrow.names)
        table = fh.read(columns=[c for c in columns if c in present])
    for name in columns:  # the optional region columns, absent from shards written without them
        if name not in present and name in REGION_FIELDS:
            table = table.append_column(REGION_FIELDS[name], pa.nulls(table.num_rows, REGION_FIELDS[name].type))
    return table


def _newest_rows(paths: pa.ChunkedArray, shard_of: np.ndarray) -> np.ndarray:
    """Which rows are in the newest shard holding their path (a path's live rows): the largest
    shard number over each path's code (column_codes: no dictionary of every path, which would
    cost about 4 times the path column, 1.2 GB at 10M rows)."""
    from .column_codes import value_codes

    codes = value_codes(paths)
    newest = np.full(int(codes.max()) + 1 if len(codes) else 0, -1, dtype=np.int64)
    np.maximum.at(newest, codes, shard_of)
    return newest[codes] == shard_of


def _release_arrow_memory() -> None:
    """Give the memory Arrow's pool holds free back to the system: after reading every shard's
    columns its allocator keeps the freed shard buffers (about twice the columns at 10M rows)."""
    pa.default_memory_pool().release_unused()


def _shard_order(path: Path) -> tuple[int, str]:
    # Shards of one run (same number) never hold the same path twice, so their order is moot.
    m = SHARD_RE.match(path.name)
    return int(m.group(1)), m.group(2) or ""


def _digest(text: str) -> str:
    import hashlib

    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
