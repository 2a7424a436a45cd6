"""Small helpers shared by the edits: strength -> parameter, colours, fonts, random words."""

from __future__ import annotations

import functools
import random

from PIL import Image, ImageFont

# Words for text overlays and captions: short, common, mixed case, like real overlays.
WORDS = (
    "when", "you", "the", "me", "that", "moment", "finally", "monday", "mood", "vibes", "love", "this",
    "best", "day", "ever", "nope", "wait", "for", "it", "omg", "lol", "so", "true", "my", "face",
    "weekend", "coffee", "cat", "dog", "summer", "sale", "50%", "off", "new", "free", "follow",
    "like", "share", "#tbt", "@user", "2024", "photo", "credit", "no", "way", "why", "how", "real",
)

# Bright colours that overlays and stickers commonly use, plus black and white.
PALETTE = (
    (255, 255, 255), (0, 0, 0), (255, 221, 0), (255, 59, 48), (52, 199, 89), (0, 122, 255),
    (255, 149, 0), (175, 82, 222), (255, 45, 85), (90, 200, 250),
)


def lerp(lo: float, hi: float, t: float) -> float:
    return lo + (hi - lo) * t


def level(rng: random.Random, strength: float, spread: float = 0.1) -> float:
    """`strength` in [0, 1] with a little random spread, clamped to [0, 1].

    Edits map this to their own parameter range (mild at 0, severe at 1), so that two copies
    made at one strength still differ somewhat, as real copies do.
    """
    s = min(max(float(strength), 0.0), 1.0)
    return min(max(s + rng.uniform(-spread, spread), 0.0), 1.0)


def rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def random_colour(rng: random.Random) -> tuple[int, int, int]:
    if rng.random() < 0.6:
        return rng.choice(PALETTE)
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def contrast_colour(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `colour` (for outlines)."""
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 128 else (255, 255, 255)


@functools.lru_cache(maxsize=128)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font (needs FreeType, which Pillow wheels ship); the fixed
    bitmap font where FreeType is missing. No font file is read from the system: the edits must
    look the same on every machine."""
    try:
        return ImageFont.load_default(size=max(int(size), 1))
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default()


def random_words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(count, 1)))


def fit_inside(w: int, h: int, box_w: float, box_h: float) -> tuple[int, int]:
    """The size of a w x h image scaled to fit a box_w x box_h box, at least 1 x 1."""
    scale = min(box_w / max(w, 1), box_h / max(h, 1))
    return max(1, round(w * scale)), max(1, round(h * scale))
