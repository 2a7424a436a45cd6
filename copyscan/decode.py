"""Stage 2 (decode): turn a file into RGB pixels the size a model needs, or a reason why not.

Everything that can go wrong with a user's file ends here as a `DecodeError` with a short,
human-readable reason; nothing in this module lets an exception of Pillow's escape.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

T = TypeVar("T")

# Images above this many pixels are refused before their pixels are decoded (decompression
# bombs: a small PNG can declare 60000 x 60000). 250 MP still admits large panoramas.
DEFAULT_MAX_PIXELS = 250_000_000
# Files above this size are not read into memory at all.
DEFAULT_MAX_BYTES = 1 << 30

# We do our own pixel-count check with a clear message; Pillow's own check would raise with a
# message about "decompression bomb DOS attack" that means little to a user.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if _heif_registered:
        return
    _heif_registered = True
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


class DecodeError(Exception):
    """A file that cannot be turned into pixels; `str(err)` is the reason shown to the user."""


@dataclass
class Decoded:
    pixels: np.ndarray  # uint8, (size, size, 3)
    width: int  # of the original image, after EXIF orientation
    height: int
    content_hash: str  # of the file's bytes: identical files
    pixel_hash: str  # of the decoded pixels: same picture, other bytes (EXIF stripped, PNG vs BMP)


def file_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_bytes(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except PermissionError:
        raise DecodeError("permission denied") from None
    except IsADirectoryError:
        raise DecodeError("is a folder") from None
    except OSError as exc:
        raise DecodeError(f"cannot read: {exc.strerror or exc}") from None
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if len(data) > max_bytes:
        raise DecodeError(f"file larger than {max_bytes >> 20} MiB")
    return data


def open_image(data: bytes, min_side: int, max_pixels: int = DEFAULT_MAX_PIXELS,
               gray: bool = False) -> tuple[Image.Image, int, int]:
    """Decode `data` to an RGB image at least `min_side` on each side where the source allows.

    Returns the image and the original width and height (after EXIF orientation). JPEGs are
    decoded at a reduced DCT scale (draft mode) when the model needs far fewer pixels. `gray`
    gives an 8-bit grayscale image instead (local features need no colour; a JPEG decoded
    straight to gray takes about 0.54 ms against 0.82 ms at 384 px).
    """
    _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise DecodeError("image has no pixels")
            if width * height > max_pixels:
                raise DecodeError(
                    f"too many pixels ({width}x{height} = {width * height / 1e6:.0f} MP, limit {max_pixels / 1e6:.0f} MP)"
                )
            if img.format == "JPEG" and min_side > 0:
                img.draft("L" if gray else "RGB", (min_side, min_side))
            img.load()
            # Read after load(): PNG's getexif() loads the pixels itself, and an error it raised
            # there (swallowed by _orientation) would leave a half-decoded image behind.
            orientation = _orientation(img)
            img = (img if img.mode == "L" else _to_rgb(img).convert("L")) if gray else _to_rgb(img)
            if orientation in (2, 3, 4, 5, 6, 7, 8):
                try:
                    img = ImageOps.exif_transpose(img)
                except Exception:  # a broken EXIF block: keep the stored orientation
                    orientation = 1
            if orientation in (5, 6, 7, 8):
                width, height = height, width
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image Pillow can read (unknown or unsupported format)") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"too many pixels: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, IndexError, KeyError, TypeError, ZeroDivisionError) as exc:
        # Pillow reports corrupt and truncated data with a zoo of exception types.
        message = str(exc) or type(exc).__name__
        raise DecodeError(f"corrupt or truncated image: {message}") from None
    return img, width, height


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: 16-bit and float rescaled, transparency flattened onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        gray = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_file(path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Read, hash and decode one file, resized (squashed, never cropped) to `size` x `size`.

    Squashing keeps every part of the picture: a copy detector must see the borders where
    overlays and crops happen, and batching needs one shape.
    """
    data = read_bytes(path)
    content_hash = file_hash(data)
    img, width, height = open_image(data, size, max_pixels)
    pixel_hash = _pixel_hash(img, width, height)
    try:
        resized = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    except (OSError, ValueError, MemoryError) as exc:
        raise DecodeError(f"cannot resize: {exc}") from None
    pixels = np.asarray(resized, dtype=np.uint8)
    return Decoded(pixels, width, height, content_hash, pixel_hash)


def _pixel_hash(img: Image.Image, width: int, height: int) -> str:
    # The pixels as decoded (at draft scale for a JPEG) plus the original size: equal for the
    # same picture whatever its container or metadata, different for any real edit.
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{width}x{height}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def load_thumbnail(path: str, max_side: int) -> Image.Image:
    """A small RGB preview for reports; raises DecodeError like `decode_file`."""
    img, _, _ = open_image(read_bytes(path), max_side)
    img = img.copy()
    img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return img


def or_reason(decode: Callable[..., T], *args) -> tuple[T | None, str]:
    """decode(*args) that never raises: (result, "") or (None, the reason to record). For the
    decoders of engines and DataLoader workers, where one bad file must cost that file only."""
    try:
        return decode(*args), ""
    except DecodeError as exc:
        return None, str(exc)
    except Exception as exc:  # a decoder bug must cost one file, not the run
        return None, f"unexpected decoder error: {type(exc).__name__}: {exc}"


def decode_or_reason(path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Decoded | None, str]:
    """decode_file that never raises: (decoded, "") or (None, the reason to record), for engines."""
    return or_reason(decode_file, path, size, max_pixels)
