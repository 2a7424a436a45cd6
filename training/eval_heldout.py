"""Score copyscan checkpoints on a hard run's held-out set (RUN/heldout.npz), as the run does.

    python training/eval_heldout.py RUN/heldout.npz copyscan/weights/copyscan_lite0_128.safetensors RUN/best.safetensors
    python training/eval_heldout.py RUN/heldout.npz imagenet-pca:../shared/data/imagenette-train

`imagenet-pca:DIR` is the other possible start: the ImageNet Lite0 trunk with a 128-d projector
set to the top principal axes of its features on 1,024 photos of DIR (`--projector-init pca`).
One JSON line per model: hard and plain micro AP, R@P90, rank-1 per hard kind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from copyscan.train import heldout  # noqa: E402


def load(spec: str, size: int):
    """(net, mean, std) for a checkpoint path or `imagenet-pca:DIR`."""
    if spec.startswith("imagenet-pca:"):
        from copyscan.train.data import list_images, plain_batches
        from copyscan.train.student import build_student, pca_init_projector

        folder = spec.split(":", 1)[1]
        net, config = build_student("efficientnet_lite0", 128, size)
        pca_init_projector(net, plain_batches(folder, list_images(folder), size, 1024), config["mean"], config["std"],
                           torch.device("cpu"))
        return net.eval(), config["mean"], config["std"]
    from copyscan.models.checkpoint import load_checkpoint, read_config

    config = read_config(spec)
    return load_checkpoint(spec, "cpu").net.float().eval(), config["mean"], config["std"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("heldout")
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    data = heldout.HeldOut.load(args.heldout)
    for spec in args.models:
        net, mean, std = load(spec, data.refs.shape[1])
        result = heldout.evaluate_net(net, data, mean, std)
        print(json.dumps({"model": spec, **result}), flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main()
