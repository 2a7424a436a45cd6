"""Average the weights of several checkpoints of one run (stochastic weight averaging).

    python training/average_checkpoints.py OUT.safetensors RUN/snapshots/step_00600.safetensors ...

Why: the held-out checks of a long run at a constant learning rate swing by +-0.02 from one to
the next (250 copies a set), so "the best check" partly picks luck; the mean of the weights
along the run sits nearer the middle of the region the run wanders in. The checkpoints must come
from one run (one start, same architecture). BatchNorm statistics are averaged like any other
tensor: `train_hard.py` keeps them frozen, so they are the same in every checkpoint anyway.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan.models.checkpoint import load_checkpoint, read_config, save_checkpoint  # noqa: E402


def average(paths: list[str]) -> tuple[torch.nn.Module, dict]:
    """The first checkpoint's net holding the mean of every floating tensor of all of them."""
    first = load_checkpoint(paths[0], "cpu").net.float()
    total = {k: v.detach().clone().double() if v.is_floating_point() else v for k, v in first.state_dict().items()}
    for p in paths[1:]:
        state = load_checkpoint(p, "cpu").net.float().state_dict()
        if state.keys() != total.keys() or any(v.shape != total[k].shape for k, v in state.items()):
            raise SystemExit(f"{p}: not the same architecture as {paths[0]}")
        for k, v in state.items():
            if v.is_floating_point():
                total[k] += v.double()
            elif not torch.equal(v, total[k]):
                raise SystemExit(f"{p}: {k} differs (a counter or buffer that cannot be averaged)")
    first.load_state_dict({k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()})
    config = dict(read_config(paths[0]))
    training = dict(config.get("training") or {})
    training["averaged"] = [Path(p).name for p in paths]
    config["training"] = training
    return first, config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("checkpoints", nargs="+")
    args = ap.parse_args()
    net, config = average(args.checkpoints)
    with torch.no_grad():
        save_checkpoint(net, config, args.out)
    print(f"{args.out}: mean of {len(args.checkpoints)} checkpoints")


if __name__ == "__main__":
    main()
