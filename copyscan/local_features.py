"""Local features: an image's ORB keypoints and binary descriptors (OpenCV), for geometric
verification (verify.py).

Computed for a query when its best match is verified, and for each reference either then or, by
`index --regions`, once in the decode workers and stored (local_store.py) as `Features.to_bytes`.
The settings below are part of what is stored (`SETTINGS`): features made with others are not
matched against these.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Longest side the features are computed at: pastes of 30% still get ~115 px. On the dev benchmark
# 384 verified more copies than 512 (micro AP 0.831 against 0.825, same bands) for less time (ORB
# features of an image 8.8 against 11.0 ms). On the box check's synthetic pastes alone it places
# fewer (82.5% of the pairs against 92.5%), yet 99% of the pastes reported at the default
# threshold still get their box right (BENCHMARKS.md "Regions").
FEATURE_SIDE = 384
MAX_FEATURES = 500  # with 1000, matching took 8 ms a pair on the dev benchmark, against 3 ms
MAX_UPSCALE = 2.0  # small images are enlarged towards FEATURE_SIDE: ORB finds few corners in 200 px
ORB_LEVELS = 8  # ORB's scale pyramid: levels, and the size ratio between two levels (OpenCV's defaults)
ORB_SCALE = 1.2
# FAST corner threshold: OpenCV's 20 against 10 before, 2.8 against 3.4 ms an image at 384 px for
# 0.0002 less micro AP on the dev benchmark (`region_sweep.py --tables cheap --orb 8,1.2,20`).
ORB_FAST = 20


def cv2_module():
    """OpenCV, or a clear message where it is missing."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - a dependency; kept as a clear message all the same
        from .errors import UserError

        raise UserError("geometric verification needs OpenCV: pip install opencv-python-headless") from None
    return cv2


# What stored features (`index --regions`, copyscan.local_store) were computed with: features made
# with other settings are not matched against this version's (they are computed again instead).
SETTINGS = f"orb side={FEATURE_SIDE} n={MAX_FEATURES} up={MAX_UPSCALE} levels={ORB_LEVELS} scale={ORB_SCALE} fast={ORB_FAST}"
_HEADER = struct.Struct("<HHH")  # keypoints, width, height


@dataclass
class Features:
    points: np.ndarray  # (n, 2) float32: keypoint positions as fractions of width and height
    descriptors: np.ndarray | None  # (n, 32) uint8 ORB descriptors; None when no keypoint
    width: int  # of the image the features were computed on
    height: int

    @classmethod
    def empty(cls, width: int = 0, height: int = 0) -> "Features":
        """No keypoints (an image OpenCV could not read, or with no corners)."""
        return cls(np.zeros((0, 2), np.float32), None, width, height)

    def to_bytes(self) -> bytes:
        """About 36 bytes a keypoint: positions as 16-bit fractions (1/65535 of a side is a
        hundredth of a pixel at FEATURE_SIDE), then the 32-byte descriptors."""
        n = 0 if self.descriptors is None else len(self.descriptors)
        points = np.clip(np.rint(self.points[:n] * 65535.0), 0, 65535).astype("<u2")
        body = b"" if n == 0 else points.tobytes() + np.ascontiguousarray(self.descriptors, np.uint8).tobytes()
        return _HEADER.pack(n, self.width, self.height) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> "Features":
        n, width, height = _HEADER.unpack_from(data)
        if len(data) != _HEADER.size + n * (4 + 32):
            raise ValueError(f"stored local features of {len(data)} bytes, not {_HEADER.size + n * 36}")
        if n == 0:
            return cls.empty(width, height)
        at = _HEADER.size
        points = np.frombuffer(data, "<u2", 2 * n, at).reshape(n, 2).astype(np.float32) / 65535.0
        descriptors = np.frombuffer(data, np.uint8, 32 * n, at + 4 * n).reshape(n, 32).copy()
        return cls(points, descriptors, width, height)


def features_of(img: Image.Image | np.ndarray) -> Features:
    """ORB features of an RGB image (PIL or HWC uint8), scaled to FEATURE_SIDE (enlarged 2x at most)."""
    cv2 = cv2_module()
    if isinstance(img, Image.Image):
        img = img.convert("L")
        scale = min(MAX_UPSCALE, FEATURE_SIDE / max(img.size))
        if abs(scale - 1) > 0.05:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)
        gray = np.asarray(img, dtype=np.uint8)
    else:
        gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
        scale = min(MAX_UPSCALE, FEATURE_SIDE / max(gray.shape[:2]))
        if abs(scale - 1) > 0.05:
            gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    h, w = gray.shape[:2]
    orb = cv2.ORB_create(nfeatures=MAX_FEATURES, fastThreshold=ORB_FAST, nlevels=ORB_LEVELS, scaleFactor=ORB_SCALE)
    keypoints, descriptors = orb.detectAndCompute(gray, None)
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2) / np.array([w, h], dtype=np.float32)
    return Features(points, descriptors, w, h)


def open_gray(path: str) -> Image.Image | None:
    """The image file at `path` decoded straight to grayscale, at least FEATURE_SIDE a side where
    it has the pixels, or None when it cannot be read."""
    from .decode import DecodeError, open_image, read_bytes

    try:
        img, _, _ = open_image(read_bytes(path), FEATURE_SIDE, gray=True)
    except (DecodeError, OSError):
        return None
    return img


def file_features(path: str) -> Features | None:
    """ORB features of the image file at `path`, or None when it cannot be read."""
    img = open_gray(path)
    return None if img is None else features_of(img)
