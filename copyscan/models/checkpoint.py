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

from ..errors import ModelUnavailable
from .base import DescriptorModel, DescriptorNet, TorchDescriptor
# The header side (config, identity) is torch-free; re-exported for code that imports it here.
from .checkpoint_config import CONFIG_KEY, FORMAT, FORMAT_VERSION, checkpoint_info, make_config, read_config

__all__ = ["CONFIG_KEY", "FORMAT", "FORMAT_VERSION", "build_net", "checkpoint_info", "load_checkpoint", "make_config",
           "read_config", "save_checkpoint", "trunk_of"]


def build_net(config: dict[str, Any], backbone_weights: nn.Module | None = None) -> DescriptorNet:
    """A DescriptorNet of the shape `config` describes (random weights unless a trunk is given)."""
    import timm

    trunk = backbone_weights or timm.create_model(config["backbone"], pretrained=False, num_classes=0, global_pool="")
    return DescriptorNet(trunk, int(config["feature_dim"]), config.get("embed_dim"), float(config.get("gem_p", 3.0)))


def save_checkpoint(net: DescriptorNet, config: dict[str, Any], path: str | os.PathLike, half: bool = False) -> None:
    """Write `net` and `config` to `path` atomically."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu() for k, v in net.state_dict().items()}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={CONFIG_KEY: json.dumps(config)})
    os.replace(tmp, path)


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


def trunk_of(net: DescriptorNet) -> torch.nn.Module:
    return net.backbone


# Settings a checkpoint's header records about its projector as shipped: a fold of the
# background's centring (training/ship_model.py) and the threshold calibrated for its scores.
PROJECTOR_RECORDS = ("folded_background", "threshold")


def for_new_projector(config: dict[str, Any]) -> dict[str, Any]:
    """`config` for a checkpoint whose projector was trained on or fitted anew: what the header
    said of the old projector (its fold, its threshold) no longer holds, and a copy of a shipped
    model would otherwise carry them on (ship_model.py adds its own when it ships one)."""
    return {k: v for k, v in config.items() if k not in PROJECTOR_RECORDS}
