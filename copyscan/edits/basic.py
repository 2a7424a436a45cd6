"""Geometric, pixel and encoding edits.

Every function here takes (RGB image, random.Random, strength in [0, 1]) and returns the edited
RGB image and a short label with its parameters, e.g. `crop(0.62)`. Strength 0 is a mild
version of the edit, 1 a severe one (roughly the range of DISC 2021's copies).
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from .common import level, lerp, random_colour

Result = tuple[Image.Image, str]
BILINEAR = Image.Resampling.BILINEAR


def crop(img: Image.Image, rng: random.Random, strength: float) -> Result:
    keep = lerp(0.9, 0.35, level(rng, strength))  # side fraction kept (geometric mean of w and h)
    skew = math.exp(rng.uniform(-0.2, 0.2))  # crops are rarely exactly the image's aspect
    w, h = img.size
    cw = max(1, min(w, round(w * min(keep * skew, 1.0))))
    ch = max(1, min(h, round(h * min(keep / skew, 1.0))))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch)), f"crop({keep:.2f})"


def downscale(img: Image.Image, rng: random.Random, strength: float) -> Result:
    factor = lerp(0.7, 0.12, level(rng, strength))
    w, h = img.size
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return img.resize(size, BILINEAR), f"downscale({factor:.2f})"


def jpeg(img: Image.Image, rng: random.Random, strength: float) -> Result:
    quality = round(lerp(85, 7, level(rng, strength)))
    return encode_jpeg(img, quality), f"jpeg({quality})"


def encode_jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def rotate(img: Image.Image, rng: random.Random, strength: float) -> Result:
    angle = lerp(4.0, 45.0, level(rng, strength)) * rng.choice((-1, 1))
    fill = rng.choice(((0, 0, 0), (255, 255, 255), random_colour(rng)))
    out = img.rotate(angle, BILINEAR, expand=True, fillcolor=fill)
    return out, f"rotate({angle:.1f})"


QUARTER_TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def rotate90(img: Image.Image, rng: random.Random, strength: float) -> Result:
    degrees = rng.choice(sorted(QUARTER_TURNS))
    return img.transpose(QUARTER_TURNS[degrees]), f"rotate90({degrees})"


def hflip(img: Image.Image, rng: random.Random, strength: float) -> Result:
    return ImageOps.mirror(img), "hflip"


def vflip(img: Image.Image, rng: random.Random, strength: float) -> Result:
    return ImageOps.flip(img), "vflip"


def grayscale(img: Image.Image, rng: random.Random, strength: float) -> Result:
    return img.convert("L").convert("RGB"), "grayscale"


def color(img: Image.Image, rng: random.Random, strength: float) -> Result:
    s = level(rng, strength)
    bright = math.exp(rng.uniform(-1, 1) * lerp(0.15, 0.6, s))
    contrast = math.exp(rng.uniform(-1, 1) * lerp(0.15, 0.6, s))
    saturation = math.exp(rng.uniform(-1, 1) * lerp(0.2, 1.0, s))
    hue = rng.uniform(-1, 1) * lerp(0.02, 0.25, s)  # fraction of the colour circle
    out = jitter_colour(img, bright, contrast, saturation, hue)
    return out, f"color({bright:.2f},{contrast:.2f},{saturation:.2f},{hue:+.2f})"


LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as Pillow's convert("L")


def jitter_colour(img: Image.Image, bright: float, contrast: float, saturation: float, hue: float) -> Image.Image:
    """Brightness, contrast, saturation (factors, 1 = unchanged) and hue (a turn of the colour
    circle, 0 = unchanged) in that order, as one affine colour matrix: one pass over the pixels
    in C instead of four, and no rounding between steps."""
    # Contrast pulls towards the mean grey level, as PIL.ImageEnhance.Contrast does.
    mean = float(np.asarray(img.reduce(4) if min(img.size) >= 8 else img, dtype=np.float64).reshape(-1, 3).mean(axis=0) @ LUMA)
    sat = saturation * np.eye(3) + (1 - saturation) * np.tile(LUMA, (3, 1))
    matrix = hue_matrix(hue) @ sat * (contrast * bright)
    # Every step keeps grey grey, so the contrast's offset passes through unchanged.
    offset = (1 - contrast) * bright * mean
    coeffs = np.concatenate([matrix, np.full((3, 1), offset)], axis=1)
    return img.convert("RGB", tuple(float(c) for c in coeffs.ravel()))


def hue_matrix(turn: float) -> np.ndarray:
    """Rotation of RGB space about the grey axis by `turn` of a full circle (Rodrigues' formula)."""
    a = 2 * math.pi * turn
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3)
    return math.cos(a) * np.eye(3) + (1 - math.cos(a)) * np.full((3, 3), 1 / 3) + math.sin(a) * cross


def blur(img: Image.Image, rng: random.Random, strength: float) -> Result:
    # The radius follows the image's size, so a blur looks the same on a thumbnail and a photo.
    radius = max(0.5, lerp(0.005, 0.04, level(rng, strength)) * min(img.size))
    return img.filter(ImageFilter.GaussianBlur(radius)), f"blur({radius:.1f})"


def noise(img: Image.Image, rng: random.Random, strength: float) -> Result:
    sigma = lerp(5.0, 45.0, level(rng, strength))
    gen = np.random.default_rng(rng.getrandbits(64))
    arr = np.asarray(img, dtype=np.float32) + gen.normal(0.0, sigma, (img.height, img.width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB"), f"noise({sigma:.0f})"


def pixelate(img: Image.Image, rng: random.Random, strength: float) -> Result:
    ratio = lerp(0.4, 0.06, level(rng, strength))
    w, h = img.size
    small = img.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST), f"pixelate({ratio:.2f})"


def pad(img: Image.Image, rng: random.Random, strength: float) -> Result:
    frac = lerp(0.04, 0.35, level(rng, strength))  # of the longer side, split unevenly between sides
    fill = rng.choice(((0, 0, 0), (255, 255, 255), random_colour(rng)))
    longer = max(img.size)
    sides = [round(frac * longer * rng.uniform(0.4, 1.0)) for _ in range(4)]
    return ImageOps.expand(img, border=tuple(sides), fill=fill), f"pad({frac:.2f})"


def aspect(img: Image.Image, rng: random.Random, strength: float) -> Result:
    factor = lerp(1.15, 2.2, level(rng, strength))
    ratio = factor if rng.random() < 0.5 else 1 / factor  # > 1: stretched wide, < 1: tall
    w, h = img.size
    size = (max(1, round(w * math.sqrt(ratio))), max(1, round(h / math.sqrt(ratio))))
    return img.resize(size, BILINEAR), f"aspect({ratio:.2f})"


def perspective(img: Image.Image, rng: random.Random, strength: float) -> Result:
    amount = lerp(0.04, 0.28, level(rng, strength))
    w, h = img.size
    # Where the image's corners land in the output: each pulled inwards by a random amount, as
    # when a photo of a screen or a print is taken at an angle.
    dst = [
        (rng.uniform(0, amount) * w, rng.uniform(0, amount) * h),
        (w - rng.uniform(0, amount) * w, rng.uniform(0, amount) * h),
        (w - rng.uniform(0, amount) * w, h - rng.uniform(0, amount) * h),
        (rng.uniform(0, amount) * w, h - rng.uniform(0, amount) * h),
    ]
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    fill = rng.choice(((0, 0, 0), (255, 255, 255), random_colour(rng)))
    coeffs = perspective_coeffs(dst, src)
    if coeffs is None:  # degenerate (a 1-pixel image): nothing to warp
        return img.copy(), f"perspective({amount:.2f})"
    out = img.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, BILINEAR, fillcolor=fill)
    return out, f"perspective({amount:.2f})"


def perspective_coeffs(out_pts, in_pts) -> tuple[float, ...] | None:
    """The 8 coefficients Pillow's PERSPECTIVE transform wants: for each output pixel (x, y),
    the input pixel ((a x + b y + c) / (g x + h y + 1), (d x + e y + f) / (g x + h y + 1))."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(out_pts, in_pts):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    try:
        sol = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(sol)):
        return None
    return tuple(float(c) for c in sol)
