"""Descriptor heads of other widths (64, 256, ...) fitted on a trained trunk's frozen features.

The trunk (EfficientNet-Lite0 + GeM) is what costs: fine-tuning it for hard copies takes hours of
CPU. The projector after it is one linear layer, and once the trunk's pooled features of the
training photos and of hard views of them are computed (one forward pass each), a projector of
any width can be fitted in seconds on those features alone. So the 64-d and 256-d siblings of the
default share its trunk (and its speed) and get a projector trained for their own width, rather
than the strongest axes of the 128-d one (which lost 0.039 micro AP on hard copies at 64-d).

The loss keeps the teacher's relational structure (RDCD's L_rel), which the issue found a
must-keep: a plain instance classifier over a few thousand similar photos destroys the general
similarity structure. Over all N originals at once (no queue: N x d is small):
- `rel`: KL between the teacher's similarities of each original to the other originals and the
  student's similarities of a hard VIEW of it to those originals (T 0.04, own slot left out);
- `con`: InfoNCE of each view against all originals, its own original the positive (T 0.07);
- `rel_orig` (off by default: it cost held-out micro AP): the relational term for the plain
  originals themselves.
- `koleo`: SSCD's entropy term on a sample of the originals, -mean log(distance
  to the nearest other original). It spreads photos that are not copies apart, so the score of a
  query's best non-copy is low everywhere, not only in sparse parts of the space: micro AP pools
  every query's matches into one ranking, and the dev benchmark showed the default losing more
  to that pooling (acc@1 0.788, micro AP 0.734) than SSCD (0.822, 0.819).
With `rel_anchor="view"` the teacher's side of `rel` is the teacher's embedding of the VIEW (its
similarities to the originals), not of the view's original: the per-view signal that got the trunk
learning again in run v10 (training/runs/hard_lite0_128), here on the head alone; measured in
session 7 it moved the dev benchmark by -0.013 to +0.004 by width, so it is not the default.
Held-out photos (never trained on) are scored after every epoch; the best epoch is kept.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import heldout as heldout_mod
from .losses import hard_negative, koleo, relational_kl


@dataclass
class Features:
    """Pooled trunk features: originals (N, F), hard views (M, F) and each view's original."""

    originals: torch.Tensor
    views: torch.Tensor
    owner: torch.Tensor  # (M,) long: index into originals

    def save(self, path: str) -> None:
        torch.save({"originals": self.originals, "views": self.views, "owner": self.owner}, path)

    @classmethod
    def load(cls, path: str) -> "Features":
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(d["originals"], d["views"], d["owner"])


@dataclass
class HeadSettings:
    dim: int
    epochs: int = 8
    batch: int = 512
    lr: float = 5e-4
    weight_decay: float = 1e-5
    t_rel: float = 0.04
    t_con: float = 0.07
    w_rel: float = 1.0
    w_rel_orig: float = 0.0  # kept as an option: it cost 0.01 hard micro AP at 64-d (training/runs/hard_lite0_128)
    w_con: float = 2.0
    rel_anchor: str = "original"  # "view": the teacher's similarities of each view, not of its original
    w_koleo: float = 5.0  # dev hard micro AP 0.734 -> 0.748 on the v10 trunk (10: the same, 20: 0.745)
    koleo_sample: int = 1024  # originals a step that the entropy term spreads
    w_hn: float = 0.0  # -log(1 - a view's best score against the OTHER originals): RDCD's L_hn
    seed: int = 0


@dataclass
class HeadResult:
    weight: torch.Tensor  # (dim, F)
    bias: torch.Tensor  # (dim,)
    best_epoch: int
    best_score: float
    log: list[dict] = field(default_factory=list)


def pooled(net: nn.Module, pixels: np.ndarray, mean, std, batch: int = 64) -> torch.Tensor:
    """GeM features (before the projector) of uint8 NHWC pixels, net in eval mode."""
    return heldout_mod.run_eval(net, pixels, mean, std, batch, fn=net.features)


def pca_init(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `dim` strongest principal axes of `features`, centred: a start that already spreads
    the photos (the same start `copyscan train --projector-init pca` uses for the whole net)."""
    x = features.double()
    centre = x.mean(0)
    if dim > min(x.shape):
        raise ValueError(f"cannot take {dim} principal axes of {tuple(x.shape)} features")
    _, _, v = torch.linalg.svd(x - centre, full_matrices=False)
    w = v[:dim]
    return w.float(), (-(w @ centre)).float()


def _embed(w: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f @ w.T + b, dim=1)


def heldout_score(w: torch.Tensor, b: torch.Tensor, held: dict) -> dict:
    """Micro AP etc. of the head on held-out features ({"refs", "hard", "plain", "n_copies", "kinds"})."""
    with torch.no_grad():
        refs = _embed(w, b, held["refs"])
        hard = heldout_mod.score(refs, _embed(w, b, held["hard"]), held["n_copies"], held.get("kinds"))
        plain = heldout_mod.score(refs, _embed(w, b, held["plain"]), held["n_copies"])
    return {"hard": hard, "plain": plain, "score": round((hard["micro_ap"] + plain["micro_ap"]) / 2, 4)}


def fit_head(feats: Features, teacher: torch.Tensor, s: HeadSettings, held: dict | None = None,
             init: tuple[torch.Tensor, torch.Tensor] | None = None, progress=None,
             teacher_views: torch.Tensor | None = None) -> HeadResult:
    """A linear head (dim x F) fitted on frozen features; the best held-out epoch is returned
    (the last one when there is no held-out set). `teacher_views` (M, D): the teacher's embeddings
    of the views, row for row with `feats.views`; needed when `s.rel_anchor == "view"`."""
    if teacher.shape[0] != feats.originals.shape[0]:
        raise ValueError(f"{teacher.shape[0]} teacher rows for {feats.originals.shape[0]} originals")
    if s.rel_anchor not in ("original", "view"):
        raise ValueError(f"rel_anchor must be 'original' or 'view', not {s.rel_anchor!r}")
    if s.rel_anchor == "view" and (teacher_views is None or teacher_views.shape[0] != feats.views.shape[0]):
        raise ValueError("rel_anchor 'view' needs the teacher's embedding of every view (teacher_views)")
    torch.manual_seed(s.seed)
    w0, b0 = init if init is not None else pca_init(feats.originals, s.dim)
    w = nn.Parameter(w0.clone().float())
    b = nn.Parameter(b0.clone().float())
    opt = torch.optim.AdamW([w, b], lr=s.lr, weight_decay=s.weight_decay)
    t = F.normalize(teacher.float(), dim=1)
    t_sims = t @ t.T  # (N, N) teacher similarities among the originals
    t_views = F.normalize(teacher_views.float(), dim=1) if s.rel_anchor == "view" else None
    n, m = feats.originals.shape[0], feats.views.shape[0]
    own_mask = torch.eye(n, dtype=torch.bool)
    steps_per_epoch = max(1, math.ceil(m / s.batch))
    total = s.epochs * steps_per_epoch
    rng = random.Random(s.seed)
    best = (-1.0, -1, w.detach().clone(), b.detach().clone())
    log: list[dict] = []
    if held is not None:
        start = heldout_score(w.detach(), b.detach(), held)
        best = (start["score"], 0, w.detach().clone(), b.detach().clone())
        log.append({"epoch": 0, **start})
    step = 0
    for epoch in range(1, s.epochs + 1):
        order = list(range(m))
        rng.shuffle(order)
        sums: dict[str, float] = {}
        for i in range(0, m, s.batch):
            idx = torch.tensor(order[i:i + s.batch])
            lr = s.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            o = _embed(w, b, feats.originals)  # all N originals: the bank, recomputed every step
            v = _embed(w, b, feats.views[idx])
            own = feats.owner[idx]
            sims = v @ o.T  # (B, N)
            own_slot = F.one_hot(own, n).bool()
            terms = {}
            if s.w_con:
                terms["con"] = F.cross_entropy(sims / s.t_con, own)
            if s.w_rel:
                anchor = t_views[idx] @ t.T if t_views is not None else t_sims[own]
                terms["rel"] = relational_kl(anchor.masked_fill(own_slot, float("-inf")),
                                             sims.masked_fill(own_slot, float("-inf")), s.t_rel)
            if s.w_rel_orig:
                pick = torch.randint(0, n, (min(s.batch, n),))
                mask = own_mask[pick]
                terms["rel_orig"] = relational_kl(t_sims[pick].masked_fill(mask, float("-inf")),
                                                  (o[pick] @ o.T).masked_fill(mask, float("-inf")), s.t_rel)
            if s.w_koleo:
                pick = torch.randperm(n)[:s.koleo_sample]
                terms["koleo"] = koleo(o[pick])  # each original's nearest OTHER original
            if s.w_hn:
                terms["hn"] = hard_negative(sims.masked_fill(own_slot, float("-inf")))
            weights = {"con": s.w_con, "rel": s.w_rel, "rel_orig": s.w_rel_orig, "koleo": s.w_koleo, "hn": s.w_hn}
            loss = sum(weights[k] * v_ for k, v_ in terms.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            for k, v_ in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v_.detach())
        row = {"epoch": epoch, **{k: round(v_ / steps_per_epoch, 4) for k, v_ in sums.items()}}
        if held is not None:
            result = heldout_score(w.detach(), b.detach(), held)
            row.update(result)
            if result["score"] > best[0]:
                best = (result["score"], epoch, w.detach().clone(), b.detach().clone())
        else:
            best = (-1.0, epoch, w.detach().clone(), b.detach().clone())
        log.append(row)
        if progress:
            progress(row)
    return HeadResult(best[2], best[3], best[1], best[0], log)


def with_head(net, weight: torch.Tensor, bias: torch.Tensor):
    """`net` (a DescriptorNet, changed in place and returned) with its projector replaced."""
    dim, feature_dim = weight.shape
    if feature_dim != net.feature_dim:
        raise ValueError(f"head takes {feature_dim} features, the trunk gives {net.feature_dim}")
    net.projector = nn.Linear(feature_dim, dim)
    with torch.no_grad():
        net.projector.weight.copy_(weight)
        net.projector.bias.copy_(bias)
    net.out_dim = dim
    return net
