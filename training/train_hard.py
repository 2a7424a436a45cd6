"""Fine-tune a copyscan student on hard copies (copyscan.train.hardrun), resumably.

    python training/train_hard.py ../shared/data/imagenette-train --output /work/runs/hard160 \\
        --start copyscan/weights/copyscan_lite0_128.safetensors
    # interrupted, or to train longer: the same command plus --resume (and a larger --steps)
    # on a GPU: --device cuda --workers 15 (each loader worker runs its own teacher of the views;
    # training/gpu_train.sh is the script run on the lent H200), --minutes to end inside a lease

Run it in the background at low priority on a shared machine:
    nohup nice -n 19 python training/train_hard.py ... > RUN/stdout.log 2>&1 &
RUN/eval.jsonl has the held-out scores, RUN/best.safetensors the best checkpoint so far.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from copyscan.train.hardrun import HardConfig, HardRun  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("--output", required=True)
    ap.add_argument("--start", required=True, help="copyscan checkpoint to fine-tune")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stop-after", type=int, help="stop (state saved) once this step is reached")
    ap.add_argument("--minutes", type=float, help="stop (state saved, last step scored) after this much training")
    defaults = HardConfig("", "", "")
    for f in fields(HardConfig):
        if f.name in ("data_dir", "output", "start"):
            continue
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"), default=value)
        elif isinstance(value, dict):
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=json.loads, default=value, help="JSON")
        else:
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value)
    args = vars(ap.parse_args(argv))
    resume, stop_after, minutes = args.pop("resume"), args.pop("stop_after"), args.pop("minutes")
    config = HardConfig(**args)
    run = HardRun(config, resume=resume)
    print(f"step {run.step}; training on {len(run.paths)} photos, {len(run.held)} held out", flush=True)
    last = run.run(stop_after, seconds=minutes * 60 if minutes is not None else None)
    print(json.dumps(last), flush=True)


if __name__ == "__main__":
    main()
