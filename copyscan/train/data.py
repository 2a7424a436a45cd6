"""Training data: the photo list, a fixed order per epoch, and two augmented views per sample.

Everything random about the data is a function of (seed, epoch, image, view slot): the order of
each epoch is a permutation drawn from (seed, epoch), and each view's pixels come from
`TrainAugment.view(img, view_seed(...))`. So

* the data position of a run is just its step number (exact resume needs nothing else), and
  DataLoader workers can be any number without changing a single pixel;
* `copyscan cache-teacher` can compute the teacher's embedding of the very view the training
  loop will rebuild later.

Slot 0 is the query view (the one the teacher sees); slot 1 is the key view (momentum encoder,
or the second view of InfoNCE). With a teacher cache of V views per image, the query view of
epoch e is view e mod V of the cache, so a run longer than V epochs reuses the cached views
while its key views stay fresh.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..decode import DecodeError, decode_file, open_image, read_bytes
from ..discover import discover
from ..edits import TrainAugment
from ..errors import ModelUnavailable

QUERY, KEY = 0, 1
# JPEGs are decoded at a reduced DCT scale down to this multiple of the view size: the smallest
# crop (8% of the area) then still has about the view's own resolution.
DRAFT_FACTOR = 3
# A file that cannot be decoded is replaced by the next one in the list, at most this many times.
MAX_SUBSTITUTES = 16


def list_images(data_dir: str) -> list[str]:
    """The photos under `data_dir`, as sorted paths relative to it (the order every index uses)."""
    if not os.path.isdir(data_dir):
        raise ModelUnavailable(f"{data_dir} is not a folder of images")
    entries, _ = discover(data_dir)
    root = os.path.abspath(data_dir)
    paths = sorted(os.path.relpath(e.path, root) for e in entries)
    if not paths:
        raise ModelUnavailable(f"no images found under {data_dir}")
    return paths


def list_digest(paths: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def view_seed(seed: int, image: int, epoch: int, slot: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{image}:{epoch}:{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x0C0FFEE]).permutation(n)


@dataclass(frozen=True)
class Sample:
    """One sample of the run: which image, in which epoch, and the query view's cache slot."""

    position: int  # global sample number since the start of the run
    epoch: int
    image: int
    query_view: int  # the epoch whose query-view seed is used (e mod cached views)


class SampleOrder:
    """Maps a global sample position to an image, epoch by epoch; the last partial batch of
    an epoch is dropped so that every step has a full global batch."""

    def __init__(self, n_images: int, global_batch: int, seed: int, cached_views: int | None = None):
        if n_images < global_batch:
            raise ModelUnavailable(
                f"{n_images} images are fewer than one global batch ({global_batch}); lower --batch-size"
            )
        self.n = n_images
        self.global_batch = global_batch
        self.steps_per_epoch = n_images // global_batch
        self.seed = seed
        self.cached_views = cached_views
        self._orders: dict[int, np.ndarray] = {}

    def sample(self, step: int, index_in_batch: int) -> Sample:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self._orders.get(epoch)
        if order is None:
            self._orders = {epoch: epoch_order(self.seed, epoch, self.n)}  # keep one epoch
            order = self._orders[epoch]
        image = int(order[within * self.global_batch + index_in_batch])
        query_view = epoch % self.cached_views if self.cached_views else epoch
        return Sample(step * self.global_batch + index_in_batch, epoch, image, query_view)


def load_rgb(path: str, view_size: int):
    """The photo as an RGB PIL image, EXIF-oriented; JPEGs decoded at a reduced scale."""
    img, _, _ = open_image(read_bytes(path), view_size * DRAFT_FACTOR)
    return img


class ViewPairs(Dataset):
    """Item i of the run (a global sample position) -> query and key views, uint8 HWC."""

    def __init__(self, root: str, paths: list[str], order: SampleOrder, size: int, seed: int, rank: int = 0,
                 per_rank_batch: int | None = None):
        self.root = root
        self.paths = paths
        self.order = order
        self.augment = TrainAugment(size)
        self.size = size
        self.seed = seed
        self.rank = rank
        self.per_rank_batch = per_rank_batch or order.global_batch

    def __len__(self) -> int:  # positions are unbounded; the sampler decides how many
        return 1 << 62

    def locate(self, position: int) -> Sample:
        """This rank's `position`-th sample -> the run's global sample."""
        step, j = divmod(position, self.per_rank_batch)
        return self.order.sample(step, self.rank * self.per_rank_batch + j)

    def __getitem__(self, position: int):
        s = self.locate(position)
        image, img = self.open_index(s.image)
        query = self.augment.view(img, view_seed(self.seed, image, s.query_view, QUERY))
        key = self.augment.view(img, view_seed(self.seed, image, s.epoch, KEY))
        return np.asarray(query, np.uint8), np.asarray(key, np.uint8), image, s.query_view

    def open_index(self, image: int):
        return open_substituted(self.root, self.paths, image, self.size)


def plain_batches(root: str, paths: list[str], size: int, limit: int, batch: int = 64):
    """uint8 NHWC tensors of up to `limit` of `paths` (under `root`), spread evenly over the
    list, each squashed to size x size as `index` decodes it (no augmentation). A photo that
    cannot be decoded is left out. For fitting statistics of the plain photos (PCA projector
    start, background centring)."""
    picks = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), limit)).round().astype(int))
    chunk = []
    for i in picks:
        try:
            chunk.append(decode_file(os.path.join(root, paths[i]), size).pixels)
        except DecodeError:
            continue
        if len(chunk) == batch:
            yield torch.from_numpy(np.stack(chunk))
            chunk = []
    if chunk:
        yield torch.from_numpy(np.stack(chunk))


def open_substituted(root: str, paths: list[str], image: int, view_size: int):
    """(index actually used, RGB image) for image number `image`.

    A broken file is replaced by the next readable one, deterministically, so a run stays
    reproducible; its views and cache rows are then those of the substitute.
    """
    for k in range(MAX_SUBSTITUTES):
        i = (image + k) % len(paths)
        try:
            return i, load_rgb(os.path.join(root, paths[i]), view_size)
        except DecodeError:
            continue
    raise ModelUnavailable(f"{MAX_SUBSTITUTES} images in a row from {paths[image]} could not be decoded")


def collate(items):
    query = torch.from_numpy(np.stack([q for q, _, _, _ in items]))
    key = torch.from_numpy(np.stack([k for _, k, _, _ in items]))
    images = torch.tensor([i for _, _, i, _ in items], dtype=torch.long)
    views = torch.tensor([v for _, _, _, v in items], dtype=torch.long)
    return query, key, images, views


class StepBatches(torch.utils.data.Sampler):
    """Batches of positions for steps `start` .. `stop - 1` of this rank."""

    def __init__(self, start: int, stop: int, batch: int):
        self.start, self.stop, self.batch = start, stop, batch

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield list(range(step * self.batch, (step + 1) * self.batch))


def mix_keys(keys: torch.Tensor, probability: float, alpha: float, rng: np.random.Generator) -> torch.Tensor:
    """Mixup or cutmix (half each) of some key views (uint8 NHWC) with another key of the batch.

    Each mixed key keeps at least half of its own image (lambda >= 0.5), so it stays the
    positive of its query, a harder one. Only key views are mixed: query views must stay the
    exact views whose teacher embeddings were cached.
    """
    if probability <= 0:
        return keys
    b, h, w = keys.shape[:3]
    chosen = np.flatnonzero(rng.random(b) < probability)
    if chosen.size == 0:
        return keys
    out = keys.clone()
    for i in chosen.tolist():
        lam = float(rng.beta(alpha, alpha))
        lam = max(lam, 1.0 - lam)
        other = keys[(i - 1) % b]
        if rng.random() < 0.5:
            out[i] = (keys[i].float() * lam + other.float() * (1 - lam)).round().to(torch.uint8)
        else:
            ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            out[i, y:y + ch, x:x + cw] = other[y:y + ch, x:x + cw]
    return out
