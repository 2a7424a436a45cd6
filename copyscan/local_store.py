"""The references' local features, stored by `index --regions` (store.py names the file).

Geometric verification (copyscan.verify) needs ORB features (copyscan.local_features) of both images of a pair. Computed at
query time, the reference's half (decoding the file again, ORB) was half of a verified pair's
cost; `index --regions` computes them once, in the decode workers, and keeps them here, so that
`query --regions` decodes only its own queries and can afford to verify more pairs
(BENCHMARKS.md "Regions").

One SQLite file (standard library; transactions keep it whole through a killed run): a row per
image path with its features' bytes (local_features.Features.to_bytes, ~18 KB an image, against 0.5 KB
for a 128-d descriptor). A path is looked up by its B-tree key, so a verified pair costs one
read whatever the index's size. Features made with other ORB settings (another copyscan
version) are not used: `settings` is checked once on opening.

Rows follow the index: the writer puts a re-embedded image's new features (or deletes its old
ones when it is re-embedded without `--regions`) before the shard holding it is written, and a
commit drops the rows of images no longer indexed.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .local_features import SETTINGS, Features

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS features (path TEXT PRIMARY KEY, data BLOB NOT NULL)",
)


@contextmanager
def _as_os_errors(path: Path) -> Iterator[None]:
    """SQLite's full disk, read-only file or unopenable folder as the OSError they are, so that
    the caller's `oserrors.writing` names the path and what to do, as for every other file."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        code = errno.ENOSPC if "full" in text else errno.EROFS if "readonly" in text or "read-only" in text \
            else errno.EACCES if "unable to open" in text else None
        if code is None:
            raise
        raise OSError(code, str(exc), str(path)) from None


class LocalFeatureWriter:
    """The index writer's side (holding the index's lock). Its methods raise OSError for a full
    disk or a protected folder."""

    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            with _as_os_errors(self.path):
                try:
                    db = self._open()
                except sqlite3.DatabaseError:
                    # Not a database (damaged, or another file under this name): the features
                    # are derived data, so it is replaced; the references it described get
                    # theirs computed at query time until they are indexed again.
                    self.path.unlink(missing_ok=True)
                    db = self._open()
            self._db = db
        return self._db

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path)
        try:
            with db:
                for statement in _SCHEMA:
                    db.execute(statement)
                row = db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
                if row is None or row[0] != SETTINGS:
                    # Features of other settings would be refused by every reader: start afresh.
                    db.execute("DELETE FROM features")
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)", (SETTINGS,))
        except sqlite3.Error:
            db.close()
            raise
        return db

    def put(self, items: Iterable[tuple[str, bytes]]) -> None:
        db = self._connect()
        with _as_os_errors(self.path), db:
            db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)", items)

    def delete(self, paths: Iterable[str]) -> None:
        """Forget these paths' features (re-embedded without them); nothing to do without a file."""
        if self._db is None and not self.path.exists():
            return
        db = self._connect()
        with _as_os_errors(self.path), db:
            db.executemany("DELETE FROM features WHERE path = ?", ((p,) for p in paths))

    def keep_only(self, live: Iterable[str]) -> int:
        """Drop the rows of paths not in `live` (images no longer indexed); returns how many."""
        if self._db is None and not self.path.exists():
            return 0
        db = self._connect()
        with _as_os_errors(self.path), db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS live (path TEXT PRIMARY KEY)")
            db.execute("DELETE FROM live")
            db.executemany("INSERT OR IGNORE INTO live VALUES (?)", ((p,) for p in live))
            gone = db.execute("DELETE FROM features WHERE path NOT IN (SELECT path FROM live)").rowcount
            db.execute("DELETE FROM live")
        return gone

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class LocalFeatureReader:
    """The searcher's side: `get(path)` from any thread (a connection each, read-only)."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    @classmethod
    def open(cls, path: Path) -> "LocalFeatureReader | None":
        """A reader of the file at `path`, or None when there is none, it cannot be read, or its
        features were made with other settings (the caller computes features itself then)."""
        if not path.is_file():
            return None
        reader = cls(path)
        try:
            row = reader._db().execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        except sqlite3.Error:
            return None
        return reader if row is not None and row[0] == SETTINGS else None

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._local.db = db
        return db

    def paths(self) -> set[str]:
        """Every path with stored features (empty when the file cannot be read)."""
        try:
            return {p for (p,) in self._db().execute("SELECT path FROM features")}
        except sqlite3.Error:
            return set()

    def get(self, path: str) -> Features | None:
        """The stored features of `path`, or None when none are stored (or they cannot be read)."""
        try:
            row = self._db().execute("SELECT data FROM features WHERE path = ?", (path,)).fetchone()
            return None if row is None else Features.from_bytes(row[0])
        except (sqlite3.Error, ValueError):
            return None
