"""Evaluation over shards of a test set: each torchrun rank evaluates some batches, and the
counts are summed over the ranks.

A loader is *sharded* when its batch sampler is a :class:`BatchShardSampler` (rank r of W takes
whole batches r, r+W, ... -- every sample is computed in exactly the batch it would be in a single
process, so integer counts summed over the ranks equal the single-process counts exactly) or its
sampler a ``DistributedSampler`` with more than one replica.  The sums use ``torch.distributed``
directly: they need an initialised process group (which the application sets up under torchrun)
and nothing else.  Single-process, every function here is the identity.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


class BatchShardSampler(Sampler[list[int]]):
    """Rank r of W takes batches r, r+W, r+2W, ... of ``batch_sampler``, unchanged and unpadded."""

    def __init__(self, batch_sampler, num_replicas: int, rank: int):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.batch_sampler, self.num_replicas, self.rank = batch_sampler, int(num_replicas), int(rank)

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batch_sampler):
            if i % self.num_replicas == self.rank:
                yield batch

    def __len__(self) -> int:
        return len(range(self.rank, len(self.batch_sampler), self.num_replicas))

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)


def world_size() -> int:
    """The number of processes in the default group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_sharded(loader) -> bool:
    """True for evaluation loaders that hold only this rank's part of the data, in a group of more
    than one process."""
    if world_size() < 2:
        return False
    sampler = getattr(loader, "batch_sampler", None)
    if isinstance(sampler, BatchShardSampler):
        return sampler.num_replicas > 1
    inner = getattr(loader, "sampler", None)
    return isinstance(inner, DistributedSampler) and inner.num_replicas > 1


def _device() -> torch.device:
    """Where collectives' tensors live: the current GPU under NCCL, else the CPU (gloo)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_ints(values: list[int]) -> list[int]:
    """Sum integers over the ranks, exactly (int64)."""
    if world_size() < 2:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def sum_floats(values: list[float]) -> list[float]:
    """Sum floats over the ranks (float64)."""
    if world_size() < 2:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` single-process)."""
    n = world_size()
    if n < 2:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj)
    return out


__all__ = ["BatchShardSampler", "gather_objects", "is_sharded", "sum_floats", "sum_ints", "world_size"]
