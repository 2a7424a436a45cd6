"""DISC2021 metrics on small cases computed by hand, and the checks on GT / predictions files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from copyscan.metrics import (
    GroundTruth, MetricsError, Predictions, evaluate, load_ground_truth, load_predictions, pairs_found, top1_hits,
)


def gt_of(pairs, distractors=()):
    return GroundTruth.from_pairs(pairs, distractors)


def preds(*rows):
    return Predictions.from_rows(rows)


def test_basic_case_by_hand():
    # Ranked: q1-r1 TP, q3-r5 FP, q2-r3 FP, q2-r2 TP. P = 2.
    # precision 1, 1/2, 1/3, 1/2; recall 1/2, 1/2, 1/2, 1.  AP = 1 * 1/2 + 1/2 * 1/2 = 0.75.
    gt = gt_of([("q1", "r1"), ("q2", "r2")], distractors=["q3"])
    m = evaluate(gt, preds(("q2", "r2", 0.6), ("q1", "r1", 0.9), ("q3", "r5", 0.8), ("q2", "r3", 0.7)))
    assert m.micro_ap == pytest.approx(0.75)
    assert m.recall_at_p90 == pytest.approx(0.5)
    assert m.threshold_at_p90 == pytest.approx(0.9)
    assert m.acc_at_1 == pytest.approx(0.5)  # q2's best is r3
    assert (m.n_queries, m.n_positive_pairs, m.n_predictions) == (3, 2, 4)


def test_ties_are_ranked_pessimistically():
    gt = gt_of([("q1", "r1")])
    m = evaluate(gt, preds(("q1", "r1", 0.5), ("q1", "r2", 0.5)))
    assert m.micro_ap == pytest.approx(0.5)  # the non-match goes first: precision 1/2 at the hit
    assert m.recall_at_p90 is None and m.threshold_at_p90 is None
    assert m.acc_at_1 == 0.0  # a non-match as good as the match makes rank 1 wrong


def test_ties_across_queries_are_pessimistic_too():
    gt = gt_of([("q1", "r1")], distractors=["q2"])
    m = evaluate(gt, preds(("q1", "r1", 0.8), ("q2", "r9", 0.8)))
    assert m.micro_ap == pytest.approx(0.5)
    assert m.acc_at_1 == 1.0  # within q1 there is no tie


def test_first_rank_counts_in_ap():
    # A single perfect prediction is AP 1 (the area from recall 0 to the first hit counts).
    assert evaluate(gt_of([("q", "r")]), preds(("q", "r", 0.1))).micro_ap == pytest.approx(1.0)


def test_ground_truth_pairs_never_predicted_are_misses():
    gt = gt_of([("q1", "r1"), ("q2", "r2")])
    m = evaluate(gt, preds(("q1", "r1", 0.9)))
    assert m.micro_ap == pytest.approx(0.5)
    assert m.recall_at_p90 == pytest.approx(0.5) and m.threshold_at_p90 == pytest.approx(0.9)
    assert m.acc_at_1 == pytest.approx(0.5)  # q2 has no prediction: wrong


def test_recall_at_p90_takes_the_highest_recall_reaching_the_precision():
    # 10 hits, 1 miss, 2 hits: precision stays >= 0.9 down to rank 13 (12/13), so every pair is
    # recalled at that precision and the threshold is the 13th score.
    gt = gt_of([(f"q{i}", f"r{i}") for i in range(12)])
    rows = [(f"q{i}", f"r{i}", 1.0 - i / 100) for i in range(10)]
    rows += [("q10", "rx", 0.895), ("q10", "r10", 0.89), ("q11", "r11", 0.88)]
    m = evaluate(gt, preds(*rows))
    assert m.recall_at_p90 == pytest.approx(1.0)  # rank 13: 12 hits / 13 = 0.923
    assert m.threshold_at_p90 == pytest.approx(0.88)


def test_several_references_per_query():
    gt = gt_of([("q1", "r1"), ("q1", "r2")])
    m = evaluate(gt, preds(("q1", "r1", 0.9), ("q1", "r2", 0.8)))
    assert m.micro_ap == pytest.approx(1.0)
    assert m.acc_at_1 == 1.0


def test_queries_outside_the_ground_truth():
    gt = gt_of([("q1", "r1")])
    p = preds(("qx", "r1", 0.95), ("q1", "r1", 0.9))
    assert evaluate(gt, p).micro_ap == pytest.approx(0.5)
    assert evaluate(gt, p).n_unknown_query_predictions == 1
    assert evaluate(gt, p, unknown_queries="ignore").micro_ap == pytest.approx(1.0)
    with pytest.raises(MetricsError, match="qx"):
        evaluate(gt, p, unknown_queries="error")


def test_no_predictions_and_no_pairs():
    m = evaluate(gt_of([("q1", "r1")]), preds())
    assert (m.micro_ap, m.recall_at_p90, m.acc_at_1) == (0.0, None, 0.0)
    with pytest.raises(MetricsError, match="no .query, reference. pair"):
        evaluate(gt_of([], distractors=["q"]), preds(("q", "r", 1.0)))


def test_duplicate_pair_in_memory_is_refused():
    with pytest.raises(MetricsError, match="duplicate"):
        preds(("q", "r", 0.5), ("q", "r", 0.4))
    with pytest.raises(MetricsError, match="finite"):
        preds(("q", "r", math.nan))


def test_top1_hits_and_pairs_found():
    gt = gt_of([("q1", "r1"), ("q2", "r2")])
    p = preds(("q1", "r1", 0.9), ("q2", "r9", 0.6), ("q2", "r2", 0.6))
    assert top1_hits(gt, p) == {"q1": True, "q2": False}
    assert pairs_found(gt, p, 0.6) == {("q1", "r1"), ("q2", "r2")}
    assert pairs_found(gt, p, 0.7) == {("q1", "r1")}


def test_random_scores_match_a_direct_computation():
    # AP as the mean over GT pairs of the precision at the rank each was found (0 if never).
    rng = np.random.default_rng(0)
    pairs = [(f"q{i}", f"r{i}") for i in range(40)]
    rows = []
    for i in range(40):
        for j in rng.choice(60, size=5, replace=False):
            rows.append((f"q{i}", f"r{j}", float(np.round(rng.random(), 1))))  # rounding makes ties
    m = evaluate(gt_of(pairs), preds(*rows))
    ranked = sorted(rows, key=lambda r: (-r[2], (r[0], r[1]) in set(pairs)))
    hits, total = 0, 0.0
    for rank, (q, r, _) in enumerate(ranked, 1):
        if (q, r) in set(pairs):
            hits += 1
            total += hits / rank
    assert m.micro_ap == pytest.approx(total / len(pairs))


# ---- files -------------------------------------------------------------------------------------


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_load_files(tmp_path):
    gt = load_ground_truth(write(tmp_path, "gt.csv", "query_id,reference_id\nq1,r1\nq2,\n\nq1,r2\n"))
    assert gt.pairs == {("q1", "r1"), ("q1", "r2")} and gt.queries == {"q1", "q2"}
    p = load_predictions(write(tmp_path, "p.csv", "query_id,reference_id,score\nq1,r1,0.5\nq2,r1,-1e-3\n"))
    assert list(p.query_ids) == ["q1", "q2"] and list(p.scores) == [0.5, -0.001]


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("query,ref\nq,r\n", "header"),
    ("query_id,reference_id\nq,r,x\n", ":2: expected 2 fields"),
    ("query_id,reference_id\n,r\n", ":2: empty query_id"),
    ("query_id,reference_id\nq,r\nq,r\n", ":3: duplicate pair"),
    ("query_id,reference_id\nq,\nq,r\n", "marked as having none"),
    ("query_id,reference_id\nq,r\nq,\n", "has no reference here"),
    (b"query_id,reference_id\nq\xff,r\n", "not UTF-8"),
])
def test_bad_ground_truth(tmp_path, text, message):
    with pytest.raises(MetricsError, match=message):
        load_ground_truth(write(tmp_path, "gt.csv", text))


@pytest.mark.parametrize("text, message", [
    ("query_id,reference_id\nq,r\n", "header"),
    ("query_id,reference_id,score\nq,r\n", ":2: expected 3 fields"),
    ("query_id,reference_id,score\nq,,0.5\n", "empty reference_id"),
    ("query_id,reference_id,score\nq,r,high\n", "not a number"),
    ("query_id,reference_id,score\nq,r,nan\n", "not a finite number"),
    ("query_id,reference_id,score\nq,r,inf\n", "not a finite number"),
    ("query_id,reference_id,score\nq,r,0.5\nq,r,0.4\n", ":3: duplicate prediction .* first on line 2"),
    ('query_id,reference_id,score\n"q,r,0.5\n', "malformed CSV|expected 3 fields"),
])
def test_bad_predictions(tmp_path, text, message):
    with pytest.raises(MetricsError, match=message):
        load_predictions(write(tmp_path, "p.csv", text))


def test_missing_file(tmp_path):
    with pytest.raises(MetricsError, match="cannot read"):
        load_predictions(tmp_path / "absent.csv")
