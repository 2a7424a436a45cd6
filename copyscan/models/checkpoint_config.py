"""The header of a copyscan checkpoint: its config, and the identity it gives, read without torch.

A checkpoint is one safetensors file; its header metadata holds the config under
`copyscan_config`. The header is a little-endian u64 length and that many bytes of JSON, so the
registry (`copyscan models`) and an unchanged-folder `index` read a model's identity without
importing torch or the safetensors bindings. Loading the weights is checkpoint.py's business.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from ..errors import ModelUnavailable
from ..identity import ModelInfo, sha256_file

FORMAT = "copyscan-descriptor"
FORMAT_VERSION = 1
CONFIG_KEY = "copyscan_config"
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header


def make_config(name: str, backbone: str, feature_dim: int, embed_dim: int | None, input_size: int,
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), gem_p: float = 3.0, **extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": name,
        "backbone": backbone,
        "feature_dim": feature_dim,
        "embed_dim": embed_dim,
        "gem_p": gem_p,
        "input_size": input_size,
        "mean": list(mean),
        "std": list(std),
        **extra,
    }


def _metadata(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ValueError("file shorter than a safetensors header")
            (size,) = struct.unpack("<Q", head)
            if size > MAX_HEADER_BYTES:
                raise ValueError(f"header of {size} bytes")
            raw = fh.read(size)
            if len(raw) != size:
                raise ValueError("header cut short")
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{path} is not a readable safetensors file: {exc}") from None
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    path = os.fspath(path)
    meta = _metadata(path)
    if CONFIG_KEY not in meta:
        raise ModelUnavailable(f"{path} has no copyscan config in its metadata; was it written by `copyscan train`?")
    config = json.loads(meta[CONFIG_KEY])
    if config.get("format") != FORMAT or int(config.get("version", 0)) > FORMAT_VERSION:
        raise ModelUnavailable(f"{path}: unsupported checkpoint format {config.get('format')} v{config.get('version')}")
    return config


def checkpoint_info(path: str, config: dict[str, Any]) -> ModelInfo:
    """The identity of a checkpoint, read from its header and bytes without building the net."""
    return ModelInfo(
        name=config.get("name") or os.path.basename(path),
        dim=int(config.get("embed_dim") or config["feature_dim"]),
        input_size=int(config["input_size"]),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        weights_sha256=sha256_file(path),
        runtime="torch",
        source=path,
    )


__all__ = ["CONFIG_KEY", "FORMAT", "FORMAT_VERSION", "checkpoint_info", "make_config", "read_config"]
