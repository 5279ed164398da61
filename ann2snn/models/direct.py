"""Shared pieces of the directly trained spiking models, and the time protocol they implement.

Built on spikingjelly 2.x (Fang et al., "SpikingJelly", Science Advances 2023): multi-step LIF
neurons, ``functional.reset_net`` and ``layer.SeqToANNContainer``.  Tensors over time are
[T, B, ...].

- :func:`lif`, :func:`conv_bn`, :func:`max_pool`, :class:`ChannelLinearBN`: the building blocks
  of Spikformer (Zhou et al., ICLR 2023) and the Spike-driven Transformer (Yao et al.,
  NeurIPS 2023).
- :class:`DirectSNN`: the base class of directly trained models (registry kind ``direct``).
- :class:`DirectNetwork`: a trained :class:`DirectSNN` behind the same stepping protocol as a
  converted network (:class:`ann2snn.convert.SpikingNetwork`), so that
  :class:`ann2snn.simulate.Simulator` steps both alike.
"""
from __future__ import annotations

import copy

import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from ann2snn.neurons import Clock

SSA_FORMS = ("token_first", "token_last")


def lif(v_threshold: float = 1.0) -> neuron.LIFNode:
    """The LIF neuron of both papers: τ = 2, hard reset to 0, detached reset, sigmoid surrogate."""
    return neuron.LIFNode(tau=2.0, v_threshold=v_threshold, v_reset=0.0, detach_reset=True,
                          surrogate_function=surrogate.Sigmoid(), step_mode="m")


def conv_bn(cin: int, cout: int) -> layer.SeqToANNContainer:
    """3×3 stride-1 conv (no bias) + BatchNorm2d applied to every step: [T, B, C, H, W]."""
    return layer.SeqToANNContainer(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))


def max_pool() -> layer.SeqToANNContainer:
    return layer.SeqToANNContainer(nn.MaxPool2d(3, 2, 1))


class ChannelLinearBN(nn.Module):
    """Per-token linear map (no bias) then BatchNorm1d over channels, in either layout:
    ``token_first`` [T, B, N, C] with ``nn.Linear``; ``token_last`` [T, B, C, N] with a 1×1
    ``nn.Conv1d``.  Same parameters up to a trailing kernel axis of size 1."""

    def __init__(self, cin: int, cout: int, layout: str = "token_first"):
        super().__init__()
        assert layout in SSA_FORMS, f"layout must be one of {SSA_FORMS}, got {layout!r}"
        self.token_last = layout == "token_last"
        self.fc = nn.Conv1d(cin, cout, 1, bias=False) if self.token_last else nn.Linear(cin, cout, bias=False)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_last:  # [T, B, C, N]
            y = self.bn(self.fc(x.flatten(0, 1)))  # [TB, C', N]: BN1d normalises axis 1 = channels
            return y.reshape(*x.shape[:2], *y.shape[1:])
        y = self.fc(x.flatten(0, 1))  # [TB, N, C']: batch-first, as energy hooks expect
        return self.bn(y.reshape(-1, y.shape[-1])).reshape(*x.shape[:-1], -1)


class DirectSNN(nn.Module):
    """Base of directly trained SNNs; the time protocol of the toolkit.

    - ``forward_seq(x_seq)``: [T, B, C, H, W] → per-step logits [T, B, classes], continuing from
      the current neuron state (no reset).  The simulator calls it with T = 1, once per step,
      and resets through ``functional.reset_net``: per-step evaluation from one pass.
    - ``forward(x)``: an image batch [B, C, H, W] (repeated T times) or a sequence
      [T', B, C, H, W]; starts from rest and returns the logits averaged over time — the
      model's own prediction, so ANN-style evaluation (``evaluate_ann``) measures it as trained.
    - :meth:`stepwise_copy`: a copy whose ``forward(x_t)`` is ONE time step ([B, C, H, W] →
      [B, classes]) continuing from its state; what the simulator steps (and the energy meter
      hooks, like a converted network), reset by ``functional.reset_net``.

    T (config key ``t``) is kept in the buffer ``time_steps``: it travels with the weights, so a
    checkpoint evaluated with another ``--t`` still predicts at its trained T.
    """

    def __init__(self, T: int):
        super().__init__()
        assert T >= 1, f"T must be >= 1, got {T}"
        self.register_buffer("time_steps", torch.tensor(int(T)))
        self.stepwise = False

    @property
    def T(self) -> int:
        return int(self.time_steps)

    def forward_seq(self, x_seq: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def stepwise_copy(self) -> "DirectSNN":
        net = copy.deepcopy(self).eval()
        net.stepwise = True
        return net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stepwise:
            return self.forward_seq(x.unsqueeze(0))[0]  # one step from the current state
        if x.dim() == 4:
            x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)  # [T, B, C, H, W]
        assert x.dim() == 5, f"expected [B, C, H, W] or [T, B, C, H, W], got {tuple(x.shape)}"
        functional.reset_net(self)  # a whole sequence starts from rest
        return self.forward_seq(x).mean(0)


class DirectNetwork(nn.Module):
    """A directly trained SNN behind the protocol of :class:`ann2snn.convert.SpikingNetwork`.

    No conversion: ``net`` is the model's stepwise copy (one time step per call, neuron state kept
    between calls; :meth:`DirectSNN.stepwise_copy`).  Its LIF neurons keep their trained
    thresholds, so there is nothing to configure per row (``neurons()`` is empty) and the clock
    only counts steps.  Input fed on extra steps is zeros, as for converted networks.
    """

    def __init__(self, model: DirectSNN):
        super().__init__()
        self.net, self.clock = model.stepwise_copy(), Clock()
        self.report: dict[str, list[str]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def neurons(self) -> list:
        return []


def is_direct(model: nn.Module | None) -> bool:
    """True for a directly trained SNN (its ``forward`` runs all T steps, so it is no ANN)."""
    return isinstance(model, DirectSNN)


__all__ = ["SSA_FORMS", "ChannelLinearBN", "DirectNetwork", "DirectSNN", "conv_bn", "is_direct", "lif", "max_pool"]
