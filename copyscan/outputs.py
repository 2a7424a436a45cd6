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
MATCHES_HEADER = ["query_path", "reference_path", "score", "rank"]
GROUPS_HEADER = ["group_id", "path", "role", "score", "width", "height", "bytes"]


class MatchesWriter:
    """OUT/matches.csv, written as query results arrive (a query run may be millions of rows)."""

    def __init__(self, out: Path):
        self.path = out / MATCHES_CSV
        self._fh = open(self.path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(MATCHES_HEADER)

    def write(self, result: QueryResult) -> None:
        for m in result.matches:
            self._csv.writerow([display_path(result.query_path), display_path(m.reference_path), f"{m.score:.6f}", m.rank])

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
                writer.writerow([g.group_id, display_path(mem.path), mem.role, f"{mem.score:.6f}", mem.width, mem.height, mem.bytes])


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
                     "width": mem.width, "height": mem.height, "bytes": mem.bytes}
                    for mem in g.members
                ],
            }
            for g in groups
        ],
    }
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


__all__ = ["GROUPS_CSV", "GROUPS_JSON", "MATCHES_CSV", "MatchesWriter", "write_groups_csv", "write_groups_json"]
