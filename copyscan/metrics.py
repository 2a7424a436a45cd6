"""Copy-detection metrics of the DISC2021 Image Similarity Challenge (descriptor track).

The definitions follow the challenge's official evaluation (facebookresearch/isc2021,
`isc/metrics.py`; paper: Douze et al., "The 2021 Image Similarity Dataset and Challenge",
arXiv 2106.09672):

* **micro AP**: every prediction of every query is pooled into one list sorted by score,
  highest first. A prediction is a true positive when its (query, reference) pair is in the
  ground truth. At rank i, precision = TP(i) / i and recall = TP(i) / P, where P is the number
  of ground-truth pairs, so a pair that was never predicted is a miss and keeps recall below 1.
  AP = sum over ranks of precision(i) * (recall(i) - recall(i-1)): the area under the step
  precision-recall curve. Only true positives raise recall, so this is the mean, over the P
  ground-truth pairs, of the precision at the rank where each was found (0 where never found).
* **ties are ranked pessimistically**: among equal scores the non-matches come first. Otherwise
  a system could give every prediction the same score and be credited with the best order.
* **recall at 90 % precision**: the highest recall over the ranks whose precision is at least
  0.9, and the score at the first rank reaching it (the lowest score a threshold must keep).
  `None` for both when precision never reaches 0.9, as the official code does.
* **accuracy at rank 1** (ours, per query): among the queries that have a copy in the ground
  truth, the share whose best-scoring prediction is one of their references, ties pessimistic
  (a non-match scoring as high as the best match makes the query wrong). A query with no
  prediction is wrong. The official `recall_at_rank1` counts pairs rather than queries; the two
  agree when each query has one reference.

Queries listed in the ground truth with an empty reference (DISC's distractor queries) have no
copy: all their predictions are false positives. Predictions for queries the ground truth does
not list at all are also counted as false positives by default, as the official code does (it
only knows the positive pairs and never drops a prediction); `evaluate(..., unknown_queries=)`
can ignore them instead, or refuse them, which catches a ground truth and a predictions file
that do not belong together.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from .errors import UserError

GT_HEADER = ["query_id", "reference_id"]
PREDICTIONS_HEADER = ["query_id", "reference_id", "score"]
P90 = 0.9
UNKNOWN_QUERY_POLICIES = ("false_positive", "ignore", "error")


class MetricsError(UserError):
    """A ground-truth or predictions file (or pair of them) that cannot be evaluated."""


@dataclass(frozen=True)
class GroundTruth:
    """The copy pairs, and every query the ground truth lists (with or without a copy)."""

    pairs: frozenset[tuple[str, str]]
    queries: frozenset[str]

    @property
    def positive_queries(self) -> frozenset[str]:
        return frozenset(q for q, _ in self.pairs)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]],
                   distractors: Iterable[str] = ()) -> "GroundTruth":
        pairs = frozenset((str(q), str(r)) for q, r in pairs)
        return cls(pairs, frozenset(q for q, _ in pairs) | frozenset(distractors))


@dataclass(frozen=True)
class Predictions:
    """Scored (query, reference) pairs as parallel arrays: ids as object arrays of str."""

    query_ids: np.ndarray
    reference_ids: np.ndarray
    scores: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, float]]) -> "Predictions":
        """Builds and checks predictions from (query, reference, score) tuples."""
        queries, refs, scores, seen = [], [], [], set()
        for i, (q, r, s) in enumerate(rows):
            if (q, r) in seen:
                raise MetricsError(f"prediction {i + 1}: duplicate pair ({q!r}, {r!r})")
            seen.add((q, r))
            s = float(s)
            if not math.isfinite(s):
                raise MetricsError(f"prediction {i + 1}: score {s!r} is not a finite number")
            queries.append(q)
            refs.append(r)
            scores.append(s)
        return cls(_object_array(queries), _object_array(refs), np.asarray(scores, np.float64))


@dataclass
class Metrics:
    micro_ap: float
    recall_at_p90: float | None  # None: precision never reaches 0.9
    threshold_at_p90: float | None
    acc_at_1: float
    n_queries: int  # queries in the ground truth, distractors included
    n_positive_pairs: int
    n_predictions: int  # predictions evaluated
    n_unknown_query_predictions: int = 0  # of those (or dropped, with "ignore"): query not in GT

    def to_dict(self) -> dict:
        return asdict(self)


# ---- reading -----------------------------------------------------------------------------------


def _object_array(items: list[str]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _rows(path: str | os.PathLike, header: list[str]) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of a CSV file after checking its header; blank lines are skipped."""
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise MetricsError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.reader(fh)
        try:
            first = next(reader, None)
            if first is None:
                raise MetricsError(f"{path}: empty file; expected the header {','.join(header)}")
            if [f.strip() for f in first] != header:
                raise MetricsError(
                    f"{path}:1: header is {','.join(first)!r}; expected {','.join(header)!r}")
            for fields in reader:
                if fields:
                    yield reader.line_num, fields
        except csv.Error as exc:
            raise MetricsError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise MetricsError(f"{path}: not UTF-8 text: {exc}") from exc


def load_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Reads `query_id,reference_id` rows; an empty reference_id marks a query without a copy.

    A query may have several rows (several references). Refused, with file and line: a wrong
    header, a row without exactly two fields, an empty query id, the same pair twice (it would
    count twice in the recall denominator), and a query marked both with and without a copy.
    """
    pairs: dict[tuple[str, str], int] = {}
    no_copy: dict[str, int] = {}
    with_copy: dict[str, int] = {}
    for line, fields in _rows(path, GT_HEADER):
        if len(fields) != 2:
            raise MetricsError(f"{path}:{line}: expected 2 fields (query_id,reference_id), "
                               f"got {len(fields)}: {','.join(fields)!r}")
        q, r = fields[0].strip(), fields[1].strip()
        if not q:
            raise MetricsError(f"{path}:{line}: empty query_id")
        if not r:
            if q in with_copy:
                raise MetricsError(f"{path}:{line}: query {q!r} has no reference here but has one "
                                   f"on line {with_copy[q]}")
            no_copy.setdefault(q, line)
            continue
        if q in no_copy:
            raise MetricsError(f"{path}:{line}: query {q!r} has a reference here but is marked "
                               f"as having none on line {no_copy[q]}")
        if (q, r) in pairs:
            raise MetricsError(f"{path}:{line}: duplicate pair ({q!r}, {r!r}), first on line "
                               f"{pairs[(q, r)]}")
        pairs[(q, r)] = line
        with_copy.setdefault(q, line)
    return GroundTruth(frozenset(pairs), frozenset(with_copy) | frozenset(no_copy))


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Reads `query_id,reference_id,score` rows. Refused, with file and line: a wrong header, a
    row without three fields, an empty id, a score that is not a finite number (NaN, inf, text),
    and a (query, reference) pair predicted twice (it would be counted twice)."""
    queries: list[str] = []
    refs: list[str] = []
    scores: list[float] = []
    seen: dict[tuple[str, str], int] = {}
    for line, fields in _rows(path, PREDICTIONS_HEADER):
        if len(fields) != 3:
            raise MetricsError(f"{path}:{line}: expected 3 fields (query_id,reference_id,score), "
                               f"got {len(fields)}: {','.join(fields)!r}")
        q, r, s = fields[0].strip(), fields[1].strip(), fields[2].strip()
        if not q or not r:
            raise MetricsError(f"{path}:{line}: empty {'query_id' if not q else 'reference_id'}")
        try:
            score = float(s)
        except ValueError:
            raise MetricsError(f"{path}:{line}: score {s!r} is not a number") from None
        if not math.isfinite(score):
            raise MetricsError(f"{path}:{line}: score {s!r} is not a finite number")
        first = seen.setdefault((q, r), line)
        if first != line:
            raise MetricsError(f"{path}:{line}: duplicate prediction for pair ({q!r}, {r!r}), "
                               f"first on line {first}")
        queries.append(q)
        refs.append(r)
        scores.append(score)
    return Predictions(_object_array(queries), _object_array(refs), np.asarray(scores, np.float64))


# ---- evaluation --------------------------------------------------------------------------------


def pessimistic_order(scores: np.ndarray, is_match: np.ndarray) -> np.ndarray:
    """Indices by score, highest first; within equal scores non-matches before matches."""
    # lexsort sorts by the last key first: -score ascending, then False (non-match) before True.
    return np.lexsort((is_match, -scores))


def precision_recall(is_match_ranked: np.ndarray, n_positive: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each rank of an already ranked list of match flags."""
    tp = np.cumsum(is_match_ranked, dtype=np.int64)
    ranks = np.arange(1, len(tp) + 1, dtype=np.int64)
    return tp / ranks, tp / n_positive


def average_precision(precisions: np.ndarray, recalls: np.ndarray) -> float:
    """Area under the step PR curve: sum of precision(i) * (recall(i) - recall(i-1))."""
    gains = np.diff(recalls, prepend=0.0)
    return float(np.sum(precisions * gains))


def operating_point(precisions: np.ndarray, recalls: np.ndarray, scores_ranked: np.ndarray,
                    min_precision: float = P90) -> tuple[float | None, float | None]:
    """(highest recall with precision >= min_precision, score at the first rank reaching it)."""
    ok = np.flatnonzero(precisions >= min_precision)
    if len(ok) == 0:
        return None, None
    best = ok[np.argmax(recalls[ok])]  # argmax: the first, highest-scored rank with that recall
    return float(recalls[best]), float(scores_ranked[best])


def evaluate(gt: GroundTruth, predictions: Predictions,
             unknown_queries: str = "false_positive") -> Metrics:
    """DISC2021 micro AP, recall and threshold at 90 % precision, and accuracy at rank 1.

    `unknown_queries` says what to do with predictions whose query the ground truth does not
    list: "false_positive" (default, as the official evaluation), "ignore" (dropped before
    ranking) or "error".
    """
    if unknown_queries not in UNKNOWN_QUERY_POLICIES:
        raise MetricsError(f"unknown_queries must be one of {', '.join(UNKNOWN_QUERY_POLICIES)}; "
                           f"got {unknown_queries!r}")
    n_positive = len(gt.pairs)
    if n_positive == 0:
        raise MetricsError("the ground truth has no (query, reference) pair: "
                           "average precision and recall are undefined")
    qids, rids = predictions.query_ids, predictions.reference_ids
    scores = np.asarray(predictions.scores, dtype=np.float64)
    n = len(scores)

    known = np.fromiter((q in gt.queries for q in qids), dtype=bool, count=n)
    n_unknown = int(n - known.sum())
    if n_unknown and unknown_queries == "error":
        first = qids[np.flatnonzero(~known)[0]]
        raise MetricsError(f"{n_unknown} predictions are for queries the ground truth does not "
                           f"list (first: {first!r}); is it the right ground-truth file?")
    if n_unknown and unknown_queries == "ignore":
        qids, rids, scores = qids[known], rids[known], scores[known]
        n = len(scores)

    pairs = gt.pairs
    is_match = np.fromiter(((q, r) in pairs for q, r in zip(qids, rids)), dtype=bool, count=n)
    order = pessimistic_order(scores, is_match)
    match_ranked = is_match[order]
    precisions, recalls = precision_recall(match_ranked, n_positive)
    recall90, threshold90 = operating_point(precisions, recalls, scores[order])

    top1 = _top1_hits(gt.positive_queries, qids[order], match_ranked)

    return Metrics(
        micro_ap=average_precision(precisions, recalls),
        recall_at_p90=recall90,
        threshold_at_p90=threshold90,
        acc_at_1=sum(top1.values()) / len(top1),
        n_queries=len(gt.queries),
        n_positive_pairs=n_positive,
        n_predictions=n,
        n_unknown_query_predictions=n_unknown,
    )


def _top1_hits(positive_queries: frozenset[str], qids_ranked: np.ndarray,
               match_ranked: np.ndarray) -> dict[str, bool]:
    """Whether each query with a copy has a copy as its top-1 (False when it has no prediction).

    Takes predictions already in the pessimistic global order: a query's first prediction there
    is its top-1 (the order is by score, and a tie puts its non-matches first).
    """
    hits = dict.fromkeys(positive_queries, False)
    seen: set[str] = set()
    for q, is_match in zip(qids_ranked, match_ranked):
        if q in hits and q not in seen:
            seen.add(q)
            hits[q] = bool(is_match)
    return hits


def top1_hits(gt: GroundTruth, predictions: Predictions) -> dict[str, bool]:
    """For each query with a copy: whether its best-scored prediction is one of its references
    (ties pessimistic, as in `evaluate`; no prediction counts as a miss)."""
    is_match = np.fromiter(((q, r) in gt.pairs for q, r in zip(predictions.query_ids, predictions.reference_ids)),
                           dtype=bool, count=len(predictions))
    order = pessimistic_order(np.asarray(predictions.scores, np.float64), is_match)
    return _top1_hits(gt.positive_queries, predictions.query_ids[order], is_match[order])


def pairs_found(gt: GroundTruth, predictions: Predictions, threshold: float) -> set[tuple[str, str]]:
    """The ground-truth pairs predicted with a score of at least `threshold`."""
    return {(q, r) for q, r, s in zip(predictions.query_ids, predictions.reference_ids, predictions.scores)
            if s >= threshold and (q, r) in gt.pairs}
