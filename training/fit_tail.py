"""Fit the trunk's last block, its 1x1 head conv and descriptor heads of several widths together,
on cached inputs of that block (`training/fit_heads.py` fits the heads alone).

    python training/fit_tail.py RUN/best.safetensors ../shared/data/imagenette-train \\
        --run RUN --heads HEADS --out runs/tail --views 12 [--dims 64,128,256]

A linear head fitted on frozen pooled features gained +0.012 hard micro AP from 2 to 6 edited
views a photo (training/runs/hard_lite0_128): the many cached views are worth more than the few
the trunk saw in its own training. This goes one step further: the input of the trunk's last
block (5 x 5 x 192 at 160 px for Lite0) is computed once for every training photo and VIEWS edited
views of each (the same views as fit_heads.py, fp16, ~0.6 GB for 4,500 x 13 images), and the
tail (last block, head conv with its BatchNorm frozen, GeM, one linear head per width) is
trained on them: the heads start from HEADS/head_DIM.safetensors (fit_heads.py's output), the
loss is the heads' loss (relational KL to the teacher over all originals, T 0.04, + 2 x InfoNCE
of each view against all originals, T 0.07) summed over the widths, against a bank of the
originals' descriptors refreshed every `--refresh` steps (the batch's own originals are run
with gradients). Held-out hard and plain micro AP (mean over the widths) every `--eval-every`
steps; the best is kept. Writes OUT/tail_DIM.safetensors (float32; `training/ship_model.py`
folds and ships it), OUT/tail.jsonl and OUT/maps-*.pt (the cache, reused by a rerun).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import random
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))

from fit_heads import _Views  # noqa: E402

from copyscan.models.checkpoint import load_checkpoint, read_config, save_checkpoint  # noqa: E402
from copyscan.train import heldout  # noqa: E402
from copyscan.train.data import list_images  # noqa: E402
from copyscan.train.losses import relational_kl  # noqa: E402


def stem(net, x: torch.Tensor) -> torch.Tensor:
    """The trunk up to (not including) its last block: the cached input of the tail."""
    bb = net.backbone
    return bb.blocks[:-1](bb.bn1(bb.conv_stem(x)))


class Tail(nn.Module):
    """Last block -> head conv + BN (frozen statistics) -> GeM -> one linear head per width."""

    def __init__(self, net, heads: dict[int, nn.Linear]):
        super().__init__()
        bb = net.backbone
        self.block, self.conv_head, self.bn2, self.pool = bb.blocks[-1], bb.conv_head, bb.bn2, net.pool
        self.heads = nn.ModuleDict({str(d): h for d, h in heads.items()})

    def train(self, mode: bool = True) -> "Tail":
        """Training mode with the BatchNorms' statistics frozen (they keep the trunk's running means)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, maps: torch.Tensor) -> dict[int, torch.Tensor]:
        f = self.pool(self.bn2(self.conv_head(self.block(maps))))
        return {int(d): F.normalize(h(f), dim=1) for d, h in self.heads.items()}


@torch.no_grad()
def cache_maps(net, config, root, paths, views, framings, seed, workers, out: Path) -> dict:
    """{"originals": (N, C, H, W) fp16, "views": (N * views, C, H, W) fp16, "owner": (N * views,)}."""
    size = int(config["input_size"])
    loader = torch.utils.data.DataLoader(_Views(root, paths, size, views, framings, seed), batch_size=16,
                                         num_workers=workers, collate_fn=lambda items: np.stack(items))
    originals, view_maps, owner = [], [], []
    began, done = time.perf_counter(), 0
    for batch in loader:  # (B, 1 + views, S, S, 3)
        b = batch.shape[0]
        m = heldout.run_eval(net, batch.reshape(-1, size, size, 3), config["mean"], config["std"], len(batch) * (1 + views),
                             fn=partial(stem, net))
        m = m.half().view(b, 1 + views, *m.shape[1:])
        originals.append(m[:, 0].clone())
        view_maps.append(m[:, 1:].reshape(b * views, *m.shape[2:]).clone())
        owner.append(torch.arange(done, done + b).repeat_interleave(views))
        done += b
        if done % 480 == 0:
            print(f"maps: {done}/{len(paths)} photos, {done * (1 + views) / (time.perf_counter() - began):.1f} images/s",
                  flush=True)
    cache = {"originals": torch.cat(originals), "views": torch.cat(view_maps), "owner": torch.cat(owner)}
    torch.save(cache, out)
    return cache


@torch.no_grad()
def run_tail(tail: Tail, maps: torch.Tensor, batch: int = 256) -> dict[int, torch.Tensor]:
    parts: dict[int, list[torch.Tensor]] = {}
    for i in range(0, maps.shape[0], batch):
        for d, e in tail(maps[i:i + batch].float()).items():
            parts.setdefault(d, []).append(e)
    return {d: torch.cat(p) for d, p in parts.items()}


def held_score(tail: Tail, held_maps: dict, held_set) -> dict:
    refs, hard, plain = (run_tail(tail, held_maps[k]) for k in ("refs", "hard", "plain"))
    out = {}
    for d in refs:
        h = heldout.score(refs[d], hard[d], held_set.n_copies, held_set.hard_kinds)
        p = heldout.score(refs[d], plain[d], held_set.n_copies)
        out[d] = {"hard": round(h["micro_ap"], 4), "plain": round(p["micro_ap"], 4)}
    out["score"] = round(float(np.mean([(v["hard"] + v["plain"]) / 2 for v in out.values()])), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("data_dir")
    ap.add_argument("--run", required=True, help="the train_hard.py run folder (teacher table, held-out set, settings)")
    ap.add_argument("--heads", required=True, help="fit_heads.py output folder: the heads start from head_DIM.safetensors")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dims", default="64,128,256")
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr-tail", type=float, default=1e-4)
    ap.add_argument("--lr-heads", type=float, default=2e-4)
    ap.add_argument("--w-con", type=float, default=2.0)
    ap.add_argument("--t-con", type=float, default=0.07)
    ap.add_argument("--t-rel", type=float, default=0.04)
    ap.add_argument("--refresh", type=int, default=20, help="steps between two refreshes of the originals' bank")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="only the first N training photos (a smoke test)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    run = json.loads(Path(args.run, "hard_config.json").read_text())
    config = read_config(args.checkpoint)
    net = load_checkpoint(args.checkpoint, "cpu").net.float().eval()
    paths, _ = heldout.split(list_images(args.data_dir), int(run["holdout_every"]))
    teacher = F.normalize(torch.from_numpy(np.load(Path(args.run, "teacher_orig.npy"))).float(), dim=1)
    if args.limit:
        paths, teacher = paths[:args.limit], teacher[:args.limit]
    t_sims = teacher @ teacher.T

    digest = hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest()[:16]
    cache_file = out / f"maps-{digest}-v{args.views}{f'-n{args.limit}' if args.limit else ''}.pt"
    if cache_file.exists():
        cache = torch.load(cache_file, map_location="cpu", weights_only=True)
    else:
        t = time.perf_counter()
        cache = cache_maps(net, config, args.data_dir, paths, args.views, run["framings"], int(run["seed"]),
                           args.workers, cache_file)
        print(f"maps of {len(paths)} photos x {1 + args.views} in {time.perf_counter() - t:.0f} s", flush=True)
    held_set = heldout.HeldOut.load(str(Path(args.run, "heldout.npz")))
    held_maps = {k: heldout.run_eval(net, getattr(held_set, k), config["mean"], config["std"], fn=partial(stem, net)).half()
                 for k in ("refs", "hard", "plain")}

    dims = [int(d) for d in args.dims.split(",")]
    heads = {}
    for d in dims:
        fitted = load_checkpoint(str(Path(args.heads, f"head_{d}.safetensors")), "cpu").net.float()
        heads[d] = copy.deepcopy(fitted.projector)
    tail = Tail(net, heads)
    tail.train()
    opt = torch.optim.AdamW([
        {"params": [p for n, p in tail.named_parameters() if not n.startswith("heads.")], "lr": args.lr_tail},
        {"params": list(tail.heads.parameters()), "lr": args.lr_heads},
    ], weight_decay=1e-5)
    base_lrs = [g["lr"] for g in opt.param_groups]
    originals, views, owner = cache["originals"], cache["views"], cache["owner"]
    n, m = originals.shape[0], views.shape[0]
    total = int(math.ceil(args.epochs * m / args.batch))
    rng = random.Random(args.seed)
    order: list[int] = []
    log = open(out / "tail.jsonl", "a")

    def evaluate(step: int, best: tuple) -> tuple:
        tail.eval()
        result = held_score(tail, held_maps, held_set)
        tail.train()
        log.write(json.dumps({"step": step, **{str(k): v for k, v in result.items()}}) + "\n")
        log.flush()
        print(f"step {step}/{total}: " + ", ".join(f"{d}-d hard {result[d]['hard']:.4f} plain {result[d]['plain']:.4f}"
                                                  for d in dims) + f" (score {result['score']:.4f})", flush=True)
        if result["score"] > best[0]:
            return result["score"], step, copy.deepcopy(tail.state_dict())
        return best

    best = evaluate(0, (-1.0, 0, None))
    bank: dict[int, torch.Tensor] = {}
    began = time.perf_counter()
    for step in range(1, total + 1):
        if (step - 1) % args.refresh == 0:
            tail.eval()
            bank = run_tail(tail, originals)
            tail.train()
        if len(order) < args.batch:
            more = list(range(m))
            rng.shuffle(more)
            order += more
        idx = torch.tensor(order[:args.batch])
        del order[:args.batch]
        own = owner[idx]
        mine = torch.unique(own)
        scale = 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        v = tail(views[idx].float())
        o = tail(originals[mine].float())
        loss = torch.zeros(())
        own_slot = F.one_hot(own, n).bool()
        for d in dims:
            # The bank with the batch's own originals fresh (with gradients).
            full = bank[d].index_put((mine,), o[d])
            sims = v[d] @ full.T
            loss = loss + args.w_con * F.cross_entropy(sims / args.t_con, own)
            loss = loss + relational_kl(t_sims[own].masked_fill(own_slot, float("-inf")),
                                        sims.masked_fill(own_slot, float("-inf")), args.t_rel)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            print(f"step {step}: loss {float(loss):.4f}, {step * args.batch / (time.perf_counter() - began):.0f} views/s",
                  flush=True)
        if step % args.eval_every == 0 or step == total:
            best = evaluate(step, best)
    print(f"best step {best[1]} (score {best[0]:.4f})", flush=True)
    tail.load_state_dict(best[2])
    for d in dims:
        target = copy.deepcopy(net)
        target.projector = copy.deepcopy(tail.heads[str(d)])
        target.out_dim = d
        save_checkpoint(target, dict(config, embed_dim=d), out / f"tail_{d}.safetensors")
    log.write(json.dumps({"best_step": best[1], "best_score": best[0]}) + "\n")


if __name__ == "__main__":
    main()
