"""Fine-tuning a student on hard copies, with a teacher's view of the originals and of each hard view.

Why this recipe (see training/runs/hard_lite0_128/README.md for the measurements):
the default missed photos shown small inside something else (screenshots, pastes), which
`copyscan train`'s SSCD-style views never make, and a teacher pass per view is what limited the
CPU run to one cached view per photo. Here the teacher (SSCD int8) embeds each plain ORIGINAL
once (`teacher_orig.npy`), and with L_match or `rel_anchor="view"` each hard view as it is made
(at 160 px about 0.16 s a step of 32, a seventh of the step); every step the student sees a fresh hard view of it
(`copyscan.edits.hard.HardAugment`) and

* L_rel (RDCD's relational distillation, T 0.04): softmax over the similarities of the
  teacher's ORIGINAL to a bank of other originals (teacher side) must match the softmax over
  the similarities of the student's HARD VIEW to the momentum encoder's embeddings of those
  originals' key views (student side): the hard copy must sit among the references where the
  teacher puts the original. It keeps the teacher's relational structure, which the failed
  instance-classification attempt destroyed.
* L_align (weight 1): 1 - cos(hard view, the momentum encoder's key of the same photo, mostly
  the plain photo as `index` sees it): invariance to the framing, with no negatives;
* L_match (function matching, off by default): the teacher also embeds each hard VIEW as the
  student sees it (the same pixels, `teacher_size`), and a linear head on the student's GeM
  feature must point where the teacher's embedding does: 1 - cos(head(f_view), teacher(view)).
  The teacher's knowledge of screenshots and pastes then reaches the trunk view by view, not only
  as "be like the original". The head is started by a ridge fit of the start's features of
  training originals to the teacher's embeddings, so its first gradients are not noise, and
  learns at `match_head_lr` times the trunk's rate. The head is not part of the exported model.
* L_con (MoCo v2, T 0.07, weight 0.3) and L_hn (RDCD's -log(1 - nearest negative), off by
  default): measured here, RDCD's weights (con 1, hn 5) at lr 0.01 made the held-out scores
  FALL within 50 steps (hard micro AP 0.404 -> 0.296, plain 0.677 -> 0.639): with 4,500 photos of
  10 classes, MoCo's negatives are an instance classification of near neighbours, the failure
  the issue had seen with a teacher-space classifier. A trained start needs no anti-collapse
  push, so the negatives are kept light. Later, on a trunk already trained for hard views
  (session 7, run v14: hn 1 at lr 0.001 with the view-anchored L_rel), L_hn paid: it is KoLeo's
  entropy term measured against the queue (-log(1 - s) = -log(distance^2 / 2) for unit
  vectors), it pushes each view away from its nearest OTHER photo, and so lowers the best score
  a non-copy gets. Micro AP pools all queries' matches into one ranking, so that score counts:
  held-out 0.775 -> 0.789 in 600 steps, dev benchmark 0.748 -> 0.760 under the KoLeo heads that
  ship on it (the shipped trunk).
* Which of session 6's per-view levers carried its gain (runs v10, v12, v13): the view-anchored
  L_rel. L_match adds nothing measurable on top of it (v13, the view anchor alone, tracked v10
  within the checks' noise), so it stays for ablations and is off in the recipe since.

Everything needed to continue is in RUN/state.pt (student, momentum encoder, queue, banks,
optimizer, step, best score); the data of step s is a function of (seed, s) alone. Every
`eval_every` steps the held-out set (heldout.py) is scored; RUN/best.safetensors is the best
checkpoint by the mean of hard and plain micro AP, RUN/model.safetensors the latest.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decode import decode_file
from ..edits import TrainAugment
from ..edits.hard import HardAugment
from ..models.base import ModelUnavailable, resolve_device
from ..models.checkpoint import for_new_projector, load_checkpoint, read_config, save_checkpoint
from . import heldout as heldout_mod
from .data import SampleOrder, list_images, open_substituted, view_seed
from .losses import EmbeddingQueue, hard_negative, moco_contrast, relational_kl
from .loop import step_seed
from .checkpointing import stop_signals_interrupt
from .student import momentum_twin, momentum_update
from .teacher import load_teacher, to_size

QUERY, KEY, OTHER = 0, 1, 2


@dataclass
class HardConfig:
    data_dir: str
    output: str
    start: str  # a copyscan checkpoint (.safetensors) to fine-tune
    teacher: str = "sscd_r50_int8"
    teacher_size: int = 160  # the teacher embeds the plain originals at this size
    image_size: int = 160
    batch_size: int = 32
    lr: float = 0.003
    warmup_steps: int = 20
    decay_steps: int = 0  # 0: constant lr after warm-up; else cosine to 0 at this step
    steps: int = 1_000_000
    momentum: float = 0.9
    weight_decay: float = 1e-6
    momentum_encoder: float = 0.99
    queue_size: int = 4096
    bank_size: int = 4096
    t_rel: float = 0.04
    t_con: float = 0.07
    w_rel: float = 1.0
    w_con: float = 0.3
    w_hn: float = 0.0
    w_align: float = 1.0  # 1 - cos(hard view, its key): invariance without negatives
    rel_space: str = "embedding"  # "embedding" (the shipped descriptor) or "feature" (GeM output)
    rel_anchor: str = "original"  # the teacher's side of L_rel: "original" (cached) or "view" (per step)
    w_match: float = 0.0  # 1 - cos(head(student feature of the view), teacher(view))
    match_head_lr: float = 10.0  # the match head's lr as a multiple of the trunk's
    p_plain_key: float = 0.5  # the key view is the plain photo this often, else a mild SSCD view
    framings: dict = field(default_factory=lambda: {"plain": 0.4, "paste_into": 0.2, "paste_over": 0.1,
                                                     "screenshot": 0.2, "chat": 0.1})
    freeze_bn: bool = True  # batch-norm statistics stay the start's (index runs in eval mode)
    frozen_blocks: int = 2  # stem + this many first stages get no gradient (faster backward)
    holdout_every: int = 10
    eval_every: int = 200
    checkpoint_every: int = 50
    log_every: int = 10
    workers: int = 1
    threads: int = 0  # torch threads; 0: torch's default
    teacher_threads: int = 1  # ONNX Runtime threads of each loader worker's view teacher (rel_anchor "view", L_match)
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto"; a run may move between them on resume
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    # Settings that may change when a run is resumed (how long, how often, how fast).
    RESUMABLE_CHANGES = ("steps", "eval_every", "checkpoint_every", "log_every", "workers", "threads", "output",
                         "decay_steps", "lr", "device", "teacher_threads")


def lr_at(c: HardConfig, step: int) -> float:
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    if c.decay_steps and c.decay_steps > c.warmup_steps:
        progress = min(1.0, (step - c.warmup_steps) / (c.decay_steps - c.warmup_steps))
        return c.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return c.lr


class HardViews(torch.utils.data.Dataset):
    """Position -> (hard query view, key view, training-image index), uint8 HWC."""

    def __init__(self, root: str, paths: list[str], order: SampleOrder, c: HardConfig):
        self.root, self.paths, self.order, self.c = root, paths, order, c
        self.hard = HardAugment(c.image_size, framing_weights=c.framings)
        self.mild = TrainAugment(c.image_size, scale=(0.4, 1.0), p_text=0.0, p_emoji=0.0, p_jpeg=0.1, p_rotate90=0.0,
                                 p_vflip=0.0)

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, position: int):
        step, j = divmod(position, self.c.batch_size)
        s = self.order.sample(step, j)
        image, img = open_substituted(self.root, self.paths, s.image, self.c.image_size)
        qseed = view_seed(self.c.seed, image, s.epoch, QUERY)
        other = None
        if self.hard.framing(qseed).startswith("paste"):
            pick = view_seed(self.c.seed, image, s.epoch, OTHER) % (len(self.paths) - 1)
            other = open_substituted(self.root, self.paths, pick + (pick >= image), self.c.image_size)[1]
        query = self.hard.view(img, qseed, other)
        kseed = view_seed(self.c.seed, image, s.epoch, KEY)
        if (kseed % 1000) / 1000 < self.c.p_plain_key:
            key = img.resize((self.c.image_size,) * 2, resample=2, reducing_gap=3.0)  # as `index` squashes
        else:
            key = self.mild.view(img, kseed)
        return np.asarray(query, np.uint8), np.asarray(key.convert("RGB"), np.uint8), image


class _Collate:
    """Stacks a batch and, when the recipe needs it, has the teacher embed its hard views there.

    It runs in the loader's worker processes, each with its own teacher (loaded on its first
    batch, ONNX Runtime on `teacher_threads` threads): the teacher pass per view was a seventh of
    a CPU step when the training process ran it, and it left a GPU waiting for the whole of it.
    Spread over the workers it overlaps the student's step instead.
    """

    def __init__(self, c: HardConfig):
        self.c = c
        self.teacher = None

    def __call__(self, items):
        query = torch.from_numpy(np.stack([q for q, _, _ in items]))
        key = torch.from_numpy(np.stack([k for _, k, _ in items]))
        images = torch.tensor([i for _, _, i in items], dtype=torch.long)
        if not (self.c.w_match or self.c.rel_anchor == "view"):
            return query, key, images, None
        if self.teacher is None:
            if torch.utils.data.get_worker_info() is not None:  # a worker shares the cores; the main process keeps them all
                os.environ["COPYSCAN_ORT_THREADS"] = str(self.c.teacher_threads)
            self.teacher = load_teacher(self.c.teacher, "cpu")
        # The same pixels the student sees, squashed to the teacher's size (160: as the originals).
        t_view = F.normalize(torch.from_numpy(np.asarray(self.teacher.embed(to_size(query, self.c.teacher_size)),
                                                         np.float32)), dim=1)
        return query, key, images, t_view


class _Batches(torch.utils.data.Sampler):
    def __init__(self, start: int, stop: int, batch: int):
        self.start, self.stop, self.batch = start, stop, batch

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield list(range(step * self.batch, (step + 1) * self.batch))


def teacher_originals(root: str, paths: list[str], teacher: str, size: int, out: str, batch: int = 32) -> np.ndarray:
    """The teacher's L2-normalised embeddings of the plain photos, squashed to `size` (cached in `out`)."""
    if os.path.exists(out):
        table = np.load(out)
        if table.shape[0] == len(paths):
            return table
    from ..models import create_model

    model = create_model(teacher, "cpu")
    rows = []
    for i in range(0, len(paths), batch):
        pixels = np.stack([decode_file(os.path.join(root, p), size).pixels for p in paths[i:i + batch]])
        rows.append(np.asarray(model.embed(pixels), np.float32))
    table = np.concatenate(rows)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    np.save(out + ".tmp.npy", table)
    os.replace(out + ".tmp.npy", out)
    return table


def _freeze(net: nn.Module, c: HardConfig) -> None:
    trunk = net.backbone
    frozen = [getattr(trunk, n) for n in ("conv_stem", "bn1") if hasattr(trunk, n)]
    frozen += list(trunk.blocks[: c.frozen_blocks]) if hasattr(trunk, "blocks") else []
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)


def _bn_eval(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class HardRun:
    def __init__(self, c: HardConfig, resume: bool = False):
        self.c = c
        self.device = resolve_device(c.device)
        os.makedirs(c.output, exist_ok=True)
        if c.threads:
            torch.set_num_threads(c.threads)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # the losses' bank products; convolutions use TF32 already
        all_paths = list_images(c.data_dir)
        self.paths, self.held = heldout_mod.split(all_paths, c.holdout_every)
        self.state_path = os.path.join(c.output, "state.pt")
        if resume and not os.path.exists(self.state_path):
            raise ModelUnavailable(f"nothing to resume in {c.output} (no state.pt)")
        if not resume and os.path.exists(self.state_path):
            raise ModelUnavailable(f"{c.output} holds a run already: add --resume to continue it, or choose another --output")
        self.teacher = torch.from_numpy(teacher_originals(
            c.data_dir, self.paths, c.teacher, c.teacher_size, os.path.join(c.output, "teacher_orig.npy"))).to(self.device)
        held_path = os.path.join(c.output, "heldout.npz")
        if self.held and not os.path.exists(held_path):
            heldout_mod.build(c.data_dir, self.held, c.image_size, c.seed).save(held_path)
        self.heldout = heldout_mod.HeldOut.load(held_path) if self.held else None

        self.config = read_config(c.start)
        self.net = load_checkpoint(c.start, "cpu").net.float().to(self.device)
        if self.net.projector is None:
            raise ModelUnavailable(f"{c.start} has no projector: start from a trained copyscan checkpoint")
        if int(self.config["input_size"]) != c.image_size:
            self.config["input_size"] = c.image_size
        self.mean, self.std = self.config["mean"], self.config["std"]
        _freeze(self.net, c)
        self.twin = momentum_twin(self.net)
        dim = self.net.out_dim
        bank_dim = dim if c.rel_space == "embedding" else self.net.feature_dim
        self.queue = EmbeddingQueue(min(c.queue_size, len(self.paths) - c.batch_size), dim, self.device)
        self.t_bank = EmbeddingQueue(c.bank_size, self.teacher.shape[1], self.device)
        self.s_bank = EmbeddingQueue(c.bank_size, bank_dim, self.device)
        if c.rel_anchor not in ("original", "view"):
            raise ModelUnavailable(f"--rel-anchor must be 'original' or 'view', not {c.rel_anchor!r}")
        self.match_head = (nn.Linear(self.net.feature_dim, self.teacher.shape[1], bias=False).to(self.device)
                           if c.w_match else None)
        params = [{"params": [p for p in self.net.parameters() if p.requires_grad], "lr_scale": 1.0}]
        if self.match_head is not None:
            params.append({"params": list(self.match_head.parameters()), "lr_scale": c.match_head_lr})
        self.optimizer = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        self.order = SampleOrder(len(self.paths), c.batch_size, c.seed)
        self.step, self.best, self.best_step = 0, -1.0, -1
        if resume:
            self._restore()
        elif self.match_head is not None:
            self._fit_match_head()
        m = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        s = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.normalise = lambda x: (x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float() - m) / s

    # ------------------------------------------------------------------ state
    def _restore(self) -> None:
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        saved = state["config"]
        for f in fields(HardConfig):
            if f.name not in HardConfig.RESUMABLE_CHANGES and saved.get(f.name) != getattr(self.c, f.name):
                raise ModelUnavailable(f"cannot resume: --{f.name.replace('_', '-')} was {saved.get(f.name)!r} in the saved run, "
                                       f"{getattr(self.c, f.name)!r} now")
        self.net.load_state_dict(state["student"])
        self.twin.load_state_dict(state["momentum"])
        self.queue.load_state_dict(state["queue"])
        self.t_bank.load_state_dict(state["teacher_bank"])
        self.s_bank.load_state_dict(state["student_bank"])
        if self.match_head is not None:
            self.match_head.load_state_dict(state["match_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best, self.best_step = int(state["step"]), float(state["best"]), int(state["best_step"])

    @torch.no_grad()
    def _fit_match_head(self, images: int = 2048, ridge: float = 0.05) -> None:
        """Least squares from the start's (normalised) features of plain originals to the teacher's."""
        picks = np.linspace(0, len(self.paths) - 1, min(images, len(self.paths))).astype(int)
        pixels = np.stack([decode_file(os.path.join(self.c.data_dir, self.paths[j]), self.c.image_size).pixels
                           for j in picks])
        feats = heldout_mod.run_eval(self.net, pixels, self.mean, self.std, fn=self.net.features)
        x, y = F.normalize(feats, dim=1).double().cpu(), self.teacher[torch.from_numpy(picks)].double().cpu()
        gram = x.T @ x
        gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
        self.match_head.weight.copy_(torch.linalg.solve(gram, x.T @ y).T.float())

    def save_state(self) -> None:
        state = {"config": self.c.to_json(), "step": self.step, "best": self.best, "best_step": self.best_step,
                 "student": self.net.state_dict(), "momentum": self.twin.state_dict(), "queue": self.queue.state_dict(),
                 "teacher_bank": self.t_bank.state_dict(), "student_bank": self.s_bank.state_dict(),
                 "optimizer": self.optimizer.state_dict()}
        if self.match_head is not None:
            state["match_head"] = self.match_head.state_dict()
        tmp = self.state_path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)

    def export(self, name: str) -> str:
        config = dict(for_new_projector(self.config), training={"recipe": "hard-views RDCD (copyscan.train.hardrun)", "step": self.step,
                                             "start": os.path.basename(self.c.start), "teacher": self.c.teacher,
                                             "data": os.path.basename(os.path.abspath(self.c.data_dir))})
        path = os.path.join(self.c.output, name)
        save_checkpoint(self.net, config, path)
        return path

    def _log(self, name: str, record: dict) -> None:
        with open(os.path.join(self.c.output, name), "a") as fh:
            fh.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> dict:
        if self.heldout is None:
            return {}
        t = time.perf_counter()
        result = heldout_mod.evaluate_net(self.net, self.heldout, self.mean, self.std)
        result.update(step=self.step, seconds=round(time.perf_counter() - t, 1))
        if result["score"] > self.best:
            self.best, self.best_step = result["score"], self.step
            self.export("best.safetensors")
        result["best"], result["best_step"] = self.best, self.best_step
        self._log("eval.jsonl", result)
        return result

    # ------------------------------------------------------------------ loop
    def step_once(self, query: torch.Tensor, key: torch.Tensor, images: torch.Tensor,
                  t_view: torch.Tensor | None = None) -> dict:
        """One optimiser step on a batch; `t_view` is the teacher's embedding of each hard view
        (from the loader, `_Collate`), needed by L_match and the view-anchored L_rel."""
        c = self.c
        torch.manual_seed(step_seed(c.seed, self.step, 0))
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(c, self.step) * g.get("lr_scale", 1.0)
        self.net.train()
        if c.freeze_bn:
            _bn_eval(self.net)
        xq, xk = self.normalise(query), self.normalise(key)
        f = self.net.features(xq)
        z = F.normalize(self.net.projector(f), dim=1)
        with torch.no_grad():
            momentum_update(self.twin, self.net, c.momentum_encoder)
            self.twin.train()
            if c.freeze_bn:
                _bn_eval(self.twin)
            fk = self.twin.features(xk)
            zk = F.normalize(self.twin.projector(fk), dim=1)
        own = self.queue.push(zk)
        negatives = self.queue.scores(z, own)
        if t_view is not None:
            t_view = t_view.to(self.device, non_blocking=True)
        raw = {}
        if c.w_match:
            raw["match"] = (1.0 - (F.normalize(self.match_head(F.normalize(f, dim=1)), dim=1) * t_view).sum(1)).mean()
        if c.w_con:
            raw["con"] = moco_contrast(z, zk, negatives, c.t_con)
        if c.w_hn:
            raw["hn"] = hard_negative(negatives)
        if c.w_align:
            raw["align"] = (1.0 - (z * zk).sum(dim=1)).mean()
        if c.w_rel:
            t = self.teacher[images.to(self.device)]
            own_b = self.t_bank.push(t)
            anchor = t_view if c.rel_anchor == "view" else t
            if c.rel_space == "embedding":
                self.s_bank.push(zk)
                student = self.s_bank.scores(z, own_b)
            else:
                self.s_bank.push(F.normalize(fk, dim=1))
                student = self.s_bank.scores(F.normalize(f, dim=1), own_b)
            raw["rel"] = relational_kl(self.t_bank.scores(anchor, own_b), student, c.t_rel)
        weights = {"con": c.w_con, "hn": c.w_hn, "rel": c.w_rel, "align": c.w_align, "match": c.w_match}
        total = sum(weights[k] * v for k, v in raw.items())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.step += 1
        out = {k: float(v.detach()) for k, v in raw.items()}
        out["loss"] = float(total.detach())
        # Positive vs nearest negative cosine: how well the hard view finds its photo.
        out["pos"] = float((z.detach() * zk).sum(1).mean())
        return out

    def run(self, stop_after: int | None = None, seconds: float | None = None) -> dict:
        """Train to `c.steps` (or `stop_after`), or until `seconds` of training have passed: a
        run on a lent machine must end, saved and scored, before its lease does."""
        c = self.c
        with open(os.path.join(c.output, "hard_config.json"), "w") as fh:
            json.dump(c.to_json(), fh, indent=2)
        if self.step == 0 and self.heldout is not None and not os.path.exists(os.path.join(c.output, "eval.jsonl")):
            self.evaluate()  # the start's own score: the bar every later checkpoint must clear
        stop = min(c.steps, stop_after) if stop_after is not None else c.steps
        loader = torch.utils.data.DataLoader(
            HardViews(c.data_dir, self.paths, self.order, c), batch_sampler=_Batches(self.step, stop, c.batch_size),
            num_workers=c.workers, collate_fn=_Collate(c), prefetch_factor=4 if c.workers else None,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        began, start_step, last = time.perf_counter(), self.step, {}
        with stop_signals_interrupt():  # SIGTERM saves the state as Ctrl-C does (a background run ignores SIGINT)
            try:
                for query, key, images, t_view in loader:
                    values = self.step_once(query, key, images, t_view)
                    if self.step % c.log_every == 0:
                        elapsed = time.perf_counter() - began
                        last = {"step": self.step, "lr": lr_at(c, self.step - 1),
                                **{k: round(v, 4) for k, v in values.items()},
                                "images_per_s": round((self.step - start_step) * c.batch_size / elapsed, 2),
                                "elapsed_s": round(elapsed, 1)}
                        self._log("metrics.jsonl", last)
                    if self.step % c.eval_every == 0:
                        self.evaluate()
                        self.export("model.safetensors")
                    if self.step % c.checkpoint_every == 0:
                        self.save_state()
                    if seconds is not None and time.perf_counter() - began >= seconds:
                        break
            except KeyboardInterrupt:
                self.save_state()
                raise
        self.save_state()
        if self.step % c.eval_every:  # the last step is scored too, so best.safetensors covers it
            self.evaluate()
        self.export("model.safetensors")
        return last
