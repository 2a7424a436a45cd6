"""Region descriptors: crops of an image that re-run the model.

A copy that fills only part of an image (a photo inside a screenshot, pasted into a collage, a
small crop of a poster) is the hardest case for one descriptor of the whole image: the frame
dominates it. A region is a crop of the image, given by its box in fractions of width and height
(x0, y0, x1, y1), squashed to the model's input size like a whole image is and embedded by the
same model, so a region's descriptor and a whole image's are compared by the same cosine and the
threshold keeps its meaning.

Pooling regions of one forward pass barely helps: on the issue's own benchmark, 14 regions of
the default model's 5 x 5 feature map gave 0.739 micro AP against 0.737 (the model is trained on
whole images; not measured again here). Crops that re-run the model do (BENCHMARKS.md,
"Regions"), so they are what this module describes (copyscan.embed.embed_regions embeds them).
They cost one forward pass each, which is why search spends them only on uncertain queries
(copyscan.region_search). `RowTable` says which rows of an index are whole images and which are
regions (`index --regions` stores them beside their image's row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

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
class RowTable:
    """What each FAISS row of an index is: its path, region number (0 whole image) and box."""

    paths: list[str]
    regions: np.ndarray  # (n,) int16
    boxes: np.ndarray  # (n, 4) float32; FULL_BOX for whole-image rows
    global_of: dict[str, int] = field(default_factory=dict)  # path -> its whole-image row

    @classmethod
    def from_table(cls, table, paths: list[str]) -> "RowTable":
        n = len(paths)
        regions = np.zeros(n, np.int16)
        boxes = np.tile(np.asarray(FULL_BOX, np.float32), (n, 1))
        if "region" in table.column_names:
            col = table.column("region").to_numpy(zero_copy_only=False)
            regions = np.nan_to_num(col.astype(np.float64), nan=0).astype(np.int16)
            box_col = table.column("box").to_pylist()
            for i, b in enumerate(box_col):
                if b is not None and regions[i] != 0:
                    boxes[i] = b
        rows = cls(paths, regions, boxes)
        rows.global_of = {p: i for i, p in enumerate(paths) if regions[i] == 0}
        return rows

    @property
    def has_regions(self) -> bool:
        return bool((self.regions != 0).any())

    @property
    def per_image(self) -> int:
        """Rows per image at most (1 without region rows)."""
        return 1 + int(self.regions.max(initial=0))


def whole_image_params(index, rows: RowTable | None):
    """FAISS search parameters that see whole-image rows only (plain search on an index that also
    holds region rows must not change), or None when every row is one."""
    if rows is None or not rows.has_regions:
        return None
    import faiss

    selector = faiss.IDSelectorBatch(np.nonzero(rows.regions == 0)[0].astype(np.int64))
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return faiss.SearchParameters(sel=selector)
    return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)



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
