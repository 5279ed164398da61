"""The second energy model: the SNN against the *equal-bit quantized ANN*, with memory traffic and
the neurons' own work counted (``energy_model="memory"``; the standard model is the papers'
E_MAC × FLOPs against E_AC × SOPs, :mod:`ann2snn.energy`).

Why: the standard model prices an SNN against an fp32 ANN and counts operations only.  Its critics
compare a T-step SNN with a quantized ANN of the same capacity (Yan et al., "Reconsidering the
energy efficiency of spiking neural networks", arXiv 2409.08290), count memory accesses
(Dampfhoffer et al., "Are SNNs really more energy-efficient than ANNs? An in-depth hardware-aware
study", IEEE TETCI 7(3), 2023; Lemaire et al., "An analytical estimation of spiking neural networks
energy efficiency", ICONIP 2022) and model sparsity, bit width and memory together (STEP, arXiv
2505.11151).  This model follows them; every constant is Horowitz's 45 nm figure ("Computing's
energy problem", ISSCC 2014) or a stated assumption.

**The baseline** is the network the SNN is exactly equivalent to, run on integer hardware: the
quantized ANN with activations at ``⌈log2(L + 1)⌉`` bits (+1 sign bit where the network has
signed sites), weights at ``weight_bits`` (8), the image at 8 bits, accumulators at
``acc_bits`` (24) -- one MAC = an integer multiply of those widths + an accumulator add.

**Operations** (Horowitz, 45 nm, 0.9 V): integer add 0.03 / 0.05 / 0.1 pJ at 8 / 16 / 32 bits
(linear between, proportional below 8 bits); integer multiply 0.2 pJ at 8×8 bits and 3.1 pJ at
32×32, i.e. 0.2 pJ × (a·b)/64 for an a×b-bit multiplier (array multipliers scale with a·b; the
two points agree within 3 %).  Float functions (LayerNorm, softmax, GELU ...; the same per-element
MAC counts as the standard model) cost an fp16 MAC, 1.5 pJ (1.1 mult + 0.4 add), on both sides.
Real-valued inputs in the SNN (running means, softmax increments) are ``analog_bits`` (16) wide.

**Memory**: every tensor lives in its own on-chip SRAM buffer sized to hold it (a layer's
weights; a layer's membranes; a spike or activation map); no DRAM.  A 64-bit read or write costs
10 pJ × √(size / 8 KiB) -- the square-root fit through Horowitz's 8 KB (10 pJ), 32 KB (20 pJ) and
1 MB (100 pJ) points -- for buffers of 64 bytes or more; a bit costs 1/64 of that.

- *Weights*: the QNN reads each weight once per image (weight-stationary reuse across positions
  and tokens).  The SNN reads one weight per synaptic operation (``weight_reads="event"``:
  event-driven, each spike fetches its fan-out), or every weight once per step (``"dense"``: the
  same reuse as the QNN, on every step), or, per layer, whichever of the two costs less
  (``"best"``, the default: a sparse layer is read per event, a busy one once per step).
- *Neuron state*: the SNN reads and writes each neuron's membrane (``membrane_bits``, 24 as
  Loihi's; Davies et al., IEEE Micro 2018) and its spike count (``⌈log2(2L + 1)⌉`` bits, for the
  cap) on every step; the QNN keeps no state.
- *Spikes and activations*: the SNN writes and reads every neuron output on every step as a
  dense map of ``⌈log2(2m + 1)⌉`` bits (2 for the two-sign binary neuron; 1 for a LIF neuron);
  the QNN writes and reads each site's activation once at its bit width.
- *Products* of two spiking operands read the held operand (a running sum, ``membrane_bits``)
  per operation.

**The neuron's own work**: 2m threshold compares and subtractions per neuron and step for an
m-level neuron (Huang et al., ECMT, ACM MM 2024 count the same), each an add at
``membrane_bits``; the QNN pays one compare-and-round per activation (2 adds).

**Spikes per synapse per inference** = Σ SOPs / Σ FLOPs over the layers driven by spikes (r × S
averaged by FLOPs; Dampfhoffer et al.'s measure).  **Break-even**: the SNN's energy is a part
proportional to its spikes (the ACs, their weight and operand reads) plus a fixed part (state,
spike maps, neuron updates, float functions, the image layer).  Scaling the spikes until the SNN
costs what the QNN costs gives the break-even spikes per synapse and rate per step; where the
fixed part alone exceeds the QNN there is none, and the result says so.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from ann2snn.energy.record import LayerRecord
from ann2snn.energy.result import EnergyRow
from ann2snn.rules import Role

WEIGHT_READS = ("best", "event", "dense")
FP16_MAC_PJ = 1.5  # Horowitz: fp16 mult 1.1 pJ + add 0.4 pJ
SRAM_8KB_64BIT_PJ = 10.0  # Horowitz: 64-bit access of an 8 KB SRAM
_ADD_PJ = ((8, 0.03), (16, 0.05), (32, 0.1))  # Horowitz: integer adds by width


@dataclass(frozen=True)
class HardwareModel:
    """The assumptions of the memory model (see the module docstring)."""

    weight_bits: int = 8
    acc_bits: int = 24
    membrane_bits: int = 24
    analog_bits: int = 16
    image_bits: int = 8
    weight_reads: str = "best"

    def __post_init__(self):
        if self.weight_reads not in WEIGHT_READS:
            raise ValueError(f"weight_reads must be one of {WEIGHT_READS}, got {self.weight_reads!r}")
        for name in ("weight_bits", "acc_bits", "membrane_bits", "analog_bits", "image_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
                raise ValueError(f"{name} must be a whole number of bits in 1..64, got {v!r}")


def add_pj(bits: float) -> float:
    """An integer add of ``bits`` bits (Horowitz's 8 / 16 / 32-bit points, linear between)."""
    if bits <= 8:
        return 0.03 * bits / 8
    for (b0, e0), (b1, e1) in zip(_ADD_PJ, _ADD_PJ[1:]):
        if bits <= b1:
            return e0 + (e1 - e0) * (bits - b0) / (b1 - b0)
    return 0.1 * bits / 32


def mult_pj(a_bits: float, b_bits: float) -> float:
    """An integer multiply of a×b bits: 0.2 pJ × a·b / 64 (Horowitz: 0.2 pJ at 8×8, 3.1 at 32×32)."""
    return 0.2 * a_bits * b_bits / 64


def sram_bit_pj(size_bytes: float) -> float:
    """One bit read or written in an SRAM of ``size_bytes``: 10 pJ × √(size / 8 KiB) per 64 bits."""
    return SRAM_8KB_64BIT_PJ * math.sqrt(max(size_bytes, 64.0) / 8192.0) / 64.0


@dataclass
class HardwareEnergy:
    """Per-image energy of the SNN and of its equal-bit QNN under :class:`HardwareModel`."""

    model: HardwareModel
    activation_bits: int  # the QNN's activations
    e_qnn_mj: float
    e_snn_mj: float
    qnn_breakdown_mj: dict[str, float]
    snn_breakdown_mj: dict[str, float]
    qnn_snn_ratio: float  # E_QNN / E_SNN: above 1 the SNN wins
    spikes_per_synapse: float  # per inference, over the spike-driven layers
    break_even_spikes_per_synapse: float | None  # None: no spike count makes the SNN cheaper
    break_even_rate: float | None  # ... per step (÷ S)
    fixed_share: float  # the part of E_SNN that does not scale with the spikes
    verdict: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = asdict(self.model)
        return out


@dataclass
class _Tally:
    qnn: dict[str, float] = field(default_factory=dict)
    snn: dict[str, float] = field(default_factory=dict)
    per_spike: float = 0.0  # pJ of the SNN that scale with its spikes
    spike_sops: float = 0.0
    spike_flops: float = 0.0

    def add(self, side: str, key: str, pj: float) -> None:
        book = self.qnn if side == "qnn" else self.snn
        book[key] = book.get(key, 0.0) + pj


def _network_bits(records: list[LayerRecord], t: int) -> tuple[int, int, bool]:
    """(L, the QNN's activation bits, signed) from the converted neurons (L = t for a directly
    trained SNN, whose neurons have no trained levels: Yan et al.'s equal-capacity QNN)."""
    levels = [r.levels for r in records if r.role is Role.NEURON and r.levels]
    L = max(levels) if levels else t
    signed = any(r.signed for r in records if r.role is Role.NEURON)
    return L, math.ceil(math.log2(L + 1)) + int(signed), signed


def _neurons(rec: LayerRecord, images: int, steps: int, L: int, m: int, hw: HardwareModel, tally: _Tally) -> float:
    """A neuron layer: the SNN's state traffic, updates and spike map; returns its entries per image."""
    entry_steps = rec.numel / images
    entries = entry_steps / max(steps, 1)
    state_bits = hw.membrane_bits + math.ceil(math.log2(2 * L + 1))
    # the two-sign neuron of a converted site sends −m..m; a directly trained (LIF) neuron 0..1
    spike_bits = math.ceil(math.log2(2 * m + 1)) if rec.type == "ScaledNeuron" else 1
    tally.add("snn", "state_traffic", 2 * entry_steps * state_bits * sram_bit_pj(entries * state_bits / 8))
    tally.add("snn", "neuron_updates", entry_steps * 2 * m * add_pj(hw.membrane_bits))
    tally.add("snn", "spike_traffic", 2 * entry_steps * spike_bits * sram_bit_pj(entries * spike_bits / 8))
    return entries


def _synapse(rec: LayerRecord, row: EnergyRow, steps: int, a_bits: int, hw: HardwareModel, tally: _Tally) -> None:
    w_bit = sram_bit_pj(rec.weights * hw.weight_bits / 8)
    in_bits = hw.image_bits if rec.root else a_bits
    tally.add("qnn", "macs", row.flops * (mult_pj(in_bits, hw.weight_bits) + add_pj(hw.acc_bits)))
    tally.add("qnn", "weight_reads", rec.weights * hw.weight_bits * w_bit)
    tally.add("snn", "acs", row.sops * add_pj(hw.acc_bits))
    mac_bits = hw.image_bits if rec.root else hw.analog_bits
    tally.add("snn", "mac_image_layer" if rec.root else "mac_analog",
              row.macs * (mult_pj(mac_bits, hw.weight_bits) + add_pj(hw.acc_bits)))
    per_event = (row.sops + row.macs) * hw.weight_bits * w_bit
    per_step = rec.weights * hw.weight_bits * w_bit * (1 if rec.root else steps)
    if hw.weight_reads == "event" or (hw.weight_reads == "best" and per_event <= per_step):
        tally.add("snn", "weight_reads", per_event)
        tally.per_spike += row.sops * hw.weight_bits * w_bit
    else:
        tally.add("snn", "weight_reads", per_step)
    tally.per_spike += row.sops * add_pj(hw.acc_bits)
    if row.sops:
        tally.spike_sops += row.sops
        tally.spike_flops += row.flops


def _product(rec: LayerRecord, row: EnergyRow, images: int, steps: int, a_bits: int, hw: HardwareModel,
             tally: _Tally) -> None:
    held = rec.numel_b / images / max(steps, 1) * hw.membrane_bits / 8
    operand = hw.membrane_bits * sram_bit_pj(held)
    tally.add("qnn", "macs", row.flops * (mult_pj(a_bits, a_bits) + add_pj(hw.acc_bits)))
    tally.add("snn", "acs", row.sops * add_pj(hw.acc_bits))
    tally.add("snn", "mac_products", row.macs * (mult_pj(hw.analog_bits, hw.analog_bits) + add_pj(hw.acc_bits)))
    tally.add("snn", "operand_reads", (row.sops + row.macs) * operand)
    tally.per_spike += row.sops * (add_pj(hw.acc_bits) + operand)
    if row.sops:
        tally.spike_sops += row.sops
        tally.spike_flops += row.flops


def hardware_energy(records: Iterable[LayerRecord], rows: list[EnergyRow], images: int, t: int, extra_t: int,
                    spike_levels: int, nonlinear_macs_snn: float, nonlinear_macs_ann: float,
                    model: HardwareModel | None = None) -> HardwareEnergy:
    """Price the meter's records (``rows``: the standard model's rows of the same records, in
    order) under :class:`HardwareModel`; ``nonlinear_macs_*``: the float functions' MACs per image."""
    hw = model or HardwareModel()
    records = list(records)
    n, steps = max(images, 1), t + extra_t
    L, a_bits, _ = _network_bits(records, t)
    tally = _Tally()
    for rec, row in zip(records, rows):
        if rec.role is Role.NEURON:
            entries = _neurons(rec, n, steps, L, spike_levels, hw, tally)
            # where the SNN has a neuron the QNN has an activation: written and read once, quantized once
            tally.add("qnn", "activation_traffic", 2 * entries * a_bits * sram_bit_pj(entries * a_bits / 8))
            tally.add("qnn", "quantizers", entries * 2 * add_pj(hw.acc_bits))
        elif rec.role is Role.SYNAPSE:
            _synapse(rec, row, steps, a_bits, hw, tally)
        elif rec.role is Role.PRODUCT:
            _product(rec, row, n, steps, a_bits, hw, tally)
    tally.add("qnn", "float_functions", nonlinear_macs_ann * FP16_MAC_PJ)
    tally.add("snn", "float_functions", nonlinear_macs_snn * FP16_MAC_PJ)
    return _summary(hw, a_bits, tally, steps)


def _summary(hw: HardwareModel, a_bits: int, tally: _Tally, steps: int) -> HardwareEnergy:
    e_qnn, e_snn = sum(tally.qnn.values()), sum(tally.snn.values())
    fixed = e_snn - tally.per_spike
    per_synapse = tally.spike_sops / tally.spike_flops if tally.spike_flops else 0.0
    be = be_rate = None
    if tally.per_spike > 0 and e_qnn > fixed:
        be = per_synapse * (e_qnn - fixed) / tally.per_spike
        be_rate = be / steps if steps else None
    ratio = e_qnn / e_snn if e_snn > 0 else math.inf
    if be is None:
        verdict = (f"the SNN costs {1 / ratio:.3g}× its equal-bit ({a_bits}-bit) QNN; its spike-independent costs "
                   f"alone ({fixed * 1e-9:.3g} mJ) exceed the QNN's {e_qnn * 1e-9:.3g} mJ, so no spike rate breaks even")
    else:
        side = "wins" if ratio > 1 else "loses"
        verdict = (f"the SNN {side} against its equal-bit ({a_bits}-bit) QNN: {ratio:.3g}× (E_QNN / E_SNN) at "
                   f"{per_synapse:.3g} spikes per synapse; break-even at {be:.3g} spikes per synapse "
                   f"({be_rate:.3g} per step)")
    return HardwareEnergy(
        model=hw, activation_bits=a_bits, e_qnn_mj=e_qnn * 1e-9, e_snn_mj=e_snn * 1e-9,
        qnn_breakdown_mj={k: v * 1e-9 for k, v in tally.qnn.items()},
        snn_breakdown_mj={k: v * 1e-9 for k, v in tally.snn.items()}, qnn_snn_ratio=ratio,
        spikes_per_synapse=per_synapse, break_even_spikes_per_synapse=be, break_even_rate=be_rate,
        fixed_share=fixed / e_snn if e_snn > 0 else 0.0, verdict=verdict)


__all__ = ["FP16_MAC_PJ", "HardwareEnergy", "HardwareModel", "WEIGHT_READS", "add_pj", "hardware_energy", "mult_pj",
           "sram_bit_pj"]
