"""Stage 8 (report), the machine-readable outputs: matches.csv, groups.csv, groups.json.
The HTML pages are report.py; reading groups.json back for `apply` is groups_file.py.

Paths whose bytes are not UTF-8 are shown with U+FFFD in `path`; groups.csv and groups.json also
carry `path_b64`, the exact bytes, which is what `apply` acts on."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .discover import display_path
from .results import Group, Member, QueryResult
from .same_files import path_to_b64
from .store import atomic_write_bytes

MATCHES_CSV = "matches.csv"
GROUPS_CSV = "groups.csv"
GROUPS_JSON = "groups.json"
# Where the copy sits (copyscan.region_search; 0,0,1,1 for a whole-image match): its box in the
# query, and the part of the reference it shows, as x0, y0, x1, y1 in fractions of width and height.
BOX_COLUMNS = ["query_x0", "query_y0", "query_x1", "query_y1", "reference_x0", "reference_y0", "reference_x1", "reference_y1"]
# groups.csv: where the copy sits in this member, and which part of the group's kept image it shows.
GROUP_BOX_COLUMNS = ["box_x0", "box_y0", "box_x1", "box_y1", "keep_box_x0", "keep_box_y0", "keep_box_x1", "keep_box_y1"]
MATCHES_HEADER = ["query_path", "reference_path", "score", "rank", *BOX_COLUMNS]
GROUPS_HEADER = ["group_id", "path", "role", "score", "width", "height", "bytes", "match", "path_b64", *GROUP_BOX_COLUMNS]
MATCH_SAME_FILE = "same-file"  # in groups.csv: another name (symlink, hard link) of the member above


def format_box(box) -> list[str]:
    return [f"{v:.4f}" for v in box]


class MatchesWriter:
    """OUT/matches.csv, written as query results arrive (a query run may be millions of rows)."""

    def __init__(self, out: Path, write_to: Path | None = None):
        """`write_to`: where the rows go meanwhile (output_folder.RunOutputs renames it to `path`)."""
        self.path = out / MATCHES_CSV
        self._fh = open(write_to or self.path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(MATCHES_HEADER)

    def write(self, result: QueryResult) -> None:
        for m in result.matches:
            self._csv.writerow([display_path(result.query_path), display_path(m.reference_path), f"{m.score:.6f}", m.rank,
                                *format_box(m.query_box), *format_box(m.reference_box)])

    def __enter__(self) -> MatchesWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


def write_groups_csv(path: Path, groups: list[Group]) -> None:
    """One row per name: a member, then the other names of its file (match "same-file")."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(GROUPS_HEADER)
    for g in groups:
        for m in g.members:
            where = [*format_box(m.box), *format_box(m.keep_box)]
            writer.writerow([g.group_id, display_path(m.path), m.role, f"{m.score:.6f}", m.width, m.height, m.bytes, m.match,
                             path_to_b64(m.path), *where])
            for alias in m.aliases:
                writer.writerow([g.group_id, display_path(alias), m.role, f"{m.score:.6f}", m.width, m.height, m.bytes,
                                 MATCH_SAME_FILE, path_to_b64(alias), *where])
    atomic_write_bytes(Path(path), buf.getvalue().encode("utf-8"))


def write_groups_json(path: Path, groups: list[Group], threshold: float, model: str, score: str = "cosine", **about: object) -> None:
    """`score` says what the scores are (postprocess.describe_score); `about`: the run's root,
    index folder, keep rule and protected folders, which `copyscan apply` reads back
    (groups_file.read_dedupe_output)."""
    doc = {
        "threshold": threshold,
        "model": model,
        "score": score,
        **about,
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


def _member_doc(m: Member) -> dict:
    return {
        "path": display_path(m.path), "path_b64": path_to_b64(m.path), "role": m.role, "score": round(m.score, 6),
        "match": m.match, "width": m.width, "height": m.height, "bytes": m.bytes, "mtime_ns": m.mtime_ns,
        "content_hash": m.content_hash,
        "aliases": [{"path": display_path(a), "path_b64": path_to_b64(a)} for a in m.aliases],
        "box": list(m.box), "keep_box": list(m.keep_box), "box_area": round(m.box_area, 4),
    }


__all__ = ["BOX_COLUMNS", "GROUP_BOX_COLUMNS", "GROUPS_CSV", "GROUPS_HEADER", "GROUPS_JSON", "MATCH_SAME_FILE", "MATCHES_CSV",
           "MatchesWriter", "write_groups_csv", "write_groups_json"]
