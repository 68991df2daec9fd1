"""torch.distributed for ``torchrun``: who this process is, and the few collective steps training needs.

    dist = Dist.from_env("cpu")      # gloo on CPU, NCCL (+ gloo for CPU tensors) on CUDA; a plain run is rank 0 of 1
    with dist.main_first():          # rank 0 builds the caches, the others then read them
        ...
    dist.all_mean(values)            # losses for the log, averaged over ranks

No scheduler of our own: ``torchrun`` starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist

# Rank 0 trains the VAE and encodes the data set alone while the other ranks wait at a barrier: hours at
# the paper's size, far past torch's default collective timeout (10 min for NCCL).
TIMEOUT = timedelta(hours=24)


def init_process_group(device: str | torch.device) -> None:
    """gloo on CPU; on CUDA, NCCL for GPU tensors and gloo for the CPU ones (logged losses, stop flags), each
    process on its own GPU (LOCAL_RANK)."""
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch_dist.init_process_group(backend="cpu:gloo,cuda:nccl", timeout=TIMEOUT)
    else:
        torch_dist.init_process_group(backend="gloo", timeout=TIMEOUT)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not started by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str | torch.device = "cpu") -> Dist:
        """Join the process group torchrun describes in the environment (once), or stand alone."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not torch_dist.is_initialized():
            init_process_group(device)
        return cls(rank=torch_dist.get_rank(), world=torch_dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str | torch.device) -> torch.device:
        """``cuda`` becomes this process's own GPU (``cuda:LOCAL_RANK``); other devices stay as they are."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None and self.active:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (writing shared caches); the others run it after, finding them."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.active:
            value = value.clone()
            torch_dist.all_reduce(value)
        return value

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        return self.all_sum(value) / self.world

    def local_slice(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of ``n`` (``n`` must divide evenly)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def torchrun_shard() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when started by torchrun with more than one process, else None: the shard of a
    job (``synthaug pregenerate``) that each process makes on its own, without a process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def process_device(device: str) -> str:
    """``cuda`` under torchrun becomes this process's own GPU (``cuda:LOCAL_RANK``); other devices stay."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device
