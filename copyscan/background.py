"""Setting up an index's post-processing from a background folder.

    IDX/postprocess.npz     the fitted transform (see postprocess.py)
    IDX/background/         the background images' descriptors: an index folder of its own, so
                            re-fitting embeds only new or changed background images
    manifest "postprocess": settings, background folder, the .npz file's SHA-256

(store.py owns those names; postprocess.py what the entry says.) Options given on `index`,
`query` or `dedupe` change the stored setting; a later command without them uses what is stored.
The background must be photos unrelated to the references and the queries: statistics fitted on
the very images being scored would flatter the scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .discover import display_path, resolve_root, under
from .extraction import Extraction
from .indexing import index_into
from .postprocess import DEFAULT_BETA, PostProcessError, fit, make_entry, sha256_of
from .store import IndexStore, descriptors_of


@dataclass(frozen=True)
class PostOptions:
    """Post-processing asked for on one command; None leaves the index's stored value."""

    background: str | os.PathLike | None = None
    whiten: bool | None = None
    score_norm: bool | None = None
    dim: int | None = None  # whitened dimension (default: as many axes as the background supports)
    beta: float | None = None

    def given(self) -> bool:
        return any(v is not None for v in (self.background, self.whiten, self.score_norm, self.dim, self.beta))


def configure(store: IndexStore, model, options: PostOptions, scored_roots: list[str],
              extraction: Extraction | None = None) -> dict | None:
    """Fit (or switch off) post-processing as `options` say; returns the new manifest entry.

    The caller holds the index lock and rebuilds FAISS afterwards. `model` is a loaded
    DescriptorModel. `scored_roots` are the folders whose images are scored (the index's roots
    and this command's folder): the background may not overlap them.
    """
    old = store.postprocess_entry() or {}
    background = options.background if options.background is not None else old.get("background")
    fresh = not old and options.background is not None  # a background alone turns both on
    whiten = _choose(options.whiten, old.get("whiten"), fresh)
    score_norm = _choose(options.score_norm, old.get("score_norm"), fresh)
    dim = options.dim if options.dim is not None else old.get("dim")
    beta = options.beta if options.beta is not None else old.get("beta", DEFAULT_BETA)
    if not (whiten or score_norm):
        store.clear_postprocess()
        return None
    if background is None:
        raise PostProcessError("whitening and score normalisation are fitted on a background set: "
                               "add --background DIR (photos unrelated to your references and queries)")
    root = resolve_root(background)
    if not os.path.isdir(root):
        raise PostProcessError(f"no such background folder: {display_path(root)}")
    for scored in scored_roots:
        if under(root, scored) or under(scored, root):
            raise PostProcessError(f"the background folder {display_path(root)} overlaps {display_path(scored)}, "
                                   "whose images are scored; use a folder of other photos")

    vectors = _background_descriptors(store, model, root, extraction or Extraction())
    post = fit(vectors, whiten, score_norm, dim, beta, model_sha256=model.info.weights_sha256)
    data = post.to_bytes()
    store.start_manifest(model.info, [])  # a new index's manifest, so that the entry has a home
    return store.set_postprocess(data, sha256_of(data), make_entry(post, model.dim, whiten, score_norm, dim, beta, root))


def _choose(asked: bool | None, stored: bool | None, fresh: bool) -> bool:
    if asked is not None:
        return asked
    if stored is not None:
        return bool(stored)
    return fresh


def _background_descriptors(store: IndexStore, model, root: str, extraction: Extraction):
    cache = IndexStore(store.background_dir)
    index_into(cache, root, model, extraction)
    return descriptors_of(cache.read_table(["descriptor"], root=root))


__all__ = ["PostOptions", "configure"]
