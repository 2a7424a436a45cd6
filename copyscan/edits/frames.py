"""Framing edits: the image shrunk inside something else.

* `screenshot`: phone-app or browser chrome drawn around the image.
* `make_paste(backgrounds)`: the image pasted onto another photo, from a provider of backgrounds
  (a callable `rng -> PIL image`, or a list of image paths); without one, a generated background.

Same contract as basic.py: (RGB image, random.Random, strength) -> (RGB image, label).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .common import fit_inside, font, level, lerp, random_colour, random_words, rgb

Result = tuple[Image.Image, str]
BackgroundProvider = Callable[[random.Random], Image.Image] | Sequence[str | os.PathLike]

LIGHT = {"bg": (255, 255, 255), "bar": (246, 246, 246), "ink": (20, 20, 20), "muted": (200, 200, 200)}
DARK = {"bg": (0, 0, 0), "bar": (28, 28, 30), "ink": (240, 240, 240), "muted": (70, 70, 72)}


def screenshot(img: Image.Image, rng: random.Random, strength: float) -> Result:
    fill = lerp(1.0, 0.45, level(rng, strength))  # displayed image width / screen width
    theme = DARK if rng.random() < 0.4 else LIGHT
    if rng.random() < 0.5:
        out, shown = _phone(img, rng, fill, theme)
        return out, f"screenshot(phone,{shown:.2f})"
    out, shown = _browser(img, rng, fill, theme)
    return out, f"screenshot(browser,{shown:.2f})"


def _phone(img: Image.Image, rng: random.Random, fill: float, theme: dict) -> tuple[Image.Image, float]:
    w, h = img.size
    sw = max(64, round(max(w, h) * 0.8))  # the screen about as wide as the photo was large
    sh = round(sw * rng.uniform(1.9, 2.2))
    screen = Image.new("RGB", (sw, sh), theme["bg"])
    draw = ImageDraw.Draw(screen)
    status, header, nav = round(sh * 0.035), round(sh * 0.06), round(sh * 0.07)
    small = font(max(4, status * 0.6))
    draw.text((sw * 0.06, status * 0.2), f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}", font=small, fill=theme["ink"])
    draw.rectangle((sw * 0.86, status * 0.3, sw * 0.94, status * 0.7), outline=theme["ink"], width=max(1, status // 12))
    draw.rectangle((0, status, sw, status + header), fill=theme["bar"])
    draw.text((sw * 0.2, status + header * 0.2), random_words(rng, 2), font=font(max(4, header * 0.5)), fill=theme["ink"])
    # The post: avatar + name, the photo, then a row of action icons and a caption.
    y = status + header + round(sh * 0.01)
    avatar = round(sh * 0.04)
    draw.ellipse((sw * 0.03, y, sw * 0.03 + avatar, y + avatar), fill=random_colour(rng))
    draw.text((sw * 0.05 + avatar, y + avatar * 0.2), "@" + random_words(rng, 1), font=font(max(4, avatar * 0.5)), fill=theme["ink"])
    y += avatar + round(sh * 0.01)
    iw, ih = fit_inside(w, h, sw * fill, sh - y - nav - sh * 0.12)
    x = (sw - iw) // 2 if fill > 0.9 or rng.random() < 0.7 else round(sw * 0.03)
    screen.paste(img.resize((iw, ih), Image.Resampling.BILINEAR), (x, y))
    y += ih + round(sh * 0.012)
    icon = round(sh * 0.025)
    for i in range(3):
        cx = sw * 0.04 + i * icon * 1.8
        draw.ellipse((cx, y, cx + icon, y + icon), outline=theme["ink"], width=max(1, icon // 8))
    y += icon + round(sh * 0.012)
    draw.text((sw * 0.04, y), random_words(rng, 5), font=font(max(4, sh * 0.018)), fill=theme["ink"])
    # The feed goes on below: the top of the next post, cut off by the navigation bar.
    y += round(sh * 0.04)
    if y + avatar < sh - nav:
        draw.ellipse((sw * 0.03, y, sw * 0.03 + avatar, y + avatar), fill=random_colour(rng))
        y += avatar + round(sh * 0.01)
        if y < sh - nav:
            screen.paste(generated_background((sw, sh - nav - y), rng), (0, y))
    draw.rectangle((0, sh - nav, sw, sh), fill=theme["bar"])
    for i in range(5):
        cx = sw * (0.1 + 0.2 * i)
        box = (cx - nav * 0.2, sh - nav * 0.7, cx + nav * 0.2, sh - nav * 0.3)
        draw.rounded_rectangle(box, radius=max(1, nav // 10), outline=theme["ink"], width=max(1, nav // 20))
    return screen, iw / sw


def _browser(img: Image.Image, rng: random.Random, fill: float, theme: dict) -> tuple[Image.Image, float]:
    w, h = img.size
    sw = max(96, round(max(w, h) * 1.25))
    sh = round(sw * rng.uniform(0.56, 0.7))
    screen = Image.new("RGB", (sw, sh), theme["bg"])
    draw = ImageDraw.Draw(screen)
    tabs, address = round(sh * 0.05), round(sh * 0.06)
    draw.rectangle((0, 0, sw, tabs + address), fill=theme["bar"])
    for i in range(rng.randint(1, 4)):
        x0 = sw * (0.01 + 0.16 * i)
        draw.rounded_rectangle((x0, tabs * 0.2, x0 + sw * 0.15, tabs), radius=max(1, tabs // 4), fill=theme["bg"] if i == 0 else theme["muted"])
    draw.rounded_rectangle((sw * 0.1, tabs + address * 0.15, sw * 0.9, tabs + address * 0.85), radius=max(1, address // 3), fill=theme["bg"])
    url = "https://" + random_words(rng, 1).strip("#@%") + ".example/" + random_words(rng, 1).strip("#@%")
    draw.text((sw * 0.12, tabs + address * 0.25), url, font=font(max(4, address * 0.45)), fill=theme["ink"])
    top = tabs + address
    page_h = sh - top
    draw.text((sw * 0.05, top + page_h * 0.03), random_words(rng, 4), font=font(max(4, page_h * 0.06)), fill=theme["ink"])
    iw, ih = fit_inside(w, h, sw * fill * 0.8, page_h * 0.8)
    x = rng.choice(((sw - iw) // 2, round(sw * 0.05)))
    y = top + round(page_h * 0.13)
    screen.paste(img.resize((iw, ih), Image.Resampling.BILINEAR), (x, y))
    # Lines of "text" beside or under the picture: grey bars, as a page shrunk on a screen looks.
    text_x = x + iw + round(sw * 0.03) if x + iw < sw * 0.7 else round(sw * 0.05)
    line_y = y if text_x > x else min(y + ih + round(page_h * 0.03), sh - 1)
    while line_y < sh - page_h * 0.05:
        length = rng.uniform(0.3, 0.9) * (sw * 0.95 - text_x)
        draw.rectangle((text_x, line_y, text_x + length, line_y + max(1, page_h * 0.015)), fill=theme["muted"])
        line_y += max(2, round(page_h * 0.04))
    return screen, iw / sw


def generated_background(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A photo-like stand-in: a smooth colour field under a few random shapes."""
    w, h = max(1, size[0]), max(1, size[1])
    gen = np.random.default_rng(rng.getrandbits(64))
    coarse = gen.integers(0, 256, (3, 4, 3), dtype=np.uint8)  # a 4 x 3 colour grid, blown up smooth
    out = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(out)
    for _ in range(rng.randint(4, 12)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * h
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=random_colour(rng))
        else:
            draw.rectangle(box, fill=random_colour(rng))
    return out


def _background(provider: BackgroundProvider | None, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A background about `size` from `provider`; a generated one if it has none or fails."""
    picked = None
    try:
        if callable(provider):
            picked = provider(rng)
        elif provider:
            with Image.open(provider[rng.randrange(len(provider))]) as opened:
                opened.draft("RGB", size)
                picked = opened.convert("RGB")  # loads the pixels before the file closes
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        picked = None  # an unreadable background photo: the edit still happens
    if picked is None or picked.width < 1 or picked.height < 1:
        return generated_background(size, rng)
    return rgb(picked).resize(_cover(picked.size, size), Image.Resampling.BILINEAR)


def _cover(have: tuple[int, int], want: tuple[int, int]) -> tuple[int, int]:
    """`have` scaled so that its longer side matches `want`'s longer side (keeps its aspect)."""
    scale = max(want) / max(have)
    return max(1, round(have[0] * scale)), max(1, round(have[1] * scale))


def make_paste(backgrounds: BackgroundProvider | None = None) -> Callable[[Image.Image, random.Random, float], Result]:
    """The `paste` edit with backgrounds from `backgrounds` (see the module's doc)."""

    def paste(img: Image.Image, rng: random.Random, strength: float) -> Result:
        fill = lerp(0.8, 0.3, level(rng, strength))  # the image's size relative to the background
        w, h = img.size
        longer = max(64, round(max(w, h) * rng.uniform(1.0, 1.3)))
        bg = _background(backgrounds, (longer, round(longer * rng.uniform(0.6, 1.0))), rng)
        bw, bh = bg.size
        iw, ih = fit_inside(w, h, bw * fill, bh * fill)
        shown = img.resize((iw, ih), Image.Resampling.BILINEAR)
        if rng.random() < 0.3:  # a white border, like a print lying on a table
            border = max(1, round(min(iw, ih) * 0.05))
            framed = Image.new("RGB", (iw + 2 * border, ih + 2 * border), (250, 250, 250))
            framed.paste(shown, (border, border))
            shown = framed
        x = rng.randint(0, max(0, bw - shown.width))
        y = rng.randint(0, max(0, bh - shown.height))
        out = bg.copy()
        out.paste(shown, (x, y))
        return out, f"paste({fill:.2f})"

    return paste
