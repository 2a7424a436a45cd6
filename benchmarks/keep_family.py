"""The copies of issue 13's folder: 8 edited copies of one original, written beside it.

Used by benchmarks/keep_accuracy.py (real photos) and by tests/test_keep.py (synthetic ones).
Each copy is what a person or an app typically makes: a resize, a low-quality re-encode, a crop,
grayscale, a mirror, a 720x1280 phone screenshot, a text overlay and a lossless PNG re-save.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

COPY_KINDS = ("resize50", "jpeg_q30", "crop80", "grayscale", "flip", "screenshot", "text", "png")


def _font(size: int):
    try:
        return ImageFont.load_default(size=max(int(size), 1))
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default()


def phone_screenshot(img: Image.Image, rng: random.Random, size: tuple[int, int] = (720, 1280)) -> Image.Image:
    """The photo shown full width in a phone app: status bar, a header, caption and icons."""
    sw, sh = size
    dark = rng.random() < 0.4
    bg, ink, bar = ((0, 0, 0), (235, 235, 235), (28, 28, 30)) if dark else ((255, 255, 255), (20, 20, 20), (246, 246, 246))
    screen = Image.new("RGB", (sw, sh), bg)
    draw = ImageDraw.Draw(screen)
    draw.text((30, 8), f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}", font=_font(26), fill=ink)
    draw.rectangle((sw - 90, 12, sw - 40, 34), outline=ink, width=3)
    draw.rectangle((0, 48, sw, 140), fill=bar)
    draw.text((40, 70), "Photos", font=_font(40), fill=ink)
    w, h = img.size
    iw = sw
    ih = min(round(h * sw / w), sh - 420)
    iw = round(w * ih / h) if ih < round(h * sw / w) else iw
    y = 170
    screen.paste(img.resize((iw, ih), Image.Resampling.BICUBIC), ((sw - iw) // 2, y))
    y += ih + 20
    draw.text((30, y), "liked by friends and 99 others", font=_font(28), fill=ink)
    for k in range(4):
        draw.ellipse((30 + k * 70, y + 50, 80 + k * 70, y + 100), outline=ink, width=4)
    draw.rectangle((0, sh - 90, sw, sh), fill=bar)
    return screen


def text_overlay(img: Image.Image, rng: random.Random) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    size = max(12, img.height // 8)
    words = rng.choice(["when it finally works", "monday mood", "best day ever", "no way"])
    draw.text((img.width * 0.05, img.height * 0.08), words, font=_font(size), fill=(255, 255, 255),
              stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
    return out


def make_copies(original: Path, out_dir: Path, stem: str, rng: random.Random) -> dict[str, Path]:
    """Write the 8 copies of `original` into `out_dir` as STEM_KIND.EXT; returns kind -> path."""
    img = ImageOps.exif_transpose(Image.open(original)).convert("RGB")
    w, h = img.size
    out: dict[str, Path] = {}

    def save(kind: str, im: Image.Image, ext: str, **kw) -> None:
        path = out_dir / f"{stem}_{kind}{ext}"
        im.save(path, **kw)
        out[kind] = path

    save("resize50", img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS), ".jpg", quality=90)
    save("jpeg_q30", img, ".jpg", quality=30)
    cw, ch = round(w * 0.8), round(h * 0.8)
    save("crop80", img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)), ".jpg", quality=90)
    save("grayscale", img.convert("L"), ".jpg", quality=90)
    save("flip", ImageOps.mirror(img), ".jpg", quality=90)
    save("screenshot", phone_screenshot(img, rng), ".png")
    save("text", text_overlay(img, rng), ".jpg", quality=90)
    save("png", img, ".png")
    return out


def set_times(paths: list[Path], base_s: float, step_s: float) -> None:
    for k, p in enumerate(paths):
        t = base_s + k * step_s
        os.utime(p, (t, t))
