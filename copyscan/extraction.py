"""How images become descriptors on one run: one options object instead of the same five
arguments in every signature. Torch-free; embed.py and the engines read it."""

from __future__ import annotations

from dataclasses import dataclass

from .decode import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Extraction:
    """Settings of decoding and embedding (`copyscan.index_folder(..., extraction=Extraction(...))`)."""

    batch_size: int = 32  # images per model call
    workers: int | None = None  # decode processes (None: embed.default_workers for the device)
    device: str = "auto"  # where the model runs: auto, cpu, cuda
    progress: bool = False  # draw a progress bar on the terminal
    max_pixels: int = DEFAULT_MAX_PIXELS  # images above this are skipped before decoding (bombs)
    # Region crops embedded with every image (x0, y0, x1, y1 fractions; copyscan.regions): set by
    # `index --regions`, stored as region rows beside the image's row.
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    # Each image's ORB features computed in the decode workers and stored for geometric
    # verification (copyscan.local_store): set by `index --regions`.
    local_features: bool = False


__all__ = ["Extraction"]
