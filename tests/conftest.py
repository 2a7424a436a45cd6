"""Shared fixtures and helpers for copyscan's tests.

Everything here is generated on the fly (Pillow + numpy), never downloaded:

* `make_photo(path, size=(w, h), seed=0, mode="RGB", fmt=None)` writes a textured synthetic
  "photo" and returns its path.
* `tiny_model_path` (session fixture) is the path of a tiny random copyscan checkpoint
  (`.safetensors`, 32-d descriptors, 64 px input) that loads in well under a second.

Import the helper in a test module with `from conftest import make_photo` (pytest puts the
`tests` folder on `sys.path`), or take the `photo_factory` fixture, which is the same function.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Run from a checkout without `pip install -e .`: make the package importable.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import tempfile  # noqa: E402

# Model caches (downloads, ONNX exports) go to a folder of this test run, never the user's.
os.environ.setdefault("COPYSCAN_CACHE", tempfile.mkdtemp(prefix="copyscan-test-cache-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

# File extension -> Pillow format name, for `make_photo(..., fmt=None)`.
_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
    ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF",
}


def photo_array(size: tuple[int, int] = (256, 192), seed: int = 0) -> np.ndarray:
    """The RGB pixels (h, w, 3) uint8 of the synthetic photo `make_photo` writes.

    Smooth colour gradients (directions and colours drawn from `seed`) under a few dozen random
    filled ellipses, rectangles and thick lines: different seeds give clearly different pictures,
    and a resize, crop or re-encode of one stays close to it, as with real photos.
    """
    w, h = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx /= max(w - 1, 1)
    yy /= max(h - 1, 1)
    base = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, phase = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 2 * np.pi)
        freq = rng.uniform(0.5, 2.5)
        base[..., c] = 127.5 + 100 * np.sin(2 * np.pi * freq * (a * xx + b * yy) + phase)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(16, 28))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.03, 0.25) * w + 1, rng.uniform(0.03, 0.25) * h + 1
        x0, y0, x1, y1 = int(cx - rx), int(cy - ry), int(cx + rx), int(cy + ry)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, max(3, min(w, h) // 12))))
    arr = np.asarray(img).astype(np.int16)
    arr += rng.integers(-6, 7, arr.shape, dtype=np.int16)  # a little sensor noise
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_photo(path, size: tuple[int, int] = (256, 192), seed: int = 0, mode: str = "RGB", fmt: str | None = None, **save_kw) -> Path:
    """Write a synthetic photo of `size` (width, height) to `path` and return the path.

    `path` may be a str, a Path or bytes (for names that are not valid UTF-8); parent folders are
    created. `seed` picks the picture (see `photo_array`). `mode` is any Pillow mode the format
    can store: "RGB", "L", "RGBA" and "LA" (alpha a diagonal ramp), "P" (adaptive palette),
    "CMYK", "I;16" (16-bit grey, the 8-bit grey times 257). `fmt` is the Pillow format name; by
    default it follows the extension (.jpg, .png, .webp, .bmp, .gif, .tif ...). Extra keyword
    arguments go to `Image.save` (quality=, exif=, comment= ...).
    """
    if isinstance(path, bytes):
        os.makedirs(os.path.dirname(path) or b".", exist_ok=True)
        ext = os.path.splitext(path)[1].decode("ascii", "replace").lower()
    else:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ext = path.suffix.lower()
    fmt = fmt or _FORMATS.get(ext)
    if fmt is None:
        raise ValueError(f"make_photo: cannot tell the format of {path!r}; pass fmt=")
    rgb = Image.fromarray(photo_array(size, seed), "RGB")
    if mode == "RGB":
        img = rgb
    elif mode == "I;16":
        grey = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
        img = Image.fromarray(grey)  # mode I;16
    elif mode in ("RGBA", "LA"):
        w, h = rgb.size
        alpha = Image.linear_gradient("L").resize((w, h)).rotate(45, fillcolor=128)
        img = rgb.convert("RGBA") if mode == "RGBA" else rgb.convert("LA")
        img.putalpha(alpha)
    elif mode == "P":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    else:
        img = rgb.convert(mode)
    if fmt == "JPEG":
        save_kw.setdefault("quality", 90)
    with open(path, "wb") as fh:
        img.save(fh, format=fmt, **save_kw)
    return path


def paste(ref: Image.Image, background: Image.Image, fill: float, rng) -> tuple[Image.Image, tuple]:
    """`ref` pasted onto `background` at `fill` of its width; the image and the true box."""
    bg = background.copy()
    w = round(bg.width * fill)
    h = min(bg.height, round(w * ref.height / ref.width))
    x, y = rng.randint(0, bg.width - w), rng.randint(0, bg.height - h)
    bg.paste(ref.resize((w, h), Image.Resampling.BILINEAR), (x, y))
    return bg, (x / bg.width, y / bg.height, (x + w) / bg.width, (y + h) / bg.height)


def read_rows(path) -> list[dict]:
    """The rows of a CSV report (pairs.csv, skipped.csv, ...) as dicts keyed by the header."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def make_pasted_copies(refs: Path, queries: Path, n_refs: int, n_queries: int, seed: int, fill: float) -> None:
    """`n_refs` photos r0.jpg... (480x360) in `refs` and, in `queries`, q0.jpg...: the first
    `n_queries` of them pasted onto another photo (800x600) at `fill`, 0.05 more for each."""
    import random

    rng = random.Random(seed)
    for s in range(n_refs):
        make_photo(refs / f"r{s}.jpg", size=(480, 360), seed=seed + s)
    queries.mkdir(parents=True, exist_ok=True)
    for s in range(n_queries):
        with Image.open(refs / f"r{s}.jpg") as ref:
            bg = Image.fromarray(photo_array((800, 600), seed=seed + 100 + s))
            paste(ref, bg, fill + 0.05 * s, rng)[0].save(queries / f"q{s}.jpg", quality=90)


@pytest.fixture
def photo_factory():
    """The `make_photo` function, for tests that prefer a fixture to an import."""
    return make_photo


TINY_CONFIG = dict(name="tiny", backbone="test_efficientnet", feature_dim=256, embed_dim=32, input_size=64)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """Path of a tiny random copyscan checkpoint (`tiny.safetensors`), the same for every run.

    Built with `make_config(name="tiny", backbone="test_efficientnet", feature_dim=256,
    embed_dim=32, input_size=64)` + `build_net` + `save_checkpoint` after `torch.manual_seed(0)`:
    `create_model(tiny_model_path)` gives 32-d descriptors of 64 x 64 inputs, in milliseconds on
    a CPU. Created once per test session; treat the file as read-only.
    """
    import torch

    from copyscan.models.checkpoint import build_net, make_config, save_checkpoint

    path = tmp_path_factory.mktemp("tiny_model") / "tiny.safetensors"
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        config = make_config(**TINY_CONFIG)
        net = build_net(config).eval()
        save_checkpoint(net, config, path)
    finally:
        torch.random.set_rng_state(state)
    return path


@pytest.fixture(scope="session")
def other_model_path(tmp_path_factory) -> Path:
    """A second tiny checkpoint (`tiny16.safetensors`, 16-d, seed 1): another model than
    `tiny_model_path`'s, for the checks that refuse to mix two models in one index."""
    import torch

    from copyscan.models.checkpoint import build_net, make_config, save_checkpoint

    path = tmp_path_factory.mktemp("other_model") / "tiny16.safetensors"
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(1)
        config = make_config(**dict(TINY_CONFIG, name="tiny16", embed_dim=16))
        save_checkpoint(build_net(config).eval(), config, path)
    finally:
        torch.random.set_rng_state(state)
    return path
