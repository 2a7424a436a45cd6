"""A held-out check of a student while it trains: hard and plain copies of photos it never sees.

Every `holdout_every`-th photo of the training folder (sorted) is kept out of training. Half of
those are references, the other half distractors. Each reference gets one hard copy
(`copyscan.edits.hard.hard_copy`: screenshot, chat, paste, strong crop, rotation, ...) and one
plain copy (the usual `random_chain`, mixed difficulty); each distractor gets one of each too.
The pixels are made once, squashed to the model's input size as `index` does, and saved in the
run folder (`heldout.npz`), so every evaluation scores exactly the same images.

`evaluate_net(net, heldout)` returns micro AP, recall at P90 and rank-1 per hard kind, for the
hard and the plain query sets (each against the same references).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..edits import DIFFICULTIES, apply_edits, random_chain
from ..edits.hard import hard_copy
from ..metrics import GroundTruth, Predictions, evaluate
from .data import load_rgb

TOP_K = 10


def split(paths: list[str], every: int) -> tuple[list[str], list[str]]:
    """(training paths, held-out paths): every `every`-th photo held out (none when every <= 0)."""
    if every <= 0:
        return list(paths), []
    return [p for i, p in enumerate(paths) if i % every], [p for i, p in enumerate(paths) if i % every == 0]


@dataclass
class HeldOut:
    refs: np.ndarray  # (R, S, S, 3) uint8
    hard: np.ndarray  # (Q, S, S, 3) uint8: copies of refs 0..R-1 then distractors
    plain: np.ndarray
    hard_kinds: list[str]  # per hard query: the hard edit's name ("" for a distractor)
    n_copies: int  # queries 0..n_copies-1 are copies of reference i

    def save(self, path: str) -> None:
        tmp = path + ".tmp.npz"
        np.savez(tmp, refs=self.refs, hard=self.hard, plain=self.plain, hard_kinds=np.array(self.hard_kinds),
                 n_copies=np.array(self.n_copies))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "HeldOut":
        z = np.load(path)
        return cls(z["refs"], z["hard"], z["plain"], [str(k) for k in z["hard_kinds"]], int(z["n_copies"]))


def _squash(img: Image.Image, size: int) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0), np.uint8)


def build(root: str, held: list[str], size: int, seed: int = 0) -> HeldOut:
    """The held-out set from the photos `held` (relative to `root`)."""
    half = len(held) // 2
    photos = [load_rgb(os.path.join(root, p), max(size, 256)) for p in held[: 2 * half]]
    refs, distractors = photos[:half], photos[half:]
    hard, plain, kinds = [], [], []
    for i, img in enumerate(refs + distractors):
        rng = random.Random(f"{seed}:heldout:{i}")
        other = distractors[(i + 1) % half] if i < half else distractors[(i + 7) % half]
        edited, labels = hard_copy(img, rng, other)
        hard.append(_squash(edited, size))
        kinds.append(labels[0].split("(")[0] if i < half else "")
        difficulty = rng.choice(sorted(DIFFICULTIES))
        names = random_chain(rng, difficulty=difficulty, mix=[n for n in _plain_edits() if n != "paste"])
        edited, _ = apply_edits(img, names, rng, DIFFICULTIES[difficulty].strength)
        plain.append(_squash(edited, size))
    return HeldOut(np.stack([_squash(r, size) for r in refs]), np.stack(hard), np.stack(plain), kinds, half)


def _plain_edits() -> list[str]:
    from ..edits import EDITS

    return list(EDITS)


@torch.no_grad()
def run_eval(net: torch.nn.Module, pixels: np.ndarray, mean, std, batch: int = 64, fn=None) -> torch.Tensor:
    """`fn` (default: `net` itself) of uint8 NHWC pixels, normalised as the model wants, with `net`
    in eval mode (its mode restored after)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device  # the net's own (a GPU run scores on its GPU); results come back on the CPU
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
    fn = fn or net
    out = []
    try:
        for i in range(0, len(pixels), batch):
            x = torch.from_numpy(np.ascontiguousarray(pixels[i:i + batch])).to(device).permute(0, 3, 1, 2).float()
            out.append(fn((x - m) / s).float().cpu())
    finally:
        net.train(was_training)
    return torch.cat(out)


def embed(net: torch.nn.Module, pixels: np.ndarray, mean, std, batch: int = 64) -> torch.Tensor:
    """L2-normalised embeddings of uint8 NHWC pixels by `net` in eval mode."""
    return F.normalize(run_eval(net, pixels, mean, std, batch), dim=1)


def score(refs: torch.Tensor, queries: torch.Tensor, n_copies: int, kinds: list[str] | None = None) -> dict:
    """Micro AP, R@P90, rank-1 (and rank-1 per kind) of queries against refs, top-10 each."""
    sims = queries @ refs.T
    k = min(TOP_K, refs.shape[0])
    top_s, top_i = sims.topk(k, dim=1)
    rows = [(f"q{q}", f"r{int(r)}", float(s)) for q in range(sims.shape[0]) for s, r in zip(top_s[q], top_i[q])]
    gt = GroundTruth.from_pairs([(f"q{i}", f"r{i}") for i in range(n_copies)],
                                [f"q{i}" for i in range(n_copies, sims.shape[0])])
    m = evaluate(gt, Predictions.from_rows(rows))
    out = {"micro_ap": m.micro_ap, "recall_at_p90": m.recall_at_p90 or 0.0, "acc_at_1": m.acc_at_1}
    if kinds:
        hit = (top_i[:n_copies, 0] == torch.arange(n_copies)).numpy()
        per: dict[str, list[bool]] = {}
        for kind, h in zip(kinds[:n_copies], hit):
            per.setdefault(kind, []).append(bool(h))
        out["rank1"] = {kind: round(sum(v) / len(v), 3) for kind, v in sorted(per.items())}
    return out


def evaluate_net(net: torch.nn.Module, heldout: HeldOut, mean, std) -> dict:
    refs = embed(net, heldout.refs, mean, std)
    hard = score(refs, embed(net, heldout.hard, mean, std), heldout.n_copies, heldout.hard_kinds)
    plain = score(refs, embed(net, heldout.plain, mean, std), heldout.n_copies)
    return {"hard": hard, "plain": plain, "score": round((hard["micro_ap"] + plain["micro_ap"]) / 2, 4)}
