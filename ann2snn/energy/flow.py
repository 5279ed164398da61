"""Which tensors of a step are analog (real-valued), tracked through every torch op.

The energy convention prices an operation by what drives it: spikes cost accumulates, analog
values multiply-accumulates (see :mod:`ann2snn.energy`).  Within one time step, the image, a
float function's output (softmax, LayerNorm, ...) and a product's output are analog, and so is
anything computed from them by any torch op, until a spiking layer re-encodes it as spikes.  A
module hook sees only module boundaries, so the tracking runs as a ``TorchFunctionMode`` (torch's
``__torch_function__`` protocol), which sees every op, functional or method, in between.

Tensors are keyed by their storage, so views (a reshape, a slice, a transpose) of an analog tensor
are analog too; the tracked tensors are kept alive for the step so no storage is reused under
another tensor meanwhile.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode


def storage_of(x: torch.Tensor) -> int:
    """The key of ``x`` and of every view of it: its storage's address."""
    return x.untyped_storage().data_ptr()


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``obj`` (a tensor, or lists, tuples and dicts of them, nested)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from tensors_in(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors_in(o)


class AnalogFlow(TorchFunctionMode):
    """The analog tensors of the current step: any torch op with an analog argument yields analog
    tensors, until :meth:`spikes` marks a spiking layer's output as spikes again.

    Enter it (``with flow:``) around the simulation.  ``off`` stops the tracking (a paused
    meter); ``busy`` stops it while a hook runs (its own tensor ops are bookkeeping)."""

    def __init__(self) -> None:
        super().__init__()
        self.analog: dict[int, torch.Tensor] = {}  # storage → tensor, kept alive for the step
        self.off = False
        self.busy = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        analog = self.analog
        if analog and not self.busy and not self.off and any(storage_of(t) in analog
                                                             for t in tensors_in((args, kwargs))):
            self.mark(out)
        return out

    def start_step(self, x: torch.Tensor) -> None:
        """A new step reads the input ``x``: it is the only analog tensor so far."""
        self.analog = {storage_of(x): x}

    def clear(self) -> None:
        self.analog = {}

    def mark(self, obj: Any) -> None:
        """Every tensor in ``obj`` is analog (a float function's or a product's output)."""
        for t in tensors_in(obj):
            self.analog[storage_of(t)] = t

    def spikes(self, x: torch.Tensor) -> None:
        """``x`` is a spiking layer's output: spikes, whatever its input was."""
        self.analog.pop(storage_of(x), None)

    def is_analog(self, x: torch.Tensor) -> bool:
        return storage_of(x) in self.analog


__all__ = ["AnalogFlow", "storage_of", "tensors_in"]
