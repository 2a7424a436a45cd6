"""The losses of RDCD (relational distillation, MoCo contrast, hard negatives) and of SSCD.

RDCD (Kim, Woo, Nang, WACV 2025) trains a compact student with
    L = w_rel * L_rel + w_con * L_con + w_hn * L_hn.

* L_rel, relational distillation: each sample's similarities to a FIFO bank of other samples,
  softened at T = 0.04, must follow the teacher's: KL(p_teacher || p_student). RDCD's own code
  gives its student a feature of the teacher's width and scores it against the bank of teacher
  embeddings. Our student's pre-projector feature (GeM over the trunk, e.g. 1280-d) has another
  width than the teacher's 512-d, and a copyscan checkpoint has a single projector; so, as in
  CompRess's two-queue form, the bank keeps for every sample both the teacher embedding and the
  student's L2-normalised pre-projector feature of the same view, and each side is scored
  against its own half: p_teacher = softmax(t . T_bank / T), p_student = softmax(f . S_bank / T).
* L_con, MoCo v2 on the compact embedding: the momentum encoder's key of the other view is the
  positive, a queue of past keys the negatives, T = 0.07.
* L_hn = -log(1 - max similarity of the query to the queue): pushes away the nearest negative,
  against dimensional collapse.

Without a teacher, SSCD: InfoNCE at T = 0.05 over both views of the batch, plus the KoLeo
differential-entropy term (-mean log distance to the nearest other instance), weight 30.

Queues are filled before the losses read them and each sample's own slots are left out, so the
other samples of the current batch count from the first step on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


class EmbeddingQueue:
    """A FIFO ring of L2-normalised rows; `filled` says how many are real."""

    def __init__(self, size: int, dim: int, device: torch.device):
        self.rows = torch.zeros(size, dim, device=device)
        self.ptr = 0
        self.filled = 0

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    def push(self, x: torch.Tensor) -> torch.Tensor:
        """Add rows (oldest overwritten); returns the slots they went to."""
        n = x.shape[0]
        if n > self.size:
            raise ValueError(f"a queue of {self.size} cannot take {n} rows at once; make it larger than the global batch")
        slots = (torch.arange(n, device=self.rows.device) + self.ptr) % self.size
        self.rows[slots] = x.detach().to(self.rows.dtype)
        self.ptr = (self.ptr + n) % self.size
        self.filled = min(self.size, self.filled + n)
        return slots

    def scores(self, q: torch.Tensor, own_slots: torch.Tensor | None = None) -> torch.Tensor:
        """q . rows^T with empty slots and each query's own slot set to -inf."""
        s = q.float() @ self.rows[: self.filled].T
        if own_slots is not None:
            s = s.clone()
            s[torch.arange(q.shape[0], device=q.device), own_slots] = NEG_INF
        return s

    def state_dict(self) -> dict:
        return {"rows": self.rows.cpu(), "ptr": self.ptr, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        self.rows.copy_(state["rows"])
        self.ptr, self.filled = int(state["ptr"]), int(state["filled"])


def relational_kl(teacher_scores: torch.Tensor, student_scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), summed over the bank, mean over samples.

    -inf entries (a sample's own slot) get probability 0 on both sides and add nothing.
    """
    log_p_t = F.log_softmax(teacher_scores / temperature, dim=1)
    log_p_s = F.log_softmax(student_scores / temperature, dim=1)
    p_t = log_p_t.exp()
    terms = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), torch.zeros_like(p_t))
    return terms.sum(dim=1).mean()


def moco_contrast(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the positive key among [positive, negatives] (MoCo's InfoNCE)."""
    positive = (q.float() * k.float()).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def hard_negative(negatives: torch.Tensor) -> torch.Tensor:
    """-log(1 - the query's highest similarity to a negative); 0 with no negatives yet."""
    finite = torch.isfinite(negatives)
    if negatives.shape[1] == 0 or not finite.any():
        return negatives.new_zeros(())
    nearest = negatives.masked_fill(~finite, -1.0).max(dim=1).values
    # Clamped as in RDCD's code: a duplicate image in the queue must not give an infinite loss.
    return -(1.0 - nearest).clamp(min=1e-3).log().mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SSCD's InfoNCE: 2B embeddings, each one's positive is its other view, the rest negatives."""
    z = torch.cat([a, b]).float()
    n = a.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(NEG_INF)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def koleo(a: torch.Tensor, b: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """-mean log(distance to the nearest embedding of another instance) (Sablayrolles et al.).

    `a`, `b`: two views of the same n instances; `b=None`: one embedding per instance (the same
    value as `koleo(a, a)`, on an n x n distance matrix instead of 2n x 2n)."""
    n = a.shape[0]
    z = a.float() if b is None else torch.cat([a, b]).float()
    instance = torch.arange(n) if b is None else torch.cat([torch.arange(n), torch.arange(n)])
    instance = instance.to(z.device)
    dist = torch.cdist(z, z)
    dist = dist.masked_fill(instance[:, None] == instance[None, :], float("inf"))
    return -torch.log(dist.min(dim=1).values + eps).mean()
