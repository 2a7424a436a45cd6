"""The records the pipeline hands back: run summaries (what copyscan.api returns) and the matches
and groups that flow from search and grouping into the outputs (CSV, JSON, HTML)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .discover import Skipped

# How a copy was recognised, strongest first.
MATCH_IDENTICAL_FILE = "identical-file"  # same bytes
MATCH_IDENTICAL_PIXELS = "identical-pixels"  # same decoded pixels, other bytes (metadata, container)
MATCH_NEAR = "near"  # descriptor similarity at or above the threshold


@dataclass
class Match:
    reference_path: str
    score: float  # the score (score.py): a cosine, or normalised when the index says so
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
    role: str  # "keep" or "copy"
    score: float  # score to the kept image (score.py; 1.0 for the kept image itself and exact twins)
    width: int
    height: int
    bytes: int
    match: str = MATCH_NEAR  # for copies: how it was recognised; "keep" for the kept image


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


# ---- run summaries ------------------------------------------------------------------------------


@dataclass
class IndexSummary:
    index_dir: str
    model: str
    found: int = 0  # image files found under the folder
    embedded: int = 0  # embedded in this run
    unchanged: int = 0  # already in the index, same size and mtime
    removed: int = 0  # rows dropped because their file is gone or changed into a bad one
    skipped: list[Skipped] = field(default_factory=list)  # under this folder, with reasons
    total: int = 0  # live rows in the whole index
    seconds: float = 0.0
    rate: float = 0.0  # images embedded per second in this run
    faiss: str = ""
    skipped_record: str = ""  # the file listing every skipped file of the index (IDX/skipped.csv)


@dataclass
class QuerySummary:
    output: str
    queries: int = 0
    with_match: int = 0
    matches: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    csv_path: str = ""
    report_path: str = ""
    score: str = ""  # what a score is (postprocess.describe_score)


@dataclass
class DedupeSummary:
    output: str
    index: IndexSummary | None = None
    images: int = 0
    groups: list[Group] = field(default_factory=list)
    copies: int = 0
    exact_copies: int = 0
    seconds: float = 0.0
    csv_path: str = ""
    report_path: str = ""
    score: str = ""  # what a score is (postprocess.describe_score)
