"""Overlay edits: text, emoji stickers, meme caption bars.

Same contract as basic.py: (RGB image, random.Random, strength) -> (RGB image, label).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from . import stickers
from .common import contrast_colour, font, level, lerp, random_colour, random_words

Result = tuple[Image.Image, str]


def text(img: Image.Image, rng: random.Random, strength: float) -> Result:
    s = level(rng, strength)
    lines = 1 + round(lerp(0, 3, s) * rng.uniform(0.6, 1.0))
    rel = lerp(0.07, 0.18, s)  # font size as a fraction of the shorter side
    w, h = img.size
    size = max(4, round(rel * min(w, h)))
    # A third of overlays are translucent, like watermarks; the rest are opaque captions.
    alpha = 255 if rng.random() < 0.67 else rng.randint(110, 200)
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0)) if alpha < 255 else None
    out = img.copy()
    draw = ImageDraw.Draw(layer if layer is not None else out)
    for _ in range(lines):
        colour = random_colour(rng)
        words = random_words(rng, rng.randint(1, 4))
        if rng.random() < 0.3:
            words = words.upper()
        x, y = rng.randint(-w // 8, max(0, w - size)), rng.randint(-size // 3, max(0, h - size))
        stroke = max(1, size // 12) if rng.random() < 0.5 else 0
        draw.text((x, y), words, font=font(size), fill=colour + (alpha,), stroke_width=stroke, stroke_fill=contrast_colour(colour) + (alpha,))
    if layer is not None:
        out = Image.alpha_composite(out.convert("RGBA"), layer).convert("RGB")
    return out, f"text({lines},{rel:.2f})"


def emoji(img: Image.Image, rng: random.Random, strength: float) -> Result:
    s = level(rng, strength)
    count = 1 + round(lerp(0, 4, s) * rng.uniform(0.5, 1.0))
    rel = lerp(0.12, 0.35, s)  # sticker size as a fraction of the shorter side
    out = img.copy()
    w, h = out.size
    for _ in range(count):
        side = max(4, round(rel * min(w, h) * rng.uniform(0.7, 1.2)))
        art = stickers.sticker(rng.choice(stickers.KINDS), side, rng)
        if rng.random() < 0.5:
            art = art.rotate(rng.uniform(-30, 30), Image.Resampling.BILINEAR, expand=True)
        # The sticker's centre lies on the image, its edges may hang over.
        x = rng.randint(0, max(0, w - 1)) - art.width // 2
        y = rng.randint(0, max(0, h - 1)) - art.height // 2
        out.paste(art, (x, y), art)
    return out, f"emoji({count},{rel:.2f})"


def meme(img: Image.Image, rng: random.Random, strength: float) -> Result:
    rel = lerp(0.12, 0.3, level(rng, strength))  # bar height as a fraction of the image height
    where = rng.choice(("top", "bottom", "both"))
    w, h = img.size
    bar = max(4, round(rel * max(h, w // 2)))  # wide images still get a readable bar
    top = bar if where in ("top", "both") else 0
    bottom = bar if where in ("bottom", "both") else 0
    dark = rng.random() < 0.15  # some apps draw black bars with white text
    bg, ink = ((0, 0, 0), (255, 255, 255)) if dark else ((255, 255, 255), (0, 0, 0))
    out = Image.new("RGB", (w, h + top + bottom), bg)
    out.paste(img, (0, top))
    draw = ImageDraw.Draw(out)
    for y0 in ([0] if top else []) + ([h + top] if bottom else []):
        _caption(draw, random_words(rng, rng.randint(3, 7)), (0, y0, w, y0 + bar), ink)
    return out, f"meme({where},{rel:.2f})"


def _caption(draw: ImageDraw.ImageDraw, words: str, box: tuple[int, int, int, int], ink) -> None:
    """Centre `words` in `box`, on one or two lines, as large as fits."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    parts = words.split()
    lines = [words] if len(parts) < 4 else [" ".join(parts[: len(parts) // 2]), " ".join(parts[len(parts) // 2:])]
    size = max(4, round(bh * (0.55 if len(lines) == 1 else 0.36)))
    longest = max(font(size).getlength(line) for line in lines)
    if longest > 0.92 * bw:
        size = max(4, int(size * 0.92 * bw / longest))
    f = font(size)
    line_h = size * 1.15
    y = y0 + (bh - line_h * len(lines)) / 2
    for line in lines:
        draw.text((x0 + (bw - f.getlength(line)) / 2, y), line, font=f, fill=ink)
        y += line_h
