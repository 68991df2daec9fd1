"""Data-parallel ``fit`` under torchrun: which rank this is, and a sampler that deals each epoch to the ranks.

``fit`` switches to DistributedDataParallel by itself when ``torch.distributed`` is initialised with more
than one process (the user's script, started by ``torchrun``, calls ``init_process_group``, or
``init_from_env()`` here does it: gloo on CPU; NCCL on CUDA, with gloo beside it for CPU tensors).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes (once); returns (rank, world size); (0, 1) outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.device(device).type == "cuda":  # NCCL for the model, gloo for the CPU-side metric reductions
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend="cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group(backend="gloo")
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_mean(value: float) -> float:
    """The mean of ``value`` over all ranks (itself when not distributed)."""
    rank, world = rank_and_world()
    if world == 1:
        return value
    # A user's own NCCL-only group cannot reduce CPU tensors: reduce on this process's GPU then.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart between DDP forwards)."""
    if rank_and_world()[1] > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


class EpochShardSampler(Sampler[int]):
    """Each epoch: ``samples`` seeded indices (reshuffled passes over the data), dealt round-robin to the ranks.

    Every rank draws the same global order (same seed and epoch) and keeps every ``world``-th index, padding
    the order so that all ranks get the same number of items (DistributedSampler's convention).
    """

    def __init__(self, n: int, samples: int | None, seed: int, rank: int, world: int) -> None:
        self.n, self.samples, self.seed, self.rank, self.world = n, samples or n, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.samples / self.world)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = len(self) * self.world
        order = torch.cat([torch.randperm(self.n, generator=g) for _ in range(math.ceil(total / self.n))])[:total]
        return iter(order[self.rank::self.world].tolist())
