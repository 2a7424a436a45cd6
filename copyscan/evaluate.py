"""`copyscan eval BENCH_DIR`: index a benchmark's references, query its queries, score the result.

A benchmark folder (as `copyscan bench synth` writes it):

    BENCH/references/*        reference images; their file names (relative paths) are the ids
    BENCH/queries/*           copies and distractors
    BENCH/gt.csv              query_id,reference_id (empty reference_id: a distractor)
    BENCH/labels.csv          query_id,edits,difficulty (optional; edits like crop(0.62);jpeg(35))

Writes OUT/matches.csv (the query's own output), OUT/predictions.csv (the same by id, for
`copyscan eval --gt --predictions` or any DISC2021 scorer) and OUT/metrics.json.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .api import index_folder, query_folder
from .discover import resolve_root
from .errors import UserError
from .extraction import Extraction
from .models import DEFAULT_MODEL
from .metrics import GroundTruth, Metrics, MetricsError, Predictions, evaluate, load_ground_truth, pairs_found, top1_hits
from .store import IndexStore

LABELS_HEADER = ["query_id", "edits", "difficulty"]


@dataclass
class EditRow:
    """One kind of edit: how the copy queries that have it fared."""

    edit: str
    copies: int  # copy queries with this edit (alone or in a chain)
    recall_at_p90: float | None  # share of their pairs scoring at least the P90 threshold
    acc_at_1: float  # share whose best match is their reference


# How a benchmark's queries are scored: whole images only (the model alone, `query --no-regions`);
# as `query` does by default (crops of uncertain queries, verification) against a plain index; or
# both sides with regions (`index --regions` too: region rows and stored local features).
SEARCH_MODES = ("whole-images", "regions", "index-regions")


@dataclass
class BenchEvaluation:
    bench: str
    output: str
    model: str
    metrics: Metrics
    per_edit: list[EditRow] = field(default_factory=list)
    queries_skipped: int = 0  # query files that could not be decoded: they predict nothing
    references_skipped: int = 0
    postprocess: dict = field(default_factory=dict)  # the index's manifest entry, {} when none
    search: str = "regions"  # how queries were scored: SEARCH_MODES
    predictions_path: str = ""
    metrics_path: str = ""

    def to_dict(self) -> dict:
        doc = self.metrics.to_dict()
        doc.update(bench=self.bench, model=self.model, queries_skipped=self.queries_skipped,
                   references_skipped=self.references_skipped, postprocess=self.postprocess, search=self.search,
                   per_edit=[asdict(r) for r in self.per_edit])
        return doc


def edit_name(label: str) -> str:
    """`crop(0.62)` -> `crop`: the kind of edit without its parameters."""
    return label.split("(", 1)[0].strip()


def load_labels(path: str | os.PathLike) -> dict[str, list[str]]:
    """query_id -> the kinds of edit it went through (parameters dropped), from labels.csv."""
    labels: dict[str, list[str]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != LABELS_HEADER[:2]:
                raise UserError(f"{path}:1: expected the header {','.join(LABELS_HEADER)}")
            for fields in reader:
                if not fields:
                    continue
                if len(fields) < 2 or not fields[0].strip():
                    raise UserError(f"{path}:{reader.line_num}: expected query_id,edits[,difficulty]")
                names = [edit_name(e) for e in fields[1].split(";") if e.strip()]
                labels[fields[0].strip()] = list(dict.fromkeys(names))
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: malformed CSV: {exc}") from None
    return labels


def per_edit_table(gt: GroundTruth, predictions: Predictions, metrics: Metrics,
                   labels: dict[str, list[str]]) -> list[EditRow]:
    """Recall at the P90 threshold and accuracy at rank 1 per kind of edit, over copy queries."""
    found = pairs_found(gt, predictions, metrics.threshold_at_p90) if metrics.threshold_at_p90 is not None else set()
    top1 = top1_hits(gt, predictions)
    pairs_of: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for q, r in gt.pairs:
        pairs_of[q].append((q, r))
    queries_with: dict[str, list[str]] = defaultdict(list)
    for q in sorted(gt.positive_queries):
        for name in labels.get(q, []):
            queries_with[name].append(q)
    rows = []
    for name in sorted(queries_with):
        queries = queries_with[name]
        pairs = [p for q in queries for p in pairs_of[q]]
        recall = sum(p in found for p in pairs) / len(pairs) if metrics.threshold_at_p90 is not None else None
        rows.append(EditRow(name, len(queries), recall, sum(top1[q] for q in queries) / len(queries)))
    return rows


def _check_bench(bench: Path) -> None:
    if not bench.is_dir():
        raise UserError(f"no such benchmark folder: {bench}")
    missing = [p for p in ("references", "queries", "gt.csv") if not (bench / p).exists()]
    if missing:
        raise UserError(f"{bench} is not a benchmark folder: it has no {', '.join(missing)} "
                        "(make one with `copyscan bench synth SRC OUT`)")


def _predictions_from_matches(matches_csv: Path, query_root: str, reference_root: str) -> Predictions:
    """matches.csv (paths) -> predictions by id (paths relative to queries/ and references/)."""
    rows = []
    with open(matches_csv, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            q = Path(os.path.relpath(rec["query_path"], query_root)).as_posix()
            r = Path(os.path.relpath(rec["reference_path"], reference_root)).as_posix()
            rows.append((q, r, float(rec["score"])))
    return Predictions.from_rows(rows)


def write_predictions(path: Path, predictions: Predictions) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["query_id", "reference_id", "score"])
        for q, r, s in zip(predictions.query_ids, predictions.reference_ids, predictions.scores):
            writer.writerow([q, r, f"{s:.6f}"])


def evaluate_bench(
    bench_dir: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    model: str | None = None,
    index_dir: str | os.PathLike | None = None,
    top_k: int = 10,
    post=None,
    extraction: Extraction | None = None,
    regions: bool = False,
    query_regions: bool = True,
) -> BenchEvaluation:
    """Index BENCH/references (incrementally, into OUT/index unless `index_dir`), query
    BENCH/queries keeping each query's top-k whatever the score, and score the predictions.

    `post` (a `postprocess.PostOptions`) sets up whitening / score normalisation in the index
    first; without it the index's stored setting (if any) is used. Queries are scored as `query`
    scores them by default (`query_regions`: crops of uncertain queries, verification); False
    scores whole images only, the model alone. `regions` also indexes with --regions.
    """
    if regions and not query_regions:
        raise UserError("regions=True indexes for region search, which query_regions=False turns off: give one of them")
    bench = Path(bench_dir)
    _check_bench(bench)
    out = Path(output) if output is not None else bench.parent / f"{bench.name}-eval"
    out.mkdir(parents=True, exist_ok=True)
    try:
        gt = load_ground_truth(bench / "gt.csv")
    except MetricsError as exc:
        raise UserError(str(exc)) from None
    labels = load_labels(bench / "labels.csv") if (bench / "labels.csv").exists() else {}
    index_dir = Path(index_dir) if index_dir is not None else out / "index"
    ref_root = resolve_root(bench / "references")
    query_root = resolve_root(bench / "queries")

    extraction = extraction or Extraction()
    # With --regions, the references are indexed as `index --regions` does (their local features
    # stored: the wider verification band), so the score is what a user of both options gets.
    indexed = index_folder(ref_root, index_dir=index_dir, model=model or DEFAULT_MODEL, extraction=extraction, post=post,
                           regions=regions)
    store = IndexStore(index_dir)
    others = [r for r in store.roots() if r != ref_root]
    if others:
        raise UserError(f"the index {index_dir} also holds {others[0]}: its images would be scored as wrong "
                        "references; use a fresh --index-dir")
    # -1 keeps every top-k match, normalised scores below -1 too (score.score_floor).
    queried = query_folder(query_root, index_dir=index_dir, output=out, threshold=-1.0, top_k=top_k,
                           extraction=extraction, report=False, regions=regions or query_regions)
    predictions = _predictions_from_matches(out / "matches.csv", query_root, ref_root)
    try:
        metrics = evaluate(gt, predictions, unknown_queries="error")
    except MetricsError as exc:
        raise UserError(f"{exc} (gt.csv does not match the files in queries/)") from None
    result = BenchEvaluation(
        str(bench), str(out), indexed.model, metrics, per_edit_table(gt, predictions, metrics, labels),
        queries_skipped=len(queried.skipped), references_skipped=len(indexed.skipped),
        postprocess=store.postprocess_entry() or {},
        search="index-regions" if regions else "regions" if query_regions else "whole-images",
    )
    result.predictions_path = str(out / "predictions.csv")
    write_predictions(out / "predictions.csv", predictions)
    result.metrics_path = str(out / "metrics.json")
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
    return result
