"""Which files `apply` moves: the copies of a dedupe run, after a person's decisions.

Rules, safest first: a file kept by dedupe moves only when a decision says "copy"; a file in a
protected folder (given to dedupe or to apply) never moves; "not-a-copy" leaves a file where it
is; a group in which nothing would stay is left whole. Every name of a copy moves with it
(symlinks and hard links to it), so no link is left dangling and its bytes are really freed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..discover import display_path, under
from ..errors import UserError
from ..groups_file import Decision, DedupeRun
from ..keep import under_any


@dataclass
class Action:
    group_id: int
    src: str
    dst: str  # "" when the file goes to the trash
    bytes: int
    mtime_ns: int
    content_hash: str
    alias_of: str = ""  # another name of the file at this path (checked by link, not content)


@dataclass
class Plan:
    run: DedupeRun
    mode: str  # "move" or "trash"
    move_to: str
    actions: list[Action] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)  # (path, why it is not moved)

    @property
    def bytes(self) -> int:
        return sum(a.bytes for a in self.actions if not a.alias_of)


def make_plan(run: DedupeRun, decisions: list[Decision], *, move_to: str | os.PathLike | None = None,
              trash: bool = False, protect: list[str] = ()) -> Plan:
    if (move_to is None) == (not trash):
        raise UserError("give exactly one of --move-to DIR and --trash")
    target = ""
    if move_to is not None:
        target = os.path.abspath(os.fspath(move_to))
        if under(target, run.root):
            raise UserError(f"--move-to {display_path(target)} is inside the deduped folder {display_path(run.root)}: "
                            "the next dedupe would find the copies there again; choose a folder outside it")
    folders = [os.path.abspath(os.fspath(p)) for p in [*run.protect, *protect]]
    for p in protect:
        if not os.path.isdir(p):
            raise UserError(f"--protect {display_path(os.fspath(p))}: no such folder")
    plan = Plan(run, "trash" if trash else "move", target)
    by_group: dict[int, dict[str, str]] = {}
    for d in decisions:
        by_group.setdefault(d.group_id, {})[d.path] = d.decision
    for gid, records in sorted(run.groups.items()):
        decided = by_group.get(gid, {})
        members = [r for r in records if not r.alias_of]
        role = {}
        for r in members:
            choice = decided.get(r.path)
            if choice is None:  # a decision given for another name of the file counts for it
                choice = next((decided[a.path] for a in records if a.alias_of == r.path and a.path in decided), None)
            if r.role == "protected" or (folders and under_any(r.path, folders)):
                role[r.path] = "protected"
            elif choice == "not-a-copy":
                role[r.path] = "not-a-copy"
            elif choice == "keep" or (r.role == "keep" and choice != "copy"):
                role[r.path] = "keep"
            else:
                role[r.path] = "copy"
        if not any(v in ("keep", "protected") for v in role.values()):
            for r in members:
                plan.left.append((r.path, f"group {gid}: every file is marked copy or not-a-copy, nothing would stay"))
            continue
        for r in records:
            owner = r.alias_of or r.path
            what = role.get(owner, "keep")
            if what == "copy":
                dst = os.path.join(target, _relative(r.path, run.root)) if target else ""
                plan.actions.append(Action(gid, r.path, dst, r.bytes, r.mtime_ns, r.content_hash, r.alias_of))
            elif what == "keep":
                plan.kept.append(r.path)
            else:
                plan.left.append((r.path, "in a protected folder" if what == "protected" else "marked not a copy"))
    return plan


def _relative(path: str, root: str) -> str:
    """The path under the move-to folder: relative to the deduped folder (outside it, the whole
    absolute path, so two files never land on one name)."""
    if under(path, root):
        return os.path.relpath(path, root)
    return str(Path(path).relative_to(Path(path).anchor))
