"""Everything a run needs to know about torch.distributed, in one place.

Started by `torchrun --nproc_per_node=N -m train ...`, each process (rank) finds RANK, WORLD_SIZE and
LOCAL_RANK in its environment, joins the process group (gloo on CPU, nccl on CUDA) and trains a
DistributedDataParallel copy of the model:

    - every rank draws the same shuffled order from the same seed, splits each global batch of
      `--batch-size` samples into `world_size` disjoint shards and takes its own (`shard`), so the
      optimiser sees the same batch size and the same averaged gradient as a single process does:
      `--batch-size` and `--lr` mean the same thing at any world size;
    - per-step numbers and test results are summed over ranks (`all_sum`);
    - a failure on one rank is shared with all (`agree`), so they stop together instead of
      waiting forever in the next collective.

Started without torchrun, `Dist()` is a world of one and every function here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as torch_dist


@dataclass
class Dist:
    """Who this process is in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, plots and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(use_cuda: bool, timeout_s: float = 600.0) -> Dist:
    """Join the process group when started by torchrun; a world of one otherwise."""
    if not launched_by_torchrun():
        return Dist()
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
        )
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def teardown(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def shard(indices: torch.Tensor, dist: Dist) -> torch.Tensor:
    """This rank's part of one global batch of indices: every world_size-th, starting at its rank."""
    return indices[dist.rank :: dist.world_size]


def all_sum(values: torch.Tensor, dist: Dist) -> torch.Tensor:
    """`values` summed over all ranks (in place), returned for convenience."""
    if dist.enabled:
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.SUM)
    return values


def agree(error: Optional[str], dist: Dist) -> Optional[str]:
    """The first rank's error message if any rank has one, else None, on every rank.

    Call it at the same point on all ranks; it is how a failure on one rank stops the others.
    """
    if not dist.enabled:
        return error
    errors: list = [None] * dist.world_size
    torch_dist.all_gather_object(errors, error)
    for rank, message in enumerate(errors):
        if message is not None:
            return message if rank == dist.rank or dist.world_size == 1 else f"(rank {rank}) {message}"
    return None


def gather(obj, dist: Dist) -> list:
    """`obj` from every rank, in rank order (a list of one without torchrun)."""
    if not dist.enabled:
        return [obj]
    objects: list = [None] * dist.world_size
    torch_dist.all_gather_object(objects, obj)
    return objects


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch_dist.barrier()
