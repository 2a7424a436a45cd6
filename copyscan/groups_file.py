"""Reading a dedupe run back for acting on it (OUT/groups.json, written by outputs.py), and the
review's OUT/decisions.csv (`group_id,path,decision,path_b64`), written and read here.

Paths are taken from `path_b64`, their exact bytes: a name that is not UTF-8 is acted on as is.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .discover import display_path
from .errors import UserError
from .same_files import path_from_b64, path_to_b64
from .outputs import GROUPS_JSON
from .store import atomic_write_bytes

DECISIONS_CSV = "decisions.csv"
DECISIONS_HEADER = ["group_id", "path", "decision", "path_b64"]
DECISIONS = ("keep", "copy", "not-a-copy")


# ---- reading back ----------------------------------------------------------------------------------


@dataclass
class FileRecord:
    """One path of a group as dedupe saw it."""

    group_id: int
    path: str  # exact (surrogate escapes for non-UTF-8 bytes)
    role: str  # keep, copy, protected
    bytes: int
    mtime_ns: int
    content_hash: str
    alias_of: str = ""  # the member path this one is another name of


@dataclass
class DedupeRun:
    folder: Path  # the OUT folder
    root: str
    index_dir: str
    protect: list[str]
    groups: dict[int, list[FileRecord]] = field(default_factory=dict)
    keep_reasons: dict[int, str] = field(default_factory=dict)


def read_dedupe_output(folder: str | os.PathLike) -> DedupeRun:
    """OUT/groups.json of a dedupe run, with clear errors for a folder that is not one."""
    out = Path(folder)
    path = out / GROUPS_JSON
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{display_path(str(out))} holds no {GROUPS_JSON}: give the output folder of `copyscan dedupe`") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{display_path(str(path))} is unreadable ({exc}); run `copyscan dedupe` again") from None
    if "root" not in doc or any("path_b64" not in m for g in doc.get("groups", []) for m in g.get("members", [])):
        raise UserError(f"{display_path(str(path))} was written by an older copyscan without exact paths; run `copyscan dedupe` again")
    run = DedupeRun(out, doc["root"], doc.get("index_dir", ""), list(doc.get("protect", [])))
    for g in doc["groups"]:
        gid = int(g["group_id"])
        records = []
        for m in g["members"]:
            p = path_from_b64(m["path_b64"])
            records.append(FileRecord(gid, p, m["role"], int(m["bytes"]), int(m.get("mtime_ns", 0)), m.get("content_hash", "")))
            for a in m.get("aliases", []):
                records.append(FileRecord(gid, path_from_b64(a["path_b64"]), m["role"], int(m["bytes"]), int(m.get("mtime_ns", 0)),
                                          m.get("content_hash", ""), alias_of=p))
        run.groups[gid] = records
        run.keep_reasons[gid] = g.get("keep_reason", "")
    return run


# ---- decisions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    group_id: int
    path: str
    decision: str  # keep, copy, not-a-copy


def write_decisions(path: Path, decisions: list[Decision]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(DECISIONS_HEADER)
    for d in decisions:
        writer.writerow([d.group_id, display_path(d.path), d.decision, path_to_b64(d.path)])
    atomic_write_bytes(Path(path), buf.getvalue().encode("utf-8"))


def read_decisions(path: str | os.PathLike, run: DedupeRun) -> list[Decision]:
    """A decisions file (group_id,path,decision[,path_b64]); every row is checked against the run.

    `path` may be the printable path when no path_b64 is given (a file written by hand).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read decisions file {display_path(str(p))}: {exc.strerror or exc}") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and not {"group_id", "path", "decision"} <= set(rows[0]):
        raise UserError(f"{display_path(str(p))}: the header must be group_id,path,decision[,path_b64]")
    out = []
    for n, row in enumerate(rows, start=2):
        where = f"{display_path(str(p))} line {n}"
        try:
            gid = int(row["group_id"])
        except (TypeError, ValueError):
            raise UserError(f"{where}: group_id {row.get('group_id')!r} is not a number") from None
        decision = (row.get("decision") or "").strip()
        if decision not in DECISIONS:
            raise UserError(f"{where}: decision {decision!r} is not one of {', '.join(DECISIONS)}")
        if gid not in run.groups:
            raise UserError(f"{where}: there is no group {gid} in this dedupe run")
        b64 = (row.get("path_b64") or "").strip()
        try:
            target = path_from_b64(b64) if b64 else None
        except ValueError as exc:
            raise UserError(f"{where}: {exc}") from None
        match = [r for r in run.groups[gid] if (r.path == target if target is not None else display_path(r.path) == row["path"])]
        if not match:
            raise UserError(f"{where}: {row['path']!r} is not in group {gid}")
        out.append(Decision(gid, match[0].path, decision))
    return out
