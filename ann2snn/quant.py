"""QCFS: the quantization-clip-floor-shift activation.

Bu, Fang, Ding, Dai, Yu, Huang, "Optimal ANN-SNN Conversion for High-accuracy and Ultra-low-latency
Spiking Neural Networks", ICLR 2022.  One learnable threshold λ per activation site and L levels:

    y = λ · clamp(floor(x·L/λ + 1/2) / L, 0, 1)          values in {0, λ/L, …, λ}

Backward: the floor is straight-through (gradient 1), the clamp passes the gradient where the
quantized value lies inside [0, 1] and blocks it outside, and λ receives the gradient of the whole
expression (``q − x/λ`` inside the range, ``1`` above it, ``0`` below).  The forward and backward
are written as one autograd function so that training stores a single mask, not the
intermediates of five elementwise ops.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("ann2snn")


def qcfs(x: torch.Tensor, lam: torch.Tensor, levels: int) -> torch.Tensor:
    """Reference QCFS forward (no autograd tricks); the module below must agree with it."""
    return lam * torch.clamp(torch.floor(x * levels / lam + 0.5) / levels, 0.0, 1.0)


class _QCFSFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor, levels: int) -> torch.Tensor:
        s = torch.floor(x * (levels / lam) + 0.5) / levels  # quantized value in units of λ, unclipped
        inside = (s >= 0) & (s <= 1)
        q = s.clamp(0.0, 1.0)
        ctx.save_for_backward(x, lam, inside, q)
        return q * lam

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, lam, inside, q = ctx.saved_tensors
        grad_x = grad_lam = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out * inside.to(grad_out.dtype)
        if ctx.needs_input_grad[1]:
            # d/dλ [λ·clamp(s)] with d s/dλ = -x/λ² · (L/L) through the straight-through floor.
            dlam = q - inside.to(x.dtype) * (x / lam)
            grad_lam = (grad_out * dlam).sum().reshape(lam.shape)
        return grad_x, grad_lam, None


class QCFS(nn.Module):
    """QCFS activation with a learnable threshold ``lam`` (λ) and ``levels`` (L) steps."""

    def __init__(self, levels: int = 4, lambda_init: float = 8.0):
        super().__init__()
        if levels < 1:
            raise ValueError(f"QCFS needs levels >= 1, got {levels}")
        self.levels = int(levels)
        self.lam = nn.Parameter(torch.tensor(float(lambda_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.lam.to(x.dtype) if x.dtype != self.lam.dtype else self.lam
        return _QCFSFunction.apply(x, lam, self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, lam={float(self.lam.detach()):.4g}"


def quantize(model: nn.Module, levels: int, lambda_init: float = 8.0) -> nn.Module:
    """Replace every ``nn.ReLU`` module of ``model`` by its own :class:`QCFS` site with ``levels``
    levels and initial threshold ``lambda_init``, in place (done before training: QCFS's
    "replace the activation by the quantization-clip-floor-shift function").  Returns ``model``;
    the replaced module names are logged.  A model with no ReLU module is refused."""
    names = [name for name, m in model.named_modules() if name and isinstance(m, nn.ReLU)]
    if not names:
        raise ValueError(f"quantize: {type(model).__name__} has no nn.ReLU module to replace by QCFS")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, QCFS(levels, lambda_init))
    log.info("quantize: %d ReLU site(s) -> QCFS(L=%d)", len(names), levels)
    return model


__all__ = ["QCFS", "qcfs", "quantize"]
