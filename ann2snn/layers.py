"""Marker modules that the conversion passes and the energy meter key on.

A model built from these exposes, as modules, the operations a pass has to find: a product of two
activations (:class:`MatMul`, which conversion swaps for the spike-equivalent
:class:`~ann2snn.neurons.SpikeMatMul` and the energy meter counts as a two-operand product), and
a Linear or Conv followed by BatchNorm (:class:`LinearBN`, :class:`ConvBN`), which
:func:`ann2snn.convert.fold_bn` folds into one affine map.  They compute exactly what their
plain torch counterparts compute.
"""
from __future__ import annotations

import torch
from torch import nn


class SignedSite(nn.Module):
    """A signed activation site: the identity in the float model, a *signed* QCFS site once
    :func:`ann2snn.quant.quantize` has run (values −λ..λ in 2L + 1 levels), and a two-sign neuron
    whose count runs from −L to L after conversion.  Put where the values to be sent as spikes are
    signed, e.g. after a ViT's LayerNorm (SpikeZIP-TF's placement, You et al., ICML 2024), so that
    the Linear layers reading it are driven by spikes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class MatMul(nn.Module):
    """``a @ b`` as a module, so that conversion can swap it for a spike-equivalent product."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class LinearBN(nn.Module):
    """Linear then BatchNorm1d over the channel (last) axis of a [B, N, C] token tensor."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)  # [B, N, C]
        return self.bn(y.reshape(-1, y.shape[-1])).reshape(y.shape)


class ConvBN(nn.Sequential):
    """3×3 stride-1 conv (no bias) then BatchNorm2d."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))


__all__ = ["ConvBN", "LinearBN", "MatMul"]
