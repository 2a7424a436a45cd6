"""The records that flow from search and grouping into reports (CSV, HTML, JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field

# How a copy was recognised, strongest first.
MATCH_IDENTICAL_FILE = "identical-file"  # same bytes
MATCH_IDENTICAL_PIXELS = "identical-pixels"  # same decoded pixels, other bytes (metadata, container)
MATCH_NEAR = "near"  # descriptor similarity at or above the threshold


@dataclass
class Match:
    reference_path: str
    score: float  # cosine similarity of the two descriptors
    rank: int  # 1 = best match of this query


@dataclass
class QueryResult:
    query_path: str
    matches: list[Match] = field(default_factory=list)
    width: int = 0
    height: int = 0


@dataclass
class Member:
    path: str
    role: str  # "keep", "copy", or "protected" (a copy in a --protect folder: never touched)
    score: float  # similarity to the kept image (1.0 for the kept image itself)
    width: int
    height: int
    bytes: int
    match: str = MATCH_NEAR  # for copies: how it was recognised; "keep" for the kept image
    mtime_ns: int = 0  # as indexed: apply leaves a file alone that changed since
    content_hash: str = ""
    aliases: list[str] = field(default_factory=list)  # other names of this very file (symlinks, hard links)


@dataclass
class Group:
    group_id: int
    members: list[Member]  # the kept image first
    keep_reason: str = ""

    @property
    def keep(self) -> Member:
        return self.members[0]

    @property
    def copies(self) -> list[Member]:
        return self.members[1:]
