"""Search with regions (`--regions`): partial copies found, and where the copy sits on each side.

A pair's score is the best of

    global-global   the two whole images (plain search)
    global-region   the query's whole image against a reference's region row (stored in the
                    index by `index --regions`: a crop of the reference, copyscan.regions)
    region-global   a crop of the query against a reference's whole image
    verified        geometric verification (copyscan.verify): a pair whose local features agree
                    on one affine map with at least `inlier_floor` inliers scores at least the
                    index's default threshold, more with more inliers (`verified_score`)

the first three the same cosine of two descriptors of the same model, the last anchored at the
threshold: on the dev benchmark, pairs verified with 20 or more inliers were copies 418 times in
419, as pairs scoring 0.75 were (317 of 317; BENCHMARKS.md "Regions"), so a threshold means the
same with and without regions (region-region pairs are left out: two crops of unrelated
photos match more often than they find copies). The winning boxes are kept: where the copy sits
in the query and which part of the reference it shows, in fractions of width and height.

Crops and verification cost model calls and feature matching, so they are spent only where they
can change the answer (the bands were chosen on the dev benchmark with the default model,
BENCHMARKS.md "Regions"):

* query crops for queries whose best whole-image score is in [`crop_from`, `crop_below`)
  (uncertain: a pasted copy scores low against its reference; a query that resembles nothing at
  all is no copy as a rule, and its crop finds nothing either);
* verification of a query's best match when it scores in the uncertain band (`verify_band`, or
  `unstored_band` where the references' local features are not stored in the index; to
  lift a copy the descriptor doubts), when a crop won it (to place the box), and, with a
  threshold, when it is reported below `place_below` (to place the box); and of its runner-up
  when that is in the band too, close behind the best (`runner_up_within`: an unrelated picture
  may outscore a pasted copy by a hair).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np

from .regions import FULL_BOX, Box, RowTable, grid_boxes, whole_image_params

# One centred crop of 60% of each side: on the dev benchmark with the default model it gives most
# of what a 3 x 3 grid of 60% crops plus a 2 x 2 grid of 75% crops gives (0.812 vs 0.826 micro AP,
# base 0.783) at a sixth of the model calls; centred crops of 50% or 70% score within 0.003 of it.
# Screenshots, pads and memes frame the copy near the middle; verification finds the rest.
QUERY_BOXES: tuple[Box, ...] = tuple(grid_boxes(0.6, 1))
INDEX_BOXES: tuple[Box, ...] = tuple(grid_boxes(0.6, 1))


@dataclass(frozen=True)
class RegionSettings:
    query_boxes: tuple[Box, ...] = QUERY_BOXES
    # Queries whose best whole-image score is below this get crops: cropping every query scores
    # less (crops of distractors find near matches too). With the default model and the wide band
    # below, 0.45 and 0.55 score alike (0.8477 and 0.8479 micro AP) and 0.45 crops 11% fewer
    # queries (BENCHMARKS.md "Regions", region_sweep.py's "stored" table).
    crop_below: float = 0.45
    # ... and at least this: on the dev benchmark the crops of the 10% of queries whose best
    # whole-image score is below 0.30 changed nothing (0.8477 -> 0.8476 micro AP without them, 0.59
    # verified pairs a query instead of 0.65; from 0.32 it loses 0.002: region_sweep.py's
    # "cropfrom" table). -inf: every query below `crop_below`.
    crop_from: float = 0.30
    # A query's best match won by a crop has only the crop's box: verification places it when the
    # match scores at least `place_from` (below the threshold too: its inliers may lift it over).
    # With a threshold (a normal query, few matches), a reported best match that the whole image
    # won is placed too when it scores below `place_below` (a photo filling half a screenshot can
    # score 0.8 as a whole image); above, the whole image is the copy. Without one (-1, as eval
    # runs), those would be most queries.
    place_from: float = 0.45
    place_below: float = 0.9
    # `dedupe --regions` places the pairs the whole images won below this: a photo filling 80% of
    # a screenshot scores 0.90 as a whole image with session 8's default, and a whole-frame box
    # would tell the keep rule the screenshot holds all of the photo's pixels. Verifying a pair
    # costs about 3 ms where the index stores the features (BENCHMARKS.md "Regions", session 8).
    dedupe_place_below: float = 0.95
    # Best matches scoring in [low, high) verified whoever won them, so that their inliers can
    # lift a copy the descriptor doubts (None: no band). Where the references' features are
    # stored (index --regions, local_store.py) a pair costs half as much, and the band is wide:
    # on the dev benchmark [0.30, 0.65) gives +0.004 micro AP over [0.38, 0.60) for twice the
    # verified pairs, at 1.92x plain's query time against 2.21x with features computed at query
    # time (BENCHMARKS.md "Regions"). Without stored features, `unstored_band` (None: the same).
    verify_band: tuple[float, float] | None = (0.30, 0.65)
    unstored_band: tuple[float, float] | None = (0.38, 0.6)
    # The runner-up (second-best match) is verified too when it is in the band and scores within
    # this of the best (None: the best only). An unrelated picture can outscore a pasted copy by
    # a hair: session 7's default scored one 0.545 against a collage whose pasted photo scored
    # 0.517. On the dev benchmark with that default: best only 0.8580 micro AP, within 0.03 /
    # 0.05 / 0.10 0.8612 / 0.8634 / 0.8646, any runner-up in the band 0.8646 at 2.1-2.2x plain's
    # query time against 1.8-1.9x (BENCHMARKS.md "Regions"; the query's features are computed once
    # for both pairs).
    runner_up_within: float | None = 0.1
    # A verified pair with at least `inlier_floor` inliers scores at least the index's default
    # threshold, plus `inlier_step` for each doubling of the inliers (verified_score).
    inlier_floor: int = 20
    inlier_step: float = 0.1
    # Queries refined together (crops batched): a chunk's pairs are verified while the next chunk
    # is embedded (256 and 512 measured alike: 1.89-1.94x plain, BENCHMARKS.md "Regions").
    chunk: int = 512
    # Score the query's whole image against the references' region rows (index --regions) too.
    # Off: on the dev benchmark they added 0.0003-0.0025 micro AP to the query crops for twice
    # the index (alone they cost 0.003; BENCHMARKS.md "Regions"). Region rows serve dedupe, where
    # every image is also a query.
    reference_regions: bool = False
    # The default threshold the score levels above were chosen at (session 8's default model,
    # 0.71). Another model or width scores on its own scale, and its calibrated threshold says
    # where that scale sits: `at(threshold)` moves the crop and verify levels by the difference
    # (session 9, hard dev benchmark: the 64-d model at 0.77 0.800 -> 0.817 micro AP, the 256-d
    # at 0.68 0.827 -> 0.842; the 128-d moved by -0.03 / +0.03 instead: 0.837 / 0.825 against
    # 0.835). `place_below` and `dedupe_place_below` stay: near 1 the scales meet. None: fixed.
    tuned_at: float | None = 0.71

    def at(self, threshold: float | None) -> "RegionSettings":
        """These settings for an index whose default threshold is `threshold` (see `tuned_at`)."""
        if self.tuned_at is None or threshold is None or threshold == self.tuned_at:
            return self
        d = float(threshold) - self.tuned_at
        move = lambda band: None if band is None else (band[0] + d, band[1] + d)  # noqa: E731
        return replace(self, crop_from=self.crop_from + d, crop_below=self.crop_below + d,
                       place_from=self.place_from + d, verify_band=move(self.verify_band),
                       unstored_band=move(self.unstored_band), tuned_at=float(threshold))

    def band(self, stored: bool) -> tuple[float, float] | None:
        """The verify band where the references' features are stored, or not."""
        if self.verify_band is None or stored or self.unstored_band is None:
            return self.verify_band
        return self.unstored_band


VERIFIED_MAX_ABOVE = 0.24  # a verified score stays below the threshold + this (0.99 at 0.75)


def verified_score(inliers: int, anchor: float, settings: RegionSettings) -> float | None:
    """The score geometric verification gives a pair: `anchor` (the index's default threshold) at
    `inlier_floor` inliers, `inlier_step` more for each doubling; None below the floor."""
    if inliers < settings.inlier_floor:
        return None
    lift = settings.inlier_step * float(np.log2(inliers / settings.inlier_floor))
    return anchor + min(lift, VERIFIED_MAX_ABOVE)


@dataclass
class Candidate:
    """A (query, reference) pair's best score so far, and the boxes that won it."""

    score: float
    query_box: Box = FULL_BOX
    reference_box: Box = FULL_BOX
    how: str = "global"  # global, region (a crop on one side), verified
    row: int = -1  # the reference's whole-image row in the index, -1 when unknown


def search(index, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) of queries in the score rule's query form: every candidate, whatever its
    score (a crop may raise it); the threshold applies to a pair's best score (`query_batches`)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    return index.search(queries, k, params=params) if params is not None else index.search(queries, k)


def merge_hits(into: dict[str, Candidate], scores: Iterable[float], ids: Iterable[int], rows: RowTable,
               query_box: Box = FULL_BOX, allow_region_rows: bool = True) -> None:
    """Fold one search's hits into a query's candidates (per reference path, the best)."""
    for s, i in zip(scores, ids):
        if i < 0:
            continue
        region_row = rows.regions[i] != 0
        if region_row and (not allow_region_rows or query_box != FULL_BOX):
            continue  # region-region pairs are left out (see the module's doc)
        path = rows.paths[i]
        s = float(s)
        best = into.get(path)
        if best is None or s > best.score:
            ref_box = tuple(float(v) for v in rows.boxes[i]) if region_row else FULL_BOX
            how = "region" if region_row or query_box != FULL_BOX else "global"
            into[path] = Candidate(s, query_box, ref_box, how, rows.global_of.get(path, -1))


@dataclass
class PendingQuery:
    """A query waiting for refinement: its path and candidates."""

    path: str
    candidates: dict[str, Candidate]


class Refiner:
    """Runs query crops and verification over chunks of queries against one loaded index."""

    def __init__(self, model, index, rows: RowTable, post, settings: RegionSettings, *, report_floor: float,
                 anchor: float, batch_size: int = 32, workers: int | None = 0, max_pixels: int | None = None,
                 stored=None, exact=None, widen: int = 1):
        """`index` holds references in the score rule's form (score.py); `post` is the index's
        post-processing, from which crops get the same form, so every score is the rule's;
        `anchor` is the index's default threshold, where verified scores start; `stored` the
        references' stored features (local_store.LocalFeatureReader) or None. With an approximate
        index, `exact(queries, scores, ids)` re-scores its hits exactly (search.LoadedIndex.exact_top)
        and `widen` times more of them are fetched, as plain search does."""
        self.model = model
        self.index = index
        self.rows = rows
        self.post = post  # copyscan.postprocess.PostProcess of the index
        self.settings = settings
        self.report_floor = report_floor  # matches reported at or above this get their box placed
        self.anchor = anchor
        self.batch_size = batch_size
        self.workers = workers
        self.max_pixels = max_pixels
        self.k = 0
        self.exact = exact
        self.widen = widen
        self.stats = {"queries": 0, "cropped": 0, "crops": 0, "verified_pairs": 0, "verified": 0, "lifted": 0}
        self._references = FeatureCache(256, stored)  # references shared by queries of a chunk, bounded
        self._band = settings.band(stored is not None)
        self._pool = None  # verification threads, started with the first pair

    # ---- query crops ---------------------------------------------------------------------------

    def start(self, pending: Sequence[PendingQuery], k: int) -> "Verifying":
        """Crops now; verification started on the thread pool. The candidates change only in the
        returned handle's `wait()`, so the caller can embed the next chunk meanwhile: ORB and
        RANSAC run beside the model instead of after it (BENCHMARKS.md "Regions": the model's
        two threads leave a core half idle)."""
        self.k = k
        self.stats["queries"] += len(pending)
        self._crops(pending)
        return self._start_verify(pending)

    def close(self) -> None:
        """Stop the verification threads (pending pairs are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _kw(self) -> dict:
        kw = {"batch_size": self.batch_size, "workers": self.workers}
        if self.max_pixels is not None:
            kw["max_pixels"] = self.max_pixels
        return kw

    def _crops(self, pending: Sequence[PendingQuery]) -> None:
        s = self.settings
        todo = [q for q in pending
                if s.crop_from <= max((c.score for c in q.candidates.values()), default=-np.inf) < s.crop_below]
        if not todo or not s.query_boxes:
            return
        self.stats["cropped"] += len(todo)
        from .score import queries_of

        params = whole_image_params(self.index, self.rows)
        from .embed import embed_regions

        # Crops are decoded on a thread while the model embeds the previous batch.
        for batch in embed_regions([(q.path, s.query_boxes) for q in todo], self.model, threads=1 if self.workers == 0 else 0,
                                   **self._kw()):
            if not len(batch.owner):
                continue
            self.stats["crops"] += len(batch.owner)
            queries = queries_of(self.post, batch.descriptors)
            scores, ids = search(self.index, queries, self.k * self.widen, params)
            if self.exact is not None:
                scores = self.exact(queries, scores, ids)
            for owner, box, s_row, i_row in zip(batch.owner, batch.boxes, scores, ids):
                merge_hits(todo[owner].candidates, s_row, i_row, self.rows, query_box=box)

    # ---- geometric verification ----------------------------------------------------------------

    def _start_verify(self, pending: Sequence[PendingQuery]) -> "Verifying":
        s = self.settings
        # per query, its best match (and runner-up) where verifying pays; one task a query, so
        # that the query's local features are computed once for both
        work: list[tuple[PendingQuery, list[tuple[str, Candidate]]]] = []
        top = None
        if self._band is not None:
            # With a threshold, the band reaches up to it: a best match between the band and the
            # threshold is reported only if its inliers lift it over (a better model puts more
            # pastes there: 0.6 is above the band, below 0.75).
            top = max(self._band[1], self.report_floor) if np.isfinite(self.report_floor) else self._band[1]
        for q in pending:
            if not q.candidates:
                continue
            (ref, c), runner_up = _best_two(q.candidates)
            uncertain = top is not None and self._band[0] <= c.score < top
            # Below the threshold too: the inliers may lift it over.
            coarse = c.how == "region" and c.score >= s.place_from
            reported = np.isfinite(self.report_floor) and max(self.report_floor, s.place_from) <= c.score < s.place_below
            pairs = [(ref, c)] if uncertain or coarse or reported else []
            if runner_up is not None and top is not None and _close_second(c.score, runner_up[1].score, self._band[0], top, s):
                pairs.append(runner_up)
            if pairs:
                work.append((q, pairs))
        if not work:
            return Verifying(self, [], [])
        if self._pool is None:
            self._pool = _verify_pool()
        return Verifying(self, work, [self._pool.submit(self._verify_query, q.path, [ref for ref, _ in pairs])
                                      for q, pairs in work])

    def _apply(self, work: list[tuple[PendingQuery, list[tuple[str, Candidate]]]], found: list) -> None:
        s = self.settings
        for (q, pairs), results in zip(work, found):
            for (ref, c), (tried, v) in zip(pairs, results):
                self.stats["verified_pairs"] += tried
                if v is None:
                    continue
                self.stats["verified"] += 1
                score = verified_score(v.inliers, self.anchor, s)
                if score is not None and score > c.score:
                    self.stats["lifted"] += 1
                q.candidates[ref] = Candidate(max(c.score, score if score is not None else c.score), v.query_box,
                                              v.reference_box, "verified", c.row)

    def _verify_query(self, query: str, references: list[str]) -> list:
        """Per reference, (1 if both images were readable else 0, the verification or None); runs
        in a thread."""
        from . import verify as geo

        q = _features(query)
        found = []
        for reference in references:
            r = None if q is None else self._references.get(reference)
            found.append((0, None) if q is None or r is None else (1, geo.verify(q, r)))
        return found


class Verifying:
    """A chunk's verification under way: `wait()` puts its verified scores and boxes in place."""

    def __init__(self, refiner: Refiner, work: list, futures: list):
        self.refiner, self.work, self.futures = refiner, work, futures

    def wait(self) -> None:
        self.refiner._apply(self.work, [f.result() for f in self.futures])
        self.work, self.futures = [], []


# ---- query ---------------------------------------------------------------------------------------


def query_batches_with_regions(loaded, entries, model, extraction, top_k: int, threshold: float,
                               settings: RegionSettings | None = None, advance=None):
    """search.query_batches with regions: per chunk of queries, the results (up to `top_k` matches
    whose best score is at least `threshold`, each with its boxes) and the skipped files."""
    from .embed import embed_entries
    from .results import Match, QueryResult
    from .score import queries_of, score_floor

    floor = score_floor(threshold)
    settings = (settings or RegionSettings()).at(loaded.threshold)
    rows = loaded.rows
    use_region_rows = settings.reference_regions and rows.has_regions
    params = None if use_region_rows else whole_image_params(loaded.index, rows)
    per_image = rows.per_image if use_region_rows else 1
    widen = loaded.fetch_factor  # approximate scores: more candidates, re-scored exactly
    refiner = Refiner(model, loaded.index, rows, loaded.post, settings, report_floor=floor, anchor=loaded.threshold,
                      batch_size=extraction.batch_size, workers=0, max_pixels=extraction.max_pixels,
                      stored=stored_features(loaded), exact=loaded.exact_top, widen=widen)
    pending: list[tuple[object, PendingQuery]] = []
    skipped: list = []

    def start():
        """The chunk so far, cropped, its verification started: (rows, skipped, handle)."""
        chunk, lost = list(pending), list(skipped)
        pending.clear()
        skipped.clear()
        return chunk, lost, refiner.start([p for _, p in chunk], top_k + 1)

    def results_of(chunk, lost, verifying):
        verifying.wait()
        results = []
        for row, p in chunk:
            p.candidates.pop(row.path, None)  # a file is never its own match (a crop may find it)
            result = QueryResult(row.path, width=row.width, height=row.height)
            for ref, c in sorted(p.candidates.items(), key=lambda t: -t[1].score):
                if c.score < floor or len(result.matches) == top_k:
                    continue
                result.matches.append(Match(ref, c.score, len(result.matches) + 1, c.query_box, c.reference_box))
            results.append(result)
        return results, lost

    # A chunk's results are given once the next chunk is embedded and cropped: its pairs are
    # verified meanwhile, on the cores the model leaves idle.
    in_flight = None

    def hand_over():
        """Start the chunk so far; give the results of the one started before it."""
        nonlocal in_flight
        started = start()
        if in_flight is not None:
            yield results_of(*in_flight)
        in_flight = started

    try:
        for batch in embed_entries(entries, model, extraction.batch_size, extraction.workers, extraction.max_pixels,
                                   progress=advance):
            skipped.extend(batch.skipped)
            if batch.rows:
                queries = queries_of(loaded.post, batch.descriptors)
                scores, ids = search(loaded.index, queries, (top_k + 1) * per_image * widen, params)
                scores = loaded.exact_top(queries, scores, ids)
                for row, s_row, i_row in zip(batch.rows, scores, ids):
                    candidates: dict[str, Candidate] = {}
                    merge_hits(candidates, s_row, i_row, rows, allow_region_rows=use_region_rows)
                    candidates.pop(row.path, None)
                    pending.append((row, PendingQuery(row.path, candidates)))
            if len(pending) >= settings.chunk:
                yield from hand_over()
        if pending or skipped:
            yield from hand_over()
        if in_flight is not None:
            yield results_of(*in_flight)
    finally:
        refiner.close()


def _best_two(candidates: dict[str, Candidate]):
    """A query's best (path, candidate) and its runner-up (None with one candidate)."""
    ranked = sorted(candidates.items(), key=lambda t: -t[1].score)[:2]
    return ranked[0], (ranked[1] if len(ranked) > 1 else None)


def _close_second(best: float, second: float, low: float, high: float, settings: RegionSettings) -> bool:
    """Whether a runner-up scoring `second` (the best `best`) is verified: in [low, high) and within
    `runner_up_within` of the best."""
    return settings.runner_up_within is not None and low <= second < high and best - second <= settings.runner_up_within


def _features(path: str):
    """ORB features of the image at `path` (copyscan.verify), or None when it cannot be read."""
    from .local_features import file_features

    return file_features(path)


def stored_features(loaded):
    """The loaded index's stored local features (index --regions), or None."""
    from .local_store import LocalFeatureReader

    return LocalFeatureReader.open(loaded.store.local_features_path)


class FeatureCache:
    """`_features` by path, computed once while the path stays among the `limit` most recently
    used (None: every one kept); read from `stored` (local_store.LocalFeatureReader) first when
    given. Shared by the verification threads: two of them may compute one path at the same time
    (outside the lock; the result is the same)."""

    def __init__(self, limit: int | None, stored=None):
        self.limit = limit
        self.stored = stored
        self._items: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str):
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
        value = self.stored.get(path) if self.stored is not None else None
        if value is None:
            value = _features(path)
        with self._lock:
            self._items[path] = value
            if self.limit is not None and len(self._items) > self.limit:
                self._items.popitem(last=False)
        return value


def _verify_pool():
    """Threads for verification: OpenCV and Pillow release the GIL, so a thread per core."""
    from concurrent.futures import ThreadPoolExecutor

    from .embed import default_workers

    return ThreadPoolExecutor(max_workers=default_workers(), thread_name_prefix="copyscan-verify")


# ---- dedupe ------------------------------------------------------------------------------------


@dataclass
class RegionPairs:
    """Pairs of images (item indices, first < second) and the boxes that won each pair."""

    first: np.ndarray
    second: np.ndarray
    score: np.ndarray
    boxes: dict[tuple[int, int], tuple[Box, Box]]  # (first, second) -> (box in first, box in second)

    def pairs(self):
        from .group import Pairs

        return Pairs(self.first, self.second, self.score)


def region_collection_pairs(loaded, rows: np.ndarray, descriptors: np.ndarray, item_of_row: np.ndarray,
                            threshold: float) -> RegionPairs:
    """Image pairs of a collection scoring at least `threshold`, region rows included: the index
    rows `rows` (whole-image and region rows of the folder; `descriptors` theirs) against the
    loaded FAISS index, in the score rule's dedupe form; `item_of_row` maps every index row to its
    image's item (-1 outside the folder)."""
    from .score import pairs_of
    from .search import pairs_in

    found = pairs_in(loaded.index, pairs_of(loaded.post, descriptors), rows, threshold, len(item_of_row),
                     keep=item_of_row >= 0)
    return image_pairs(found.first, found.second, found.score, loaded.rows, item_of_row)


def image_pairs(row_pairs_first: np.ndarray, row_pairs_second: np.ndarray, row_scores: np.ndarray,
                rows: RowTable, item_of_row: np.ndarray) -> RegionPairs:
    """Row pairs (whole-image and region rows of one index) -> image pairs, best score per pair.

    Pairs of two rows of one image and pairs of two region rows are dropped (see the module's
    doc); a pair won by a region row keeps that row's box on its side.
    """
    a, b = item_of_row[row_pairs_first], item_of_row[row_pairs_second]
    ra, rb = rows.regions[row_pairs_first] != 0, rows.regions[row_pairs_second] != 0
    keep = (a != b) & ~(ra & rb) & (a >= 0) & (b >= 0)
    rf, rs, s = row_pairs_first[keep], row_pairs_second[keep], row_scores[keep]
    a, b = a[keep], b[keep]
    swap = a > b
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    rf, rs = np.where(swap, rs, rf), np.where(swap, rf, rs)  # rf is a's row, rs is b's row
    order = np.lexsort((-s, b, a))  # per (a, b), best score first
    a, b, s, rf, rs = a[order], b[order], s[order], rf[order], rs[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    boxes: dict[tuple[int, int], tuple[Box, Box]] = {}
    for i, j, x, y in zip(a[first].tolist(), b[first].tolist(), rf[first].tolist(), rs[first].tolist()):
        if rows.regions[x] or rows.regions[y]:
            boxes[(i, j)] = (_box_of(rows, x), _box_of(rows, y))
    return RegionPairs(a[first].astype(np.int64), b[first].astype(np.int64), s[first].astype(np.float32), boxes)


def _box_of(rows: RowTable, row: int) -> Box:
    return tuple(float(v) for v in rows.boxes[row]) if rows.regions[row] else FULL_BOX


def verify_uncertain(loaded, rows: np.ndarray, descriptors: np.ndarray, item_of_row: np.ndarray, found: RegionPairs,
                     paths: list[str], threshold: float, settings: RegionSettings | None = None,
                     progress: bool = False, stored=None) -> int:
    """Lift pairs the descriptors doubt, as `query --regions` does: each image that `found` (the
    pairs at `threshold`) leaves ungrouped gets its best partner scoring in
    [the band's low end, threshold) verified (RegionSettings.band: wider where the index stores
    the images' local features), and its runner-up when that scores within
    `runner_up_within` of the best; a pair whose inliers reach the floor joins `found`
    with its verified score (anchored at the index's default threshold) and boxes. Returns how
    many pairs were added. `stored`: the index's stored local features (`stored_features`) or None."""
    s = (settings or RegionSettings()).at(loaded.threshold)
    band = s.band(stored is not None)
    if band is None or not len(rows):
        return 0
    from .score import pairs_of

    grouped = np.zeros(len(paths), dtype=bool)
    grouped[found.first] = grouped[found.second] = True
    # Only the ungrouped images search, top-k (not a range search down to the band's low end,
    # which could return most of a large collection): k covers an image's own rows and more.
    mine = rows[~grouped[item_of_row[rows]]]
    if not len(mine):
        return 0
    table = loaded.rows
    k = min(loaded.index.ntotal, 3 * table.per_image + 2)
    position = np.full(len(item_of_row), -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    # ungrouped image -> {uncertain partner: its best score over the image's rows}
    partners: dict[int, dict[int, float]] = {}
    for start in range(0, len(mine), 4096):
        block = mine[start:start + 4096]
        scores, ids = search(loaded.index, pairs_of(loaded.post, descriptors[position[block]]), k)
        for row, s_row, i_row in zip(block.tolist(), scores, ids):
            item = int(item_of_row[row])
            mine_of = partners.setdefault(item, {})
            for sc, hit in zip(s_row.tolist(), i_row.tolist()):
                if hit < 0 or sc < band[0]:
                    break  # best first
                other = int(item_of_row[hit])
                if other < 0 or other == item or (table.regions[row] and table.regions[hit]) or sc >= threshold:
                    continue  # outside the folder, itself, region-region, or a pair found already
                mine_of[other] = max(sc, mine_of.get(other, -np.inf))
    work_set: set[tuple[int, int]] = set()
    for item, scored in partners.items():
        if not scored:
            continue
        ranked = sorted(scored.items(), key=lambda t: -t[1])
        # The best uncertain partner, and the runner-up when close (RegionSettings.runner_up_within).
        for other, sc in ranked[:1] + [r for r in ranked[1:2] if _close_second(ranked[0][1], r[1], band[0], threshold, s)]:
            work_set.add((min(item, other), max(item, other)))
    work = sorted(work_set)
    if not work:
        return 0
    checked = _verify_item_pairs(work, paths, FeatureCache(512, stored), progress, "verifying uncertain pairs")
    added_first, added_second, added_score = [], [], []
    for (a, b), v in zip(work, checked):
        lifted = None if v is None else verified_score(v.inliers, loaded.threshold, s)
        if lifted is None or lifted < threshold:
            continue
        added_first.append(a)
        added_second.append(b)
        added_score.append(lifted)
        found.boxes[(a, b)] = (v.query_box, v.reference_box)
    if added_first:
        found.first = np.concatenate([found.first, np.asarray(added_first, np.int64)])
        found.second = np.concatenate([found.second, np.asarray(added_second, np.int64)])
        found.score = np.concatenate([found.score, np.asarray(added_score, np.float32)])
    return len(added_first)


def place_boxes(pairs: RegionPairs, paths: list[str], limit: int = 100_000, stored=None,
                place_below: float | None = None) -> int:
    """Refine the coarse crop boxes of region-won pairs by geometric verification, and with
    `place_below` place the pairs the whole images won below that score (RegionSettings.place_below:
    a photo filling most of a screenshot wins as a whole image, yet holds part of its pixels);
    returns how many were verified, trying at most `limit` pairs, region-won first.
    `stored`: the images' stored features (local_store.LocalFeatureReader) or None."""
    todo = list(pairs.boxes)
    if place_below is not None:
        todo += [(i, j) for i, j, sc in zip(pairs.first.tolist(), pairs.second.tolist(), pairs.score.tolist())
                 if sc < place_below and (i, j) not in pairs.boxes]
    todo = todo[:limit]
    if not todo:
        return 0
    placed = 0
    for (i, j), v in zip(todo, _verify_item_pairs(todo, paths, FeatureCache(256, stored))):
        if v is not None:  # j mapped into i: i's box shows j's box
            pairs.boxes[(i, j)] = (v.query_box, v.reference_box)
            placed += 1
    return placed


def _verify_item_pairs(work: list[tuple[int, int]], paths: list[str], features: "FeatureCache", progress: bool = False,
                       label: str = "verifying pairs") -> list:
    """copyscan.verify of each (i, j) item pair (j mapped into i; None where either image cannot be
    read or the geometry does not agree), in order, on a thread per core (OpenCV releases the GIL)."""
    from . import verify as geo
    from .progress import progress_bar

    def check(pair: tuple[int, int]):
        fi, fj = features.get(paths[pair[0]]), features.get(paths[pair[1]])
        return None if fi is None or fj is None else geo.verify(fi, fj)

    checked = []
    with _verify_pool() as pool, progress_bar(progress, len(work), label, "pairs") as bar:
        for v in pool.map(check, work):
            checked.append(v)
            bar.advance(1)
    return checked


def content_boxes(pairs: RegionPairs, paths: list[str]) -> dict[str, tuple[float, float, float, float]]:
    """path -> the smallest box in which a pair found the shared content of that image (only
    boxes smaller than the whole image); the keep rule reads it as the image's footprint."""
    best: dict[str, tuple[float, float, float, float]] = {}
    for (i, j), (box_i, box_j) in pairs.boxes.items():
        for item, box in ((i, box_i), (j, box_j)):
            box = tuple(float(v) for v in box)
            if box == FULL_BOX:
                continue
            old = best.get(paths[item])
            if old is None or _area(box) < _area(old):
                best[paths[item]] = box
    return best


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def annotate_groups(groups, pairs: RegionPairs, item_of_path: dict[str, int]) -> None:
    """Give each copy in `groups` the boxes of its pair with the kept image (when regions won it)."""
    for g in groups:
        keep = item_of_path.get(g.keep.path)
        for member in g.copies:
            other = item_of_path.get(member.path)
            if keep is None or other is None:
                continue
            key = (min(keep, other), max(keep, other))
            if key not in pairs.boxes:
                continue
            box_first, box_second = pairs.boxes[key]
            member.box, member.keep_box = (box_second, box_first) if keep < other else (box_first, box_second)


# ---- calibrate ---------------------------------------------------------------------------------


def best_with_regions(sims: np.ndarray, paths: list[str], references: np.ndarray, model, batch_size: int = 32,
                      settings: RegionSettings | None = None, reference_paths: list[str] | None = None,
                      anchor: float | None = None) -> np.ndarray:
    """Query x reference cosines raised as `query --regions` raises them (plain cosines: no
    post-processing): by the query crops of rows whose best score is in [`crop_from`, `crop_below`), then,
    given the references' paths, by verifying each row's best match where the Refiner would
    (without a threshold: in `verify_band`, the band of an index with stored features, or won by
    a crop from `place_from`), verified scores
    anchored at `anchor` (default: the default threshold)."""
    from .score import DEFAULT_THRESHOLD

    anchor = DEFAULT_THRESHOLD if anchor is None else anchor
    s = (settings or RegionSettings()).at(anchor)
    sims = sims.copy()
    before = sims.copy()
    top = sims.max(axis=1, initial=-np.inf) if sims.size else np.zeros(0)
    todo = np.nonzero((top >= s.crop_from) & (top < s.crop_below))[0]
    if len(todo) and s.query_boxes:
        from .embed import embed_regions

        for batch in embed_regions([(paths[i], s.query_boxes) for i in todo], model, batch_size=batch_size, workers=0):
            crop_sims = batch.descriptors @ references.T
            for owner, row in zip(batch.owner, crop_sims):
                i = todo[owner]
                sims[i] = np.maximum(sims[i], row)
    if reference_paths is None or not sims.size:
        return sims
    from . import verify as geo

    features = FeatureCache(None)  # calibrate's sample: every image kept

    def lift(i: int, j: int) -> None:
        q, r = features.get(paths[i]), features.get(reference_paths[j])
        v = None if q is None or r is None else geo.verify(q, r)
        score = None if v is None else verified_score(v.inliers, anchor, s)
        if score is not None:
            sims[i, j] = max(float(sims[i, j]), score)

    two = np.argsort(-sims, axis=1)[:, :2]
    for i, ranked in enumerate(two.tolist()):
        j = ranked[0]
        best = float(sims[i, j])
        uncertain = s.verify_band is not None and s.verify_band[0] <= best < s.verify_band[1]
        coarse = best > before[i, j] and best >= s.place_from
        if uncertain or coarse:
            lift(i, j)
        if len(ranked) > 1 and s.verify_band is not None and _close_second(best, float(sims[i, ranked[1]]), *s.verify_band, s):
            lift(i, ranked[1])
    return sims
