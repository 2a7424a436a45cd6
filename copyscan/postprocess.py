"""Post-processing of descriptors, fitted on a background set (SSCD style), kept in the index.

* **PCA whitening** ("PCAW,L2norm"): descriptors are centred on the background mean, projected
  on the background's principal axes, each axis divided by its standard deviation, then
  L2-normalised again. Directions every photo shares (sky, texture, the model's own biases)
  stop dominating the cosine, so unrelated photos score lower against each other. At most
  `n_background - 1` axes can be estimated, so the output dimension is capped there.
* **Score normalisation**: a query's score to a reference loses beta x the mean similarity of
  the query to its nearest background images (ranks 1-3 by default). A photo that resembles
  many unrelated photos (a plain sky, a document) has a high background similarity, and its
  matches are discounted by as much. It depends on the query only, so it never changes the
  order of one query's matches; it does change how queries compare, which is what a single
  threshold (and the pooled DISC micro AP) sees. In dedupe both images are queries, so the pair
  (i, j) loses beta x (b_i + b_j) / 2, symmetric, and equal to the query rule when b_i = b_j.

Everything a transform needs lives in one `.npz` file (numpy arrays only, loaded with
allow_pickle=False); its SHA-256 is recorded in the index manifest and checked on load. The
index folder (store.py) keeps the file and the manifest entry; this module owns what the entry
says (`make_entry`, `load_stored`, `describe_score`, `stored_threshold`). The score rule that
uses `bias` is score.py.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from .errors import UserError
from .score import COSINE

DEFAULT_BETA = 1.0
DEFAULT_RANKS = (1, 3)  # background neighbours averaged for score normalisation, 1-based, inclusive
MIN_BACKGROUND = 16  # fewer images than this estimate no useful statistics
THRESHOLD_RATE = 1e-5  # suggested threshold: the score 1 in 100,000 unrelated background pairs reaches
THRESHOLD_SAMPLE = 4000  # background images used for it (8 million pairs at most)
IMAGES_PER_AXIS = 4  # default whitened dimension: background images / 4 ...
MAX_DEFAULT_DIM = 256  # ... at most this (best of 256-1280 on lite0_gem with 1,000 and 5,000 images)
EIGEN_FLOOR = 1e-6  # relative to the largest eigenvalue: axes below it are noise, never amplified


class PostProcessError(UserError):
    """A post-processing setting or file that cannot be used; the message says what to do."""


@dataclass
class PostProcess:
    """A fitted transform; `PostProcess()` is the identity (no whitening, no score normalisation)."""

    whiten: bool = False
    score_norm: bool = False
    beta: float = DEFAULT_BETA
    ranks: tuple[int, int] = DEFAULT_RANKS
    mean: np.ndarray | None = None  # (d,) background mean, for whitening
    projection: np.ndarray | None = None  # (d, d_out): principal axes / sqrt(eigenvalue)
    background: np.ndarray | None = None  # (n, d_out) transformed background, for score normalisation
    model_sha256: str = ""
    background_count: int = 0
    extra: dict = field(default_factory=dict)  # fit details kept for the manifest (eigenvalues kept ...)

    @property
    def active(self) -> bool:
        return self.whiten or self.score_norm

    def out_dim(self, in_dim: int) -> int:
        return self.projection.shape[1] if self.whiten else in_dim

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Whitened and L2-normalised descriptors (float32); the input itself without whitening."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if not self.whiten:
            return vectors
        out = (vectors - self.mean) @ self.projection
        return _l2_normalise(out)

    def bias(self, transformed: np.ndarray) -> np.ndarray:
        """beta x mean similarity of each (transformed) vector to its background neighbours.

        Zeros without score normalisation. Subtract it from a query's scores; in dedupe subtract
        the mean of both ends' biases.
        """
        n = len(transformed)
        if not self.score_norm or n == 0:
            return np.zeros(n, np.float32)
        first, last = self.ranks
        sims = _top_similarities(self.background, transformed, last)
        return (self.beta * sims[:, first - 1:last].mean(axis=1)).astype(np.float32)

    # ---- file ----------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        settings = {
            "whiten": self.whiten, "score_norm": self.score_norm, "beta": self.beta, "ranks": list(self.ranks),
            "model_sha256": self.model_sha256, "background_count": self.background_count, "extra": self.extra,
        }
        arrays = {"settings": np.frombuffer(json.dumps(settings, sort_keys=True).encode(), dtype=np.uint8)}
        for name in ("mean", "projection", "background"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = np.ascontiguousarray(value, dtype=np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # uncompressed: the same settings give the same bytes and checksum
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "post-processing file") -> "PostProcess":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                settings = json.loads(bytes(npz["settings"]).decode())
                arrays = {k: npz[k] for k in ("mean", "projection", "background") if k in npz.files}
        except (OSError, ValueError, KeyError) as exc:
            raise PostProcessError(f"{where} is unreadable ({exc}); run with --background DIR to fit it again") from None
        post = cls(
            whiten=bool(settings["whiten"]), score_norm=bool(settings["score_norm"]), beta=float(settings["beta"]),
            ranks=tuple(settings["ranks"]), model_sha256=settings["model_sha256"],
            background_count=int(settings["background_count"]), extra=settings.get("extra", {}), **arrays,
        )
        if post.whiten and (post.mean is None or post.projection is None):
            raise PostProcessError(f"{where} has whitening on but no projection; run with --background DIR again")
        if post.score_norm and post.background is None:
            raise PostProcessError(f"{where} has score normalisation on but no background; run with --background DIR again")
        return post


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: Path, expected_sha256: str) -> PostProcess:
    """Load a transform file and check it is the one the manifest names."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PostProcessError(f"{path} is missing or unreadable ({exc.strerror or exc}); "
                               "run with --background DIR to fit the post-processing again, or --no-whiten --no-score-norm") from None
    if sha256_of(data) != expected_sha256:
        raise PostProcessError(f"{path} does not match the checksum in the index manifest (changed by hand?); "
                               "run with --background DIR to fit it again")
    return PostProcess.from_bytes(data, str(path))


# ---- fitting ----------------------------------------------------------------------------------


def fit(background: np.ndarray, whiten: bool, score_norm: bool, dim: int | None = None,
        beta: float = DEFAULT_BETA, ranks: tuple[int, int] = DEFAULT_RANKS, model_sha256: str = "") -> PostProcess:
    """Fit whitening and/or score normalisation on background descriptors (n, d), raw model output."""
    background = np.asarray(background, dtype=np.float32)
    n, d = background.shape
    if n < MIN_BACKGROUND:
        raise PostProcessError(f"the background set has {n} usable images; post-processing needs at least "
                               f"{MIN_BACKGROUND} (a few thousand photos unrelated to your references work best)")
    if not 1 <= ranks[0] <= ranks[1]:
        raise PostProcessError(f"background neighbour ranks must be 1 <= first <= last, not {ranks[0]}-{ranks[1]}")
    if ranks[1] > n:
        raise PostProcessError(f"score normalisation averages background neighbours up to rank {ranks[1]}, "
                               f"but the background has only {n} images")
    if dim is not None and dim < 1:
        raise PostProcessError(f"the whitened dimension must be at least 1, not {dim}")
    post = PostProcess(whiten=whiten, score_norm=score_norm, beta=float(beta), ranks=tuple(ranks),
                       model_sha256=model_sha256, background_count=n)
    if whiten:
        post.mean, post.projection, post.extra = fit_whitening(background, dim)
    if score_norm:
        post.background = post.transform(background)
    post.extra["threshold"] = suggest_threshold(post, background)
    return post


def suggest_threshold(post: PostProcess, background: np.ndarray, rate: float = THRESHOLD_RATE,
                      sample: int = THRESHOLD_SAMPLE) -> float:
    """The score that a share `rate` of pairs of (unrelated) background images reach, rounded up
    to 0.01: post-processed scores are on another scale than cosines, so the default threshold
    for raw descriptors would not fit. Each image's background bias leaves itself out."""
    rng = np.random.default_rng(0)
    rows = rng.choice(len(background), size=min(sample, len(background)), replace=False)
    vectors = post.transform(background[np.sort(rows)])
    sims = vectors @ vectors.T
    if post.score_norm:
        first, last = post.ranks
        # Rank 0 of a background image among the background is itself: skip it.
        near = _top_similarities(post.background, vectors, last + 1)[:, first:last + 1]
        bias = post.beta * near.mean(axis=1)
        sims = sims - (bias[:, None] + bias[None, :]) / 2
    pair_scores = sims[np.triu_indices(len(vectors), k=1)]
    return round(float(np.ceil(np.quantile(pair_scores, 1.0 - rate) * 100)) / 100, 2)


def fit_whitening(background: np.ndarray, dim: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mean, projection, details) of PCA whitening; output dim = min(dim, d, usable axes).

    Axes are estimated from n images, so at most n - 1 carry variance; those whose eigenvalue is
    below EIGEN_FLOOR x the largest are dropped too, since dividing by a near-zero deviation
    would blow numerical noise up to full weight. Without `dim`, at most n / IMAGES_PER_AXIS
    axes (and MAX_DEFAULT_DIM) are kept: the weakest axes of a small sample are mostly noise, and whitening gives
    them as much weight as the strongest (measured: README, "Post-processing").
    """
    x = np.asarray(background, dtype=np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    # SVD of the centred data gives the covariance's eigenvectors without forming a d x d matrix
    # from few samples; singular values squared / (n - 1) are its eigenvalues.
    _, singular, axes = np.linalg.svd(x - mean, full_matrices=False)
    eigenvalues = singular ** 2 / max(n - 1, 1)
    usable = int(np.sum(eigenvalues > EIGEN_FLOOR * eigenvalues[0])) if len(eigenvalues) and eigenvalues[0] > 0 else 0
    usable = min(usable, n - 1)
    if usable < 1:
        raise PostProcessError("the background descriptors do not vary (all images alike?); whitening needs varied photos")
    keep = min(dim or max(1, min(n // IMAGES_PER_AXIS, MAX_DEFAULT_DIM)), d, usable)
    projection = axes[:keep].T / np.sqrt(eigenvalues[:keep])
    details = {"dim_in": d, "dim_out": keep, "dim_asked": dim, "usable_axes": usable,
               "variance_kept": float(eigenvalues[:keep].sum() / eigenvalues.sum())}
    return mean.astype(np.float32), projection.astype(np.float32), details


# ---- helpers ----------------------------------------------------------------------------------


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _top_similarities(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(len(queries), k) inner products to the k most similar rows of `base`, best first."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    sims, _ = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return sims


# ---- the index's stored setting (its manifest entry) ------------------------------------------


def make_entry(post: PostProcess, model_dim: int, whiten: bool, score_norm: bool, dim: int | None, beta: float,
               background: str) -> dict:
    """The settings recorded in the manifest beside the file (store.set_postprocess adds file + SHA-256)."""
    return {
        "whiten": whiten, "score_norm": score_norm, "dim": dim, "dim_out": post.out_dim(model_dim), "beta": beta,
        "ranks": list(post.ranks), "background": background, "background_images": post.background_count,
        "threshold": post.extra["threshold"],
        "pipeline": (f"PCAW{post.out_dim(model_dim)},L2norm" if whiten else "L2norm") + (f" + score norm (beta {beta:g})" if score_norm else ""),
    }


def load_stored(store) -> PostProcess:
    """The index's transform (the identity when none is set), checked against its manifest.

    `store` is a store.IndexStore (not imported: the store does not need this module)."""
    manifest = store.read_manifest()
    stored = store.postprocess_file(manifest)
    if stored is None:
        return PostProcess()
    path, sha = stored
    post = read_file(path, sha)
    if post.model_sha256 != store.stored_model(manifest).weights_sha256:
        raise PostProcessError(f"{path} was fitted for other model weights; run with --background DIR to fit it again")
    return post


def stored_setting(entry: dict | None, name: str, default=None):
    """One setting of a stored entry (None entry: nothing set)."""
    return (entry or {}).get(name, default)


def stored_threshold(entry: dict | None) -> float | None:
    """The threshold suggested when the transform was fitted (see suggest_threshold), or None."""
    value = stored_setting(entry, "threshold")
    return None if value is None else float(value)


def describe_score(entry: dict | None) -> str:
    """What a score is, in words, for groups.json, the reports and the manifest."""
    if not entry:
        return COSINE
    space = f"cosine of whitened descriptors ({entry.get('pipeline')})" if entry.get("whiten") else COSINE
    where = f"background {entry.get('background')}"
    if not entry.get("score_norm"):
        return f"{space}; whitening fitted on {where}"
    return (f"{space} less beta {float(entry.get('beta', DEFAULT_BETA)):g} x the mean similarity to the "
            f"nearest background images (score normalisation; {where})")
