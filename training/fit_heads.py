"""Fit descriptor heads of several widths on a trained trunk (`copyscan.train.head_fit`).

    python training/fit_heads.py RUN/best.safetensors ../shared/data/imagenette-train \\
        --run RUN --out runs/heads --dims 64,128,256 [--views 2]

RUN is a `training/train_hard.py` run folder: its teacher table (`teacher_orig.npy`), held-out
set (`heldout.npz`) and settings (`hard_config.json`: hold-out split, framings, input size) are
reused, so the heads are scored on the same held-out copies the trunk was chosen on. Writes
OUT/features.pt (the trunk's pooled features of every training photo and of VIEWS edited views
of each; reused by a rerun with the same checkpoint), OUT/head_DIM.safetensors (the trunk with
that head, float32: `training/ship_model.py` folds and ships it) and OUT/heads.jsonl (held-out
scores per epoch). The checkpoint's own projector is scored too, as the bar to beat.

The loss is `copyscan.train.head_fit`'s (relational KL + InfoNCE + the KoLeo entropy term,
`--w-koleo`, 5 since session 7). `--rel-anchor view` has SSCD int8 embed every view once (about
200 views/s on 2 cores; cached in OUT, as it depends on the views and not on the checkpoint) and
takes the relational term's teacher side from the view: +0.005 held-out, -0.013 to +0.004 on the
dev benchmarks (session 7), so not the default. `--w-hn`, `--t-con` and `--koleo-sample` are the
other variants measured there (none beat KoLeo alone). `--tag` keeps the heads of variants apart.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from copyscan.edits import TrainAugment  # noqa: E402
from copyscan.edits.hard import HardAugment  # noqa: E402
from copyscan.models.checkpoint import for_new_projector, load_checkpoint, read_config, save_checkpoint  # noqa: E402
from copyscan.train import head_fit, heldout  # noqa: E402
from copyscan.train.data import list_images, open_substituted, view_seed  # noqa: E402


class _Views(torch.utils.data.Dataset):
    """Photo i -> (its plain squash, VIEWS edited views): half hard framings, half plain edits."""

    def __init__(self, root, paths, size, views, framings, seed, first=0):
        self.root, self.paths, self.size, self.views, self.seed = root, paths, size, views, seed
        self.first = first  # views first .. first + views - 1 of each photo (their seeds do not depend on VIEWS)
        self.hard = HardAugment(size, framing_weights=framings)
        self.plain = TrainAugment(size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        _, img = open_substituted(self.root, self.paths, i, self.size)
        out = [np.asarray(img.convert("RGB").resize((self.size,) * 2, resample=2, reducing_gap=3.0), np.uint8)]
        for v in range(self.first, self.first + self.views):
            s = view_seed(self.seed, i, 1000 + v, 7)
            if v % 2 == 0:
                other = None
                if self.hard.framing(s).startswith("paste"):
                    other = open_substituted(self.root, self.paths, (i + 1 + s % (len(self.paths) - 1)) % len(self.paths),
                                             self.size)[1]
                view = self.hard.view(img, s, other)
            else:
                view = self.plain.view(img, s)
            out.append(np.asarray(view.convert("RGB"), np.uint8))
        return np.stack(out)


def _photo_batches(dataset: _Views, workers: int, label: str, per_photo: int):
    """Batches (B, 1 + VIEWS, S, S, 3) of `dataset`, in photo order, with a progress line every
    480 photos (`per_photo` images of each counted in the rate)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, num_workers=workers,
                                         collate_fn=lambda items: np.stack(items))
    began, done = time.perf_counter(), 0
    for batch in loader:
        yield batch
        done += batch.shape[0]
        if done % 480 == 0:
            print(f"{label}: {done}/{len(dataset)} photos, {done * per_photo / (time.perf_counter() - began):.1f} "
                  f"images/s", flush=True)


def collect(net, config, root, paths, views, framings, seed, workers, first=0) -> head_fit.Features:
    size = int(config["input_size"])
    originals, view_rows, owner = [], [], []
    done = 0
    dataset = _Views(root, paths, size, views, framings, seed, first)
    for batch in _photo_batches(dataset, workers, "features", 1 + views):  # (B, 1 + views, S, S, 3)
        b = batch.shape[0]
        f = head_fit.pooled(net, batch.reshape(-1, size, size, 3), config["mean"], config["std"])
        f = f.view(b, 1 + views, -1)
        originals.append(f[:, 0])
        view_rows.append(f[:, 1:].reshape(b * views, -1))
        owner.append(torch.arange(done, done + b).repeat_interleave(views))
        done += b
    return head_fit.Features(torch.cat(originals), torch.cat(view_rows), torch.cat(owner))


def collect_teacher_views(teacher, root, paths, size, views, framings, seed, workers) -> torch.Tensor:
    """The teacher's (a model with `embed(uint8 NHWC)`) embeddings of the same VIEWS views of each
    photo that `collect` pools (the views are made from their seeds, so they are the same pixels),
    row for row with Features.views."""
    rows = []
    dataset = _Views(root, paths, size, views, framings, seed)
    for batch in _photo_batches(dataset, workers, "teacher views", views):
        # The originals' embeddings are the run's teacher table; the views at the student's size,
        # as train_hard.py's per-view teacher and its table of the originals.
        rows.append(F.normalize(torch.from_numpy(np.asarray(teacher.embed(batch[:, 1:].reshape(-1, size, size, 3)),
                                                            np.float32)), dim=1))
    return torch.cat(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("data_dir")
    ap.add_argument("--run", required=True, help="the train_hard.py run folder (teacher table, held-out set, settings)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dims", default="64,128,256")
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--w-con", type=float, default=2.0)
    ap.add_argument("--w-rel-orig", type=float, default=0.0)
    ap.add_argument("--rel-anchor", choices=("original", "view"), default="original",
                    help="the teacher's side of the relational term: the view's original, or the view itself "
                         "(the teacher embeds every view once; cached in OUT)")
    ap.add_argument("--w-koleo", type=float, default=head_fit.HeadSettings.w_koleo,
                    help="weight of the entropy term spreading the originals (0: off, as before session 7)")
    ap.add_argument("--koleo-sample", type=int, default=head_fit.HeadSettings.koleo_sample,
                    help="originals a step that the entropy term spreads")
    ap.add_argument("--w-hn", type=float, default=head_fit.HeadSettings.w_hn, help="weight of -log(1 - a view's best score against other photos)")
    ap.add_argument("--t-con", type=float, default=head_fit.HeadSettings.t_con)
    ap.add_argument("--tag", default="", help="suffix of the head files (head_DIM{TAG}.safetensors), to keep variants apart")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    run = json.loads(Path(args.run, "hard_config.json").read_text())
    config = read_config(args.checkpoint)
    net = load_checkpoint(args.checkpoint, "cpu").net.float().eval()
    paths, _ = heldout.split(list_images(args.data_dir), int(run["holdout_every"]))
    teacher = torch.from_numpy(np.load(Path(args.run, "teacher_orig.npy")))

    digest = hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest()[:16]
    cache = Path(args.out, f"features-{digest}-v{args.views}.pt")
    # A smaller cache of the same checkpoint is grown: its views are the first ones of the larger set.
    smaller = sorted((int(f.stem.rsplit("-v", 1)[1]), f) for f in Path(args.out).glob(f"features-{digest}-v*.pt")
                     if int(f.stem.rsplit("-v", 1)[1]) < args.views)
    if cache.exists():
        feats = head_fit.Features.load(str(cache))
    else:
        t = time.perf_counter()
        have = smaller[-1][0] if smaller else 0
        feats = collect(net, config, args.data_dir, paths, args.views - have, run["framings"], int(run["seed"]),
                        args.workers, first=have)
        if have:
            old = head_fit.Features.load(str(smaller[-1][1]))
            feats = head_fit.Features(old.originals, torch.cat([old.views, feats.views]), torch.cat([old.owner, feats.owner]))
        feats.save(str(cache))
        print(f"features of {len(paths)} photos x {1 + args.views} in {time.perf_counter() - t:.0f} s", flush=True)
    teacher_views = None
    if args.rel_anchor == "view":
        # Depends on the views only (run seed, framings, size), not on the checkpoint.
        tcache = Path(args.out, f"teacher-views-{run['teacher']}-s{run['seed']}-v{args.views}.pt")
        if tcache.exists():
            teacher_views = torch.load(tcache, weights_only=True)
        else:
            t = time.perf_counter()
            from copyscan.train.teacher import load_teacher

            teacher_views = collect_teacher_views(load_teacher(run["teacher"], "cpu"), args.data_dir, paths, int(config["input_size"]),
                                                  args.views, run["framings"], int(run["seed"]), args.workers)
            torch.save(teacher_views, tcache)
            print(f"teacher's views of {len(paths)} photos x {args.views} in {time.perf_counter() - t:.0f} s", flush=True)
    held_set = heldout.HeldOut.load(str(Path(args.run, "heldout.npz")))
    held = {k: head_fit.pooled(net, getattr(held_set, k), config["mean"], config["std"]) for k in ("refs", "hard", "plain")}
    held.update(n_copies=held_set.n_copies, kinds=held_set.hard_kinds)

    log_path = Path(args.out, "heads.jsonl")
    with open(log_path, "a") as log:
        own = head_fit.heldout_score(net.projector.weight.detach(), net.projector.bias.detach(), held)
        log.write(json.dumps({"head": f"checkpoint's own {net.out_dim}-d projector", **own}) + "\n")
        print(f"own projector ({net.out_dim}-d): hard {own['hard']['micro_ap']:.4f} plain {own['plain']['micro_ap']:.4f}")
        for dim in [int(d) for d in args.dims.split(",")]:
            settings = head_fit.HeadSettings(dim=dim, epochs=args.epochs, lr=args.lr, w_con=args.w_con,
                                             w_rel_orig=args.w_rel_orig, rel_anchor=args.rel_anchor,
                                             w_koleo=args.w_koleo, koleo_sample=args.koleo_sample, w_hn=args.w_hn,
                                             t_con=args.t_con)
            t = time.perf_counter()
            result = head_fit.fit_head(feats, teacher, settings, held, teacher_views=teacher_views)
            best = result.log[result.best_epoch]
            row = {"head": f"fitted {dim}-d{args.tag}", "settings": settings.__dict__, "best_epoch": result.best_epoch,
                   "seconds": round(time.perf_counter() - t, 1), **{k: best[k] for k in ("hard", "plain", "score")},
                   "epochs": [{k: r[k] for k in r if k not in ("hard", "plain")} | {"hard": r["hard"]["micro_ap"],
                              "plain": r["plain"]["micro_ap"]} for r in result.log]}
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"{dim}-d: best epoch {result.best_epoch}: hard {best['hard']['micro_ap']:.4f} "
                  f"plain {best['plain']['micro_ap']:.4f} ({row['seconds']} s)", flush=True)
            target = head_fit.with_head(copy.deepcopy(net), result.weight, result.bias)  # the same trunk, this head
            save_checkpoint(target, dict(for_new_projector(config), embed_dim=dim),
                            Path(args.out, f"head_{dim}{args.tag}.safetensors"))


if __name__ == "__main__":
    main()
