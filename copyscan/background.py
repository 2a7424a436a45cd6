"""Setting up an index's post-processing from a background folder, and reading it back.

    IDX/postprocess.npz     the fitted transform (see postprocess.py)
    IDX/background/         the background images' descriptors: an index folder of its own, so
                            re-fitting embeds only new or changed background images
    manifest "postprocess": settings, background folder, the .npz file's SHA-256

Options given on `index`, `query` or `dedupe` change the stored setting; a later command without
them uses what is stored. The background must be photos unrelated to the references and the
queries: statistics fitted on the very images being scored would flatter the scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .discover import display_path, resolve_root, under
from .models import DescriptorModel
from .postprocess import DEFAULT_BETA, PostProcess, PostProcessError, fit, read_file, sha256_of
from .store import IndexStore, atomic_write_bytes, descriptors_of

POST_FILE = "postprocess.npz"
BACKGROUND_CACHE = "background"
MANIFEST_KEY = "postprocess"


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


def stored_entry(store: IndexStore) -> dict | None:
    return store.read_manifest().get(MANIFEST_KEY) if store.exists() else None


def load(store: IndexStore, manifest: dict) -> PostProcess:
    """The index's transform (the identity when none is set), checked against the manifest."""
    entry = manifest.get(MANIFEST_KEY)
    if not entry:
        return PostProcess()
    post = read_file(store.folder / entry["file"], entry["sha256"])
    if post.model_sha256 != manifest["model"]["weights_sha256"]:
        raise PostProcessError(f"{store.folder / entry['file']} was fitted for other model weights; "
                               "run with --background DIR to fit it again")
    return post


def configure(store: IndexStore, model: DescriptorModel, options: PostOptions, scored_roots: list[str],
              batch_size: int = 32, workers: int | None = None, progress: bool = False) -> dict | None:
    """Fit (or switch off) post-processing as `options` say; returns the new manifest entry.

    The caller holds the index lock. `scored_roots` are the folders whose images are scored
    (the index's roots and this command's folder): the background may not overlap them.
    """
    old = stored_entry(store) or {}
    background = options.background if options.background is not None else old.get("background")
    fresh = not old and options.background is not None  # a background alone turns both on
    whiten = _choose(options.whiten, old.get("whiten"), fresh)
    score_norm = _choose(options.score_norm, old.get("score_norm"), fresh)
    dim = options.dim if options.dim is not None else old.get("dim")
    beta = options.beta if options.beta is not None else old.get("beta", DEFAULT_BETA)
    if not (whiten or score_norm):
        _switch_off(store)
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

    vectors = _background_descriptors(store, model, root, batch_size, workers, progress)
    post = fit(vectors, whiten, score_norm, dim, beta, model_sha256=model.info.weights_sha256)
    data = post.to_bytes()
    _ensure_manifest(store, model)
    atomic_write_bytes(store.folder / POST_FILE, data)
    entry = {
        "file": POST_FILE, "sha256": sha256_of(data), "whiten": whiten, "score_norm": score_norm, "dim": dim,
        "dim_out": post.out_dim(model.dim), "beta": beta, "ranks": list(post.ranks),
        "background": root, "background_images": post.background_count, "threshold": post.extra["threshold"],
        "pipeline": (f"PCAW{post.out_dim(model.dim)},L2norm" if whiten else "L2norm") + (f" + score norm (beta {beta:g})" if score_norm else ""),
    }
    store.set_manifest_entry(MANIFEST_KEY, entry)
    return entry


def _choose(asked: bool | None, stored: bool | None, fresh: bool) -> bool:
    if asked is not None:
        return asked
    if stored is not None:
        return bool(stored)
    return fresh


def _switch_off(store: IndexStore) -> None:
    if stored_entry(store):
        store.set_manifest_entry(MANIFEST_KEY, None)
    (store.folder / POST_FILE).unlink(missing_ok=True)


def _ensure_manifest(store: IndexStore, model: DescriptorModel) -> None:
    # A new index gets its manifest before any shard, as index_folder does, so the entry has a home.
    if not store.exists():
        store.write_manifest(model.info, {"images": 0, "shards": 0, "skipped": 0}, {"status": "not built"}, [])


def _background_descriptors(store: IndexStore, model: DescriptorModel, root: str, batch_size: int,
                            workers: int | None, progress: bool):
    from .api import index_folder  # api imports this module

    cache = IndexStore(store.folder / BACKGROUND_CACHE)
    index_folder(root, cache.folder, model, batch_size, workers, progress=progress)
    return descriptors_of(cache.read_table(["descriptor"], root=root))


__all__ = ["PostOptions", "configure", "load", "stored_entry"]
