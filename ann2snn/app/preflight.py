"""Checks made before a model is built and trained: that it fits in memory, and that it runs on
the data's input size.  Both refuse with a :class:`~ann2snn.app.config.ConfigError` (exit 2 through
the CLI) instead of an allocator traceback or a failure in the first forward pass.

- **Memory.**  The model is first built on PyTorch's ``meta`` device (shapes only: no memory is
  allocated, so a 1 TB model costs nothing to describe) and its parameters and buffers are
  summed.  Training holds the weights, their gradients and AdamW's two moment estimates: about
  **4 × the parameter bytes** (+ the buffers); conversion holds the ANN, its converted copy and
  ``verify``'s float64 copies of both, as much or more, so one rule serves both.  Activations
  are not counted (they depend on the batch size): the estimate is a lower bound, and a model
  over it cannot run.  It is compared with the memory available
  (:func:`ann2snn.app.data.host_memory`: ``MemAvailable`` of /proc/meminfo, or less under a
  cgroup limit or an address-space limit, ``ulimit -v``); on CUDA
  also the free memory of the GPU (``torch.cuda.mem_get_info``), while the CPU must hold the
  weights once (the model is built there before it moves).
- **Input size.**  One dry forward pass of a 1-sample zero input on the meta model (instant);
  where that fails, a copy of the real model, in eval mode, confirms (the meta device lacks a
  few operations, e.g. ``.item()``).  A failure names the model, the input size, torch's reason and
  the smallest square size that runs, found by building the model on the meta device at larger
  sizes.  Generic, so no per-model list of minimum sizes is kept.

Random streams (torch, numpy, ``random``) are left as they were, so a seeded run draws the same
weights as without these checks.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import random
from typing import Callable

import numpy as np
import torch
from torch import nn

from ann2snn.app.config import ConfigError
from ann2snn.app.data import host_memory

log = logging.getLogger("ann2snn")

TRAINING_FACTOR = 4  # weights + gradients + AdamW's exp_avg and exp_avg_sq, each the parameters' size
MAX_PROBE_SIZE = 1024  # the largest square input tried when looking for the smallest one a model accepts
SIZE_FIX = "Use a smaller --dim, --depth or --mlp_ratio (or a smaller model)."


@contextlib.contextmanager
def kept_rng():
    """Run a block without moving torch's, numpy's or Python's random streams."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def meta_model(build: Callable[[], nn.Module]) -> nn.Module | None:
    """``build()`` on the meta device, or None where the factory needs real values."""
    try:
        with kept_rng(), torch.device("meta"):
            return build()
    except Exception as err:  # e.g. a factory that reads a tensor's value: no estimate, the real build decides
        log.debug("preflight: the model cannot be built on the meta device (%s: %s)", type(err).__name__, err)
        return None


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f}"


def check_memory(meta: nn.Module, name: str, device: torch.device) -> None:
    """Refuse a model whose training footprint (see the module docstring) exceeds the memory of
    ``device`` (and, on CUDA, whose weights exceed the host's)."""
    n = sum(p.numel() for p in meta.parameters())
    weights = sum(p.numel() * p.element_size() for p in meta.parameters())
    buffers = sum(b.numel() * b.element_size() for b in meta.buffers())
    need = TRAINING_FACTOR * weights + buffers
    dtype = next((p.dtype for p in meta.parameters()), torch.float32)
    head = (f"the model {name} has {_count(n)} parameters (≈ {_bytes(weights + buffers)} as "
            f"{str(dtype).replace('torch.', '')}; training needs ≈ {_bytes(need)}: weights, gradients and "
            f"AdamW's two moments, {TRAINING_FACTOR}× the parameters)")
    limits = []
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            limits.append((need, free, f"{device} has {_bytes(free)} free"))
        except (RuntimeError, AssertionError) as err:
            log.debug("preflight: no free-memory figure for %s (%s)", device, err)
    host = host_memory()
    if host is not None:
        host_need = weights + buffers if device.type == "cuda" else need
        limits.append((host_need, host[0], f"this machine has {_bytes(host[0])} {host[1]}"))
    for wanted, have, where in limits:
        if wanted > have:
            raise ConfigError(f"{head[0].upper()}{head[1:]}, but {where}. {SIZE_FIX}")
    log.debug("preflight: %s needs ≈ %s for training", name, _bytes(need))


def built(build: Callable[[], nn.Module], name: str) -> nn.Module:
    """``build()``; an allocation that fails anyway (the estimate is a lower bound) is a ConfigError."""
    try:
        return build()
    except (MemoryError, RuntimeError) as err:
        text = str(err)
        if not (isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text):
            raise
        first = text.splitlines()[0][:200] if text else type(err).__name__
        raise ConfigError(f"Building the model {name} ran out of memory ({first}). {SIZE_FIX}") from None


def forward_error(model: nn.Module, shape: tuple[int, ...], device: str | torch.device,
                  dtype: torch.dtype = torch.float32) -> Exception | None:
    """The exception one forward pass of a zero input of ``shape`` (and ``dtype``: long for token
    ids) raises, or None.  ``model`` is put in eval mode and left so: pass a meta model or a copy
    (a directly trained SNN keeps its neurons' state after a pass, which must not reach training)."""
    model.eval()
    try:
        with kept_rng(), torch.no_grad():
            model(torch.zeros(shape, device=device, dtype=dtype))
        return None
    except Exception as err:  # any failure of the dry run is reported (KeyboardInterrupt is not caught)
        return err


def smallest_input(build_at: Callable[[int], nn.Module], channels: int, start: int) -> int | None:
    """The smallest square image size ≥ ``start`` whose model (built at that size on the meta
    device) runs a forward pass, or None up to :data:`MAX_PROBE_SIZE`; doubling, then bisection."""
    def runs(size: int) -> bool:
        m = meta_model(lambda: build_at(size))
        return m is not None and forward_error(m, (1, channels, size, size), "meta") is None

    low, high = start, start
    while not runs(high):
        if high >= MAX_PROBE_SIZE:
            return None
        low, high = high, min(high * 2, MAX_PROBE_SIZE)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if runs(mid) else (mid, high)
    return high


def check_input(model: nn.Module, meta: nn.Module | None, name: str, info,
                build_at: Callable[[int], nn.Module]) -> None:
    """Refuse a model that does not run on the data's ``info.in_channels × img_size²`` input (one
    dry forward pass, see the module docstring)."""
    example = info.example_input()
    shape, dtype = tuple(example.shape), example.dtype
    if meta is not None and forward_error(meta, shape, "meta", dtype) is None:
        return
    p = next(model.parameters(), None)
    # on a copy: the model keeps its mode, and no neuron state from the pass reaches training
    err = forward_error(copy.deepcopy(model), shape, p.device if p is not None else "cpu", dtype)
    if err is None:
        return
    text = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    if info.is_text:
        raise ConfigError(f"The model {name} does not run on the {info.input_text()} of {info.name}: its forward pass "
                          f"fails with {type(err).__name__}: {text!r}. Check `--context` against the model's longest "
                          "sequence.")
    least = smallest_input(build_at, info.in_channels, info.img_size + 1)
    size = f"{info.in_channels}×{info.img_size}×{info.img_size}"
    need = (f"It runs on images of {least}×{least} or larger. " if least else "")
    raise ConfigError(f"The model {name} does not run on the {size} images of {info.name}: its forward pass "
                      f"fails with {type(err).__name__}: {text!r}. {need}Use a dataset with larger images, or a model "
                      "that adapts to small ones (e.g. torchvision:resnet18 or the built-in transformer).")


__all__ = ["MAX_PROBE_SIZE", "TRAINING_FACTOR", "built", "check_input", "check_memory", "forward_error",
           "host_memory", "kept_rng", "meta_model", "smallest_input"]
