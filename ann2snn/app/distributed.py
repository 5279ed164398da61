"""Distributed training and evaluation under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m ann2snn train -c CONFIG`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`setup` joins them into one process group (``nccl``
on CUDA, ``gloo`` on CPU).  Without torchrun (or with ``WORLD_SIZE`` 1) nothing here does anything
and every helper is a cheap no-op, so the single-process code path is the same code.

Semantics, chosen so that N processes compute what one process computes:

- ``bs`` is the *global* batch: each of W processes takes ``bs / W`` samples per step (``bs``
  must be divisible by W).  DDP averages the gradients, so a step uses the same global batch and
  the same learning rate for any W.
- Training order: a :class:`~torch.utils.data.DistributedSampler` (seed ``cfg.seed``, reseeded per
  epoch with ``set_epoch``) for every W, W = 1 included.  Step k of epoch e then covers the same
  samples for any W (rank r takes every W-th sample of the same permutation), and the order after a
  ``--resume`` equals the order of an uninterrupted run, since it depends on (seed, epoch) only.
- BatchNorm: per-process statistics by default (as plain DDP); with ``sync_bn: true`` the batch
  statistics are reduced over all processes (``torch.nn.SyncBatchNorm`` on CUDA, the autograd-aware
  :class:`CPUSyncBatchNorm` here on CPU, which torch's SyncBatchNorm does not support).
- Evaluation: the single-process test loader's *batches* are dealt round robin (rank r gets batches
  r, r+W, r+2W, ...; :class:`ann2snn.shards.BatchShardSampler`).  Every sample is computed in exactly the batch it
  is in on one process, so its output is bit-identical, and the integer correct-counts summed over
  ranks (:mod:`ann2snn.shards`) equal the single-process counts exactly.  Losses are summed in
  float64 (equal up to summation order).
- Only rank 0 writes (logs, checkpoints, tables, progress bars); the other ranks log warnings only.
"""
from __future__ import annotations

import atexit
import logging
import os
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ann2snn.app.checkpoint import set_rng_state
from ann2snn.app.config import ConfigError
from ann2snn.app.data import build_datasets
from ann2snn.progress import set_enabled
from ann2snn.shards import BatchShardSampler, gather_objects

log = logging.getLogger("ann2snn")
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# process group
@dataclass
class Context:
    """Where this process stands: rank, world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_GROUP: Context | None = None  # set once this process has joined a process group


def select_device(cfg) -> torch.device:
    """The device ``cfg.device`` names (``auto``: CUDA when available, else the CPU)."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():

        raise ConfigError(f"device {cfg.device!r} was asked for but CUDA is not available here. "
                          "Use `--device cpu` or `--device auto`.")
    return torch.device(cfg.device)


def launched() -> bool:
    """True when started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def setup(cfg) -> Context:
    """The context for ``cfg``; joins the torchrun process group on the first call when launched.

    The device follows ``cfg.device`` (``select_device``), except that CUDA processes of a
    distributed run each take GPU ``LOCAL_RANK``.  Idempotent; the group is destroyed at exit.
    """
    global _GROUP
    device = select_device(cfg)
    if not launched():
        return Context(device=device)
    if _GROUP is None:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
        
                raise ConfigError(f"Process LOCAL_RANK {local} has no GPU: {torch.cuda.device_count()} are "
                                  "visible. Launch at most that many processes per node (--nproc_per_node), "
                                  "or pass --device cpu.")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
            backend = "nccl" if dist.is_nccl_available() else "gloo"
        else:
            backend = "gloo"
        if not dist.is_initialized():
            kw = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(backend, timeout=timedelta(minutes=30), **kw)
            atexit.register(shutdown)
        _GROUP = Context(rank, world, local, device, backend)
        if rank != 0:  # only rank 0 reports: warnings and errors still come through

            set_enabled(False)
            log.setLevel(logging.WARNING)
        log.info("distributed: %d processes, backend %s", world, backend)
    elif _GROUP.device.type != device.type:

        raise ConfigError(f"This process group runs on {_GROUP.device.type}; a {device.type} device "
                          "cannot join it. Use the same --device for every command of one launch.")
    return _GROUP


def context() -> Context:
    """The current context (a single-process one when no group was joined)."""
    return _GROUP if _GROUP is not None else Context()


def is_main() -> bool:
    return context().is_main


def active() -> bool:
    return _GROUP is not None and dist.is_initialized() and _GROUP.world_size > 1


def shutdown() -> None:
    """Leave the process group (at exit).  On gloo the ranks first wait for each other, for at most
    a minute (``monitored_barrier``, which cannot hang): a rank that tore its group down while
    another still sent to it aborted that one at exit ("terminate called without an active
    exception") in about one of many two-process test runs."""
    global _GROUP
    if dist.is_available() and dist.is_initialized():
        if _GROUP is not None and _GROUP.backend == "gloo" and _GROUP.world_size > 1:
            try:
                dist.monitored_barrier(timeout=timedelta(seconds=60))
            except Exception:  # another rank failed or is gone: leave anyway
                pass
        dist.destroy_process_group()
    _GROUP = None


def _comm_device() -> torch.device:
    return _GROUP.device if _GROUP is not None and _GROUP.backend == "nccl" else torch.device("cpu")


# --------------------------------------------------------------------------------------------
# collectives
def on_rank0(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result -- or its exception -- to every rank.

    For work that touches files (choosing the run directory, reading ``last.pt``): only rank 0
    needs to see the file system, and a user error raised there is raised on all ranks, so none
    of them waits forever in a later collective.
    """
    if not active():
        return fn()
    payload: list[Any] = [None]
    err: BaseException | None = None
    if _GROUP.is_main:
        try:
            payload[0] = ("ok", fn())
        except Exception as e:  # re-raised below on every rank
            err = e
            payload[0] = ("err", e)
    dist.broadcast_object_list(payload, src=0, device=_comm_device())
    kind, value = payload[0]
    if kind == "err":
        if err is not None:
            raise err
        raise value
    return value


def all_reduce_sum(*values: int | float) -> tuple:
    """Sum ints (exactly, int64) and floats (float64) over ranks; returns them in the same order."""
    if not active():
        return values
    ints = [i for i, v in enumerate(values) if isinstance(v, (int, np.integer)) and not isinstance(v, bool)]
    floats = [i for i in range(len(values)) if i not in ints]
    out = list(values)
    dev = _comm_device()
    for idx, dtype in ((ints, torch.int64), (floats, torch.float64)):
        if idx:
            t = torch.tensor([values[i] for i in idx], dtype=dtype, device=dev)
            dist.all_reduce(t)
            for i, v in zip(idx, t.tolist()):
                out[i] = v
    return tuple(out)


def all_finite(loss: torch.Tensor) -> bool:
    """True when ``loss`` is finite on every rank (all ranks then agree on stopping)."""
    ok = bool(torch.isfinite(loss.detach()).all())
    if not active():
        return ok
    bad = torch.tensor([0 if ok else 1], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(bad)
    return int(bad.item()) == 0


def barrier() -> None:
    if active():
        dist.barrier()


# --------------------------------------------------------------------------------------------
# data
def _loader_kwargs(loader: DataLoader) -> dict[str, Any]:
    kw = dict(num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
              timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
              multiprocessing_context=loader.multiprocessing_context,
              persistent_workers=loader.persistent_workers)
    if loader.num_workers > 0:
        kw["prefetch_factor"] = loader.prefetch_factor
    return kw


def shard_eval_loader(loader: DataLoader, ctx: Context | None = None) -> DataLoader:
    """This rank's share of an evaluation loader (whole batches, round robin); unchanged if W = 1."""
    ctx = ctx or context()
    if not ctx.enabled:
        return loader
    return DataLoader(loader.dataset, batch_sampler=BatchShardSampler(loader.batch_sampler, ctx.world_size,
                                                                       ctx.rank), **_loader_kwargs(loader))


def local_batch(cfg, ctx: Context) -> int:
    if cfg.bs % ctx.world_size:

        good = cfg.bs - cfg.bs % ctx.world_size or ctx.world_size
        raise ConfigError(f"bs is the global batch size and must be divisible by the number of processes "
                          f"({ctx.world_size}); got bs {cfg.bs}. Use e.g. `--bs {good}`, or launch a "
                          "number of processes that divides it.")
    return cfg.bs // ctx.world_size


def build_loaders(cfg, ctx: Context | None = None):
    """(train loader, test loader, info) for this rank (see the module docstring); the one
    place where loaders are made, single-process (W = 1) included.

    Training: a DistributedSampler over W replicas, seeded with ``cfg.seed``; :func:`set_epoch`
    must be called before each epoch.  The train loader has no generator of its own, so the
    worker seeds come from the global torch RNG, which checkpoints save and ``--resume``
    restores.  Test: the batches of a plain in-order loader, dealt out round robin.
    """

    ctx = ctx or context()
    bs = local_batch(cfg, ctx)
    train, test, info = build_datasets(cfg)
    common = dict(num_workers=cfg.workers, pin_memory=torch.cuda.is_available(),
                  persistent_workers=cfg.workers > 0)
    sampler = DistributedSampler(train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    train_loader = DataLoader(train, batch_size=bs, sampler=sampler, **common)
    test_loader = DataLoader(test, batch_size=cfg.eval_bs or cfg.bs, shuffle=False, **common)
    return train_loader, shard_eval_loader(test_loader, ctx), info


def set_epoch(loader, epoch: int) -> None:
    """Reseed the loader's shuffling for ``epoch`` (same order for the same seed and epoch)."""
    for s in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)
            return


# --------------------------------------------------------------------------------------------
# model
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are computed over the batches of all ranks.

    Works on any device and backend (torch's SyncBatchNorm needs a GPU).  Same parameters and
    buffers as BatchNorm1d/2d/3d, so state dicts are interchangeable; in eval mode, or without a
    process group, it is plain BatchNorm.  Sums are taken in float64 for accuracy.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        x64 = x.double()
        local = torch.cat([x64.sum(dims), (x64 * x64).sum(dims),
                           x64.new_tensor([x.numel() // max(c, 1)])])
        tot = _AllReduceSum.apply(local)
        n = tot[2 * c]
        mean = tot[:c] / n
        var = (tot[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1)) if float(n) > 1 else var
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def convert_sync_batchnorm(module: nn.Module, cls: type = CPUSyncBatchNorm) -> nn.Module:
    """Replace plain BatchNorm1d/2d/3d by ``cls`` (:class:`CPUSyncBatchNorm`, or
    ``nn.SyncBatchNorm`` on CUDA), sharing parameters and buffers, so an optimizer built before the
    conversion still holds the right tensors.  Exact types only: subclasses such as spikingjelly's
    multi-step BatchNorm (input [T, B, ...]) are left alone, unlike torch's own converter."""
    out = module
    if type(module) in _PLAIN_BN:
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, cls))
    return out


def wrap_model(model: nn.Module, cfg, ctx: Context | None = None) -> nn.Module:
    """The module to train: ``model`` itself single-process, DDP around it when distributed.

    With ``cfg.sync_bn`` BatchNorm layers are converted in place (their parameters and buffers stay
    the same objects, so the optimizer and ``model.state_dict()`` are unaffected).  Keep using
    ``model`` (not the wrapper) for evaluation and checkpoints.
    """
    ctx = ctx or context()
    if not ctx.enabled:
        return model
    if getattr(cfg, "sync_bn", False):
        model = convert_sync_batchnorm(model, nn.SyncBatchNorm if ctx.device.type == "cuda" else CPUSyncBatchNorm)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ctx.device.index if ids else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before evaluating, so all
    ranks evaluate the model that rank 0 checkpoints."""
    if not active():
        return
    for b in unwrap(model).buffers():
        dist.broadcast(b, src=0)


# --------------------------------------------------------------------------------------------
# randomness
def seed_rank(seed: int, ctx: Context | None = None) -> None:
    """Decorrelate the random streams of ranks > 0 (augmentation, dropout); rank 0 keeps the
    single-process stream.  Call after the model is built (DDP copies rank 0's weights anyway)."""
    ctx = ctx or context()
    if ctx.rank > 0:
        s = seed + 1000003 * ctx.rank
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)


def rng_payload(state: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint entries for the RNG: ``rng`` (rank 0's state) and, when distributed,
    ``rng_ranks`` (every rank's, in rank order).  A collective: call on every rank."""
    states = gather_objects(state)
    return {"rng": states[0], **({"rng_ranks": states} if len(states) > 1 else {})}


def restore_rng(ckpt: dict[str, Any], seed: int, ctx: Context | None = None) -> None:
    """Restore this rank's RNG state from a checkpoint: its own state when the checkpoint was
    written by as many processes as now run; otherwise rank 0 takes the saved ``rng`` and the other
    ranks reseed from (seed, epoch), which is reproducible but not the uninterrupted stream."""

    ctx = ctx or context()
    ranks = ckpt.get("rng_ranks")
    if ranks is not None and len(ranks) == ctx.world_size:
        set_rng_state(ranks[ctx.rank])
    elif ctx.rank == 0:
        set_rng_state(ckpt["rng"])
    else:
        seed_rank(seed + int(ckpt.get("epoch", 0)), ctx)


__all__ = ["Context", "setup", "context", "is_main", "active", "launched", "shutdown", "on_rank0",
           "all_reduce_sum", "all_finite", "barrier",
           "shard_eval_loader", "build_loaders", "set_epoch", "local_batch",
           "CPUSyncBatchNorm", "convert_sync_batchnorm", "wrap_model", "unwrap", "sync_buffers",
           "seed_rank", "rng_payload", "restore_rng"]
