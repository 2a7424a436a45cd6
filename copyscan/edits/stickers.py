"""Emoji-like stickers drawn with ImageDraw: faces, hearts, stars.

Drawn, not loaded from an emoji font or image set, so that no asset with its own licence is
needed and every machine draws the same pixels. `sticker(kind, size, rng)` returns an RGBA image.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

FACE_YELLOW = (255, 204, 77, 255)
FACE_EDGE = (230, 150, 30, 255)
DARK = (60, 40, 30, 255)


def _face(draw: ImageDraw.ImageDraw, s: int) -> None:
    edge = max(1, s // 32)
    draw.ellipse((0, 0, s - 1, s - 1), fill=FACE_YELLOW, outline=FACE_EDGE, width=edge)


def _round_eyes(draw: ImageDraw.ImageDraw, s: int) -> None:
    for cx in (0.35, 0.65):
        draw.ellipse((s * (cx - 0.06), s * 0.28, s * (cx + 0.06), s * 0.46), fill=DARK)


def _smile(draw: ImageDraw.ImageDraw, s: int) -> None:
    _face(draw, s)
    _round_eyes(draw, s)
    draw.arc((s * 0.25, s * 0.35, s * 0.75, s * 0.78), 20, 160, fill=DARK, width=max(1, s // 18))


def _grin(draw: ImageDraw.ImageDraw, s: int) -> None:
    _face(draw, s)
    _round_eyes(draw, s)
    draw.chord((s * 0.22, s * 0.42, s * 0.78, s * 0.86), 0, 180, fill=DARK)
    draw.rectangle((s * 0.3, s * 0.64, s * 0.7, s * 0.7), fill=(255, 255, 255, 255))


def _wink(draw: ImageDraw.ImageDraw, s: int) -> None:
    _face(draw, s)
    draw.ellipse((s * 0.29, s * 0.28, s * 0.41, s * 0.46), fill=DARK)
    draw.arc((s * 0.56, s * 0.3, s * 0.74, s * 0.46), 200, 340, fill=DARK, width=max(1, s // 20))
    draw.arc((s * 0.25, s * 0.35, s * 0.75, s * 0.78), 20, 160, fill=DARK, width=max(1, s // 18))


def _sunglasses(draw: ImageDraw.ImageDraw, s: int) -> None:
    _face(draw, s)
    glass = (20, 20, 20, 255)
    draw.rounded_rectangle((s * 0.16, s * 0.28, s * 0.46, s * 0.46), radius=max(1, s // 16), fill=glass)
    draw.rounded_rectangle((s * 0.54, s * 0.28, s * 0.84, s * 0.46), radius=max(1, s // 16), fill=glass)
    draw.line((s * 0.44, s * 0.32, s * 0.56, s * 0.32), fill=glass, width=max(1, s // 24))
    draw.arc((s * 0.3, s * 0.45, s * 0.7, s * 0.78), 30, 150, fill=DARK, width=max(1, s // 18))


def _heart_shape(draw: ImageDraw.ImageDraw, x0: float, y0: float, size: float, fill) -> None:
    r = size * 0.26
    for cx in (x0 + size * 0.28, x0 + size * 0.72):
        draw.ellipse((cx - r, y0 + size * 0.32 - r, cx + r, y0 + size * 0.32 + r), fill=fill)
    draw.polygon([(x0 + size * 0.04, y0 + size * 0.42), (x0 + size * 0.96, y0 + size * 0.42), (x0 + size * 0.5, y0 + size * 0.95)], fill=fill)


def _heart_eyes(draw: ImageDraw.ImageDraw, s: int) -> None:
    _face(draw, s)
    for x in (0.2, 0.53):
        _heart_shape(draw, s * x, s * 0.22, s * 0.27, (230, 30, 50, 255))
    draw.chord((s * 0.28, s * 0.5, s * 0.72, s * 0.84), 0, 180, fill=DARK)


def _tears_of_joy(draw: ImageDraw.ImageDraw, s: int) -> None:
    _face(draw, s)
    for cx in (0.33, 0.67):
        draw.arc((s * (cx - 0.1), s * 0.3, s * (cx + 0.1), s * 0.48), 200, 340, fill=DARK, width=max(1, s // 20))
    draw.chord((s * 0.2, s * 0.4, s * 0.8, s * 0.88), 0, 180, fill=DARK)
    blue = (80, 170, 255, 255)
    for x in (0.02, 0.82):
        draw.ellipse((s * x, s * 0.42, s * (x + 0.16), s * 0.64), fill=blue)


def _heart(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    colour = rng.choice(((230, 30, 50, 255), (255, 90, 160, 255), (170, 60, 220, 255), (255, 140, 0, 255)))
    _heart_shape(draw, 0, 0, s, colour)


def _star(draw: ImageDraw.ImageDraw, s: int, rng: random.Random) -> None:
    colour = rng.choice(((255, 210, 0, 255), (255, 170, 0, 255), (255, 255, 255, 255)))
    c, outer, inner = s / 2, s / 2 - 0.5, s * 0.2
    points = []
    for i in range(10):
        r = outer if i % 2 == 0 else inner
        a = -math.pi / 2 + i * math.pi / 5
        points.append((c + r * math.cos(a), c + 0.04 * s + r * math.sin(a)))
    draw.polygon(points, fill=colour, outline=(200, 120, 0, 255))


FACES = {"smile": _smile, "grin": _grin, "wink": _wink, "sunglasses": _sunglasses, "heart_eyes": _heart_eyes, "tears_of_joy": _tears_of_joy}
SHAPES = {"heart": _heart, "star": _star}
KINDS = tuple(FACES) + tuple(SHAPES)


def sticker(kind: str, size: int, rng: random.Random) -> Image.Image:
    """An RGBA sticker of `kind` (one of KINDS), `size` x `size` pixels, transparent around."""
    s = max(int(size), 4)
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    if kind in FACES:
        FACES[kind](draw, s)
    else:
        SHAPES[kind](draw, s, rng)
    return img
