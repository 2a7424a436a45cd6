"""The records that flow from search and grouping into reports (CSV, HTML, JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field

# How a copy was recognised, strongest first.
MATCH_IDENTICAL_FILE = "identical-file"  # same bytes
MATCH_IDENTICAL_PIXELS = "identical-pixels"  # same decoded pixels, other bytes (metadata, container)
MATCH_NEAR = "near"  # descriptor similarity at or above the threshold


# Where a copy sits: (x0, y0, x1, y1) in fractions of an image's width and height.
FULL_BOX = (0.0, 0.0, 1.0, 1.0)


@dataclass
class Match:
    reference_path: str
    score: float  # cosine similarity of the two descriptors
    rank: int  # 1 = best match of this query
    query_box: tuple[float, float, float, float] = FULL_BOX  # the copy in the query (--regions)
    reference_box: tuple[float, float, float, float] = FULL_BOX  # the part of the reference it shows


@dataclass
class QueryResult:
    query_path: str
    matches: list[Match] = field(default_factory=list)
    width: int = 0
    height: int = 0


@dataclass
class Member:
    path: str
    role: str  # "keep" or "copy"
    score: float  # similarity to the kept image (1.0 for the kept image itself)
    width: int
    height: int
    bytes: int
    match: str = MATCH_NEAR  # for copies: how it was recognised; "keep" for the kept image
    # With --regions: where the copy sits in this member, and which part of the kept image it
    # shows. box_area() is the share of this image's pixels that show the copy (a photo filling
    # 30% of a screenshot: 0.3), for the keep rule.
    box: tuple[float, float, float, float] = FULL_BOX
    keep_box: tuple[float, float, float, float] = FULL_BOX

    @property
    def box_area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


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
