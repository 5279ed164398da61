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

  * A per-step product ``a_k @ b_k`` (``MatMul``: Spikformer's SSA, the ``per_step`` preset) has
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
  * Elementwise products (:class:`~ann2snn.neurons.SpikeMul`: a squeeze-excitation gate, a GLU)
    follow the same running-sum rule with a fan-out of one per broadcast output entry; the ANN
    pays one MAC per output entry, once per image (torch's FLOP counter leaves elementwise
    products out, so this is added to the ANN's total).  :class:`~ann2snn.neurons.SpikeAttention`
    is counted through its parts: its two products and its softmax.
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
- **Non-spike share**: ``totals.energy_breakdown_mj`` splits E_SNN into ACs driven by spikes
  and MACs of the image-fed layer, of layers fed analog values, of products and of the float
  functions; ``totals.non_spike_share`` is the fraction of E_SNN that is not spike-driven.
- **The second model** (:mod:`ann2snn.energy.hardware`, ``result.hardware``): the same records
  priced against the equal-bit quantized ANN on integer hardware, with weight, state, spike and
  activation memory traffic and the neurons' compares, plus spikes per synapse and the break-even
  spike rate.  Every result carries both.
- Not counted (on either side): BatchNorm left unfolded, residual adds, membrane updates, fixed
  scalings (Spikformer's ×0.125 after SSA, a shift), constants injected on drive steps.

Everything is measured with forward hooks (plus the op-level analog tracking) on the stepped
network while :class:`ann2snn.simulate.Simulator` runs it; the models are not edited, and
nothing here advances time or resets a network.  Measurement only: the tables, CSV and JSON
are written by :mod:`ann2snn.app.report`, the plots by :mod:`ann2snn.app.plots`.

The pieces, one file each: :mod:`~ann2snn.energy.meter` installs the hooks and records
(:class:`EnergyMeter`, one :class:`~ann2snn.energy.record.LayerRecord` per layer),
:mod:`~ann2snn.energy.flow` tracks which tensors are analog, :mod:`~ann2snn.energy.flops` counts
dense MACs, :mod:`~ann2snn.energy.accounting` prices the records into rows and totals
(:mod:`~ann2snn.energy.result`), :mod:`~ann2snn.energy.constants` holds the per-operation
energies and the float-function table.

Extension point: the meter asks the conversion rules' table which role a module plays,
``ann2snn.RULES.role_of(module)`` (:mod:`ann2snn.rules`): ``Role.NEURON`` (rate of the output),
``Role.SYNAPSE``, ``Role.PRODUCT`` or ``Role.FLOAT`` (a float function, real-valued output); every
module a rule puts into the SNN has its role there.  Another module type is counted once it has
one: ``ann2snn.RULES.add_role(MyNeuron, Role.NEURON)``.  SpikingJelly's ``BaseNode`` is a neuron,
so directly trained spiking models get firing rates by the same hooks.
"""
from __future__ import annotations

import torch
from torch import nn

from ann2snn._checks import check_run_args, describe
from ann2snn.energy.accounting import FIRST_LAYER_MODES, account
from ann2snn.energy.constants import (CONSTANTS, NONLINEAR_MACS, RUNNING_RULE_MACS, EnergyConstants, nonlinear_macs,
                                      resolve_constants)
from ann2snn.energy.flops import count_flops, flops_per_module
from ann2snn.energy.hardware import HardwareEnergy, HardwareModel, hardware_energy
from ann2snn.energy.meter import EnergyMeter
from ann2snn.energy.record import LayerRecord
from ann2snn.energy.result import EnergyAccuracy, EnergyBreakdown, EnergyResult, EnergyRow, EnergyTotals
from ann2snn.metrics import device_of, evaluate
from ann2snn.presets import AS_TRAINED
from ann2snn.simulate import Simulator


def energy_of(meter: EnergyMeter, sim: Simulator, sample: torch.Tensor, t: int, extra_t: int = 0,
              constants: str | EnergyConstants = "fp32", first_layer: str = "once", *,
              accuracy: EnergyAccuracy | None = None, effective_latency=None,
              hardware: HardwareModel | None = None) -> EnergyResult:
    """The energy result of the runs of t + extra_t steps that ``meter`` recorded on ``sim``: each
    layer's FLOPs are counted on one step of ``sim`` fed ``sample[:1]`` (a batch of the measured
    data), then the records are priced (:meth:`EnergyMeter.result`).  ``accuracy`` and
    ``effective_latency`` of the same runs are carried along when given."""
    flops = flops_per_module(sim, sample[:1].to(device_of(sim.snn)))
    res = meter.result(flops, t, extra_t, constants, first_layer, hardware)
    res.accuracy, res.effective_latency = accuracy, effective_latency
    return res


@torch.no_grad()
def measure_energy(model_ann: nn.Module | None, snn_or_sim, loader, t: int, extra_t: int = 0,
                   constants: str | EnergyConstants = "fp32", max_batches: int | None = None,
                   first_layer: str = "once", latency_extra: int = 0,
                   hardware: HardwareModel | None = None) -> EnergyResult:
    """Firing rates, FLOPs, SOPs and energy per image of a converted network on ``loader``.

    ``snn_or_sim``: a :class:`~ann2snn.simulate.Simulator` or a ``SpikingNetwork``.  FLOPs are
    counted on one step of the stepped network (the ANN's layers and shapes; a directly trained
    SNN's own forward would run all T steps).  One loop over the loader
    (:func:`ann2snn.metrics.evaluate`) also gives the within-run top-1 per step, the top-1 of
    ``model_ann`` on the same batches (none when the simulator steps a directly trained SNN, preset
    :data:`~ann2snn.presets.AS_TRAINED`: there is no ANN to compare with) and the effective
    latency (observed over ``t + extra_t + latency_extra`` steps; the energy covers
    ``t + extra_t``).  Returns an :class:`EnergyResult` (``to_dict()`` for the JSON form), priced
    under both energy models: ``totals`` the standard one, ``hardware`` the equal-bit QNN with
    memory traffic (:class:`HardwareModel` ``hardware``, or its defaults).
    """
    if not isinstance(snn_or_sim, Simulator) and not isinstance(snn_or_sim, nn.Module):
        raise TypeError(f"measure_energy: snn_or_sim must be a Simulator or a converted network, got "
                        f"{describe(snn_or_sim)}. Pass ann2snn.Simulator(ann2snn.convert(model)).")
    sim = snn_or_sim if isinstance(snn_or_sim, Simulator) else Simulator(snn_or_sim)
    t, extra_t, latency_extra, max_batches = check_run_args("measure_energy", sim, t, extra_t, latency_extra,
                                                             max_batches)
    ann = None if sim.preset is AS_TRAINED else model_ann
    with EnergyMeter.for_simulator(sim) as meter:
        run = evaluate(sim, loader, t, extra_t, k_step=False, ann=ann, meter=meter,
                       latency_extra=latency_extra, max_batches=max_batches, desc="energy")
    accuracy = EnergyAccuracy(run.within_run.top1, run.ann.top1 if run.ann is not None else None)
    return energy_of(meter, sim, next(iter(loader))[0], t, extra_t, constants, first_layer, accuracy=accuracy,
                     effective_latency=run.effective_latency, hardware=hardware)


__all__ = ["CONSTANTS", "EnergyAccuracy", "EnergyBreakdown", "EnergyConstants", "EnergyMeter", "EnergyResult",
           "EnergyRow", "EnergyTotals", "FIRST_LAYER_MODES", "HardwareEnergy", "HardwareModel", "hardware_energy", "LayerRecord", "NONLINEAR_MACS", "RUNNING_RULE_MACS",
           "account", "count_flops", "energy_of", "flops_per_module", "measure_energy", "nonlinear_macs",
           "resolve_constants"]
