"""The training augmentation: random square views of a photo, SSCD's "advanced" set.

A random resized crop, flips and quarter turns, colour jitter, grayscale, blur, then text and
emoji overlays and JPEG re-encoding, each with its own probability. `view(img, seed)` gives the
same pixels for the same image and seed, so a training loop can rebuild the exact view whose
teacher embedding it cached; calling the object draws a fresh seed from its own generator.
"""

from __future__ import annotations

import math
import os
import random

from PIL import Image, ImageFilter, ImageOps

from . import basic, overlays
from .common import rgb


class TrainAugment:
    def __init__(
        self,
        size: int,
        seed: int | None = None,
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        p_hflip: float = 0.5,
        p_vflip: float = 0.05,
        p_rotate90: float = 0.1,
        p_color: float = 0.8,
        color: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        p_grayscale: float = 0.2,
        p_blur: float = 0.3,
        p_text: float = 0.2,
        p_emoji: float = 0.2,
        p_jpeg: float = 0.2,
    ) -> None:
        if int(size) < 1:
            raise ValueError(f"augmentation size must be at least 1 pixel, got {size}")
        self.size = int(size)
        self.scale, self.ratio = scale, ratio
        self.p_hflip, self.p_vflip, self.p_rotate90 = p_hflip, p_vflip, p_rotate90
        self.p_color, self.color, self.p_grayscale, self.p_blur = p_color, color, p_grayscale, p_blur
        self.p_text, self.p_emoji, self.p_jpeg = p_text, p_emoji, p_jpeg
        self._seed = seed
        self._pid = os.getpid()
        self._rng = random.Random(seed)

    def __call__(self, img: Image.Image) -> Image.Image:
        # DataLoader workers are forked copies holding the same generator state: without this
        # each worker would produce the same "random" views. A worker mixes its pid in once.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._rng = random.Random(f"{self._seed}:{self._pid}")
        return self.view(img, self._rng.getrandbits(64))

    def view(self, img: Image.Image, seed: int) -> Image.Image:
        """The view of `img` for `seed`: a `size` x `size` RGB image, always the same pixels."""
        rng = random.Random(seed)
        img = rgb(img)
        out = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=self._crop_box(img.size, rng), reducing_gap=2.0)
        if rng.random() < self.p_hflip:
            out = ImageOps.mirror(out)
        if rng.random() < self.p_vflip:
            out = ImageOps.flip(out)
        if rng.random() < self.p_rotate90:
            out = out.transpose(rng.choice((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)))
        if rng.random() < self.p_color:
            b, c, s, h = self.color
            out = basic.jitter_colour(out, rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c), rng.uniform(1 - s, 1 + s), rng.uniform(-h, h))
        if rng.random() < self.p_grayscale:
            out = out.convert("L").convert("RGB")
        if rng.random() < self.p_blur:
            out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 2.5) * self.size / 224))
        if rng.random() < self.p_text:
            out = overlays.text(out, rng, rng.random())[0]
        if rng.random() < self.p_emoji:
            out = overlays.emoji(out, rng, rng.random())[0]
        if rng.random() < self.p_jpeg:
            out = basic.encode_jpeg(out, rng.randint(10, 90))
        return out

    def _crop_box(self, size: tuple[int, int], rng: random.Random) -> tuple[int, int, int, int]:
        """A random resized crop's box: area fraction in `scale`, aspect ratio (log-uniform) in `ratio`."""
        w, h = size
        area = w * h
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            r = math.exp(rng.uniform(log_lo, log_hi))
            cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
                return (x, y, x + cw, y + ch)
        # No luck (an extreme aspect ratio): the largest centred crop within the allowed ratios.
        r = min(max(w / h, self.ratio[0]), self.ratio[1])
        cw, ch = (w, max(1, min(h, round(w / r)))) if w / h < r or r == w / h else (max(1, min(w, round(h * r))), h)
        x, y = (w - cw) // 2, (h - ch) // 2
        return (x, y, x + cw, y + ch)
