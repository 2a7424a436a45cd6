"""Hard copies: the framings the default model missed, for training views and the hard benchmark.

A copy that fills its frame is easy; the failures measured on an independent benchmark were the
photo shrunk inside something else (a phone, browser or chat screenshot; pasted into another
photo), another photo pasted over it, strong crops, big rotations, perspective, pixelation and
very low JPEG quality. This module makes those:

* `paste_into(img, other, rng, area)`: `img` pasted onto the photo `other`, covering `area` of it;
* `paste_over(img, other, rng, area)`: a piece of `other` pasted over `area` of `img`;
* `chat(img, rng, strength)`: a messaging app's conversation with the photo in a bubble;
* `HardAugment.view(img, seed, other)`: one hard training view, size x size, always the same
  pixels for the same inputs;
* `hard_copy(img, rng, other)`: one hard benchmark copy and its labels (`bench synth --hard`).

`other` is a second photo (a PIL image) chosen by the caller, so that the dataset decides where
backgrounds come from (training photos for training, non-reference photos for a benchmark).
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw, ImageOps

from . import basic, frames, overlays
from .common import fit_inside, font, random_colour, random_words, rgb
from .registry import EDITS

BILINEAR = Image.Resampling.BILINEAR
# Where a hard view's photo ends up. "plain": the photo fills the view (edited in place).
FRAMINGS = ("plain", "paste_into", "paste_over", "screenshot", "chat")


def paste_into(img: Image.Image, other: Image.Image, rng: random.Random, area: float) -> tuple[Image.Image, str]:
    """`img` pasted onto `other` at a random place, its area `area` of the result's."""
    bw = max(32, max(img.size))
    bh = max(16, round(bw * rng.uniform(0.6, 1.4)))
    bg = rgb(other).resize((bw, bh), BILINEAR)
    w, h = img.size
    scale = math.sqrt(area * bw * bh / max(1, w * h))
    iw, ih = fit_inside(w, h, min(bw, w * scale), min(bh, h * scale))
    shown = img.resize((iw, ih), BILINEAR)
    x, y = rng.randint(0, bw - iw), rng.randint(0, bh - ih)
    bg.paste(shown, (x, y))
    return bg, f"paste_into({iw * ih / (bw * bh):.2f})"


def paste_over(img: Image.Image, other: Image.Image, rng: random.Random, area: float) -> tuple[Image.Image, str]:
    """A rectangle of `other` covering `area` of `img` (an inset, a sticker photo, a collage)."""
    w, h = img.size
    aspect = math.exp(rng.uniform(-0.5, 0.5))
    pw = max(1, min(w, round(math.sqrt(area * w * h * aspect))))
    ph = max(1, min(h, round(area * w * h / pw)))
    piece = rgb(other).resize((pw, ph), BILINEAR)
    out = img.copy()
    out.paste(piece, (rng.randint(0, w - pw), rng.randint(0, h - ph)))
    return out, f"paste_over({pw * ph / (w * h):.2f})"


def chat(img: Image.Image, rng: random.Random, strength: float) -> tuple[Image.Image, str]:
    """A chat app screen: header, text bubbles, the photo in a bubble taking `fill` of the width."""
    fill = 0.75 - 0.3 * min(max(strength, 0.0), 1.0) * rng.uniform(0.6, 1.0)
    dark = rng.random() < 0.35
    bg, ink, bubble = ((16, 16, 18), (235, 235, 235), (44, 44, 48)) if dark else ((236, 229, 221), (20, 20, 20), (255, 255, 255))
    w, h = img.size
    sw = max(64, round(max(w, h) * 0.8))
    sh = round(sw * rng.uniform(1.8, 2.2))
    screen = Image.new("RGB", (sw, sh), bg)
    draw = ImageDraw.Draw(screen)
    header = round(sh * 0.09)
    accent = random_colour(rng)
    draw.rectangle((0, 0, sw, header), fill=accent)
    draw.ellipse((sw * 0.04, header * 0.25, sw * 0.04 + header * 0.55, header * 0.8), fill=random_colour(rng))
    draw.text((sw * 0.2, header * 0.35), random_words(rng, 2), font=font(max(4, header * 0.3)), fill=(255, 255, 255))
    size = font(max(4, round(sh * 0.022)))
    y = header + round(sh * 0.02)
    iw, ih = fit_inside(w, h, sw * fill, sh * 0.55)
    photo_at = rng.randint(0, 2)  # text bubbles before the photo
    for i in range(4):
        if i == photo_at:
            mine = rng.random() < 0.5
            x = sw - iw - round(sw * 0.04) if mine else round(sw * 0.04)
            pad = max(2, round(sw * 0.012))
            draw.rounded_rectangle((x - pad, y - pad, x + iw + pad, y + ih + pad), radius=pad * 2, fill=bubble)
            screen.paste(img.resize((iw, ih), BILINEAR), (x, y))
            y += ih + 3 * pad
        else:
            line = random_words(rng, rng.randint(2, 6))
            tw = min(sw * 0.8, size.getlength(line) + sw * 0.06)
            th = round(sh * 0.045)
            x = sw - tw - sw * 0.04 if rng.random() < 0.5 else sw * 0.04
            draw.rounded_rectangle((x, y, x + tw, y + th), radius=max(1, th // 3), fill=bubble)
            draw.text((x + sw * 0.03, y + th * 0.2), line, font=size, fill=ink)
            y += th + round(sh * 0.015)
        if y > sh * 0.88:
            break
    bar = round(sh * 0.07)
    draw.rectangle((0, sh - bar, sw, sh), fill=bubble)
    draw.rounded_rectangle((sw * 0.04, sh - bar * 0.8, sw * 0.8, sh - bar * 0.2), radius=max(1, bar // 4), outline=ink)
    return screen, f"chat({iw / sw:.2f})"


def screenshot(img: Image.Image, rng: random.Random, strength: float) -> tuple[Image.Image, str]:
    """A phone/browser screenshot (frames.screenshot) or a chat app, a third of the time each."""
    if rng.random() < 1 / 3:
        return chat(img, rng, strength)
    return frames.screenshot(img, rng, strength)


def rotate(img: Image.Image, rng: random.Random, max_degrees: float = 35.0) -> tuple[Image.Image, str]:
    angle = rng.uniform(5.0, max_degrees) * rng.choice((-1, 1))
    fill = rng.choice(((0, 0, 0), (255, 255, 255), random_colour(rng)))
    return img.rotate(angle, BILINEAR, expand=True, fillcolor=fill), f"rotate({angle:.0f})"


def crop(img: Image.Image, rng: random.Random, low: float = 0.15, high: float = 0.6) -> tuple[Image.Image, str]:
    """A crop keeping `low`..`high` of the area, aspect jittered."""
    area = rng.uniform(low, high)
    skew = math.exp(rng.uniform(-0.3, 0.3))
    w, h = img.size
    cw = max(1, min(w, round(w * math.sqrt(area) * skew)))
    ch = max(1, min(h, round(h * math.sqrt(area) / skew)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch)), f"crop({cw * ch / (w * h):.2f})"


class HardAugment:
    """Random hard views of a photo for training: geometry, pixels, overlays, a framing, encoding.

    Each stage fires with its own probability; the framing is one of FRAMINGS drawn with
    `framing_weights`. `view(img, seed, other)` is a pure function of its inputs. `other` (a
    second photo) is only used by the paste framings; without one they fall back to "plain".
    """

    def __init__(self, size: int, *, framing_weights: dict[str, float] | None = None, p_crop: float = 0.35,
                 p_rotate: float = 0.2, p_perspective: float = 0.15, p_color: float = 0.5, p_grayscale: float = 0.1,
                 p_blur: float = 0.15, p_pixelate: float = 0.07, p_text: float = 0.25, p_emoji: float = 0.25,
                 p_jpeg: float = 0.35, p_strong_jpeg: float = 0.3) -> None:
        if int(size) < 1:
            raise ValueError(f"augmentation size must be at least 1 pixel, got {size}")
        self.size = int(size)
        weights = framing_weights or {"plain": 0.4, "paste_into": 0.2, "paste_over": 0.1, "screenshot": 0.2, "chat": 0.1}
        unknown = set(weights) - set(FRAMINGS)
        if unknown:
            raise ValueError(f"unknown framings {sorted(unknown)}; known: {', '.join(FRAMINGS)}")
        self.framings = [f for f in FRAMINGS if weights.get(f, 0) > 0]
        self.framing_weights = [float(weights[f]) for f in self.framings]
        self.p = dict(crop=p_crop, rotate=p_rotate, perspective=p_perspective, color=p_color, grayscale=p_grayscale,
                      blur=p_blur, pixelate=p_pixelate, text=p_text, emoji=p_emoji, jpeg=p_jpeg)
        self.p_strong_jpeg = p_strong_jpeg

    def framing(self, seed: int) -> str:
        """The framing `view(..., seed)` uses (drawn first, so callers can fetch `other` only when needed)."""
        return random.Random(seed).choices(self.framings, self.framing_weights)[0]

    def view(self, img: Image.Image, seed: int, other: Image.Image | None = None) -> Image.Image:
        return self.labelled(img, seed, other)[0]

    def labelled(self, img: Image.Image, seed: int, other: Image.Image | None = None) -> tuple[Image.Image, list[str]]:
        """The view and the labels of what was done to it (for tests and inspection)."""
        rng = random.Random(seed)
        framing = rng.choices(self.framings, self.framing_weights)[0]
        if framing in ("paste_into", "paste_over") and other is None:
            framing = "plain"
        p = self.p
        out, labels = rgb(img), []

        def step(result):
            nonlocal out
            out, label = result
            labels.append(label)

        if rng.random() < 0.5:
            step((ImageOps.mirror(out), "hflip"))
        # At most one strong geometric edit, and none under a framing that already shrinks the
        # photo: a 15% crop shown at 20% of a screenshot leaves nothing to recognise.
        geometry = [g for g in ("crop", "rotate", "perspective") if rng.random() < p[g]]
        if framing in ("paste_into", "screenshot", "chat"):
            geometry = [g for g in geometry if g != "crop"]
        if geometry:
            g = geometry[0]
            step(crop(out, rng) if g == "crop" else rotate(out, rng) if g == "rotate"
                 else basic.perspective(out, rng, rng.random()))
        if rng.random() < p["color"]:
            step(basic.color(out, rng, rng.random()))
        if rng.random() < p["grayscale"]:
            step(basic.grayscale(out, rng, 0.0))
        if rng.random() < p["blur"]:
            step(basic.blur(out, rng, rng.random() * 0.7))
        if rng.random() < p["pixelate"]:
            step(basic.pixelate(out, rng, rng.uniform(0.3, 1.0)))
        if rng.random() < p["text"]:
            step(overlays.text(out, rng, rng.random()))
        if rng.random() < p["emoji"]:
            step(overlays.emoji(out, rng, rng.random()))
        if framing == "paste_into":
            step(paste_into(out, other, rng, rng.uniform(0.15, 0.6)))
        elif framing == "paste_over":
            step(paste_over(out, other, rng, rng.uniform(0.1, 0.4)))
        elif framing == "screenshot":
            step(frames.screenshot(out, rng, rng.uniform(0.5, 1.0)))
        elif framing == "chat":
            step(chat(out, rng, rng.uniform(0.3, 1.0)))
        # Encoding last, as a re-posted copy: the frame is squashed to the view size first (the
        # size the index sees), so JPEG blocks land as they would on a small re-upload.
        out = out.resize((self.size, self.size), BILINEAR, reducing_gap=2.0)
        if rng.random() < p["jpeg"]:
            quality = rng.randint(5, 20) if rng.random() < self.p_strong_jpeg else rng.randint(21, 80)
            step((basic.encode_jpeg(out, quality), f"jpeg({quality})"))
        return out, labels


# The hard benchmark's copies: one framing or strong geometric edit each (so per-edit rank-1 says
# which failure it measures), plus up to two milder edits drawn from the usual registry.
HARD_KINDS = ("screenshot", "chat", "paste_into", "paste_over", "crop", "rotate", "perspective", "pixelate", "jpeg")
EXTRA_EDITS = ("text", "emoji", "color", "grayscale", "blur", "downscale")


def hard_copy(img: Image.Image, rng: random.Random, other: Image.Image | None) -> tuple[Image.Image, list[str]]:
    """One hard copy of `img`: a kind from HARD_KINDS (paste kinds need `other`), plus 0-2 extras."""
    kinds = [k for k in HARD_KINDS if other is not None or not k.startswith("paste")]
    kind = rng.choice(kinds)
    extras = rng.sample(EXTRA_EDITS, rng.randint(0, 2))
    out, labels = rgb(img), []
    for name in ("color", "grayscale", "blur", "text", "emoji"):  # pixel and overlay edits before framing
        if name in extras:
            out, label = EDITS[name].apply(out, rng, rng.uniform(0.3, 0.8))
            labels.append(label)
    if kind == "screenshot":
        out, label = frames.screenshot(out, rng, rng.uniform(0.6, 1.0))
    elif kind == "chat":
        out, label = chat(out, rng, rng.uniform(0.4, 1.0))
    elif kind == "paste_into":
        out, label = paste_into(out, other, rng, rng.uniform(0.15, 0.6))
    elif kind == "paste_over":
        out, label = paste_over(out, other, rng, rng.uniform(0.2, 0.45))
    elif kind == "crop":
        out, label = crop(out, rng, 0.15, 0.4)
    elif kind == "rotate":
        out, label = rotate(out, rng, 35.0)
    elif kind == "perspective":
        out, label = basic.perspective(out, rng, rng.uniform(0.6, 1.0))
    elif kind == "pixelate":
        out, label = basic.pixelate(out, rng, rng.uniform(0.6, 1.0))
    else:
        out, label = basic.encode_jpeg(out, q := rng.randint(5, 20)), f"jpeg({q})"
    labels.insert(0, label)  # the hard kind first: per-edit tables group by the first label too
    if "downscale" in extras:
        out, label = basic.downscale(out, rng, rng.uniform(0.2, 0.6))
        labels.append(label)
    return out, labels
