"""Running under ``torchrun``: which share of the work is this process's, and one summary.

``torchrun --nproc-per-node N napari-vmunet segment ...`` starts N copies; each reads its rank
from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK), takes every N-th input file
on its own device, and rank 0 gathers everyone's results for a single report. Without torchrun
this is one process with rank 0 of 1, and nothing is initialised. No home-made scheduler: the
launcher (and its multi-node rendezvous) is PyTorch's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: list[T]) -> list[T]:
        """This process's items: a disjoint round-robin share, the same on every run."""
        return items[self.rank :: self.world_size]

    def device(self, requested: str) -> str:
        """'auto'/'cuda' become this process's own GPU (cuda:LOCAL_RANK) under torchrun."""
        if self.world_size > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested


def init(backend: str = "gloo") -> Rank:
    """Join the process group torchrun prepared, if any. Segmentation only exchanges small
    Python objects at the end, for which gloo serves on CPUs and GPUs alike; training
    all-reduces gradients and passes "nccl" on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Rank()
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather(rank: Rank, item: Any) -> list[Any]:
    """Every process's ``item``, in rank order (all processes get the list)."""
    if rank.world_size == 1:
        return [item]
    items: list[Any] = [None] * rank.world_size
    dist.all_gather_object(items, item)
    return items


def finish(rank: Rank) -> None:
    if rank.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
