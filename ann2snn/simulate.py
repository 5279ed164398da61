"""The simulator: the one place where SNN time advances and state is reset.

Schedule (the original's): the analog image is fed for ``t`` drive steps, then zeros for
``extra_t`` steps; the network's per-step outputs are summed.  :meth:`Simulator.iter_run` yields
the cumulative output after every step of one run, so every per-step figure of a run comes from
one pass (see :mod:`ann2snn.metrics` for what those figures mean and how they are averaged).

Accuracy tables (rows t, columns t + e, SPEC §6) share work: rows whose neurons have the same
threshold (1) share a trunk pass; after step t the state is snapshotted, the row's extra steps
run with cap = t from the snapshot, and the trunk resumes.  A T × E table then costs T + T·E
steps instead of Σ(t + E) for one pass per row.  Rows with level-matched thresholds (t/L under
the ``exact`` preset, which differ per row; row L has threshold 1) get one pass each.

Nothing else in the package ticks the clock or resets a network: metrics and energy
measurements observe runs of this simulator.  Tensors over time are [T, B, ...].
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch
from spikingjelly.activation_based import base, functional
from torch import nn

from ann2snn.neurons import ScaledNeuron, bits_per_step, check_spike_levels

log = logging.getLogger("ann2snn")


class Simulator:
    """Steps a :class:`~ann2snn.convert.SpikingNetwork` (or a
    :class:`~ann2snn.models.direct.DirectNetwork`: anything with ``net``, ``clock``, ``options``
    and ``neurons()``), owning its clock, neuron parameters and resets."""

    def __init__(self, snn: nn.Module, spike_levels: int | None = None):
        self.snn = snn.eval()
        self.neurons = snn.neurons()
        self.memory_modules = [m for m in snn.modules() if isinstance(m, base.MemoryModule)]
        self.spike_levels = getattr(snn, "spike_levels", 1) if spike_levels is None else spike_levels

    @property
    def spike_levels(self) -> int:
        """m, the most spikes a converted neuron sends per step and sign (1: binary spikes)."""
        return self._spike_levels

    @spike_levels.setter
    def spike_levels(self, m: int) -> None:
        m = check_spike_levels(m)
        if m != 1 and not all(isinstance(n, ScaledNeuron) for n in self.neurons):
            raise ValueError("spike_levels > 1 applies to converted networks (ScaledNeuron); this network's "
                             "neurons are trained spiking neurons, which send one spike per step")
        self._spike_levels = m

    @property
    def bits_per_step(self) -> float:
        """log2(2m + 1): what one signed m-level spike carries per step."""
        return bits_per_step(self._spike_levels)

    # -- neuron parameters for a row t ---------------------------------------------------------
    def neuron_params(self, neuron, t: int) -> tuple[float, float]:
        """(threshold in units of λ, cap) of ``neuron`` for t drive steps."""
        if self.snn.options.level_matched and neuron.levels:
            return t / neuron.levels, float(neuron.levels)
        return 1.0, float(t)

    def configure(self, t: int, cap_active: bool = True) -> None:
        for nrn in self.neurons:
            nrn.theta, cap = self.neuron_params(nrn, t)
            nrn.cap = cap if cap_active else math.inf
            if isinstance(nrn, ScaledNeuron):
                nrn.m = self._spike_levels

    def shares_trunk(self, t: int) -> bool:
        """True when row t's neurons have threshold 1, so its first t steps equal the trunk's.

        Only with binary spikes: the trunk runs without caps, which a binary neuron cannot reach
        within t ≤ cap steps anyway; a neuron sending m > 1 spikes per step could pass its cap."""
        return self._spike_levels == 1 and all(self.neuron_params(n, t)[0] == 1.0 for n in self.neurons)

    def k_step_runs_share_one_pass(self, t: int) -> bool:
        """True when a k-step run (k ≤ t) is the first k steps of the t-step run for every k
        (threshold 1 everywhere: the ``rate`` and ``seed`` presets, directly trained SNNs)."""
        return all(self.shares_trunk(k) for k in range(1, t + 1))

    # -- state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        functional.reset_net(self.snn)
        self.snn.clock.reset()

    def snapshot(self):
        # Operators never modify state tensors in place, so references are a faithful snapshot.
        return [dict(m._memories) for m in self.memory_modules], self.snn.clock.state()

    def restore(self, snap) -> None:
        mems, clock = snap
        for m, saved in zip(self.memory_modules, mems):
            m._memories.update(saved)
        self.snn.clock.load(clock)

    # -- stepping -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, x: torch.Tensor, drive: bool) -> torch.Tensor:
        self.snn.clock.tick(drive)
        return self.snn(x if drive else torch.zeros_like(x))

    @torch.no_grad()
    def first_step(self, x: torch.Tensor) -> torch.Tensor:
        """The output of one drive step from rest (e.g. to count one step's operations); the
        network is reset before and after."""
        self.configure(1)
        self.reset()
        try:
            return self.step(x, drive=True)
        finally:
            self.reset()

    @torch.no_grad()
    def iter_run(self, x: torch.Tensor, t: int, steps: int) -> Iterator[torch.Tensor]:
        """One run with thresholds set for ``t`` drive steps: yields the cumulative output sum
        after each of ``steps`` steps (drive for the first ``t``, zeros after).  The network is
        reset before the first step and when the generator is closed or exhausted."""
        self.configure(t)
        self.reset()
        try:
            acc = None
            for k in range(steps):
                y = self.step(x, drive=k < t)
                acc = y if acc is None else acc + y
                yield acc
        finally:
            self.reset()

    @torch.no_grad()
    def run(self, x: torch.Tensor, t: int, extra_t: int = 0) -> torch.Tensor:
        """Cumulative output sums after each step: [t + extra_t, B, classes]."""
        return torch.stack(list(self.iter_run(x, t, t + extra_t)))

    @torch.no_grad()
    def run_rows(self, x: torch.Tensor, rows: list[int], extra: int) -> dict[int, torch.Tensor]:
        """For each row t: cumulative sums at columns t..t+extra, [extra + 1, B, classes]."""
        out: dict[int, torch.Tensor] = {}
        trunk = sorted(t for t in rows if self.shares_trunk(t))
        if trunk:
            self.configure(max(trunk), cap_active=False)
            self.reset()
            acc = None
            for k in range(1, max(trunk) + 1):
                y = self.step(x, drive=True)
                acc = y if acc is None else acc + y
                if k in trunk:
                    cols = [acc]
                    if extra:
                        snap = self.snapshot()
                        self.configure(k)  # the row's own cap (= t) for its extra steps
                        branch = acc
                        for _ in range(extra):
                            branch = branch + self.step(x, drive=False)
                            cols.append(branch)
                        self.restore(snap)
                        self.configure(max(trunk), cap_active=False)
                    out[k] = torch.stack(cols)
        for t in rows:
            if t not in out:
                out[t] = self.run(x, t, extra)[t - 1:]
        self.reset()
        return out


__all__ = ["Simulator"]
