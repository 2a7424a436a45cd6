"""Stage 8 (report), the machine-readable outputs: matches.csv, groups.csv, groups.json.
The HTML pages are report.py. Paths whose bytes are not UTF-8 are written with U+FFFD."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .discover import display_path
from .results import Group, QueryResult

MATCHES_CSV = "matches.csv"
GROUPS_CSV = "groups.csv"
GROUPS_JSON = "groups.json"
# Where the copy sits (copyscan.region_search; 0,0,1,1 for a whole-image match): its box in the
# query, and the part of the reference it shows, as x0, y0, x1, y1 in fractions of width and height.
BOX_COLUMNS = ["query_x0", "query_y0", "query_x1", "query_y1", "reference_x0", "reference_y0", "reference_x1", "reference_y1"]
# groups.csv: where the copy sits in this member, and which part of the group's kept image it shows.
GROUP_BOX_COLUMNS = ["box_x0", "box_y0", "box_x1", "box_y1", "keep_box_x0", "keep_box_y0", "keep_box_x1", "keep_box_y1"]
MATCHES_HEADER = ["query_path", "reference_path", "score", "rank", *BOX_COLUMNS]
GROUPS_HEADER = ["group_id", "path", "role", "score", "width", "height", "bytes", *GROUP_BOX_COLUMNS]


def format_box(box) -> list[str]:
    return [f"{v:.4f}" for v in box]


class MatchesWriter:
    """OUT/matches.csv, written as query results arrive (a query run may be millions of rows)."""

    def __init__(self, out: Path):
        self.path = out / MATCHES_CSV
        self._fh = open(self.path, "w", newline="", encoding="utf-8")
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
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(GROUPS_HEADER)
        for g in groups:
            for mem in g.members:
                writer.writerow([g.group_id, display_path(mem.path), mem.role, f"{mem.score:.6f}", mem.width, mem.height, mem.bytes,
                                 *format_box(mem.box), *format_box(mem.keep_box)])


def write_groups_json(path: Path, groups: list[Group], threshold: float, model: str, score: str = "cosine") -> None:
    """`score` says what the scores are (postprocess.describe_score)."""
    doc = {
        "threshold": threshold,
        "model": model,
        "score": score,
        "groups": [
            {
                "group_id": g.group_id,
                "keep": display_path(g.keep.path),
                "keep_reason": g.keep_reason,
                "members": [
                    {"path": display_path(mem.path), "role": mem.role, "score": round(mem.score, 6), "match": mem.match,
                     "width": mem.width, "height": mem.height, "bytes": mem.bytes,
                     "box": list(mem.box), "keep_box": list(mem.keep_box), "box_area": round(mem.box_area, 4)}
                    for mem in g.members
                ],
            }
            for g in groups
        ],
    }
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = ["BOX_COLUMNS", "GROUP_BOX_COLUMNS", "GROUPS_CSV", "GROUPS_JSON", "MATCHES_CSV", "MatchesWriter", "write_groups_csv", "write_groups_json"]
