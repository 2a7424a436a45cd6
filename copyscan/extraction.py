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


__all__ = ["Extraction"]
