# Experiment: a residual MLP head (linear PCA path + zero-initialised MLP branch) vs the linear head,
# fitted on the cached 12-view trunk features, same losses as head_fit.fit_head.
import json, math, random, sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, "/work/main")
from copyscan.train import head_fit, heldout
from copyscan.train.losses import relational_kl
from copyscan.models.checkpoint import load_checkpoint, read_config
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
hidden = int(sys.argv[1]); dim = int(sys.argv[2])
feats = head_fit.Features.load("/work/runs/heads_v12/features-aee64df5b53f26b4-v12.pt")
teacher = torch.from_numpy(np.load("/work/runs/hard160_v3b/teacher_orig.npy"))
ck = "/work/runs/final/trunk.safetensors"
config = read_config(ck); net = load_checkpoint(ck, "cpu").net.float().eval()
hp = "/work/runs/mlp/held.pt"
try:
    held = torch.load(hp)
except FileNotFoundError:
    hs = heldout.HeldOut.load("/work/runs/hard160_v3b/heldout.npz")
    held = {k: head_fit.pooled(net, getattr(hs, k), config["mean"], config["std"]) for k in ("refs", "hard", "plain")}
    held.update(n_copies=hs.n_copies, kinds=hs.hard_kinds); torch.save(held, hp)

class Head(nn.Module):
    def __init__(self, fdim, dim, hidden):
        super().__init__()
        w, b = head_fit.pca_init(feats.originals, dim)
        self.lin = nn.Linear(fdim, dim); self.lin.weight.data.copy_(w); self.lin.bias.data.copy_(b)
        self.mu = nn.Parameter(feats.originals.mean(0), requires_grad=False)
        self.sd = nn.Parameter(feats.originals.std(0) + 1e-6, requires_grad=False)
        self.up = nn.Linear(fdim, hidden); self.down = nn.Linear(hidden, dim)
        nn.init.zeros_(self.down.weight); nn.init.zeros_(self.down.bias)
    def forward(self, x):
        return F.normalize(self.lin(x) + self.down(F.gelu(self.up((x - self.mu) / self.sd))), dim=1)

def score(h):
    with torch.no_grad():
        refs = h(held["refs"])
        hard = heldout.score(refs, h(held["hard"]), held["n_copies"], held.get("kinds"))
        plain = heldout.score(refs, h(held["plain"]), held["n_copies"])
    return hard["micro_ap"], plain["micro_ap"]

torch.manual_seed(0)
h = Head(feats.originals.shape[1], dim, hidden)
lr, epochs, batch = float(sys.argv[4]) if len(sys.argv) > 4 else 5e-4, 8, 512
wd = float(sys.argv[5]) if len(sys.argv) > 5 else 1e-5
opt = torch.optim.AdamW([p for p in h.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
t = F.normalize(teacher.float(), dim=1); t_sims = t @ t.T
n, m = feats.originals.shape[0], feats.views.shape[0]
total = epochs * math.ceil(m / batch); step = 0; rng = random.Random(0)
print("start", score(h), flush=True)
for ep in range(1, epochs + 1):
    t0 = time.time(); order = list(range(m)); rng.shuffle(order)
    for i in range(0, m, batch):
        idx = torch.tensor(order[i:i + batch])
        for g in opt.param_groups: g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
        o = h(feats.originals); v = h(feats.views[idx]); own = feats.owner[idx]
        sims = v @ o.T; slot = F.one_hot(own, n).bool()
        loss = 2.0 * F.cross_entropy(sims / 0.07, own) + relational_kl(t_sims[own].masked_fill(slot, float("-inf")), sims.masked_fill(slot, float("-inf")), 0.04)
        opt.zero_grad(); loss.backward(); opt.step(); step += 1
    print(ep, [round(x, 4) for x in score(h)], round(time.time() - t0), "s", flush=True)
