"""Search with regions (`--regions`): partial copies found, and where the copy sits on each side.

A pair's score is the best of

    global-global   the two whole images (plain search)
    global-region   the query's whole image against a reference's region row (stored in the
                    index by `index --regions`: a crop of the reference, copyscan.regions)
    region-global   a crop of the query against a reference's whole image
    verified        the box that geometric verification found (copyscan.verify), cropped and
                    embedded on each side, against the other side's whole image

every one the same cosine of two descriptors of the same model, so a threshold means the same with
and without regions (region-region pairs are left out: two crops of unrelated photos match more
often than they find copies). The winning boxes are kept: where the copy sits in the query and
which part of the reference it shows, in fractions of width and height.

Crops and verification cost model calls, so they are spent only where they can change the answer
(the bands were chosen on the dev benchmark, BENCHMARKS.md "Regions"):

* query crops for queries whose best whole-image score is below `crop_below` (uncertain, or
  matching nothing: a pasted copy scores low against its reference);
* verification of a query's best match when a crop won it (to place the box; its score may
  rise too), and optionally when it scores in an uncertain band (`verify_band`, to re-rank).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .regions import FULL_BOX, Box, RowTable, crop, grid_boxes, whole_image_params

# One centred crop of 60% of each side: on the dev benchmark it alone gives nearly all of what
# a 3 x 3 grid of 60% crops plus a 2 x 2 grid of 75% crops gives (0.764 vs 0.769 micro AP, base
# 0.695) at a sixth of the model calls. Screenshots, pads and memes frame the copy near the middle.
QUERY_BOXES: tuple[Box, ...] = tuple(grid_boxes(0.6, 1))
INDEX_BOXES: tuple[Box, ...] = tuple(grid_boxes(0.6, 1))


@dataclass(frozen=True)
class RegionSettings:
    query_boxes: tuple[Box, ...] = QUERY_BOXES
    crop_below: float = 0.65  # queries whose best whole-image score is below this get crops
    # A query's best match won by a crop has only the crop's box: verification places it when the
    # match scores at least `place_from` (below the threshold too: the verified box, embedded, may
    # score above it). With a threshold (a normal query, few matches), a reported best match that
    # the whole image won is placed too when it scores below `place_below` (a photo filling half a
    # screenshot can score 0.8 as a whole image); above, the whole image is the copy. Without one
    # (-1, as eval runs), those would be most queries.
    place_from: float = 0.45
    place_below: float = 0.9
    # Uncertain best matches scoring in [low, high) verified to re-rank them, or None. Off by
    # default: it pays little for its cost (BENCHMARKS.md "Regions", the `+ verify band` row).
    verify_band: tuple[float, float] | None = None
    chunk: int = 512  # queries refined together (crops batched, reference features shared)
    # Score the query's whole image against the references' region rows (index --regions) too.
    # Off: on the dev benchmark they added 0.0003-0.0025 micro AP to the query crops for twice
    # the index (alone they cost 0.003; BENCHMARKS.md "Regions"). Region rows serve dedupe, where
    # every image is also a query.
    reference_regions: bool = False


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
    """A query waiting for refinement: its path, post-processed descriptor and candidates."""

    path: str
    vector: np.ndarray  # the whole image in the score rule's query form (score.queries_of)
    candidates: dict[str, Candidate]


class Refiner:
    """Runs query crops and verification over chunks of queries against one loaded index."""

    def __init__(self, model, index, rows: RowTable, post, settings: RegionSettings, *, report_floor: float,
                 batch_size: int = 32, workers: int | None = 0, max_pixels: int | None = None):
        """`index` holds references in the score rule's form (score.py); `post` is the index's
        post-processing, from which crops get the same form, so every score is the rule's."""
        self.model = model
        self.index = index
        self.rows = rows
        self.post = post  # copyscan.postprocess.PostProcess of the index
        self.settings = settings
        self.report_floor = report_floor  # matches reported at or above this get their box placed
        self.batch_size = batch_size
        self.workers = workers
        self.max_pixels = max_pixels
        self.k = 0
        self.stats = {"queries": 0, "cropped": 0, "crops": 0, "verified_pairs": 0, "verified": 0}
        self._ref_features: OrderedDict[str, object] = OrderedDict()
        self._ref_vectors: dict[int, np.ndarray] = {}

    # ---- query crops ---------------------------------------------------------------------------

    def refine(self, pending: Sequence[PendingQuery], k: int) -> None:
        """Update each pending query's candidates in place (crops, then verification)."""
        self.k = k
        self.stats["queries"] += len(pending)
        self._crops(pending)
        self._verify(pending)

    def _kw(self) -> dict:
        kw = {"batch_size": self.batch_size, "workers": self.workers}
        if self.max_pixels is not None:
            kw["max_pixels"] = self.max_pixels
        return kw

    def _crops(self, pending: Sequence[PendingQuery]) -> None:
        s = self.settings
        todo = [q for q in pending if max((c.score for c in q.candidates.values()), default=-np.inf) < s.crop_below]
        if not todo or not s.query_boxes:
            return
        self.stats["cropped"] += len(todo)
        from .score import queries_of

        params = whole_image_params(self.index, self.rows)
        from .embed import embed_regions

        for batch in embed_regions([(q.path, s.query_boxes) for q in todo], self.model, **self._kw()):
            if not len(batch.owner):
                continue
            self.stats["crops"] += len(batch.owner)
            scores, ids = search(self.index, queries_of(self.post, batch.descriptors), self.k, params)
            for owner, box, s_row, i_row in zip(batch.owner, batch.boxes, scores, ids):
                merge_hits(todo[owner].candidates, s_row, i_row, self.rows, query_box=box)

    # ---- geometric verification ----------------------------------------------------------------

    def _verify(self, pending: Sequence[PendingQuery]) -> None:
        from . import verify as geo

        s = self.settings
        work: list[tuple[PendingQuery, str]] = []
        for q in pending:
            if not q.candidates:
                continue
            ref, c = max(q.candidates.items(), key=lambda t: t[1].score)
            uncertain = s.verify_band is not None and s.verify_band[0] <= c.score < s.verify_band[1]
            # Below the threshold too: the verified box's own score may lift it over.
            coarse = c.how == "region" and c.score >= s.place_from
            reported = np.isfinite(self.report_floor) and max(self.report_floor, s.place_from) <= c.score < s.place_below
            if uncertain or coarse or reported:
                work.append((q, ref))
        if not work:
            return
        crops: list[np.ndarray] = []
        jobs: list[tuple[PendingQuery, str, object, str]] = []  # (query, ref path, verification, side)
        size = self.model.input_size
        current: tuple[str, object] | None = None  # work is grouped by query: one decoded at a time
        for q, ref in work:
            if current is None or current[0] != q.path:
                img = _open(q.path)
                current = (q.path, None if img is None else (img, geo.features_of(img)))
            query = current[1]
            reference = self._reference(ref)
            if query is None or reference is None:
                continue
            self.stats["verified_pairs"] += 1
            v = geo.verify(query[1], reference[1])
            if v is None:
                continue
            self.stats["verified"] += 1
            crops.append(crop(query[0], v.query_box, size))
            jobs.append((q, ref, v, "query"))
            crops.append(crop(reference[0], v.reference_box, size))
            jobs.append((q, ref, v, "reference"))
        if not crops:
            return
        import torch

        from .score import queries_of, references_of

        descriptors = []
        for start in range(0, len(crops), self.batch_size):
            descriptors.append(self.model.embed(torch.from_numpy(np.stack(crops[start:start + self.batch_size]))))
        descriptors = np.concatenate(descriptors)
        as_query = queries_of(self.post, descriptors)
        as_reference = references_of(self.post, descriptors)
        for k, (q, ref, v, side) in enumerate(jobs):
            cand = q.candidates[ref]
            if side == "query":  # the query's box, as a query, against the reference's whole image
                other = self._reference_vector(cand.row)
                if other is None:
                    continue
                score = float(as_query[k] @ other)
            else:  # the reference's box, as a reference, against the query's whole image
                score = float(as_reference[k] @ q.vector)
            q.candidates[ref] = Candidate(max(cand.score, score), v.query_box, v.reference_box, "verified", cand.row)

    def _reference(self, path: str):
        from . import verify as geo

        if path in self._ref_features:
            self._ref_features.move_to_end(path)
            return self._ref_features[path]
        img = _open(path)
        value = None if img is None else (img, geo.features_of(img))
        self._ref_features[path] = value
        if len(self._ref_features) > 256:  # references shared by queries of a chunk, bounded
            self._ref_features.popitem(last=False)
        return value

    def _reference_vector(self, row: int) -> np.ndarray | None:
        if row < 0:
            return None
        if row not in self._ref_vectors:
            self._ref_vectors[row] = _reconstruct(self.index, row)
        return self._ref_vectors[row]


# ---- query ---------------------------------------------------------------------------------------


def query_batches_with_regions(loaded, entries, model, extraction, top_k: int, threshold: float,
                               settings: RegionSettings | None = None, advance=None):
    """search.query_batches with regions: per chunk of queries, the results (up to `top_k` matches
    whose best score is at least `threshold`, each with its boxes) and the skipped files."""
    from .embed import embed_entries
    from .results import Match, QueryResult
    from .score import queries_of, score_floor

    floor = score_floor(threshold)
    settings = settings or RegionSettings()
    rows = loaded.rows
    use_region_rows = settings.reference_regions and rows.has_regions
    params = None if use_region_rows else whole_image_params(loaded.index, rows)
    per_image = rows.per_image if use_region_rows else 1
    refiner = Refiner(model, loaded.index, rows, loaded.post, settings, report_floor=floor,
                      batch_size=extraction.batch_size, workers=0, max_pixels=extraction.max_pixels)
    pending: list[tuple[object, PendingQuery]] = []
    skipped: list = []

    def finish():
        refiner.refine([p for _, p in pending], top_k + 1)
        results = []
        for row, p in pending:
            p.candidates.pop(row.path, None)  # a file is never its own match (a crop may find it)
            result = QueryResult(row.path, width=row.width, height=row.height)
            for ref, c in sorted(p.candidates.items(), key=lambda t: -t[1].score):
                if c.score < floor or len(result.matches) == top_k:
                    continue
                result.matches.append(Match(ref, c.score, len(result.matches) + 1, c.query_box, c.reference_box))
            results.append(result)
        done = (results, list(skipped))
        pending.clear()
        skipped.clear()
        return done

    for batch in embed_entries(entries, model, extraction.batch_size, extraction.workers, extraction.max_pixels,
                               progress=advance):
        skipped.extend(batch.skipped)
        if batch.rows:
            queries = queries_of(loaded.post, batch.descriptors)
            scores, ids = search(loaded.index, queries, (top_k + 1) * per_image, params)
            for row, vector, s_row, i_row in zip(batch.rows, queries, scores, ids):
                candidates: dict[str, Candidate] = {}
                merge_hits(candidates, s_row, i_row, rows, allow_region_rows=use_region_rows)
                candidates.pop(row.path, None)
                pending.append((row, PendingQuery(row.path, vector, candidates)))
        if len(pending) >= settings.chunk:
            yield finish()
    if pending or skipped:
        yield finish()


def _reconstruct(index, row: int) -> np.ndarray:
    """The stored (post-processed) vector of a FAISS row."""
    import faiss

    try:
        return index.reconstruct(int(row))
    except RuntimeError:  # an inverted file needs its direct map first
        faiss.extract_index_ivf(index).make_direct_map()
        return index.reconstruct(int(row))


def _open(path: str):
    """The image at `path` for verification (at least 512 pixels a side where it has them), or None."""
    from .decode import DecodeError, open_image, read_bytes
    from .verify import FEATURE_SIDE

    try:
        img, _, _ = open_image(read_bytes(path), FEATURE_SIDE)
    except (DecodeError, OSError):
        return None
    return img


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


def place_boxes(pairs: RegionPairs, paths: list[str], limit: int = 100_000) -> int:
    """Refine the coarse crop boxes of region-won pairs by geometric verification; returns how many
    were verified. Only region-won pairs (a crop box at best) are tried, at most `limit`."""
    from . import verify as geo

    cache: OrderedDict[str, object] = OrderedDict()

    def feats(path: str):
        if path not in cache:
            img = _open(path)
            cache[path] = None if img is None else geo.features_of(img)
            if len(cache) > 256:
                cache.popitem(last=False)
        return cache[path]

    placed = 0
    for (i, j) in list(pairs.boxes)[:limit]:
        fi, fj = feats(paths[i]), feats(paths[j])
        if fi is None or fj is None:
            continue
        v = geo.verify(fi, fj)  # j mapped into i: i's box shows j's box
        if v is not None:
            pairs.boxes[(i, j)] = (v.query_box, v.reference_box)
            placed += 1
    return placed


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


def best_with_crops(sims: np.ndarray, paths: list[str], references: np.ndarray, model, batch_size: int = 32,
                    settings: RegionSettings | None = None) -> np.ndarray:
    """Query x reference cosines raised, as `query --regions` raises them, by the query crops of
    rows whose best score is below `crop_below` (plain cosines: no post-processing)."""
    s = settings or RegionSettings()
    sims = sims.copy()
    todo = np.nonzero(sims.max(axis=1, initial=-np.inf) < s.crop_below)[0] if sims.size else np.zeros(0, np.int64)
    if not len(todo) or not s.query_boxes:
        return sims
    from .embed import embed_regions

    for batch in embed_regions([(paths[i], s.query_boxes) for i in todo], model, batch_size=batch_size, workers=0):
        crop_sims = batch.descriptors @ references.T
        for owner, row in zip(batch.owner, crop_sims):
            i = todo[owner]
            sims[i] = np.maximum(sims[i], row)
    return sims
