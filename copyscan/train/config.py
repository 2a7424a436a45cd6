"""Every setting of a training run, in one dataclass, readable from a TOML recipe.

Precedence: built-in defaults < the recipe file (`--recipe`) < options given on the command
line. The resolved settings are written to RUN_DIR/train_config.json, and `--resume` checks
that the settings which shape the run's state (model, dimensions, queue sizes) still match.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

# Which losses each teacher mode turns on when the user says nothing: with a teacher, RDCD's
# three; without one, SSCD's InfoNCE and KoLeo entropy term.
DISTILL_LOSSES = ("rel", "con", "hn")
SSCD_LOSSES = ("infonce", "koleo")
ALL_LOSSES = DISTILL_LOSSES + SSCD_LOSSES


@dataclass
class TrainConfig:
    data_dir: str = ""
    output: str = "copyscan-train"
    teacher: str = "sscd_r50"  # registered name, model file, or "none"
    teacher_cache: str | None = None  # folder written by `copyscan cache-teacher`
    student: str = "efficientnet_lite0"  # timm name; efficientnet_lite0 = our ImageNet Lite0
    student_weights: str | None = None  # a local timm state dict for other students
    dim: int = 128
    gem_p: float = 3.0
    projector_init: str = "random"  # random | pca (principal axes of the trunk's features)
    pca_images: int = 1024  # images the PCA init looks at (spread over DATA_DIR)
    image_size: int = 224
    steps: int | None = None  # total optimizer steps; default: epochs x steps per epoch
    epochs: int = 1
    batch_size: int = 64  # per process
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 1e-6
    warmup_steps: int | None = None  # default: 5% of the steps
    device: str = "auto"
    workers: int | None = None
    seed: int = 0
    amp: bool = True  # only ever used on CUDA
    # Losses: weight, and an on/off switch (None = the mode's default, see DISTILL_LOSSES).
    use_rel: bool | None = None
    use_con: bool | None = None
    use_hn: bool | None = None
    use_infonce: bool | None = None
    use_koleo: bool | None = None
    w_rel: float = 1.0
    w_con: float = 1.0
    w_hn: float = 5.0  # RDCD's hard-negative weight
    w_infonce: float = 1.0
    w_koleo: float = 30.0  # SSCD's entropy weight
    t_rel: float = 0.04  # RDCD's relational temperature
    t_con: float = 0.07  # MoCo-v2
    t_infonce: float = 0.05  # SSCD
    momentum_encoder: float = 0.99  # RDCD's m
    queue_size: int = 65536  # MoCo queue of key embeddings
    bank_size: int = 65536  # relational bank (teacher embeddings and matching student features)
    mixup: float = 0.0  # probability per key view of mixup (half of them) or cutmix
    mixup_alpha: float = 2.0
    log_every: int = 1
    checkpoint_every: int = 200  # steps between resumable checkpoints
    resume: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def losses(self) -> dict[str, float]:
        """The active losses and their weights."""
        defaults = SSCD_LOSSES if self.teacher == "none" else DISTILL_LOSSES
        active = {}
        for name in ALL_LOSSES:
            switch = getattr(self, f"use_{name}")
            on = (name in defaults) if switch is None else switch
            if on:
                active[name] = float(getattr(self, f"w_{name}"))
        return active

    def validate(self) -> None:
        if not self.data_dir:
            raise ConfigError("no DATA_DIR given: the folder of training photos")
        positive = {"dim": self.dim, "image_size": self.image_size, "batch_size": self.batch_size, "epochs": self.epochs,
                    "queue_size": self.queue_size, "bank_size": self.bank_size, "checkpoint_every": self.checkpoint_every}
        for name, value in positive.items():
            if int(value) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.projector_init not in ("random", "pca"):
            raise ConfigError(f"--projector-init must be random or pca, got {self.projector_init!r}")
        if self.pca_images < 2:
            raise ConfigError(f"--pca-images must be at least 2, got {self.pca_images}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"--optimizer must be sgd or adamw, got {self.optimizer!r}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ConfigError(f"--mixup is a probability in [0, 1], got {self.mixup}")
        if not 0.0 <= self.momentum_encoder < 1.0:
            raise ConfigError(f"the momentum encoder's m must be in [0, 1), got {self.momentum_encoder}")
        losses = self.losses()
        if not losses:
            raise ConfigError("every loss is switched off: nothing to train")
        if self.teacher == "none" and "rel" in losses:
            raise ConfigError("the relational loss needs a teacher: use --teacher NAME or --no-rel")
        if self.teacher == "none" and self.teacher_cache:
            raise ConfigError("--teacher-cache needs a teacher; --teacher none has none")
        if self.batch_size < 2 and ({"infonce", "koleo", "rel"} & set(losses)):
            raise ConfigError("--batch-size must be at least 2: the losses compare samples of a batch")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
# Settings that fix the shape of the saved state: a resumed run must keep them.
STATE_SHAPING = ("teacher", "student", "dim", "gem_p", "image_size", "queue_size", "bank_size", "batch_size", "seed",
                 "optimizer", "teacher_cache")


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a TOML recipe: keys are TrainConfig fields (dashes allowed)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser, as a package
        import tomli as tomllib

    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"recipe {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        # Sections ([losses], [model] ...) only group keys for people; their keys are fields.
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            name = k.replace("-", "_")
            if name not in FIELDS:
                raise ConfigError(f"recipe {path}: unknown setting {k!r}")
            flat[name] = v
    return flat


def build_config(recipe: str | os.PathLike | None = None, validate: bool = True, **given: Any) -> TrainConfig:
    """Defaults, then the recipe, then every keyword that is not None; checked unless
    `validate` is False (`train` checks again before it starts)."""
    values: dict[str, Any] = {}
    if recipe:
        values.update(read_recipe(recipe))
    values.update({k: v for k, v in given.items() if v is not None})
    unknown = set(values) - FIELDS
    if unknown:
        raise ConfigError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    config = TrainConfig(**values)
    if validate:
        config.validate()
    return config


def check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    for key in STATE_SHAPING:
        if saved.get(key) != getattr(config, key):
            raise ConfigError(
                f"cannot resume: {key} was {saved.get(key)!r} in the saved run and is {getattr(config, key)!r} now"
            )


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(config.to_json(), fh, indent=2)
    os.replace(tmp, path)
