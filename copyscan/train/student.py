"""The student: a timm trunk, GeM, a linear projector to `dim`, L2 norm (a DescriptorNet), and
its momentum twin for MoCo.

`efficientnet_lite0` is timm's `tf_efficientnet_lite0` holding our ImageNet Lite0 weights (the
trunk of the default `lite0_gem` model). Any other timm name starts from random weights, or from
`--student-weights FILE` (a timm state dict, .pth/.pt or .safetensors; its classifier is dropped).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import torch.nn as nn

from ..errors import ModelUnavailable
from ..models.base import DescriptorNet
from ..models.checkpoint import make_config

LITE0_ALIASES = ("efficientnet_lite0", "lite0", "tf_efficientnet_lite0")


def build_student(name: str, dim: int, image_size: int, gem_p: float = 3.0,
                  weights: str | None = None) -> tuple[DescriptorNet, dict[str, Any]]:
    """The student net and the copyscan checkpoint config that describes it."""
    import timm

    if name in LITE0_ALIASES and weights is None:
        from ..models import lite0

        trunk = lite0.trunk()
        arch, mean, std, origin = lite0.ARCH, lite0.MEAN, lite0.STD, "ImageNet EfficientNet-Lite0"
    else:
        arch = "tf_efficientnet_lite0" if name in LITE0_ALIASES else name
        try:
            trunk = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="")
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise ModelUnavailable(f"--student {name}: {exc}; see timm.list_models()") from None
        if weights:
            _load_trunk_weights(trunk, weights)
        cfg = trunk.pretrained_cfg or {}
        mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        origin = os.path.basename(weights) if weights else "random"
    feature_dim = int(trunk.num_features)
    net = DescriptorNet(trunk, feature_dim, dim, gem_p)
    config = make_config(f"{name}_{dim}", arch, feature_dim, dim, image_size, mean, std, gem_p, init=origin)
    return net, config


def _load_trunk_weights(trunk: nn.Module, path: str) -> None:
    if not os.path.isfile(path):
        raise ModelUnavailable(f"--student-weights {path}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        raise ModelUnavailable(f"--student-weights {path} is not a readable state dict: {str(exc).splitlines()[0]}") from None
    own = trunk.state_dict()
    kept = {k: v for k, v in state.items() if k in own}  # the classifier of a full model is not in the trunk
    missing = [k for k in own if k not in kept]
    bad = [k for k, v in kept.items() if tuple(v.shape) != tuple(own[k].shape)]
    if missing or bad:
        raise ModelUnavailable(
            f"--student-weights {path} does not fit this trunk ({len(missing)} tensors missing, {len(bad)} of another shape)"
        )
    trunk.load_state_dict(kept)


@torch.no_grad()
def _eval_over(net: nn.Module, batches, mean, std, device: torch.device, fn) -> torch.Tensor:
    """fn(normalised batch) over uint8 NHWC batches, `net` in eval mode; float64 rows on the CPU."""
    was_training = net.training
    net.eval()
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
    rows = [fn((x.to(device).permute(0, 3, 1, 2).float() - m) / s).double().cpu() for x in batches]
    net.train(was_training)
    return torch.cat(rows)


@torch.no_grad()
def pca_init_projector(net: DescriptorNet, batches, mean, std, device: torch.device) -> dict[str, float]:
    """Set the projector to the top `dim` principal axes of the trunk's GeM features.

    A random projector throws away most of what the ImageNet trunk already knows: the start of
    training is then far worse than the trunk itself. With the principal axes (centred, not
    whitened) the untrained student's cosine is close to that of the full feature, and a short
    run (a CPU budget) starts from there instead of from noise. `batches` yields uint8 NHWC
    tensors of plain (unaugmented) images.
    """
    f = _eval_over(net, batches, mean, std, device, net.features)  # the projector's input: raw GeM output
    dim = net.projector.out_features
    if f.shape[0] < 2 or f.shape[1] < dim:
        raise ModelUnavailable(f"PCA projector init needs at least 2 images and a feature of at least {dim} dims")
    centre = f.mean(0)
    # Fewer images than dims: the spare axes come out as zero rows; fill them with small noise
    # so every output dimension still gets a gradient.
    _, sv, vt = torch.linalg.svd(f - centre, full_matrices=False)
    axes = torch.zeros(dim, f.shape[1], dtype=torch.float64)
    k = min(dim, vt.shape[0])
    axes[:k] = vt[:k]
    if k < dim:
        axes[k:] = torch.randn(dim - k, f.shape[1], dtype=torch.float64) * 1e-3
    net.projector.weight.copy_(axes.float())
    net.projector.bias.copy_((-axes @ centre).float())
    variance = sv.pow(2)
    kept = float(variance[:k].sum() / variance.sum()) if variance.sum() > 0 else 1.0
    return {"images": int(f.shape[0]), "variance_kept": kept}


@torch.no_grad()
def fold_centring(net: DescriptorNet, batches, mean, std, device: torch.device, whiten: float = 0.0,
                  dims: int | None = None) -> dict[str, float]:
    """Fold a background's statistics into the projector: its outputs are centred on the
    background mean (and, with `whiten` > 0, each principal axis scaled by variance^-whiten/2;
    1 = full whitening) before the L2 norm.

    A student trained on a narrow set of photos puts every unfamiliar photo in a narrow cone:
    unrelated pictures then score 0.8 against each other and no fixed threshold works.
    Centring spreads the cone so that a cosine of 0.75 means a copy again, and being linear it
    costs nothing at inference (SSCD's whitening, but built in, with no `--background` needed).
    `dims` keeps only that many principal axes (the strongest): a shorter descriptor from the
    same trained net, the projector replaced by a narrower one.
    """
    y = _eval_over(net, batches, mean, std, device, lambda x: net.projector(net.features(x)))
    dim = y.shape[1]
    if y.shape[0] < 2 * dim and whiten > 0:
        raise ModelUnavailable(f"whitening {dim} dims needs at least {2 * dim} background images, got {y.shape[0]}")
    if dims is not None and not 1 <= dims <= dim:
        raise ModelUnavailable(f"cannot keep {dims} of {dim} dims")
    centre = y.mean(0)
    weight = torch.eye(dim, dtype=torch.float64)
    if whiten > 0 or dims is not None:
        values, vectors = torch.linalg.eigh(torch.cov((y - centre).T))
        values, vectors = values.flip(0), vectors.flip(1)  # strongest axis first
        values = values.clamp_min(values[0] * 1e-6)
        keep = dims or dim
        weight = torch.diag(values[:keep].pow(-whiten / 2)) @ vectors[:, :keep].T
        weight = weight / weight.norm(dim=1).mean()  # keep the scale near the original's
    old_w, old_b = net.projector.weight.double().cpu(), net.projector.bias.double().cpu()
    if weight.shape[0] != dim:
        net.projector = nn.Linear(old_w.shape[1], weight.shape[0]).to(device)
        net.out_dim = weight.shape[0]
    net.projector.weight.copy_((weight @ old_w).float())
    net.projector.bias.copy_((weight @ (old_b - centre)).float())
    unit = torch.nn.functional.normalize(y, dim=1)
    return {"images": int(y.shape[0]), "whiten": float(whiten),
            "mean_cosine_before": float((unit.mean(0).norm() ** 2 * y.shape[0] - 1) / (y.shape[0] - 1))}


def momentum_twin(net: nn.Module) -> nn.Module:
    """A copy with no gradients, moved only by `momentum_update`.

    It runs in train mode, as in MoCo: batch-norm normalises each key batch with its own
    statistics. (In eval mode a from-scratch student's running statistics lag so far behind that
    every key came out the same and training collapsed.) Other keys of the same batch are
    negatives too (see losses.py), so batch statistics shared by a query's positive and its
    negatives give the query nothing to exploit.
    """
    twin = copy.deepcopy(net).train()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def momentum_update(twin: nn.Module, net: nn.Module, m: float) -> None:
    for pt, p in zip(twin.parameters(), net.parameters()):
        pt.mul_(m).add_(p.detach(), alpha=1.0 - m)
    # Batch-norm running statistics are copied, not averaged: they already are running means,
    # and a lagging copy would feed the eval-mode twin statistics of a network long gone.
    for bt, b in zip(twin.buffers(), net.buffers()):
        bt.copy_(b)
