"""DDP under torchrun: one process per GPU (or per CPU share with the gloo backend).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them the run is a single process and
every helper here is a no-op. Queues and banks are filled with the keys of all processes, in
rank order, so they stay identical on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def local_device(device: torch.device, d: Dist) -> torch.device:
    if device.type == "cuda" and d.active:
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return device


@torch.no_grad()
def gather(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """All ranks' rows of `x`, concatenated in rank order (no gradient)."""
    if not d.active:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(d.world)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def mean_across(values: dict[str, float], d: Dist, device: torch.device) -> dict[str, float]:
    if not d.active or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / d.world for k, v in zip(keys, t.tolist())}


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()
