"""The frozen teacher, and its embeddings of the query views cached on disk ahead of training.

The teacher is any copyscan model (`sscd_r50`, `sscd_r50_int8`, a checkpoint this command
wrote): it is only ever called through `embed`, in eval mode, under inference mode. It sees the
student's query view itself, squashed to the teacher's input size, as any image it embeds.

A slow teacher (int8 SSCD on a CPU: a few dozen images/s) would starve training, so
`copyscan cache-teacher` embeds the query views of V epochs ahead, and the training loop reads
row `image` of `views-{v}.npy` instead of running the teacher. The cache folder holds:

    meta.json           teacher, its weights' SHA-256, image list digest, view size, seed, views
    paths.txt           the images, one relative path a line, in index order
    views-{v}.npy       (images, dim) float16 embeddings of view v of every image
    done-{v}.npy        (images,) bool: rows computed so far (an interrupted run resumes)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..models import create_model
from ..errors import ModelUnavailable
from ..models.base import DescriptorModel
from ..edits import TrainAugment
from .data import QUERY, list_digest, list_images, open_substituted, view_seed

CACHE_FORMAT = 1


def teacher_label(name: str) -> str:
    """How a cache records its teacher: the registered name, or the model file's name."""
    return os.path.basename(name) if os.path.exists(name) else name


def load_teacher(name: str, device: str = "auto") -> DescriptorModel:
    try:
        model = create_model(name, device)
    except ModelUnavailable as exc:  # the loaders speak of `--model`; here the option is `--teacher`
        raise ModelUnavailable(str(exc).replace("--model", "--teacher")) from None
    net = getattr(model, "net", None)
    if net is not None:  # torch teachers: frozen, eval mode at every step
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
    return model


def to_size(views: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC views squashed to size x size (bilinear), still uint8 NHWC."""
    if views.shape[1] == size and views.shape[2] == size:
        return views
    x = views.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < views.shape[1])
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def embed_views(teacher: DescriptorModel, views: torch.Tensor) -> torch.Tensor:
    """The teacher's L2-normalised embeddings of uint8 NHWC views (float32, CPU)."""
    return torch.from_numpy(np.ascontiguousarray(teacher.embed(to_size(views.cpu(), teacher.input_size))))


@dataclass
class CacheMeta:
    teacher: str
    weights_sha256: str
    dim: int
    image_size: int
    seed: int
    views: int
    images: int
    list_digest: str
    format: int = CACHE_FORMAT

    @classmethod
    def read(cls, folder: str) -> "CacheMeta":
        path = os.path.join(folder, "meta.json")
        try:
            with open(path) as fh:
                raw = json.load(fh)
            return cls(**raw)
        except FileNotFoundError:
            raise ModelUnavailable(f"{folder} is not a teacher cache (no meta.json): run `copyscan cache-teacher` first") from None
        except (ValueError, TypeError) as exc:
            raise ModelUnavailable(f"{path} is not a readable teacher-cache description: {exc}") from None

    def write(self, folder: str) -> None:
        tmp = os.path.join(folder, "meta.json.tmp")
        with open(tmp, "w") as fh:
            json.dump(self.__dict__, fh, indent=2)
        os.replace(tmp, os.path.join(folder, "meta.json"))


class TeacherCache:
    """Read access to a complete cache, checked against the run that wants to use it."""

    def __init__(self, folder: str, paths: list[str], image_size: int, seed: int):
        self.folder = folder
        self.meta = meta = CacheMeta.read(folder)
        wanted = {"image_size": image_size, "seed": seed, "images": len(paths), "list_digest": list_digest(paths)}
        for key, value in wanted.items():
            if getattr(meta, key) != value:
                what = "the image list" if key in ("images", "list_digest") else key.replace("_", "-")
                raise ModelUnavailable(
                    f"teacher cache {folder} was made for another {what} ({getattr(meta, key)} there, {value} here); "
                    "run `copyscan cache-teacher` again with this run's settings"
                )
        self.tables = []
        for v in range(meta.views):
            done = np.load(os.path.join(folder, f"done-{v}.npy"))
            if not done.all():
                raise ModelUnavailable(
                    f"teacher cache {folder} is incomplete (view {v}: {int(done.sum())}/{done.size} images); "
                    "run the same `copyscan cache-teacher` command again to finish it"
                )
            self.tables.append(np.load(os.path.join(folder, f"views-{v}.npy"), mmap_mode="r"))

    def lookup(self, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        rows = [self.tables[int(v)][int(i)] for i, v in zip(images, views)]
        return torch.from_numpy(np.stack(rows).astype(np.float32))


@dataclass
class CacheSummary:
    folder: str
    teacher: str
    images: int
    views: int
    computed: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def cache_teacher(data_dir: str, teacher_name: str, output: str, views: int, image_size: int, seed: int = 0,
                  batch_size: int = 64, workers: int | None = None, device: str = "auto",
                  on_batch: Callable[[int, int], None] | None = None) -> CacheSummary:
    """Embed the query view of `views` epochs of every image of `data_dir` with the teacher.

    Resumable: rows already done are skipped. `on_batch(done, total)` reports progress.
    """
    from torch.utils.data import DataLoader

    from ..embed import default_workers

    if views < 1:
        raise ModelUnavailable(f"--views must be at least 1, got {views}")
    paths = list_images(data_dir)
    teacher = load_teacher(teacher_name, device)
    os.makedirs(output, exist_ok=True)
    meta = CacheMeta(teacher_label(teacher_name), teacher.info.weights_sha256, teacher.dim, image_size, seed, views, len(paths),
                     list_digest(paths))
    existing = os.path.join(output, "meta.json")
    if os.path.exists(existing):
        old = CacheMeta.read(output)
        if {**old.__dict__, "views": 0} != {**meta.__dict__, "views": 0}:
            raise ModelUnavailable(f"{output} holds a teacher cache of other settings; choose another --output folder")
    with open(os.path.join(output, "paths.txt"), "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write("".join(p + "\n" for p in paths))
    total = views * len(paths)
    todo: list[tuple[int, int]] = []
    tables, dones = [], []
    for v in range(views):
        tables.append(_open_table(os.path.join(output, f"views-{v}.npy"), (len(paths), teacher.dim), np.float16))
        dones.append(_open_table(os.path.join(output, f"done-{v}.npy"), (len(paths),), np.bool_))
        todo += [(v, i) for i in np.flatnonzero(~dones[v]).tolist()]
    meta.write(output)
    dataset = _CacheViews(data_dir, paths, image_size, seed, todo)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate_views,
                        persistent_workers=False)
    start, done_count = time.perf_counter(), total - len(todo)
    for views_px, items in loader:
        emb = embed_views(teacher, views_px).numpy().astype(np.float16)
        for row, (v, i) in zip(emb, items):
            tables[v][i] = row
        for v in {v for v, _ in items}:
            tables[v].flush()
        for v, i in items:  # marked after the rows are on disk: a crash never marks a row unwritten
            dones[v][i] = True
        for d in dones:
            d.flush()
        done_count += len(items)
        if on_batch:
            on_batch(done_count, total)
    return CacheSummary(output, teacher_label(teacher_name), len(paths), views, len(todo), time.perf_counter() - start)


def _open_table(path: str, shape: tuple[int, ...], dtype) -> np.memmap:
    if os.path.exists(path):
        table = np.load(path, mmap_mode="r+")
        if table.shape == shape and table.dtype == dtype:
            return table
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


class _CacheViews(torch.utils.data.Dataset):
    """(view, image) pairs still to compute -> the query view's pixels, as the loop makes them."""

    def __init__(self, root: str, paths: list[str], size: int, seed: int, todo: list[tuple[int, int]]):
        self.root, self.paths, self.size, self.seed, self.todo = root, paths, size, seed, todo
        self.augment = TrainAugment(size)

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int):
        v, i = self.todo[k]
        image, img = open_substituted(self.root, self.paths, i, self.size)
        view = self.augment.view(img, view_seed(self.seed, image, v, QUERY))
        return np.asarray(view, np.uint8), (v, i)


def _collate_views(items):
    return torch.from_numpy(np.stack([px for px, _ in items])), [key for _, key in items]
