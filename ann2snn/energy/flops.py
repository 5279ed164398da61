"""Dense operation counts: multiply-accumulates per module for one image, and of one product.

The papers' "FLOPs" are MACs of the dense ANN layer (Zhou et al., "Spikformer", ICLR 2023; Yao et
al., "Spike-driven Transformer", NeurIPS 2023); torch's ``FlopCounterMode`` counts a MAC as two
FLOPs, so its counts are halved here.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ann2snn._checks import describe
from ann2snn.neurons import SpikeEinsum, SpikeMul


@torch.no_grad()
def count_flops(model: nn.Module, sample: torch.Tensor, run: Callable[[torch.Tensor], Any] | None = None,
                scope: str = "") -> dict[str, int]:
    """MACs for one image of every module (qualified name → MACs; "" = the total).

    Counted by ``FlopCounterMode`` (which includes children in a parent's count) while
    ``run(sample[:1])`` runs (default: ``model(sample[:1])``); torch's FLOPs are halved into MACs.
    Names are relative to the sub-module ``scope`` of ``model`` (``model`` is what ``run`` calls).
    """
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            (run or model)(sample[:1])
    finally:
        model.train(was_training)
    prefix = type(model).__name__ + (f".{scope}" if scope else "")
    out: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        total = sum(ops.values()) // 2
        if key == "Global":
            out[""] = total
        elif key.startswith(prefix + "."):
            out[key[len(prefix) + 1:]] = total
    out.setdefault("", 0)
    return out


def flops_per_module(sim, sample: torch.Tensor) -> dict[str, int]:
    """Per-image MACs per module of the stepped network ``sim.snn.net``, counted on one step of it
    (which the simulator runs).  One step has the ANN's layers and shapes, and its module names are
    the ones the meter reports, also for operators that conversion added (a functional ``@`` is a
    ``SpikeMatMul`` module only in the SNN); a directly trained SNN's own forward would run all T
    steps.  The tests check that the count equals the ANN's where both have the module."""
    return count_flops(sim.snn, sample, run=sim.first_step, scope="net")


def matmul_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    """MACs of the dense ``a @ b`` (batch dimensions broadcast, as ``torch.matmul``)."""
    a = a.unsqueeze(0) if a.dim() == 1 else a
    b = b.unsqueeze(-1) if b.dim() == 1 else b
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return math.prod(batch) * a.shape[-2] * a.shape[-1] * b.shape[-1]


def einsum_macs(equation: str, a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(MACs, output entries) of the dense ``torch.einsum(equation, a, b)``: one MAC per point of
    the product of all index ranges (a broadcast index takes its larger size)."""
    eq = equation.replace(" ", "")
    ins, _, out = eq.partition("->")
    sa, sb = ins.split(",")
    if "." in eq or not out and "->" not in eq:
        raise ValueError(f"energy counting supports explicit einsum equations without '...', got "
                         f"{describe(equation)}; write every index out, with '->'")
    size: dict[str, int] = {}
    for sub, x in ((sa, a), (sb, b)):
        for letter, n in zip(sub, x.shape):
            size[letter] = max(size.get(letter, 1), int(n))
    return math.prod(size.values()), math.prod(size[c] for c in out)


def product_macs(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(MACs, output entries) of one dense evaluation of a product layer.  An elementwise product
    (:class:`~ann2snn.neurons.SpikeMul`) is one multiply per entry of the broadcast output."""
    if isinstance(module, SpikeMul):
        n = math.prod(torch.broadcast_shapes(a.shape, b.shape))
        return n, n
    if isinstance(module, SpikeEinsum):
        return einsum_macs(module.equation, a, b)
    macs = matmul_macs(a, b)
    return macs, (macs // a.shape[-1] if a.shape[-1] else 0)


__all__ = ["count_flops", "einsum_macs", "flops_per_module", "matmul_macs", "product_macs"]
