"""Turn a `copyscan train` checkpoint into a model shipped inside the package.

    python training/ship_model.py RUN_DIR/model.safetensors copyscan_lite0_128 \\
        [--input-size 160] [--description "..."]

Writes copyscan/weights/NAME.safetensors: the same weights in fp16 (half the size; descriptors
change by ~1e-3 cosine, far below what separates copies from non-copies) with the config's name,
description and licence set, so that `create_model(NAME)` and `--model NAME` find it. The model
card for each shipped model is training/MODELS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from copyscan.models.checkpoint import build_net, read_config, save_checkpoint  # noqa: E402

LICENCE = "Apache-2.0 (Lite0 ImageNet start: Apache-2.0; distilled from SSCD, MIT)"


def ship(source: str, name: str, input_size: int | None = None, description: str | None = None,
         weights_dir: str | os.PathLike = ROOT / "copyscan" / "weights") -> Path:
    from safetensors.torch import load_file

    config = read_config(source)
    net = build_net(config)
    net.load_state_dict({k: v.float() for k, v in load_file(source).items()})
    config = dict(config, name=name, license=LICENCE)
    if input_size:
        config["input_size"] = int(input_size)
    dim = config["embed_dim"] or config["feature_dim"]
    config["description"] = description or (
        f"copyscan's copy detector: EfficientNet-Lite0 distilled from SSCD (RDCD), {dim}-d, {config['input_size']} px")
    os.makedirs(weights_dir, exist_ok=True)
    target = Path(weights_dir) / f"{name}.safetensors"
    save_checkpoint(net, config, target, half=True)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("name")
    ap.add_argument("--input-size", type=int)
    ap.add_argument("--description")
    args = ap.parse_args()
    target = ship(args.checkpoint, args.name, args.input_size, args.description)
    print(f"{target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    with torch.no_grad():
        main()
