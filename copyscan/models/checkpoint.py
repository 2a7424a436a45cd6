"""copyscan's own checkpoint format: one safetensors file whose header metadata holds the config.

One file is easy to move, and safetensors loads tensors without running any code. `copyscan
train` writes these; `--model PATH` reads them with no other change anywhere.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn as nn

from .base import DescriptorModel, DescriptorNet, ModelInfo, ModelUnavailable, TorchDescriptor, sha256_file

FORMAT = "copyscan-descriptor"
FORMAT_VERSION = 1
CONFIG_KEY = "copyscan_config"


def build_net(config: dict[str, Any], backbone_weights: nn.Module | None = None) -> DescriptorNet:
    """A DescriptorNet of the shape `config` describes (random weights unless a trunk is given)."""
    import timm

    trunk = backbone_weights or timm.create_model(config["backbone"], pretrained=False, num_classes=0, global_pool="")
    return DescriptorNet(trunk, int(config["feature_dim"]), config.get("embed_dim"), float(config.get("gem_p", 3.0)))


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


def save_checkpoint(net: DescriptorNet, config: dict[str, Any], path: str | os.PathLike, half: bool = False) -> None:
    """Write `net` and `config` to `path` atomically."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu() for k, v in net.state_dict().items()}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={CONFIG_KEY: json.dumps(config)})
    os.replace(tmp, path)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ModelUnavailable(f"{path} is not a readable safetensors file: {exc}") from None
    if CONFIG_KEY not in meta:
        raise ModelUnavailable(f"{path} has no copyscan config in its metadata; was it written by `copyscan train`?")
    config = json.loads(meta[CONFIG_KEY])
    if config.get("format") != FORMAT or int(config.get("version", 0)) > FORMAT_VERSION:
        raise ModelUnavailable(f"{path}: unsupported checkpoint format {config.get('format')} v{config.get('version')}")
    return config


def load_checkpoint(path: str | os.PathLike, device: str = "auto") -> DescriptorModel:
    from safetensors.torch import load_file

    path = os.fspath(path)
    config = read_config(path)
    net = build_net(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor whose shape differs from the config's: torch raises
        raise ModelUnavailable(f"{path}: weights do not fit the config ({str(exc).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise ModelUnavailable(f"{path}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    info = checkpoint_info(path, config)
    if info.dim != net.out_dim:
        raise ModelUnavailable(f"{path}: config says {info.dim}-d, the net gives {net.out_dim}-d")
    return TorchDescriptor(net, info, device)


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


def trunk_of(net: DescriptorNet) -> torch.nn.Module:
    return net.backbone
