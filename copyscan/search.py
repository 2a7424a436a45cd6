"""Stage 6 (search): opening an index for searching, the query loop, and the pairs of dedupe.

Every score comes out of FAISS already final (score.py's extra-column form) and every threshold
is applied by the neighbour search itself (ann.search_above_flat). The exception is an index
with approximate scores (SQ8/PQ codes, index_choice): its search floor is the threshold less the
index's margin, and LoadedIndex.exact re-scores the candidates from the stored descriptors before
the threshold decides. A file is never its own match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from . import ann
from .discover import FileEntry, Skipped
from .extraction import Extraction
from .group import Pairs
from .models import is_registered, model_identity, model_threshold
from .postprocess import PostProcess, describe_score, load_stored, stored_threshold
from .regions import RowTable, whole_image_params
from .results import Match, QueryResult
from .score import DEFAULT_THRESHOLD, pairs_of, queries_of, references_of, score_floor
from .store import IndexStore, descriptors_of, paths_of

if TYPE_CHECKING:
    from .models.base import DescriptorModel


@dataclass
class LoadedIndex:
    store: IndexStore
    manifest: dict
    index: object  # faiss.Index over every live row, in the score rule's reference form
    paths: list[str]
    post: PostProcess = field(default_factory=PostProcess)  # the index's stored post-processing
    rows: RowTable | None = None  # each FAISS row's path, region number (0: whole image) and box
    margin: float = 0.0  # > 0: FAISS scores are approximate (SQ8/PQ codes) and are re-scored
    _references: np.ndarray | None = None

    @property
    def references(self) -> np.ndarray:
        """Every row's vector in the score rule's reference form, from the stored descriptors:
        the exact side of a re-scored pair. Read on first use."""
        if self._references is None:
            self._references = references_of(self.post, descriptors_of(self.store.read_table(["descriptor"])))
        return self._references

    def exact(self, queries: np.ndarray, rows: np.ndarray, ids: np.ndarray, scores: np.ndarray,
              floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hits (rows, ids, scores) of a search run `margin` below `floor`, re-scored exactly, those
        below `floor` dropped, each query's hits best first again. Unchanged for an exact index."""
        if not self.margin or not len(rows):
            return rows, ids, scores
        from .pair_search import rescore_between

        scores = rescore_between(queries, rows, self.references, ids)
        keep = scores >= floor
        rows, ids, scores = rows[keep], ids[keep], scores[keep]
        order = np.lexsort((-scores, rows))
        return rows[order], ids[order], scores[order]

    @property
    def fetch_factor(self) -> int:
        """How many times the asked-for hits to fetch: with approximate scores, more candidates,
        re-scored exactly (`exact`, `exact_top`), from which the best are kept."""
        return 4 if self.margin else 1

    def exact_top(self, queries: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(n, k) FAISS hits' scores, re-scored exactly where the index's are approximate (ids
        of -1, no hit, keep -inf); the scores as they are for an exact index."""
        if not self.margin:
            return scores
        from .pair_search import rescore_between

        flat = ids.ravel()
        hit = flat >= 0
        rows = np.repeat(np.arange(len(queries)), ids.shape[1])[hit]
        exact = np.full(flat.shape, -np.inf, np.float32)
        exact[hit] = rescore_between(np.asarray(queries, np.float32), rows, self.references, flat[hit])
        return exact.reshape(ids.shape)

    @property
    def model_ref(self) -> str:
        """What to pass to create_model to get the model that built this index."""
        return model_ref(self.store, self.manifest)

    @property
    def threshold(self) -> float:
        """The default threshold for this index's scores (see default_threshold)."""
        return default_threshold(self.store, self.manifest)

    @property
    def score(self) -> str:
        """What a score is, in words."""
        return describe_score(self.store.postprocess_entry(self.manifest))


def load_index(store: IndexStore) -> LoadedIndex:
    """Open an index for searching; builds the FAISS index in memory if the file is stale."""
    manifest = store.read_manifest()
    post = load_stored(store)
    fresh = store.faiss_is_fresh(manifest)
    table = store.read_table(["region", "box"] if fresh else ["descriptor", "region", "box"])
    if fresh:
        index = store.load_faiss(manifest)
    else:
        index = ann.build_index(references_of(post, descriptors_of(table)))
    paths = paths_of(table)
    return LoadedIndex(store, manifest, index, paths, post, RowTable.from_table(table, paths),
                       margin=store.faiss_margin(manifest) if fresh else 0.0)


def model_ref(store: IndexStore, manifest: dict | None = None) -> str:
    """The registered name of the index's model, else the file it was loaded from.

    A checkpoint keeps its config's name wherever it is copied (a trained candidate shipped to a
    scratch folder is called `copyscan_lite0_128` too), so the name counts only where the
    registered model's weights are the index's: otherwise the name would swap in other weights."""
    m = store.stored_model(manifest)
    if not is_registered(m.name):
        return m.source
    registered = model_identity(m.name)  # None for models known only once loaded (no file header)
    if registered is None or registered.weights_sha256 == m.weights_sha256 or not m.source:
        return m.name
    return m.source


def default_threshold(store: IndexStore, manifest: dict | None = None) -> float:
    """With post-processing, the score that 1 in 100,000 pairs of background images reaches
    (recorded when it was fitted: normalised scores are on another scale); for cosines, the
    threshold calibrated for the index's model (`model_threshold`), else DEFAULT_THRESHOLD."""
    suggested = stored_threshold(store.postprocess_entry(manifest))
    if suggested is not None:
        return suggested
    own = model_threshold(model_ref(store, manifest))
    return DEFAULT_THRESHOLD if own is None else own


# ---- query: new images against the index --------------------------------------------------------


def query_batches(loaded: LoadedIndex, entries: Sequence[FileEntry], model: DescriptorModel, extraction: Extraction,
                  top_k: int, threshold: float, advance=None) -> Iterator[tuple[list[QueryResult], list[Skipped]]]:
    """Embed `entries` batch by batch and match each against the index: per batch, the results
    (up to `top_k` matches scoring at least `threshold`; -1 keeps every top-k) and the skipped files."""
    from .embed import embed_entries

    floor = score_floor(threshold)
    for batch in embed_entries(entries, model, extraction.batch_size, extraction.workers, extraction.max_pixels,
                               progress=advance):
        if not batch.rows:
            yield [], batch.skipped
            continue
        queries = queries_of(loaded.post, batch.descriptors)
        # One more than asked: the query itself may be in the index. Whole-image rows only: an
        # index built with --regions searches as one without (region_search uses the others).
        # With approximate scores, more candidates (LoadedIndex.fetch_factor), re-scored exactly.
        k = (top_k + 1) * loaded.fetch_factor
        rows, ids, scores = ann.search_above_flat(loaded.index, queries, floor - loaded.margin, k=k, max_k=k,
                                                  params=whole_image_params(loaded.index, loaded.rows))
        rows, ids, scores = loaded.exact(queries, rows, ids, scores, floor)
        bounds = np.searchsorted(rows, np.arange(len(queries) + 1))
        results = []
        for q, row in enumerate(batch.rows):
            result = QueryResult(row.path, width=row.width, height=row.height)
            for i, s in zip(ids[bounds[q]:bounds[q + 1]].tolist(), scores[bounds[q]:bounds[q + 1]].tolist()):
                if loaded.paths[i] == row.path or len(result.matches) == top_k:
                    continue
                result.matches.append(Match(loaded.paths[i], float(s), len(result.matches) + 1))
            results.append(result)
        yield results, batch.skipped


# ---- pairs: images of a collection against each other --------------------------------------------


def find_pairs(vectors: np.ndarray, threshold: float, query_rows: np.ndarray | None = None) -> Pairs:
    """All pairs (i < j) of `vectors` whose inner product is at least `threshold`, by neighbour
    search: never an N x N matrix. Vectors are used as given (cosines for L2-normalised ones).

    `query_rows` limits the search to the pairs with at least one end among those rows (new
    images against a whole collection; a sample, to time a large run).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) < 2:
        return Pairs.empty()
    rows = np.arange(len(vectors)) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    return pairs_in(ann.build_index(vectors), vectors[rows], rows, threshold, len(vectors))


def collection_pairs(loaded: LoadedIndex, rows: np.ndarray, descriptors: np.ndarray, threshold: float) -> Pairs:
    """Pairs among the index rows `rows` (a folder of the index; `descriptors` their stored
    descriptors) scoring at least `threshold`, found in the loaded FAISS index: no second index
    is built. Numbered 0.. in `rows` order."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) < 2:
        return Pairs.empty()
    queries = pairs_of(loaded.post, descriptors)
    local = np.full(len(loaded.paths), -1, dtype=np.int64)
    local[rows] = np.arange(len(rows))
    found = pairs_in(loaded.index, queries, rows, threshold, len(loaded.paths), keep=local >= 0, loaded=loaded)
    if len(found) == 0:
        return found
    # Numbered within the folder; first < second still holds, as `rows` is increasing.
    return Pairs(local[found.first], local[found.second], found.score)


def pairs_in(index, queries: np.ndarray, rows: np.ndarray, threshold: float, n: int,
             keep: np.ndarray | None = None, loaded: LoadedIndex | None = None) -> Pairs:
    """Pairs (row, hit) from searching `index` with `queries` (the vectors of index rows `rows`).

    Hits stream batch by batch into flat numpy arrays (no Python object per pair). A pair found
    from both ends is kept once, with the higher of its two scores (they can differ in the last
    bits of a float32). `keep` (a mask over index rows) drops hits outside it.
    """
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in range(0, len(rows), ann.SEARCH_BATCH):
        batch = rows[start:start + ann.SEARCH_BATCH]
        block = queries[start:start + ann.SEARCH_BATCH]
        margin = loaded.margin if loaded is not None else 0.0
        hit_rows, ids, found = ann.search_above_flat(index, block, threshold - margin)
        if margin:  # approximate scores: the exact score decides (see LoadedIndex.exact)
            hit_rows, ids, found = loaded.exact(block, hit_rows, ids, found, threshold)
        hit_rows = batch[hit_rows]
        other = hit_rows != ids  # an image is its own best neighbour
        if keep is not None:
            other &= keep[ids]
        hit_rows, ids = hit_rows[other], ids[other]
        firsts.append(np.minimum(hit_rows, ids))
        seconds.append(np.maximum(hit_rows, ids))
        scores.append(found[other])
    if not firsts:
        return Pairs.empty()
    both_ends = Pairs(np.concatenate(firsts), np.concatenate(seconds), np.concatenate(scores))
    return both_ends.best_per_pair(n)


__all__ = ["LoadedIndex", "collection_pairs", "default_threshold", "find_pairs", "load_index", "model_ref", "pairs_in",
           "query_batches"]
