"""Resumable training state, and the final descriptor checkpoint.

RUN_DIR/state.pt holds everything a resumed run needs to continue exactly as if it had never
stopped: student, momentum encoder, MoCo queue, relational banks, optimizer, schedule, AMP
scaler, RNG states, the step (which is also the data position, see data.py) and the settings.
It is loaded with `weights_only=True`: only tensors and plain containers, no code.

RUN_DIR/model.safetensors (+ model.json, the same config for people) is a copyscan checkpoint
that `copyscan index --model RUN_DIR/model.safetensors` uses as is.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
from typing import Any

import numpy as np
import torch

from ..errors import ModelUnavailable
from ..models.checkpoint import save_checkpoint

STATE_FILE = "state.pt"
MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model.json"


def rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    # random.setstate wants the nested tuples back that a save may have turned into lists.
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_state(run_dir: str, state: dict[str, Any]) -> str:
    path = os.path.join(run_dir, STATE_FILE)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(run_dir: str) -> dict[str, Any]:
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        raise ModelUnavailable(f"--resume: {path} not found; nothing to resume (run without --resume to start)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises several types
        raise ModelUnavailable(f"--resume: {path} is not a readable training state: {str(exc).splitlines()[0]}") from None


def export_model(net: torch.nn.Module, config: dict[str, Any], run_dir: str) -> str:
    path = os.path.join(run_dir, MODEL_FILE)
    save_checkpoint(net, config, path)
    with open(os.path.join(run_dir, MODEL_CONFIG_FILE), "w") as fh:
        json.dump(config, fh, indent=2)
    return path


@contextlib.contextmanager
def stop_signals_interrupt():
    """Within the block, SIGTERM (what `kill`, a scheduler or a container stop sends) raises
    KeyboardInterrupt as Ctrl-C does, so a training loop saves its state before it exits: a run
    started in the background (`nohup ... &`) ignores SIGINT, and SIGTERM's default would lose
    every step since the last checkpoint. Only the main thread can own a handler; elsewhere the
    block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
