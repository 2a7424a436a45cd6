"""The training loop: RDCD distillation of a compact student (or SSCD-style training alone).

One step, per process:
  1. the batch: query and key views of `batch_size` images, rebuilt from fixed seeds (data.py);
  2. the teacher's embeddings of the query views, from the cache or computed now (teacher.py);
  3. the student's pre-projector feature f and compact embedding z of the query views; the
     momentum encoder's key embedding of the key views;
  4. queues and banks take the keys / embeddings / features of every process, then the losses
     read them (losses.py), each sample's own slots left out;
  5. one optimizer step (AMP on CUDA), the schedule, and every `log_every` steps a metrics line.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import Interrupted as RunInterrupted
from ..errors import ModelUnavailable
from ..models.base import resolve_device
from . import distributed
from .checkpointing import export_model, load_state, rng_states, save_state, set_rng_states, stop_signals_interrupt
from .config import TrainConfig, check_resumable, save_config
from .data import SampleOrder, StepBatches, ViewPairs, collate, list_images, mix_keys, plain_batches
from .losses import EmbeddingQueue, hard_negative, info_nce, koleo, moco_contrast, relational_kl
from .monitor import MetricsLog, ProgressDisplay
from .student import build_student, momentum_twin, momentum_update, pca_init_projector
from .teacher import TeacherCache, embed_views, load_teacher, teacher_label


class Interrupted(RunInterrupted):
    """Training stopped by Ctrl-C after saving its state; the message says how to resume."""


@dataclass
class TrainSummary:
    run_dir: str
    model_path: str
    start_step: int
    steps: int  # the step reached (== total when finished)
    total_steps: int
    seconds: float
    images: int  # images trained on in this invocation, all processes
    last: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class StudentForward(nn.Module):
    """(pre-projector feature, L2-normalised embedding) in one call, so DDP sees one forward."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.net.features(x)
        return f, F.normalize(self.net.projector(f), dim=1)


def step_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.blake2b(f"step:{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up from ~0, then cosine decay to 0 at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Normalise:
    """uint8 NHWC -> normalised float NCHW on the device (as the descriptor does at inference)."""

    def __init__(self, mean, std, device: torch.device):
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x


def train(config: TrainConfig, stop_after: int | None = None,
          on_step: Callable[[int, dict[str, Any]], None] | None = None) -> TrainSummary:
    """Run (or resume) training as `config` says; returns where the model went.

    `stop_after`: stop once this step is reached, saving the state as an interruption would
    (tests use it to check that a resumed run continues exactly).
    """
    config.validate()
    device = resolve_device(config.device)
    d = distributed.setup(device)
    try:
        return _Run(config, device, d).run(stop_after, on_step)
    finally:
        distributed.teardown(d)


class _Run:
    def __init__(self, config: TrainConfig, device: torch.device, d: distributed.Dist):
        self.c = config
        self.d = d
        self.device = distributed.local_device(device, d)
        self.losses = config.losses()
        self.run_dir = config.output
        os.makedirs(self.run_dir, exist_ok=True)

        self.paths = list_images(config.data_dir)
        self.cache = TeacherCache(config.teacher_cache, self.paths, config.image_size, config.seed) if config.teacher_cache else None
        self.teacher = None
        self.teacher_dim = 0
        if "rel" in self.losses:
            if self.cache:
                _check_cache_teacher(self.cache, config.teacher)
                self.teacher_dim = self.cache.meta.dim
            else:
                self.teacher = load_teacher(config.teacher, "cuda" if self.device.type == "cuda" else "cpu")
                self.teacher_dim = self.teacher.dim

        self.order = SampleOrder(len(self.paths), config.batch_size * d.world, config.seed,
                                 self.cache.meta.views if self.cache else None)
        self.total = config.steps or config.epochs * self.order.steps_per_epoch
        self.warmup = config.warmup_steps if config.warmup_steps is not None else max(1, round(0.05 * self.total))

        torch.manual_seed(config.seed)  # the projector's initial weights
        self.net, self.model_config = build_student(config.student, config.dim, config.image_size, config.gem_p,
                                                    config.student_weights)
        self.model_config["training"] = {"teacher": config.teacher, "losses": self.losses, "data": os.path.basename(
            os.path.abspath(config.data_dir))}
        self.net.to(self.device)
        if config.projector_init == "pca" and not config.resume:
            self.model_config["training"]["projector_init"] = self._pca_init()
        self.net.train()  # the ImageNet trunk comes in eval mode
        if self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.normalise = Normalise(self.model_config["mean"], self.model_config["std"], self.device)
        uses_keys = bool({"con", "hn"} & set(self.losses))
        self.twin = momentum_twin(self.net) if uses_keys else None
        self.queue = EmbeddingQueue(self.queue_size(), config.dim, self.device) if uses_keys else None
        self.t_bank = self.s_bank = None
        if "rel" in self.losses:
            self.t_bank = EmbeddingQueue(config.bank_size, self.teacher_dim, self.device)
            self.s_bank = EmbeddingQueue(config.bank_size, self.net.feature_dim, self.device)
        global_batch = config.batch_size * d.world
        for q in (self.queue, self.t_bank):
            if q is not None and q.size < global_batch:
                raise ModelUnavailable(f"queue/bank size {q.size} is smaller than the global batch {global_batch}")

        params = [p for p in self.net.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, self.warmup, self.total))
        self.amp_dtype = None
        if config.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.step = 0
        if config.resume:
            self._restore()
        self.forward = StudentForward(self.net)
        if d.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # With the relational loss alone the projector gets no gradient; DDP must know.
            unused = not ({"con", "hn", "infonce", "koleo"} & set(self.losses))
            self.forward = nn.parallel.DistributedDataParallel(self.forward, device_ids=ids, find_unused_parameters=unused)

    def _pca_init(self) -> dict[str, Any]:
        """Projector = principal axes of the trunk's features of up to `pca_images` plain photos
        spread over DATA_DIR (every process computes the same; DDP also broadcasts rank 0's)."""
        batches = plain_batches(self.c.data_dir, self.paths, self.c.image_size, self.c.pca_images)
        info = pca_init_projector(self.net, batches, self.model_config["mean"], self.model_config["std"], self.device)
        return {"method": "pca", **info}

    def queue_size(self) -> int:
        """The MoCo queue, capped so that it never holds an earlier key of a query's own image
        within an epoch: on a small folder a 65536-key queue would be all copies of the batch."""
        global_batch = self.c.batch_size * self.d.world
        return max(global_batch, min(self.c.queue_size, len(self.paths) - global_batch))

    # ---------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {
            "config": self.c.to_json(),
            "step": self.step,
            "world": self.d.world,
            "student": self.net.state_dict(),
            "momentum": self.twin.state_dict() if self.twin is not None else None,
            "queue": self.queue.state_dict() if self.queue is not None else None,
            "teacher_bank": self.t_bank.state_dict() if self.t_bank is not None else None,
            "student_bank": self.s_bank.state_dict() if self.s_bank is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(),
        }

    def _restore(self) -> None:
        state = load_state(self.run_dir)
        check_resumable(state["config"], self.c)
        if state["world"] != self.d.world:
            raise ModelUnavailable(
                f"cannot resume: the run used {state['world']} processes, this one has {self.d.world} (the data order depends on it)"
            )
        self.net.load_state_dict(state["student"])
        for part, key in ((self.twin, "momentum"), (self.queue, "queue"), (self.t_bank, "teacher_bank"),
                          (self.s_bank, "student_bank")):
            if (part is None) != (state[key] is None):
                raise ModelUnavailable(f"cannot resume: the losses switched on differ from the saved run's ({key})")
            if part is not None:
                part.load_state_dict(state[key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_states(state["rng"])
        self.step = int(state["step"])

    def _checkpoint(self) -> None:
        if self.d.main:
            save_state(self.run_dir, self._state())
            export_model(self.net, self.model_config, self.run_dir)
        distributed.barrier(self.d)

    # ---------------------------------------------------------------- loop
    def run(self, stop_after: int | None, on_step) -> TrainSummary:
        # SIGTERM saves the state as Ctrl-C does (a background run ignores SIGINT).
        with stop_signals_interrupt():
            return self._run(stop_after, on_step)

    def _run(self, stop_after: int | None, on_step) -> TrainSummary:
        c = self.c
        if self.d.main:
            save_config(c, os.path.join(self.run_dir, "train_config.json"))
        start = self.step
        stop = min(self.total, stop_after) if stop_after is not None else self.total
        log = MetricsLog(self.run_dir, append=c.resume) if self.d.main else None
        show = ProgressDisplay(c.progress and self.d.main, self.total, start)
        dataset = ViewPairs(c.data_dir, self.paths, self.order, c.image_size, c.seed, self.d.rank, c.batch_size)
        workers = _workers(c.workers)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=StepBatches(start, stop, c.batch_size), num_workers=workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if workers else None,
        )
        began = time.perf_counter()
        last: dict[str, float] = {}
        try:
            waited = time.perf_counter()
            for query, key, images, views in loader:
                data_s = time.perf_counter() - waited
                values, teacher_source = self._train_step(query, key, images, views)
                self.step += 1
                if self.step % c.log_every == 0 or self.step == stop:
                    values = distributed.mean_across(values, self.d, self.device)
                    elapsed = time.perf_counter() - began
                    record = {
                        "step": self.step, "epoch": (self.step - 1) // self.order.steps_per_epoch,
                        "lr": self.optimizer.param_groups[0]["lr"], **values,
                        "images_per_s": (self.step - start) * c.batch_size * self.d.world / elapsed,
                        "data_wait_s": data_s, "teacher": teacher_source, "elapsed_s": elapsed,
                    }
                    last = record
                    if log:
                        log.write(record)
                    show.update(self.step, record, list(self.losses))
                    if on_step:
                        on_step(self.step, record)
                if self.step % c.checkpoint_every == 0 and self.step < stop:
                    self._checkpoint()
                waited = time.perf_counter()
        except KeyboardInterrupt:
            show.close()
            self._checkpoint()
            raise Interrupted(f"interrupted at step {self.step}/{self.total}; state saved: add --resume to continue") from None
        show.close()
        self._checkpoint()
        seconds = time.perf_counter() - began
        return TrainSummary(self.run_dir, os.path.join(self.run_dir, "model.safetensors"), start, self.step, self.total,
                            seconds, (self.step - start) * c.batch_size * self.d.world, last)

    def _train_step(self, query, key, images, views) -> tuple[dict[str, float], str]:
        c = self.c
        # Dropout, drop-path and mixup draw from generators seeded by the step: a resumed run
        # draws exactly what the uninterrupted one would have.
        torch.manual_seed(step_seed(c.seed, self.step, self.d.rank))
        mix_rng = np.random.default_rng(step_seed(c.seed, self.step, self.d.rank))
        teacher_source = "none"
        t = None
        if "rel" in self.losses:
            if self.cache is not None:
                t, teacher_source = self.cache.lookup(images, views), "cache"
            else:
                t, teacher_source = embed_views(self.teacher, query), "live"
            t = F.normalize(t.to(self.device).float(), dim=1)
        key = mix_keys(key, c.mixup, c.mixup_alpha, mix_rng)
        xq = self.normalise(query)
        xk = self.normalise(key)
        b = xq.shape[0]
        lo, hi = self.d.rank * b, (self.d.rank + 1) * b  # this process's rows in gathered batches

        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            if "infonce" in self.losses or "koleo" in self.losses:
                f_all, z_all = self.forward(torch.cat([xq, xk]))
                f, z, z_key_view = f_all[:b], z_all[:b], z_all[b:]
            else:
                f, z = self.forward(xq)
                z_key_view = None
        z = z.float()
        raw: dict[str, torch.Tensor] = {}
        if self.queue is not None:
            with torch.no_grad():
                momentum_update(self.twin, self.net, c.momentum_encoder)
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
                    k = self.twin(xk).float()
            own = self.queue.push(distributed.gather(k, self.d))[lo:hi]
            negatives = self.queue.scores(z, own)
            if "con" in self.losses:
                raw["con"] = moco_contrast(z, k, negatives, c.t_con)
            if "hn" in self.losses:
                raw["hn"] = hard_negative(negatives)
        if "rel" in self.losses:
            fn = F.normalize(f.float(), dim=1)
            own = self.t_bank.push(distributed.gather(t, self.d))[lo:hi]
            self.s_bank.push(distributed.gather(fn, self.d))
            raw["rel"] = relational_kl(self.t_bank.scores(t, own), self.s_bank.scores(fn, own), c.t_rel)
        if z_key_view is not None:
            if "infonce" in self.losses:
                raw["infonce"] = info_nce(z, z_key_view.float(), c.t_infonce)
            if "koleo" in self.losses:
                raw["koleo"] = koleo(z, z_key_view.float())
        total = sum(self.losses[name] * value for name, value in raw.items())

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        values = {name: float(v.detach()) for name, v in raw.items()}
        values["loss"] = float(total.detach())
        return values, teacher_source


def _workers(workers: int | None) -> int:
    if workers is not None:
        return workers
    from ..embed import default_workers

    return default_workers()


def _check_cache_teacher(cache: TeacherCache, teacher: str) -> None:
    """The cache must come from the teacher named on the command line (by name or file name)."""
    if cache.meta.teacher != teacher_label(teacher):
        raise ModelUnavailable(
            f"teacher cache {cache.folder} holds embeddings of {cache.meta.teacher}, not of --teacher {teacher}"
        )
