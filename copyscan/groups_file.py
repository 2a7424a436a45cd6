"""The files a dedupe run leaves for people and for `apply`: OUT/groups.csv, OUT/groups.json and
the review's OUT/decisions.csv. This module is their one owner: writers and readers.

Every path is written twice: `path`, printable (bytes that are not UTF-8 shown as U+FFFD), and
`path_b64`, its exact bytes in base64, which is what `apply` acts on.
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
from .results import Group
from .store import atomic_write_bytes

GROUPS_CSV = "groups.csv"
GROUPS_JSON = "groups.json"
DECISIONS_CSV = "decisions.csv"
CSV_HEADER = ["group_id", "path", "role", "score", "width", "height", "bytes", "match", "path_b64"]
DECISIONS_HEADER = ["group_id", "path", "decision", "path_b64"]
DECISIONS = ("keep", "copy", "not-a-copy")
MATCH_SAME_FILE = "same-file"  # another name (symlink, hard link) of the member above it


def write_groups_csv(path: Path, groups: list[Group]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(CSV_HEADER)
    for g in groups:
        for m in g.members:
            writer.writerow([g.group_id, display_path(m.path), m.role, f"{m.score:.6f}", m.width, m.height, m.bytes, m.match, path_to_b64(m.path)])
            for alias in m.aliases:
                writer.writerow([g.group_id, display_path(alias), m.role, f"{m.score:.6f}", m.width, m.height, m.bytes, MATCH_SAME_FILE, path_to_b64(alias)])
    atomic_write_bytes(Path(path), buf.getvalue().encode("utf-8"))


def write_groups_json(path: Path, groups: list[Group], threshold: float, model: str, **about: object) -> None:
    """`about`: the run's root, index folder, keep rule and protected folders (for apply)."""
    doc = {
        "threshold": threshold,
        "model": model,
        **{k: v for k, v in about.items()},
        "groups": [
            {
                "group_id": g.group_id,
                "keep": display_path(g.keep.path),
                "keep_b64": path_to_b64(g.keep.path),
                "keep_reason": g.keep_reason,
                "members": [_member_doc(m) for m in g.members],
            }
            for g in groups
        ],
    }
    atomic_write_bytes(Path(path), (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def _member_doc(m) -> dict:
    return {
        "path": display_path(m.path), "path_b64": path_to_b64(m.path), "role": m.role, "score": round(m.score, 6),
        "match": m.match, "width": m.width, "height": m.height, "bytes": m.bytes, "mtime_ns": m.mtime_ns,
        "content_hash": m.content_hash,
        "aliases": [{"path": display_path(a), "path_b64": path_to_b64(a)} for a in m.aliases],
    }


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
