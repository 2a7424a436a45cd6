"""Geometric verification: does a reference appear in a query, and where (OpenCV local features).

Two images are described by ORB keypoints (binary descriptors: the fastest OpenCV detector, a few
milliseconds at 384-512 pixels, where SIFT takes about 25 ms), matched with Lowe's ratio test, and an
affine map from the reference onto the query is fitted robustly (RANSAC). Enough inliers mean the
reference, or a part of it, is in the query; the map then gives where the copy sits on each side:

    query box      the reference's frame mapped into the query, clipped to the query
    reference box  the query's frame mapped back into the reference, clipped to it

A photo pasted into a screenshot gets a small query box and the full reference box; a crop of a
poster gets the full query box and a small reference box. Boxes are (x0, y0, x1, y1) in fractions
of width and height (copyscan.regions.Box).

The inlier count is not a score on the descriptor's scale: search maps it onto one, anchored at
the index's default threshold (copyscan.region_search.verified_score), because pairs with enough
inliers are copies as reliably as pairs scoring that threshold (BENCHMARKS.md "Regions"). An affine map covers the library's edits up to a mild perspective
(resize, crop, aspect, rotation, paste, screenshot); a mirrored copy is not verified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .local_features import Features, cv2_module
from .regions import Box

RATIO = 0.8  # Lowe's ratio test
MIN_INLIERS = 15  # below this, random matches fit an affine map too often (BENCHMARKS.md)
REPROJECTION_PX = 6.0  # RANSAC inlier distance at local_features.FEATURE_SIDE


@dataclass
class Verification:
    inliers: int
    query_box: Box  # where the copy sits in the query
    reference_box: Box  # which part of the reference it shows
    matrix: np.ndarray  # (2, 3) affine map from reference fractions to query fractions


def verify(query: Features, reference: Features, min_inliers: int = MIN_INLIERS) -> Verification | None:
    """Fit reference -> query; None when too few matches agree on one affine map."""
    cv2 = cv2_module()
    if query.descriptors is None or reference.descriptors is None or len(query.points) < 3 or len(reference.points) < 3:
        return None
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(reference.descriptors, query.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < min_inliers:
        return None
    # Fitted in the query's pixels, so that the RANSAC tolerance is a distance on the query.
    qsize = np.array([query.width, query.height], dtype=np.float32)
    rsize = np.array([reference.width, reference.height], dtype=np.float32)
    src = reference.points[[m.queryIdx for m in good]] * rsize
    dst = query.points[[m.trainIdx for m in good]] * qsize
    matrix, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION_PX,
                                        maxIters=2000, confidence=0.99, refineIters=10)
    if matrix is None or mask is None:
        return None
    inliers = int(mask.sum())
    if inliers < min_inliers or not _plausible(matrix):
        return None
    # In fractions: q = Q^-1 (A (R r)) with R, Q the pixel scalings.
    frac = np.diag(1.0 / qsize.astype(np.float64)) @ matrix @ np.diag([*rsize.astype(np.float64), 1.0])
    query_box = _clip(_mapped_box(frac, (0.0, 0.0, 1.0, 1.0)))
    inverse = cv2.invertAffineTransform(frac)
    reference_box = _clip(_mapped_box(inverse, (0.0, 0.0, 1.0, 1.0)))
    if query_box is None or reference_box is None:
        return None
    return Verification(inliers, query_box, reference_box, frac)


def _plausible(matrix: np.ndarray) -> bool:
    """A copy is not mirrored, squashed 4x one way, or shrunk to a speck by the map."""
    linear = matrix[:, :2]
    det = float(np.linalg.det(linear))
    if det <= 0:
        return False
    s = np.linalg.svd(linear, compute_uv=False)
    return s[1] > 0 and s[0] / s[1] < 4.0 and 0.02 < np.sqrt(det) < 50.0


def _mapped_box(matrix: np.ndarray, box: Box) -> Box:
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]], dtype=np.float64)
    mapped = corners @ matrix.T
    return (float(mapped[:, 0].min()), float(mapped[:, 1].min()), float(mapped[:, 0].max()), float(mapped[:, 1].max()))


def _clip(box: Box, min_side: float = 0.05) -> Box | None:
    x0, y0 = max(0.0, box[0]), max(0.0, box[1])
    x1, y1 = min(1.0, box[2]), min(1.0, box[3])
    if x1 - x0 < min_side or y1 - y0 < min_side:
        return None
    return (round(x0, 4), round(y0, 4), round(x1, 4), round(y1, 4))
