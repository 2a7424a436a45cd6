"""Perceptual hashes (pHash, PDQ) as descriptor models, the baselines copyscan is measured against.

A hash of n bits becomes a vector of +-1/sqrt(n): the cosine of two such vectors is
1 - 2 * hamming / n, so ranking by cosine is ranking by Hamming distance, and the whole pipeline
(index, FAISS, query, dedupe, eval) takes hashes unchanged. A score of 0.75 is then a Hamming
distance of n/8 (8 of pHash's 64 bits, 32 of PDQ's 256).

Needs the optional extra `copyscan[baselines]` (imagehash, pdqhash).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image

from ..errors import ModelUnavailable
from ..identity import ModelInfo
from .base import DescriptorModel

BASELINES_HINT = 'pip install "copyscan[baselines]"  (imagehash and pdqhash)'


class HashDescriptor(DescriptorModel):
    def __init__(self, name: str, bits: int, input_size: int, hash_fn, version: str):
        self.device = torch.device("cpu")
        self._hash = hash_fn
        self._scale = np.float32(1.0 / np.sqrt(bits))
        # No weights: the identity of a hash is its algorithm and the library version computing it.
        ident = hashlib.sha256(f"{name}:{version}".encode()).hexdigest()
        self.info = ModelInfo(name, bits, input_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ident, "python", version)

    def embed(self, batch) -> np.ndarray:
        arr = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        bits = np.stack([self._hash(img) for img in arr]).astype(np.float32)
        return (bits * 2.0 - 1.0) * self._scale


def load_phash(device: str = "auto") -> DescriptorModel:
    try:
        import imagehash
    except ImportError:
        raise ModelUnavailable(f"phash needs imagehash: {BASELINES_HINT}") from None

    def phash(img: np.ndarray) -> np.ndarray:
        return imagehash.phash(Image.fromarray(img)).hash.reshape(-1)

    return HashDescriptor("phash", 64, 128, phash, f"imagehash {getattr(imagehash, '__version__', '?')}")


def load_pdq(device: str = "auto") -> DescriptorModel:
    try:
        import pdqhash
    except ImportError:
        raise ModelUnavailable(f"pdq needs pdqhash: {BASELINES_HINT}") from None

    def pdq(img: np.ndarray) -> np.ndarray:
        vector, _quality = pdqhash.compute(np.ascontiguousarray(img))
        return vector

    return HashDescriptor("pdq", 256, 256, pdq, "pdqhash")
