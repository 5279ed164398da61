"""Spike activity and estimated energy of a converted or directly trained SNN, per layer and image.

Convention (Zhou et al., "Spikformer", ICLR 2023; Yao et al., "Spike-driven Transformer",
NeurIPS 2023; operation energies from Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm)::

    SOP_l  = r_l × S × FLOPs_l                      (r_l: firing rate of the layer's spike input)
    E_ANN  = E_MAC × (Σ FLOPs_l + F)                (F: MACs of the float functions, once)
    E_SNN  = E_MAC × FLOPs_first + E_AC × Σ SOP_l   (+ E_MAC × MACs that spikes cannot remove,
                                                      the float functions on every step among them)

- **FLOPs** are multiply-accumulates of the ANN layer for one image, counted by torch's own
  ``torch.utils.flop_counter.FlopCounterMode`` per module and halved (torch counts a MAC as two
  FLOPs; the papers' "FLOPs" and E_MAC = 4.6 pJ = 3.7 pJ mult + 0.9 pJ add are per MAC).
- **Firing rate**: non-zero entries / (entries × steps), averaged over the batch and the
  S = t + extra_t steps simulated; a negative spike counts like a positive one (by magnitude).
  Inputs that are sums of spike trains (the residual stream, max-pool neuron outputs, the head's
  token mean) count one event per non-zero entry.
- **Multi-level spikes** (``spike_levels`` m > 1): an entry k·λθ of a neuron's output is k
  events, and each event costs one AC per fan-out, as a binary spike does (a synapse adds its
  weight k times, or once scaled by a k of log2(2m+1) bits: we count the k adds, the dearer
  reading).  Counted where a layer reads the neuron's output or a view of it; after an operation
  that copies it (a residual add), one event per non-zero entry, as for every sum of spike
  trains.  Totals carry ``spike_levels``, ``bits_per_step`` = log2(2m+1) and ``bit_steps`` =
  S × bits, the spike-step budget.
- **Event-driven counting**: every operation count is (events of the operand that drives the
  layer) × (its fan-out), where an event is a non-zero entry and the fan-out is the number of
  MACs of the dense layer that one input entry takes part in (FLOPs / entries).  The other
  operand, a weight matrix or a held activation, is read densely: its zeros are not skipped (the
  papers' FLOPs are dense).  So the count is r × S × FLOPs for the rate r of the driving operand.
  Driven by spikes it is ACs (each event adds a row of the other operand); driven by analog
  values it is MACs.
- **Analog inputs cost MACs**: a layer fed the image is counted as MACs.  ``first_layer="once"``
  (default, the papers' convention) counts its FLOPs once: the image is the same on every drive
  step, so its output can be computed once and re-injected.  ``"per_step"`` counts
  r × S × FLOPs MACs (≈ t × FLOPs), what a naive simulator does.  Softmax and product outputs
  are analog too, and so is anything computed from analog tensors within a step (tracked through
  every torch op by a ``TorchFunctionMode``) until a spiking layer re-encodes it as spikes: a
  Linear/Conv reading analog values pays r × S × FLOPs MACs.
- **Products of two operands** (q·kᵀ, attn·v; ``MatMul``, :class:`~ann2snn.neurons.SpikeMatMul`).
  An operand is *spikes* unless it is analog in the sense above: a spiking layer's output or a
  view of it — binary {0, 1}, signed {−1, 0, 1}, or either times the layer's fixed scale λ
  (converted neurons emit ±λθ; a constant that folds into the rescaling or the next layer's
  weights) — or a sum of spike trains (one event per non-zero entry, as for synapses).  Softmax
  outputs and product outputs (Spikformer's integer-valued q·kᵀ, running means) are analog.
  Rule: a product term with a spike operand costs ACs, driven by that operand — each spike adds
  (±) a row or column of the other operand into the output, so x·s with binary s is a masked
  accumulation whatever x holds; only a term with no spike operand costs MACs.

  * A per-step product ``a_k @ b_k`` (``MatMul``: Spikformer's SSA, the ``seed`` preset) has
    SOPs = r × S × FLOPs with r the firing rate of its spike operand.  When both operands are
    spikes (q·kᵀ; v·kᵀ in the token-last form) either can drive; a layer's dataflow is fixed,
    so the operand with fewer events over the measured run is taken:
    SOPs = min(r_a, r_b) × S × FLOPs (events × fan-out is r × S × FLOPs for either operand).
    Counting only coincidences (both factors non-zero) would assume that the held operand's
    zeros are skipped as well, which the convention does not credit for weights either, and
    would no longer be rate × FLOPs.  Two analog operands: min(r_a, r_b) × S × FLOPs MACs.
    Spikformer's SSA is thus AC-only: q·kᵀ at min(r_q, r_k), (q·kᵀ)·v at r_v.
  * The spike-equivalent product (``SpikeMatMul``) emits A_k·B_k/n − A_{k−1}·B_{k−1}/n', i.e.
    a_k·B_{k−1} + A_k·b_k for the step increments a_k, b_k and running sums A, B.  Each term is
    driven by its step operand (the held running sum is multi-valued, read densely): a_k's
    events × fan-out from step 2 on, and b_k's on every step; ACs when that step operand is
    spikes, MACs when it is analog (softmax increments).  Rescaling by 1/n costs one MAC per
    output element per step.  Hence q·kᵀ is AC + MAC (the rescaling) and softmax·v is
    AC (v's spikes) + MAC (the softmax increments and the rescaling).
  * A product's output is real-valued (running means divided by n, or integer counts), so
    whatever it feeds (attention's output projection) pays MACs, until a spiking layer
    re-encodes it.
- **Float operations that spikes cannot carry** (LayerNorm, RMSNorm, GroupNorm, softmax, GELU, SiLU,
  …: :class:`~ann2snn.neurons.RunningFunction`, :class:`~ann2snn.neurons.ECSoftmax`, a per-step
  ``nn.Softmax``) are counted as MACs, on both sides, by :data:`NONLINEAR_MACS` MACs per output
  element: the ANN pays them once per image, the SNN on every step, plus
  :data:`RUNNING_RULE_MACS` per element and step for the running-sum rule of the converted
  operators (X_k/n and n·f: two scalings; the accumulation and the difference are adds).  The
  per-element costs are a convention, not a measurement: an exponential, erf or tanh counts as
  4 MACs (a degree-4 polynomial by Horner's rule, as fixed-function units evaluate them), every
  add, multiply or divide around it as one MAC.
- **Non-spike share**: ``totals["energy_breakdown_mj"]`` splits E_SNN into ACs driven by spikes
  and MACs of the image-fed layer, of layers fed analog values, of products and of the float
  functions; ``totals["non_spike_share"]`` is the fraction of E_SNN that is not spike-driven.
- Not counted (on either side): BatchNorm left unfolded, residual adds, membrane updates, fixed
  scalings (Spikformer's ×0.125 after SSA, a shift), constants injected on drive steps.

Everything is measured with forward hooks (plus the op-level analog tracking) on the stepped
network while :class:`ann2snn.simulate.Simulator` runs it; the models are not edited, and
nothing here advances time or resets a network.  Measurement only: the tables, CSV and JSON
are written by :mod:`ann2snn.app.report`, the plots by :mod:`ann2snn.app.plots`.
Extension point: :data:`NEURON_TYPES` (rate of the output), :data:`SYNAPSE_TYPES`,
:data:`PRODUCT_TYPES` and :data:`ANALOG_TYPES` are lists of module classes; spikingjelly's
``BaseNode`` is a neuron type, so directly trained spiking models get firing rates by the same
hooks.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from spikingjelly.activation_based.neuron import BaseNode
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from ann2snn._checks import check_run_args, describe
from ann2snn.layers import MatMul
from ann2snn.metrics import device_of, evaluate
from ann2snn.models.direct import is_direct
from ann2snn.neurons import (DriveConst, DriveGate, ECSoftmax, MaxPoolNeuron, RunningFunction, ScaledNeuron, SpikeEinsum,
                             SpikeMatMul, bits_per_step)

SYNAPSE_TYPES: list[type] = [nn.Linear, nn.Conv1d, nn.Conv2d, DriveGate]
PRODUCT_TYPES: list[type] = [SpikeMatMul, SpikeEinsum, MatMul]
NEURON_TYPES: list[type] = [ScaledNeuron, MaxPoolNeuron, BaseNode]
ANALOG_TYPES: list[type] = [ECSoftmax, nn.Softmax, RunningFunction, DriveConst]  # real-valued outputs, not spikes
FIRST_LAYER_MODES = ("once", "per_step")
# MACs per output element of a float function (see the module docstring): an exponential, erf or
# tanh is 4 MACs; LayerNorm: mean, centred square, normalise, affine; softmax: max-subtract, exp,
# sum, divide; GELU: erf plus three scalings; SiLU / sigmoid: exp plus add, divide (and × x).
NONLINEAR_MACS: dict[str, int] = {"layernorm": 4, "rmsnorm": 3, "groupnorm": 4, "softmax": 7, "gelu": 7,
                                  "silu": 7, "sigmoid": 6, "tanh": 4, "hardswish": 3, "hardsigmoid": 2}
NONLINEAR_DEFAULT_MACS = 4  # an elementwise function not in the table
RUNNING_RULE_MACS = 2  # X_k / n and n · f(·), per element and step, for RunningFunction / ECSoftmax


def nonlinear_macs(module: nn.Module) -> int:
    """MACs per output element of one evaluation of the float function that ``module`` computes."""
    if isinstance(module, DriveConst):
        return 0
    if isinstance(module, (ECSoftmax, nn.Softmax)):
        return NONLINEAR_MACS["softmax"]
    name = module.name if isinstance(module, RunningFunction) else type(module).__name__
    key = name.lower().replace("_", "").removeprefix("f.")
    if key in NONLINEAR_MACS:
        return NONLINEAR_MACS[key]
    # a name that contains a known one ("BertLayerNorm", "gelu_tanh"): the longest match
    found = [k for k in NONLINEAR_MACS if k in key]
    return NONLINEAR_MACS[max(found, key=len)] if found else NONLINEAR_DEFAULT_MACS


# --------------------------------------------------------------------------------------------
# constants
@dataclass(frozen=True)
class EnergyConstants:
    """Energy per multiply-accumulate and per accumulate, in pJ (Horowitz, ISSCC 2014, 45 nm)."""

    name: str
    e_mac_pj: float
    e_ac_pj: float


CONSTANTS: dict[str, EnergyConstants] = {
    "fp32": EnergyConstants("fp32", 4.6, 0.9),  # 3.7 pJ mult + 0.9 pJ add
    "fp16": EnergyConstants("fp16", 1.5, 0.4),  # 1.1 + 0.4
    "int8": EnergyConstants("int8", 0.23, 0.03),  # 0.2 + 0.03
}


def resolve_constants(spec: str | EnergyConstants | tuple[float, float] = "fp32") -> EnergyConstants:
    """A preset name, ``"MAC,AC"`` in pJ (e.g. ``"4.6,0.9"``), a (mac, ac) pair, or constants."""
    if isinstance(spec, EnergyConstants):
        return spec
    if isinstance(spec, str) and spec in CONSTANTS:
        return CONSTANTS[spec]
    try:
        mac, ac = (float(v) for v in (spec.split(",") if isinstance(spec, str) else spec))
    except (TypeError, ValueError):
        raise ValueError(f"energy constants must be one of {sorted(CONSTANTS)} or 'E_MAC,E_AC' in pJ "
                         f"(e.g. '4.6,0.9'); got {spec!r}") from None
    if not (mac > 0 and ac > 0):
        raise ValueError(f"energy constants must be positive, got E_MAC={mac}, E_AC={ac}")
    return EnergyConstants(f"custom {mac:g}/{ac:g}", mac, ac)


# --------------------------------------------------------------------------------------------
# FLOPs
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


def flops_per_module(sim, model_ann: nn.Module | None, sample: torch.Tensor) -> dict[str, int]:
    """Per-image MACs per module of the stepped network ``sim.snn.net``, counted on one step of it
    (which the simulator runs).  One step has the ANN's layers and shapes, and its module names are
    the ones the meter reports, also for operators that conversion added (a functional ``@`` is a
    ``SpikeMatMul`` module only in the SNN).  ``model_ann`` is accepted for the API's sake; the
    tests check that its count equals the SNN step's where both have the module."""
    return count_flops(sim.snn, sample, run=sim.first_step, scope="net")


# --------------------------------------------------------------------------------------------
# hooks
def _ptr(x: torch.Tensor) -> int:
    return x.untyped_storage().data_ptr()


def _matmul_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    """MACs of the dense ``a @ b`` (batch dimensions broadcast, as ``torch.matmul``)."""
    a = a.unsqueeze(0) if a.dim() == 1 else a
    b = b.unsqueeze(-1) if b.dim() == 1 else b
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return math.prod(batch) * a.shape[-2] * a.shape[-1] * b.shape[-1]


def _einsum_macs(equation: str, a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(MACs, output entries) of the dense ``torch.einsum(equation, a, b)``: one MAC per point of
    the product of all index ranges (a broadcast index takes its larger size)."""
    eq = equation.replace(" ", "")
    ins, _, out = eq.partition("->")
    sa, sb = ins.split(",")
    if "." in eq or not out and "->" not in eq:
        raise ValueError(f"energy counting supports explicit einsum equations without '...', got {equation!r}")
    size: dict[str, int] = {}
    for sub, x in ((sa, a), (sb, b)):
        for letter, n in zip(sub, x.shape):
            size[letter] = max(size.get(letter, 1), int(n))
    return math.prod(size.values()), math.prod(size[c] for c in out)


def _product_macs(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(MACs, output entries) of one dense evaluation of a product layer."""
    if isinstance(module, SpikeEinsum):
        return _einsum_macs(module.equation, a, b)
    macs = _matmul_macs(a, b)
    return macs, (macs // a.shape[-1] if a.shape[-1] else 0)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class _AnalogFlow(TorchFunctionMode):
    """Within a step, any torch op with an analog argument (the image, a softmax or product output,
    or anything computed from them) yields analog tensors, until a spiking layer re-encodes them:
    its output is marked as spikes again."""

    def __init__(self, meter: "EnergyMeter"):
        super().__init__()
        self.meter = meter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        analog = self.meter._analog
        if analog and not self.meter._busy and not self.meter._off and any(_ptr(t) in analog for t in _tensors((args, kwargs))):
            for t in _tensors(out):
                analog[_ptr(t)] = t
        return out




class EnergyMeter:
    """Forward hooks on a stepped network that count spike events and operations.

    ``net`` is the network the simulator steps once per time step (``SpikingNetwork.net``);
    ``clock`` (its :class:`~ann2snn.neurons.Clock`) tells where a sample's run starts.  Use as a
    context manager around any simulation (:func:`ann2snn.metrics.evaluate`,
    ``Simulator.run``), then call :meth:`result`.  :meth:`paused` (or :meth:`pause` /
    :meth:`resume`) leaves steps out of the count, e.g. other runs in the same loop.
    """

    def __init__(self, net: nn.Module, clock=None):
        self.net, self.clock = net, clock
        self.handles: list = []
        self.stats: dict[str, dict[str, Any]] = {}
        self.images = self.steps = 0
        self._analog: dict[int, torch.Tensor] = {}  # storage → tensor, kept alive for the step
        self._busy = False  # inside a hook: its own tensor ops are bookkeeping
        self._off = False  # paused: nothing is counted
        self._mode: _AnalogFlow | None = None
        self._root_ptr = None
        self._units: dict[int, float] = {}  # storage → λθ of a multi-level neuron's output, for the step
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
            kind = self._kind(mod)
            if kind is None:
                continue
            inner = mod.layer if isinstance(mod, DriveGate) else mod
            self.stats[name] = {"name": name, "kind": kind, "type": type(inner).__name__, "nnz": 0.0,
                                "numel": 0.0, "nnz_b": 0.0, "numel_b": 0.0, "neg": 0.0, "ac": 0.0,
                                "mac": 0.0, "n_in": 0, "root": False, "analog": False,
                                "ev_a": 0.0, "ev_b": 0.0, "spike_a": True, "spike_b": True,
                                "per_step": False, "f_elems": 0.0, "f_elems_first": 0.0,
                                "f_macs": nonlinear_macs(mod) if kind == "nonlinear" else 0,
                                "running": isinstance(mod, (RunningFunction, ECSoftmax))}
            if kind in ("synapse", "product"):
                self.handles.append(mod.register_forward_pre_hook(self._quiet(self._make_pre(name, kind))))
            else:
                self.handles.append(mod.register_forward_hook(self._quiet(self._make_post(name, kind))))
            if kind == "product":  # real-valued output (running means, 1/n): not spikes
                self.handles.append(mod.register_forward_hook(self._quiet(self._mark)))
        self._mode = _AnalogFlow(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self._analog = {}

    @staticmethod
    def _kind(mod: nn.Module) -> str | None:
        for kind, types in (("product", PRODUCT_TYPES), ("synapse", SYNAPSE_TYPES),
                            ("neuron", NEURON_TYPES), ("nonlinear", ANALOG_TYPES)):
            if isinstance(mod, tuple(types)):
                return kind
        return None

    # -- pausing ----------------------------------------------------------------------------------
    def pause(self) -> None:
        self._off = True
        self._analog = {}

    def resume(self) -> None:
        self._off = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing run inside is counted (hooks and analog tracking are off)."""
        was = self._off
        self.pause()
        try:
            yield
        finally:
            self._off = was

    # -- per-step bookkeeping -------------------------------------------------------------------
    def _first_step(self) -> bool:
        return self.clock is None or self.clock.step <= 1

    def _quiet(self, hook):
        """The hook, run without analog tracking (its own tensor ops are bookkeeping), and not at
        all while the meter is paused."""
        def quiet(*args):
            if self._off:
                return None
            self._busy = True
            try:
                return hook(*args)
            finally:
                self._busy = False
        return quiet

    def _root_pre(self, module, args):
        x = args[0]
        if self._first_step():
            self.images += x.shape[0]
        self.steps += 1
        self._analog = {_ptr(x): x}
        self._units = {}
        self._root_ptr = _ptr(x)

    def _mark(self, module, args, out) -> None:
        for t in _tensors(out):
            self._analog[_ptr(t)] = t

    def _is_analog(self, x: torch.Tensor) -> bool:
        return _ptr(x) in self._analog

    def _events(self, x: torch.Tensor) -> float:
        """Spike events in ``x``: its non-zero entries, or, for (a view of) the output of a neuron
        sending up to m > 1 spikes per step, Σ|x| / λθ (an entry k·λθ is k events)."""
        unit = self._units.get(_ptr(x))
        if unit is None:
            return float(torch.count_nonzero(x))
        return float(torch.round(x.abs().sum() / unit))

    def _make_pre(self, name: str, kind: str):
        st = self.stats[name]

        def synapse(module, args):
            x = args[0]
            analog = self._is_analog(x)
            nnz = self._events(x)
            st["nnz"] += nnz
            st["numel"] += x.numel()
            st["n_in"] = x[0].numel()  # entries per sample and step (batch-first input)
            st["root"] |= _ptr(x) == self._root_ptr
            st["analog"] |= analog
            st["mac" if analog else "ac"] += nnz  # events; × fan-out (FLOPs) in result()

        def product(module, args):
            a, b = args[0], args[1]
            nnz_a, nnz_b = self._events(a), self._events(b)
            st["nnz"] += nnz_a
            st["numel"] += a.numel()
            st["nnz_b"] += nnz_b
            st["numel_b"] += b.numel()
            spike_a, spike_b = not self._is_analog(a), not self._is_analog(b)
            st["spike_a"] &= spike_a
            st["spike_b"] &= spike_b
            macs, out_entries = _product_macs(module, a, b)
            # events × fan-out: each non-zero of a meets a row of b (macs / a.numel() MACs), and
            # each non-zero of b a column of a; the other operand is read densely
            ev_a = nnz_a * macs / a.numel() if a.numel() else 0.0
            ev_b = nnz_b * macs / b.numel() if b.numel() else 0.0
            if isinstance(module, (SpikeMatMul, SpikeEinsum)):  # running-sum form: a_k·B_{k-1} + A_k·b_k, ×1/n
                if module.acc_b is not None:  # a_k drives a_k·B_{k-1} (from the second step on)
                    st["ac" if spike_a else "mac"] += ev_a
                st["ac" if spike_b else "mac"] += ev_b  # b_k drives A_k·b_k
                st["mac"] += float(out_entries)  # 1/n: one scaling per output entry
            else:  # per-step a_k·b_k: driven by a spike operand, chosen per layer in result()
                st["per_step"] = True
                st["ev_a"] += ev_a
                st["ev_b"] += ev_b

        return product if kind == "product" else synapse

    def _make_post(self, name: str, kind: str):
        st = self.stats[name]

        def post(module, args, out):
            if not isinstance(out, torch.Tensor):
                return
            st["nnz"] += float(torch.count_nonzero(out))
            st["numel"] += out.numel()
            st["neg"] += float((out < 0).sum())
            m = getattr(module, "m", 1) if isinstance(module, ScaledNeuron) else 1
            if m > 1:  # graded counts: synapses reading this output count k events for an entry k·λθ
                self.spike_levels = max(self.spike_levels, m)
                self._units[_ptr(out)] = module.lam * module.theta
                st["events"] = st.get("events", 0.0) + float(torch.round(out.abs().sum() / (module.lam * module.theta)))
            if kind == "nonlinear":
                self._analog[_ptr(out)] = out
                st["f_elems"] += out.numel()
                if self._first_step():
                    st["f_elems_first"] += out.numel()
            else:  # a spiking layer's output is spikes, whatever its input was
                self._analog.pop(_ptr(out), None)

        return post

    # -- results ----------------------------------------------------------------------------------
    def result(self, flops: dict[str, int], t: int, extra_t: int = 0,
               constants: str | EnergyConstants = "fp32", first_layer: str = "once") -> dict:
        """Per-layer rows and per-image totals (see the module docstring for every rule)."""
        if first_layer not in FIRST_LAYER_MODES:
            raise ValueError(f"first_layer must be one of {FIRST_LAYER_MODES}, got {first_layer!r}")
        c = resolve_constants(constants)
        images = max(self.images, 1)
        S = t + extra_t
        rows = []
        tot = {"flops": 0.0, "sops": 0.0, "macs": 0.0, "first_flops": 0.0, "first_macs": 0.0, "syn_macs": 0.0,
               "prod_macs": 0.0, "f_macs": 0.0, "f_macs_ann": 0.0}
        for name, st in self.stats.items():
            rate = st["nnz"] / st["numel"] if st["numel"] else 0.0
            row = {"name": name, "type": st["type"], "kind": st["kind"], "rate": rate}
            if st["kind"] == "neuron":
                row["neg_rate"] = st["neg"] / st["numel"] if st["numel"] else 0.0
                if "events" in st:  # m > 1: spike events (up to m per entry and step) per entry and step
                    row["event_rate"] = st["events"] / st["numel"] if st["numel"] else 0.0
                row.update(input="", op="", flops=0, sops=0.0, macs=0.0)
            elif st["kind"] == "nonlinear":  # a float function: MACs per element, per step in the SNN
                row["neg_rate"] = st["neg"] / st["numel"] if st["numel"] else 0.0
                per_step = st["f_macs"] + (RUNNING_RULE_MACS if st["running"] else 0)
                macs = per_step * st["f_elems"] / images if st["f_macs"] else 0.0
                ann_macs = st["f_macs"] * st["f_elems_first"] / images
                row.update(input="analog", op="MAC" if macs else "-", flops=0, sops=0.0, macs=macs,
                           ann_macs=ann_macs)
                tot["f_macs"] += macs
                tot["f_macs_ann"] += ann_macs
            else:
                fl = int(flops.get(name, 0))
                if st["kind"] == "synapse":  # events × fan-out (FLOPs / inputs) = rate × S × FLOPs
                    fan_out = fl / st["n_in"] if st["n_in"] else 0.0
                    sops, macs = st["ac"] * fan_out / images, st["mac"] * fan_out / images
                    if st["root"]:
                        tot["first_flops"] += fl
                        macs = float(fl) if first_layer == "once" and st["mac"] > 0 else macs
                        tot["first_macs"] += macs
                    else:
                        tot["syn_macs"] += macs
                    inp = "image" if st["root"] else "analog" if st["analog"] else "spikes"
                else:
                    sops, macs = _product_ops(st)
                    sops, macs = sops / images, macs / images
                    tot["prod_macs"] += macs
                    row["rate_b"] = st["nnz_b"] / st["numel_b"] if st["numel_b"] else 0.0
                    inp = "×".join("spikes" if st[k] else "analog" for k in ("spike_a", "spike_b"))
                op = "+".join(k for k, v in (("AC", sops), ("MAC", macs)) if v > 0) or "-"
                row.update(input=inp, op=op, flops=fl, sops=sops, macs=macs)
                tot["flops"] += fl
                tot["sops"] += sops
                tot["macs"] += macs
            row["e_ann_mj"] = c.e_mac_pj * (row["flops"] + row.get("ann_macs", 0.0)) * 1e-9
            row["e_snn_mj"] = (c.e_ac_pj * row["sops"] + c.e_mac_pj * row["macs"]) * 1e-9
            rows.append(row)
        model_flops = int(flops.get("", tot["flops"]))
        e_ann = c.e_mac_pj * (model_flops + tot["f_macs_ann"]) * 1e-9
        e_snn = (c.e_ac_pj * tot["sops"] + c.e_mac_pj * (tot["macs"] + tot["f_macs"])) * 1e-9
        breakdown = {"ac_spikes": c.e_ac_pj * tot["sops"] * 1e-9,
                     "mac_image_layer": c.e_mac_pj * tot["first_macs"] * 1e-9,
                     "mac_analog_inputs": c.e_mac_pj * tot["syn_macs"] * 1e-9,
                     "mac_products": c.e_mac_pj * tot["prod_macs"] * 1e-9,
                     "mac_float_functions": c.e_mac_pj * tot["f_macs"] * 1e-9}
        bits = bits_per_step(self.spike_levels)
        totals = {
            "images": self.images, "t": t, "extra_t": extra_t, "steps": S,
            "spike_levels": self.spike_levels, "bits_per_step": bits, "bit_steps": S * bits,
            "constants": asdict(c), "first_layer": first_layer,
            "flops": model_flops, "flops_layers": tot["flops"], "first_layer_flops": tot["first_flops"],
            "first_layer_macs": tot["first_macs"], "other_macs": tot["macs"] - tot["first_macs"],
            "nonlinear_macs": tot["f_macs"], "nonlinear_macs_ann": tot["f_macs_ann"],
            "sops": tot["sops"], "e_ann_mj": e_ann, "e_snn_mj": e_snn,
            "energy_breakdown_mj": breakdown,
            "non_spike_share": 1.0 - breakdown["ac_spikes"] / e_snn if e_snn > 0 else 0.0,
            "ann_snn_ratio": e_ann / e_snn if e_snn > 0 else math.inf,
            "mean_rate": _mean([r["rate"] for r in rows if r["kind"] == "neuron"]),
        }
        return {"rows": rows, "totals": totals}


def _product_ops(st: dict) -> tuple[float, float]:
    """(ACs, MACs) of a product layer over the run (see the module docstring).

    A per-step product is driven by its spike operand: the sparser one (fewer events × fan-out
    over the whole run) when both are spikes; with no spike operand, MACs driven alike."""
    if not st["per_step"]:  # SpikeMatMul: counted term by term in the hook
        return st["ac"], st["mac"]
    ev = [st["ev_a"]] * st["spike_a"] + [st["ev_b"]] * st["spike_b"]
    if ev:
        return min(ev), 0.0
    return 0.0, min(st["ev_a"], st["ev_b"])


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


# --------------------------------------------------------------------------------------------
# one call
@torch.no_grad()
def measure_energy(model_ann: nn.Module | None, snn_or_sim, loader, t: int, extra_t: int = 0,
                   constants: str | EnergyConstants = "fp32", max_batches: int | None = None,
                   first_layer: str = "once", latency_extra: int = 0) -> dict:
    """Firing rates, FLOPs, SOPs and energy per image of a converted network on ``loader``.

    ``snn_or_sim``: a :class:`~ann2snn.simulate.Simulator` or a ``SpikingNetwork``.  FLOPs come
    from ``model_ann`` (the trained ANN); when it is None or a directly trained SNN (whose forward
    runs all T steps), from one step of the stepped network (same layers and shapes).  One loop
    over the loader (:func:`ann2snn.metrics.evaluate`) also gives the within-run top-1 per step,
    the ANN's top-1 on the same batches and the effective latency (observed over ``t + extra_t
    + latency_extra`` steps; the energy covers ``t + extra_t``).
    """
    from ann2snn.simulate import Simulator

    if not isinstance(snn_or_sim, Simulator) and not isinstance(snn_or_sim, nn.Module):
        raise TypeError(f"measure_energy: snn_or_sim must be a Simulator or a converted network, got "
                        f"{describe(snn_or_sim)}. Pass ann2snn.Simulator(ann2snn.convert(model)).")
    sim = snn_or_sim if isinstance(snn_or_sim, Simulator) else Simulator(snn_or_sim)
    t, extra_t, latency_extra, max_batches = check_run_args("measure_energy", sim, t, extra_t, latency_extra,
                                                             max_batches)
    ann = None if is_direct(model_ann) else model_ann  # a direct SNN has no ANN to compare with
    with EnergyMeter.for_simulator(sim) as meter:
        run = evaluate(sim, loader, t, extra_t, k_step=False, ann=ann, meter=meter,
                       latency_extra=latency_extra, max_batches=max_batches, desc="energy")
    sample = next(iter(loader))[0][:1].to(device_of(sim.snn))
    res = meter.result(flops_per_module(sim, ann, sample), t, extra_t, constants, first_layer)
    res["accuracy"] = {"snn_top1_within_run": run["within_run"]["top1"],
                       "ann_top1": run["ann"]["top1"] if run["ann"] is not None else None}
    res["effective_latency"] = run["effective_latency"]
    return res


__all__ = ["ANALOG_TYPES", "CONSTANTS", "EnergyConstants", "EnergyMeter", "FIRST_LAYER_MODES", "NEURON_TYPES",
           "NONLINEAR_MACS", "PRODUCT_TYPES", "RUNNING_RULE_MACS", "nonlinear_macs", "SYNAPSE_TYPES", "count_flops", "flops_per_module", "measure_energy",
           "resolve_constants"]
