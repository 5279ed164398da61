"""Hook installation: :class:`EnergyMeter` records spike events and operations while a simulator
steps a network; :mod:`ann2snn.energy.accounting` prices what it recorded.

Which modules it hooks, and how it counts each, comes from the conversion rules' table:
``RULES.role_of(module)`` (:mod:`ann2snn.rules`) is a neuron (the rate of its output), a synapse
(events of its input × fan-out), a product of two operands, or a float function; a module with no
counted role is not hooked.  To count another module type, give it a role:
``ann2snn.RULES.add_role(MyNeuron, Role.NEURON)``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from ann2snn.energy.accounting import KIND_NAMES, account
from ann2snn.energy.constants import EnergyConstants, nonlinear_macs
from ann2snn.energy.flops import product_macs
from ann2snn.energy.flow import AnalogFlow, storage_of
from ann2snn.energy.hardware import HardwareModel
from ann2snn.energy.record import LayerRecord
from ann2snn.energy.result import EnergyResult
from ann2snn.neurons import DriveGate, ECSoftmax, RunningFunction, ScaledNeuron, SpikeEinsum, SpikeMatMul, SpikeMul
from ann2snn.rules import RULES, Role


class EnergyMeter:
    """Forward hooks on a stepped network that count spike events and operations.

    ``net`` is the network the simulator steps once per time step (``SpikingNetwork.net``);
    ``clock`` (its :class:`~ann2snn.neurons.Clock`) tells where a sample's run starts.  Use as a
    context manager around any simulation (:func:`ann2snn.metrics.evaluate`,
    ``Simulator.run``), then call :meth:`result`.  :meth:`paused` (or :meth:`pause` /
    :meth:`resume`) leaves steps out of the count, e.g. other runs in the same loop.
    ``records`` holds one :class:`~ann2snn.energy.record.LayerRecord` per hooked module.
    """

    def __init__(self, net: nn.Module, clock=None):
        self.net, self.clock = net, clock
        self.handles: list = []
        self.records: dict[str, LayerRecord] = {}
        self.images = self.steps = 0
        self.flow = AnalogFlow()  # which tensors of the step are analog
        self._root: int | None = None  # storage of the step's input
        # storage → (a multi-level neuron's output, its λθ), for the step; the tensor is kept alive
        # so that its storage cannot be reused by another tensor within the step
        self._units: dict[int, tuple[torch.Tensor, float]] = {}
        self.spike_levels = 1  # the largest m seen on a converted neuron

    @classmethod
    def for_simulator(cls, sim) -> "EnergyMeter":
        return cls(sim.snn.net, sim.snn.clock)

    # -- installation ---------------------------------------------------------------------------
    def __enter__(self) -> "EnergyMeter":
        self.handles.append(self.net.register_forward_pre_hook(self._quiet(self._root_pre)))
        gated = [n for n, m in self.net.named_modules() if isinstance(m, DriveGate)]
        for name, mod in self.net.named_modules():
            if not name or any(name.startswith(g + ".") for g in gated):
                continue  # the layer inside a DriveGate is not called: the gate is hooked
            role = RULES.role_of(mod)
            if role in KIND_NAMES:
                self._install(name, mod, role)
        self.flow.__enter__()
        return self

    def _install(self, name: str, mod: nn.Module, role: Role) -> None:
        inner = mod.layer if isinstance(mod, DriveGate) else mod
        rec = self.records[name] = LayerRecord(
            name, role, type(inner).__name__, f_macs=nonlinear_macs(mod) if role is Role.FLOAT else 0,
            running=isinstance(mod, (RunningFunction, ECSoftmax)))
        weight = getattr(inner, "weight", None)
        rec.weights = int(weight.numel()) if role is Role.SYNAPSE and isinstance(weight, torch.Tensor) else 0
        if isinstance(mod, ScaledNeuron):
            rec.levels, rec.signed = mod.levels, bool(mod.signed)
        if role is Role.SYNAPSE:
            self.handles.append(mod.register_forward_pre_hook(self._quiet(self._synapse_hook(rec))))
        elif role is Role.PRODUCT:
            self.handles.append(mod.register_forward_pre_hook(self._quiet(self._product_hook(rec))))
            # a product's output is real-valued (running means, 1/n): not spikes
            self.handles.append(mod.register_forward_hook(self._quiet(lambda m, a, out: self.flow.mark(out))))
        else:
            self.handles.append(mod.register_forward_hook(self._quiet(self._output_hook(rec))))

    def __exit__(self, *exc) -> None:
        self.flow.__exit__(None, None, None)
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.flow.clear()

    # -- pausing ----------------------------------------------------------------------------------
    def pause(self) -> None:
        self.flow.off = True
        self.flow.clear()

    def resume(self) -> None:
        self.flow.off = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing run inside is counted (hooks and analog tracking are off)."""
        was = self.flow.off
        self.pause()
        try:
            yield
        finally:
            self.flow.off = was

    # -- per-step bookkeeping -------------------------------------------------------------------
    def _first_step(self) -> bool:
        return self.clock is None or self.clock.step <= 1

    def _quiet(self, hook: Callable) -> Callable:
        """The hook, run without analog tracking (its own tensor ops are bookkeeping), and not at
        all while the meter is paused."""
        def quiet(*args):
            if self.flow.off:
                return None
            self.flow.busy = True
            try:
                return hook(*args)
            finally:
                self.flow.busy = False
        return quiet

    def _root_pre(self, module, args) -> None:
        x = args[0]
        if self._first_step():
            self.images += x.shape[0]
        self.steps += 1
        self.flow.start_step(x)
        self._units = {}
        self._root = storage_of(x)

    def _events(self, x: torch.Tensor) -> float:
        """Spike events in ``x``: its non-zero entries, or, for (a view of) the output of a neuron
        sending up to m > 1 spikes per step, Σ|x| / λθ (an entry k·λθ is k events)."""
        held = self._units.get(storage_of(x))
        if held is None:
            return float(torch.count_nonzero(x))
        return float(torch.round(x.abs().sum() / held[1]))

    def _synapse_hook(self, rec: LayerRecord):
        def synapse(module, args):
            x = args[0]
            analog = self.flow.is_analog(x)
            nnz = self._events(x)
            rec.nnz += nnz
            rec.numel += x.numel()
            rec.n_in = x[0].numel()  # entries per sample and step (batch-first input)
            rec.root |= storage_of(x) == self._root
            rec.analog |= analog
            if analog:  # events; × fan-out (FLOPs / inputs) in the accounting
                rec.mac += nnz
            else:
                rec.ac += nnz
        return synapse

    def _product_hook(self, rec: LayerRecord):
        def product(module, args):
            a, b = args[0], args[1]
            nnz_a, nnz_b = self._events(a), self._events(b)
            rec.nnz += nnz_a
            rec.numel += a.numel()
            rec.nnz_b += nnz_b
            rec.numel_b += b.numel()
            spike_a, spike_b = not self.flow.is_analog(a), not self.flow.is_analog(b)
            rec.spike_a &= spike_a
            rec.spike_b &= spike_b
            macs, out_entries = product_macs(module, a, b)
            # events × fan-out: each non-zero of a meets a row of b (macs / a.numel() MACs), and
            # each non-zero of b a column of a; the other operand is read densely
            ev_a = nnz_a * macs / a.numel() if a.numel() else 0.0
            ev_b = nnz_b * macs / b.numel() if b.numel() else 0.0
            if isinstance(module, SpikeMul) and self._first_step():
                rec.ann_macs += float(out_entries)  # the ANN's a * b, once per image
            if isinstance(module, (SpikeMatMul, SpikeEinsum, SpikeMul)):  # running sums: a_k·B_{k-1} + A_k·b_k, ×1/n
                if module.acc_b is not None:  # a_k drives a_k·B_{k-1} (from the second step on)
                    _add_op(rec, spike_a, ev_a)
                _add_op(rec, spike_b, ev_b)  # b_k drives A_k·b_k
                rec.mac += float(out_entries)  # 1/n: one scaling per output entry
            else:  # per-step a_k·b_k: driven by a spike operand, chosen per layer in the accounting
                rec.per_step = True
                rec.ev_a += ev_a
                rec.ev_b += ev_b
        return product

    def _output_hook(self, rec: LayerRecord):
        def output(module, args, out):
            if not isinstance(out, torch.Tensor):
                return
            rec.nnz += float(torch.count_nonzero(out))
            rec.numel += out.numel()
            rec.neg += float((out < 0).sum())
            m = getattr(module, "m", 1) if isinstance(module, ScaledNeuron) else 1
            if m > 1:  # graded counts: synapses reading this output count k events for an entry k·λθ
                unit = module.lam * module.theta
                self.spike_levels = max(self.spike_levels, m)
                self._units[storage_of(out)] = (out, unit)
                rec.events = (rec.events or 0.0) + float(torch.round(out.abs().sum() / unit))
            if rec.role is Role.FLOAT:
                self.flow.mark(out)
                rec.f_elems += out.numel()
                if self._first_step():
                    rec.f_elems_first += out.numel()
            else:  # a spiking layer's output is spikes, whatever its input was
                self.flow.spikes(out)
        return output

    # -- results ----------------------------------------------------------------------------------
    def result(self, flops: dict[str, int], t: int, extra_t: int = 0,
               constants: str | EnergyConstants = "fp32", first_layer: str = "once",
               hardware: HardwareModel | None = None) -> EnergyResult:
        """Per-layer rows and per-image totals of what was recorded (see :mod:`ann2snn.energy` for
        every rule; :func:`ann2snn.energy.accounting.account` prices it), under both energy models."""
        return account(self.records.values(), self.images, self.spike_levels, flops, t, extra_t, constants,
                       first_layer, hardware)


def _add_op(rec: LayerRecord, spikes: bool, ops: float) -> None:
    """Operations driven by one operand: ACs when it is spikes, MACs when it is analog."""
    if spikes:
        rec.ac += ops
    else:
        rec.mac += ops


__all__ = ["EnergyMeter"]
