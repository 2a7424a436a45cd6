"""Stage 6 (search), the score rule: the one definition of the number a pair of images gets.

Without score normalisation a score is the cosine of the two (post-processed, L2-normalised)
descriptors. With it (SSCD), a query's score to a reference loses beta x the query's mean
similarity to its nearest background images, b_q (postprocess.PostProcess.bias, beta included);
in dedupe both images are queries and the pair (i, j) loses (b_i + b_j) / 2.

SSCD's extra-column form makes FAISS compute that score itself, so a threshold is applied once,
inside the neighbour search (ann.search_above_flat), never by a filter afterwards:

    FAISS holds each reference as   [x_r,  1,         -b_r / 2]
    a query (`query`) searches with [x_q, -b_q,        0      ]  ->  cos - b_q
    an image (`dedupe`) searches    [x_i, -b_i / 2,    1      ]  ->  cos - (b_i + b_r) / 2

Without score normalisation there are no extra columns: vectors are the descriptors themselves.
What a score means in words (for groups.json and the reports) is postprocess.describe_score.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# numpy is imported inside the functions: the CLI reads the defaults below at start-up.
DEFAULT_THRESHOLD = 0.75  # for cosines of a model that has no calibrated threshold of its own (models.model_threshold; shipped models carry one: training/MODELS.md); with post-processing, the index's suggested threshold
DEFAULT_TOP_K = 5
COSINE = "cosine"


def reference_vectors(vectors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """What FAISS holds: transformed descriptors, plus the two score columns when `bias` is given."""
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    if bias is None:
        return np.ascontiguousarray(vectors)
    ones = np.ones((len(vectors), 1), np.float32)
    return np.ascontiguousarray(np.hstack([vectors, ones, -0.5 * bias.reshape(-1, 1).astype(np.float32)]))


def query_vectors(vectors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """A query against references: scores cos - b_q."""
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    if bias is None:
        return np.ascontiguousarray(vectors)
    zeros = np.zeros((len(vectors), 1), np.float32)
    return np.ascontiguousarray(np.hstack([vectors, -bias.reshape(-1, 1).astype(np.float32), zeros]))


def pair_vectors(vectors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """An image of a collection against the others (dedupe): scores cos - (b_i + b_j) / 2."""
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    if bias is None:
        return np.ascontiguousarray(vectors)
    ones = np.ones((len(vectors), 1), np.float32)
    return np.ascontiguousarray(np.hstack([vectors, -0.5 * bias.reshape(-1, 1).astype(np.float32), ones]))


def score_floor(threshold: float) -> float:
    """The lowest score kept: `threshold`, except that -1 or below keeps everything (normalised
    scores can fall below -1, so "-1 keeps every top-k match" needs -inf)."""
    return -math.inf if threshold <= -1 else float(threshold)


# ---- the forms above, from descriptors and the index's post-processing ------------------------
# `post` is a postprocess.PostProcess (duck-typed: this module does not import it).


def _transformed(post, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    vectors = post.transform(descriptors)
    return vectors, (post.bias(vectors) if post.score_norm else None)


def references_of(post, descriptors: np.ndarray) -> np.ndarray:
    """Stored descriptors -> the vectors FAISS holds."""
    return reference_vectors(*_transformed(post, descriptors))


def queries_of(post, descriptors: np.ndarray) -> np.ndarray:
    """A query's descriptors -> what it searches FAISS with (`query`)."""
    return query_vectors(*_transformed(post, descriptors))


def pairs_of(post, descriptors: np.ndarray) -> np.ndarray:
    """A collection's stored descriptors -> what each image searches FAISS with (`dedupe`)."""
    return pair_vectors(*_transformed(post, descriptors))


__all__ = ["COSINE", "DEFAULT_THRESHOLD", "DEFAULT_TOP_K", "pair_vectors", "pairs_of", "queries_of", "query_vectors",
           "reference_vectors", "references_of", "score_floor"]
