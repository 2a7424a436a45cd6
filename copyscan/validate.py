"""Checks of the numbers a user gives, at the edge, before any work: a message that names the
option and the range it takes, never a silent nonsense result (`-t -5` grouping unrelated photos,
`-t nan` matching nothing) or a crash deep inside FAISS."""

from __future__ import annotations

import math

from .errors import UserError

# Upper bounds that no real use comes near and that keep memory bounded (FAISS allocates
# top-k results per query; a batch is decoded into memory at once).
MAX_TOP_K = 10_000
MAX_BATCH_SIZE = 4096
MAX_WORKERS = 256


class BadOption(UserError):
    """An option's value outside what it takes; the message names the option and the range."""


def check_number(value: float, option: str) -> float:
    """A finite float (not nan, not inf)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadOption(f"{option} takes a number, not {value!r}") from None
    if not math.isfinite(number):
        raise BadOption(f"{option} must be a finite number, not {value!r}")
    return number


def check_count(value: int, option: str, low: int, high: int, unit: str) -> int:
    """A whole number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadOption(f"{option} takes a whole number of {unit} from {low} to {high:,}, not {value!r}")
    return value


def score_range(postprocess: dict | None) -> tuple[float, float, str]:
    """(lowest, highest, description) of the scores an index gives, from its manifest's
    post-processing entry: cosines of L2-normalised descriptors lie in [-1, 1]; score
    normalisation subtracts beta x a mean of cosines, so it widens that to [-1 - beta, 1 + beta]."""
    entry = postprocess or {}
    if entry.get("score_norm"):
        beta = abs(float(entry.get("beta", 1.0)))
        return -1.0 - beta, 1.0 + beta, f"normalised scores (cosine less beta {beta:g} x background similarity)"
    return -1.0, 1.0, "cosine similarity"


def check_threshold(value: float | None, postprocess: dict | None, option: str = "--threshold",
                    default: float | None = None) -> float | None:
    """`value` (None: the default, left to the caller) finite and inside the index's score range."""
    if value is None:
        return None
    number = check_number(value, option)
    low, high, scale = score_range(postprocess)
    if not low <= number <= high:
        hint = f"; the default here is {default:g}" if default is not None else ""
        raise BadOption(f"{option} {value:g} is outside the scores this index gives: {scale}, "
                        f"from {low:g} to {high:g}{hint}")
    return number


def check_sizes(*, top_k: int | None = None, batch_size: int | None = None, workers: int | None = None) -> None:
    if top_k is not None:
        check_count(top_k, "--top-k", 1, MAX_TOP_K, "matches")
    if batch_size is not None:
        check_count(batch_size, "--batch-size", 1, MAX_BATCH_SIZE, "images")
    if workers is not None:
        check_count(workers, "--workers", 0, MAX_WORKERS, "processes")


__all__ = ["BadOption", "check_count", "check_number", "check_sizes", "check_threshold", "score_range"]
