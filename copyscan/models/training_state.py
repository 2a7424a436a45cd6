"""Telling a training state (`copyscan train`'s RUN/state.pt) from a model file.

Both are `.pt` zip archives written by torch, so TorchScript's loader would answer a training
state with "high likelihood that your checkpoint file is corrupted". A TorchScript archive has
code (`ARCHIVE/code/`); torch.save of a state has only `ARCHIVE/data.pkl` (whose strings name
the state's keys) and tensors: enough to tell them apart without unpickling anything.
"""

from __future__ import annotations

import os
import zipfile

from ..errors import ModelUnavailable

MODEL_FILE = "model.safetensors"  # what `copyscan train` writes beside its state (train/checkpointing.py)


# Top-level keys of the state `copyscan train` saves (train/loop.py, Trainer._state).
STATE_KEYS = {"student", "optimizer", "scheduler", "step"}


def is_training_state(path: str | os.PathLike) -> bool:
    """True for a torch.save archive (no TorchScript code) whose pickle names a training
    state's keys. The pickle is only scanned (pickletools), never loaded: nothing in it runs."""
    import pickletools

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any("/code/" in n or n.startswith("code/") for n in names):
                return False  # TorchScript
            pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
            if not pickles:
                return False
            data = archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile, KeyError):
        return False
    strings = set()
    try:
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.add(arg)
    except Exception:  # a damaged pickle is not ours to explain
        return False
    return STATE_KEYS <= strings


def refuse_training_state(path: str | os.PathLike) -> None:
    """Raise ModelUnavailable saying which file to use instead, if `path` is a training state."""
    if not is_training_state(path):
        return
    run = os.path.dirname(os.path.abspath(path))
    model = os.path.join(run, MODEL_FILE)
    where = model if os.path.isfile(model) else f"{os.path.join(run, MODEL_FILE)} (written when the run finishes)"
    raise ModelUnavailable(
        f"{os.fspath(path)} is a training state (what `copyscan train --resume` continues from), not a model; "
        f"use {where}"
    )
