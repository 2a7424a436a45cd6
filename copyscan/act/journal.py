"""The apply journal: one JSON object a line, appended, flushed and fsynced before the step it
records is taken, so that after a crash (kill -9, power loss) it names every file that may have
moved. Paths are stored as their exact bytes (base64).

    {"journal": "copyscan-apply", "version": 1, "mode": "move", ...}   header
    {"op": "dir", "path": B64, "mtime_ns": N}        a source folder's mtime, before the first move out of it
    {"op": "mkdir", "path": B64}                     a destination folder about to be created
    {"op": "move"|"trash", "seq": K, "src": B64, "dst": B64, "bytes": N, "mtime_ns": N, "hash": H, "alias": bool}
    {"op": "done", "seq": K, ...}                    the move finished (trash: where the file went)
    {"op": "undone", "at": ISO}                      written by undo
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError
from ..discover import display_path
from ..oserrors import fsync_dir

FORMAT = "copyscan-apply"


class Journal:
    def __init__(self, path: str | os.PathLike, header: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "x": a journal is never appended to by a second apply, nor overwritten.
        self._fh = open(self.path, "xb")
        self.write({"journal": FORMAT, "version": 1, **header})
        fsync_dir(self.path.parent)

    def write(self, record: dict) -> None:
        self._fh.write((json.dumps(record, ensure_ascii=True) + "\n").encode("ascii"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_journal(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """The header and the records; a torn last line (a crash mid-write) is ignored."""
    p = Path(path)
    try:
        lines = p.read_bytes().split(b"\n")
    except OSError as exc:
        raise UserError(f"cannot read journal {display_path(str(p))}: {exc.strerror or exc}") from None
    records = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if n >= len(lines) - 2:  # only the last line can be torn
                break
            raise UserError(f"{display_path(str(p))} line {n + 1} is not a journal record") from None
    if not records or records[0].get("journal") != FORMAT:
        raise UserError(f"{display_path(str(p))} is not a copyscan apply journal")
    return records[0], records[1:]
