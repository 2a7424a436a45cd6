"""Region descriptors: crops of an image that re-run the model.

A copy that fills only part of an image (a photo inside a screenshot, pasted into a collage, a
small crop of a poster) is the hardest case for one descriptor of the whole image: the frame
dominates it. A region is a crop of the image, given by its box in fractions of width and height
(x0, y0, x1, y1), squashed to the model's input size like a whole image is and embedded by the
same model, so a region's descriptor and a whole image's are compared by the same cosine and the
threshold keeps its meaning.

Pooling regions of one forward pass was tried first (see BENCHMARKS.md, "Regions"): the model
is trained on whole images, and its pooled sub-regions barely move the score; crops that re-run
the model do, so they are what this module makes. They cost one forward pass each, which is why
search spends them only on uncertain queries (copyscan.region_search).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from .decode import DEFAULT_MAX_PIXELS, DecodeError, open_image, read_bytes
from .results import FULL_BOX as RESULTS_FULL_BOX

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of width and height
FULL_BOX: Box = RESULTS_FULL_BOX


def grid_boxes(side: float, steps: int) -> list[Box]:
    """`steps` x `steps` square-ish crops of `side` (a fraction of width and of height), evenly
    spread from one edge to the other (overlapping when side x steps > 1)."""
    if steps == 1:
        starts = [(1.0 - side) / 2]
    else:
        starts = [i * (1.0 - side) / (steps - 1) for i in range(steps)]
    return [(round(x, 4), round(y, 4), round(x + side, 4), round(y + side, 4)) for y in starts for x in starts]


# Chosen by measurement on the dev benchmark (BENCHMARKS.md, "Regions"): a 3 x 3 grid of crops of
# 60% of each side plus a 2 x 2 grid of 75% covers a copy filling 30-80% of a frame anywhere in it.
DEFAULT_BOXES: tuple[Box, ...] = tuple(grid_boxes(0.6, 3) + grid_boxes(0.75, 2))


def check_box(box: Sequence[float]) -> Box:
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(f"a region box is x0,y0,x1,y1 with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, not {box!r}")
    return (x0, y0, x1, y1)


def box_area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (fractions): 1 for the same box, 0 for disjoint ones."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def crop(img: Image.Image, box: Box, size: int) -> np.ndarray:
    """The box of `img` squashed to size x size, uint8 HWC (as decode_file gives whole images)."""
    w, h = img.size
    left, top = int(round(box[0] * w)), int(round(box[1] * h))
    right, bottom = max(left + 1, int(round(box[2] * w))), max(top + 1, int(round(box[3] * h)))
    part = img.crop((left, top, min(w, right), min(h, bottom)))
    return np.asarray(part.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.uint8)


def decode_for_regions(path: str, size: int, boxes: Sequence[Box], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image at `path`, decoded large enough that its smallest box still has `size` pixels a side."""
    smallest = min(min(b[2] - b[0], b[3] - b[1]) for b in boxes) if boxes else 1.0
    img, _, _ = open_image(read_bytes(path), int(np.ceil(size / max(smallest, 0.05))), max_pixels)
    return img


def region_pixels(path: str, size: int, boxes: Sequence[Box], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(len(boxes), size, size, 3) uint8: each box of the image at `path`; raises DecodeError."""
    img = decode_for_regions(path, size, boxes, max_pixels)
    try:
        return np.stack([crop(img, b, size) for b in boxes])
    except (OSError, ValueError, MemoryError) as exc:
        raise DecodeError(f"cannot crop: {exc}") from None


@dataclass
class RegionBatch:
    """Region descriptors of some images: rows `owner[i]` of the request, box `boxes[i]`."""

    owner: np.ndarray  # (n,) int64: which requested item each descriptor belongs to
    boxes: list[Box]
    descriptors: np.ndarray  # (n, dim) float32
    failed: list[tuple[int, str]]  # (item, reason): files that could not be decoded now


class _Requests:
    """A torch Dataset of (path, boxes) requests (plain class: torch is imported lazily)."""

    def __init__(self, requests: Sequence[tuple[str, Sequence[Box]]], size: int, max_pixels: int):
        self.requests = requests
        self.size = size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, i: int):
        path, boxes = self.requests[i]
        try:
            return i, region_pixels(path, self.size, boxes, self.max_pixels), None
        except DecodeError as exc:
            return i, None, str(exc)
        except Exception as exc:  # a decoder bug must cost one file, not the run
            return i, None, f"unexpected decoder error: {type(exc).__name__}: {exc}"


def _collate(items):
    return items


def embed_regions(
    requests: Sequence[tuple[str, Sequence[Box]]],
    model,
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[RegionBatch]:
    """Embed the boxes of each (path, boxes) request; yields batches of about `batch_size` crops.

    Files are decoded again (once each, at the resolution the smallest box needs) in worker
    processes, as in copyscan.embed.
    """
    if not requests:
        return
    import torch
    from torch.utils.data import DataLoader

    from .embed import CPU_DECODE_NICENESS, default_workers, lower_priority

    workers = default_workers(gpu=model.device.type == "cuda") if workers is None else workers
    per_file = max(1, max(len(b) for _, b in requests))
    loader = DataLoader(
        _Requests(requests, model.input_size, max_pixels),
        batch_size=max(1, batch_size // per_file), num_workers=workers, collate_fn=_collate,
        prefetch_factor=4 if workers else None,
        worker_init_fn=partial(lower_priority, CPU_DECODE_NICENESS) if model.device.type == "cpu" and workers else None,
    )
    for items in loader:
        owner: list[int] = []
        boxes: list[Box] = []
        stacks = []
        failed = []
        for i, pixels, reason in items:
            if pixels is None:
                failed.append((i, reason))
                continue
            owner.extend([i] * len(pixels))
            boxes.extend(requests[i][1])
            stacks.append(pixels)
        if stacks:
            descriptors = model.embed(torch.from_numpy(np.concatenate(stacks)))
        else:
            descriptors = np.zeros((0, model.dim), np.float32)
        yield RegionBatch(np.asarray(owner, dtype=np.int64), boxes, descriptors, failed)


def with_region_rows(rows: list, descriptors: np.ndarray, region_descriptors: np.ndarray | None,
                     boxes: Sequence[Box]) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """A batch's whole-image rows followed by each image's region rows, for one shard.

    Returns (rows, descriptors, region numbers: 0 whole image, k for the k-th box, boxes (n, 4)).
    """
    n, r = len(rows), len(boxes) if region_descriptors is not None else 0
    out_rows = list(rows) + [row for row in rows for _ in range(r)]
    out_desc = descriptors if not r else np.concatenate([descriptors, region_descriptors])
    regions = np.concatenate([np.zeros(n, np.int16), np.tile(np.arange(1, r + 1, dtype=np.int16), n)])
    box_arr = np.concatenate([np.tile(np.asarray(FULL_BOX, np.float32), (n, 1)),
                              np.tile(np.asarray(boxes, np.float32).reshape(-1, 4), (n, 1))])
    return out_rows, out_desc, regions, box_arr
