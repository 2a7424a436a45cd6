"""Integer codes for the values of an Arrow string or binary column, equal exactly where the values
are equal, without a Python object per row and without Arrow's dictionary encoding, whose hash
table costs about four times the column (1.2 GB for 10M paths: BENCHMARKS.md, "Dedupe at scale").

A 64-bit key per value is computed in numpy from the column's own buffers (a polynomial hash mod
2^64, mixed with the length); rows whose keys are equal are then checked byte for byte against
their key's first row, so a collision of two different values can never merge them (the rare
column where one occurs is encoded by Arrow instead).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_BASE = np.uint64(0x100000001B3)  # odd: powers stay distinct mod 2^64
_MIX = np.uint64(0x9E3779B97F4A7C15)
_powers = np.ones(1, dtype=np.uint64)
BLOCK_ROWS = 65_536  # rows keyed at a time (8 bytes of work arrays per byte of their values)


def value_codes(column) -> np.ndarray:
    """An int64 code per row (0, 1, ... one per distinct value), equal exactly where the values
    are equal; nulls get -1. `column`: an Arrow string/binary (Chunked)Array."""
    if isinstance(column, pa.ChunkedArray):
        chunks = column.chunks
    else:
        chunks = [column]
    if not chunks or sum(len(c) for c in chunks) == 0:
        return np.zeros(0, np.int64)
    # A block of rows at a time: the per-byte work arrays are 8 bytes a byte of the column.
    keys = np.concatenate([_keys(c.slice(a, BLOCK_ROWS)) for c in chunks for a in range(0, len(c), BLOCK_ROWS)])
    _, first, codes = np.unique(keys, return_index=True, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    rows = np.nonzero(first[codes] != np.arange(len(keys)))[0]  # rows sharing a key with an earlier row
    if len(rows):
        values = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
        same = pc.equal(values.take(pa.array(rows, type=pa.int64())),
                                values.take(pa.array(first[codes[rows]], type=pa.int64())))
        if not same.fill_null(True).to_numpy(zero_copy_only=False).all():
            return _arrow_codes(values)  # a collision of two different values: exact codes instead
    nulls = np.concatenate([c.is_null().to_numpy(zero_copy_only=False) for c in chunks])
    codes[nulls] = -1
    return codes


def _arrow_codes(values: pa.ChunkedArray) -> np.ndarray:
    encoded = values.dictionary_encode()
    return np.concatenate([c.indices.fill_null(-1).to_numpy(zero_copy_only=False) for c in encoded.chunks]).astype(np.int64)


def _keys(array: pa.Array) -> np.ndarray:
    """sum of byte_k x BASE^k mod 2^64 per value, xor its length x MIX."""
    global _powers
    if pa.types.is_large_binary(array.type) or pa.types.is_large_string(array.type):
        width = np.int64
    else:
        width = np.int32
    n = len(array)
    buffers = array.buffers()
    size = np.dtype(width).itemsize
    offsets = np.frombuffer(buffers[1], width, count=n + 1, offset=array.offset * size).astype(np.int64)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    longest = int(lengths.max()) if n else 0
    if longest > len(_powers):
        powers = np.empty(longest, np.uint64)
        powers[0] = 1
        with np.errstate(over="ignore"):
            for k in range(1, longest):
                powers[k] = powers[k - 1] * _BASE
        _powers = powers
    first, last = int(offsets[0]), int(offsets[-1])
    position = np.arange(first, last) - np.repeat(offsets[:-1], lengths)
    keys = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        terms = data[first:last].astype(np.uint64) * _powers[position]
        filled = lengths > 0
        if filled.any():
            keys[filled] = np.add.reduceat(terms, (offsets[:-1] - first)[filled])
        keys ^= lengths.astype(np.uint64) * _MIX
    return keys
