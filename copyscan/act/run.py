"""Carry out a plan (journal first, then each move), and undo a journal exactly.

A file is moved only if it is as dedupe saw it: same size, mtime and content hash (a name that
is another link to a copy: still that link). Anything else is left where it is and listed.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field

from ..same_files import path_from_b64, path_to_b64
from . import files
from .journal import Journal, read_journal
from .plan import Action, Plan

DELAY_ENV = "COPYSCAN_APPLY_DELAY"  # seconds to wait between moves: lets tests kill an apply mid-way


@dataclass
class ApplyResult:
    journal: str
    moved: list[Action] = field(default_factory=list)
    bytes_freed: int = 0
    left: list[tuple[str, str]] = field(default_factory=list)  # (path, why it was not moved)


@dataclass
class UndoResult:
    restored: int = 0
    already: int = 0  # never moved (a crash before the move), or restored by an earlier undo
    problems: list[tuple[str, str]] = field(default_factory=list)


def _unchanged(a: Action) -> str:
    """"" when the file at a.src is as dedupe saw it, else why not."""
    try:
        st = os.lstat(a.src)
    except FileNotFoundError:
        return "gone since the dedupe"
    except OSError as exc:
        return f"cannot look at it: {exc.strerror or exc}"
    if a.alias_of:
        try:
            same = os.stat(a.src).st_ino == os.stat(a.alias_of).st_ino and os.stat(a.src).st_dev == os.stat(a.alias_of).st_dev
        except OSError:
            same = False
        return "" if same else "no longer a link to the same file"
    if not os.path.isfile(a.src) or os.path.islink(a.src):
        return "no longer a regular file"
    if st.st_size != a.bytes or st.st_mtime_ns != a.mtime_ns:
        return "changed since the dedupe (size or modification time)"
    try:
        if a.content_hash and files.digest(a.src) != a.content_hash:
            return "changed since the dedupe (content)"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    return ""


def execute(plan: Plan, journal_path: str | os.PathLike) -> ApplyResult:
    """Move the plan's files; every step is in the journal before it is taken."""
    result = ApplyResult(str(journal_path))
    # Checked before any move: links of a file are checked while the file is still in place.
    verdict = {id(a): _unchanged(a) for a in plan.actions}
    bad_owner = {a.src for a in plan.actions if verdict[id(a)] and not a.alias_of}
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    header = {"mode": plan.mode, "root": path_to_b64(plan.run.root), "move_to": path_to_b64(plan.move_to) if plan.move_to else "",
              "dedupe_output": path_to_b64(str(plan.run.folder)), "created": _now()}
    seen_dirs: set[str] = set()
    freed: set[tuple[int, int]] = set()
    with Journal(journal_path, header) as journal:
        for seq, a in enumerate(plan.actions):
            why = verdict[id(a)] or ("its file changed since the dedupe" if a.alias_of in bad_owner else "")
            if why:
                result.left.append((a.src, why))
                continue
            if a.dst and os.path.lexists(a.dst):
                result.left.append((a.src, f"not moved: {a.dst} already exists (nothing is ever overwritten)"))
                continue
            try:
                st = os.lstat(a.src)
                parent = os.path.dirname(a.src)
                if parent not in seen_dirs:
                    seen_dirs.add(parent)
                    journal.write({"op": "dir", "path": path_to_b64(parent), "mtime_ns": os.stat(parent).st_mtime_ns})
                if a.dst:
                    _make_parents(os.path.dirname(a.dst), journal)
                record = {"op": plan.mode, "seq": seq, "src": path_to_b64(a.src), "dst": path_to_b64(a.dst) if a.dst else "",
                          "bytes": a.bytes, "mtime_ns": a.mtime_ns, "hash": a.content_hash, "alias": bool(a.alias_of)}
                journal.write(record)
                if plan.mode == "trash":
                    stored, info = files.to_trash(a.src)
                    journal.write({"op": "done", "seq": seq, "trashed": path_to_b64(stored) if stored else "",
                                   "info": path_to_b64(info) if info else ""})
                else:
                    how = files.move(a.src, a.dst)
                    journal.write({"op": "done", "seq": seq, "how": how})
            except (files.Refused, OSError) as exc:
                result.left.append((a.src, f"not moved: {getattr(exc, 'strerror', None) or exc}"))
                continue
            result.moved.append(a)
            if not a.alias_of and not os.path.islink(a.dst or "") and (st.st_dev, st.st_ino) not in freed:
                freed.add((st.st_dev, st.st_ino))
                result.bytes_freed += st.st_size
            if delay:
                time.sleep(delay)
    return result


def _make_parents(folder: str, journal: Journal) -> None:
    missing = []
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    for d in reversed(missing):
        journal.write({"op": "mkdir", "path": path_to_b64(d)})
        os.mkdir(d)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def undo(journal_path: str | os.PathLike) -> UndoResult:
    """Put every file the journal moved back, with its bytes and mtime; folders as they were.

    Safe to run again (after a crash of undo itself, or twice): each file's state on disk says
    what is left to do.
    """
    header, records = read_journal(journal_path)
    result = UndoResult()
    done = {r["seq"]: r for r in records if r.get("op") == "done"}
    moves = [r for r in records if r.get("op") in ("move", "trash")]
    for r in reversed(moves):
        src = path_from_b64(r["src"])
        try:
            _undo_one(r, src, done.get(r["seq"]), result)
        except (files.Refused, OSError) as exc:
            result.problems.append((src, f"not restored: {getattr(exc, 'strerror', None) or exc}"))
    for r in reversed([r for r in records if r.get("op") == "mkdir"]):
        try:
            os.rmdir(path_from_b64(r["path"]))
        except OSError:
            pass  # not empty (something else is there now) or already gone: left as is
    for r in records:
        if r.get("op") == "dir":
            d = path_from_b64(r["path"])
            try:
                os.utime(d, ns=(os.stat(d).st_atime_ns, int(r["mtime_ns"])))
            except OSError:
                pass
    with open(journal_path, "ab") as fh:
        fh.write(f'{{"op": "undone", "at": "{_now()}"}}\n'.encode("ascii"))
        fh.flush()
        os.fsync(fh.fileno())
    return result


def _undo_one(r: dict, src: str, done: dict | None, result: UndoResult) -> None:
    if r["op"] == "trash":
        stored = path_from_b64(done["trashed"]) if done and done.get("trashed") else ""
        info = path_from_b64(done["info"]) if done and done.get("info") else ""
        if not stored:
            stored, info = files.find_trashed(src)
        if os.path.lexists(src):
            result.already += 1
            return
        if not stored or not os.path.lexists(stored):
            result.problems.append((src, "not found in the trash: restore it from your desktop's trash"))
            return
        files.move(stored, src)
        if info:
            try:
                os.unlink(info)
            except OSError:
                pass
    else:
        dst = path_from_b64(r["dst"])
        at_src, at_dst = os.path.lexists(src), os.path.lexists(dst)
        if at_src and at_dst:
            # A crash between the link and the unlink (or the copy and the removal): the source
            # is whole; the extra name at the destination goes, if it is the same file.
            if _same(src, dst):
                os.unlink(dst)
                result.already += 1
            else:
                result.problems.append((src, f"another file is now at {dst}; both left as they are"))
            return
        if at_src:
            result.already += 1
            return
        if not at_dst:
            result.problems.append((src, f"not at {dst} any more: it was moved or deleted since"))
            return
        files.move(dst, src)
    if not r.get("alias") and r.get("hash") and os.path.isfile(src) and not os.path.islink(src):
        if files.digest(src) != r["hash"]:
            result.problems.append((src, "restored, but its bytes differ from what dedupe saw"))
            return
    result.restored += 1


def _same(a: str, b: str) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if os.path.islink(a) or os.path.islink(b):
        return os.path.islink(a) and os.path.islink(b) and os.readlink(a) == os.readlink(b)
    return sa.st_size == sb.st_size and files.digest(a) == files.digest(b)
