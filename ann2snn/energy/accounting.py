"""Cost accounting: what the meter recorded, the dense FLOPs and the energy constants → per-layer
rows and per-image totals, by the rules of :mod:`ann2snn.energy`.

Nothing here runs a network; :class:`~ann2snn.energy.meter.EnergyMeter` records, this prices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from ann2snn._checks import describe
from ann2snn.energy.constants import RUNNING_RULE_MACS, EnergyConstants, resolve_constants
from ann2snn.energy.hardware import HardwareModel, hardware_energy
from ann2snn.energy.record import LayerRecord
from ann2snn.energy.result import EnergyBreakdown, EnergyResult, EnergyRow, EnergyTotals
from ann2snn.neurons import bits_per_step
from ann2snn.rules import Role

FIRST_LAYER_MODES = ("once", "per_step")
# the printed and written names of the roles the meter counts
KIND_NAMES: dict[Role, str] = {Role.NEURON: "neuron", Role.SYNAPSE: "synapse", Role.PRODUCT: "product",
                               Role.FLOAT: "nonlinear"}


@dataclass(slots=True)
class _Sums:
    """Operation counts per image, summed over the layers."""

    flops: float = 0.0  # the dense MACs of the reported synapses and products
    sops: float = 0.0
    macs: float = 0.0  # the SNN's MACs of synapses and products
    first_flops: float = 0.0
    first_macs: float = 0.0  # ... of the image-fed layer
    syn_macs: float = 0.0  # ... of synapses reading analog values
    prod_macs: float = 0.0  # ... of products
    f_macs: float = 0.0  # the float functions' MACs in the SNN
    f_macs_ann: float = 0.0  # ... in the ANN
    ann_extra: float = 0.0  # the ANN's MACs that torch's FLOP counter leaves out (elementwise products)


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _neuron_row(rec: LayerRecord) -> EnergyRow:
    """A spiking layer: the rate of its output (events per entry and step), no operations."""
    events = None if rec.events is None else _ratio(rec.events, rec.numel)  # m > 1: up to m per entry
    return EnergyRow(rec.name, rec.type, KIND_NAMES[rec.role], _ratio(rec.nnz, rec.numel),
                     neg_rate=_ratio(rec.neg, rec.numel), event_rate=events, input="", op="", flops=0,
                     sops=0.0, macs=0.0)


def _float_row(rec: LayerRecord, images: int, sums: _Sums) -> EnergyRow:
    """A float function: MACs per element, once per image in the ANN, on every step in the SNN."""
    per_step = rec.f_macs + (RUNNING_RULE_MACS if rec.running else 0)
    macs = per_step * rec.f_elems / images if rec.f_macs else 0.0
    ann_macs = rec.f_macs * rec.f_elems_first / images
    sums.f_macs += macs
    sums.f_macs_ann += ann_macs
    return EnergyRow(rec.name, rec.type, KIND_NAMES[rec.role], _ratio(rec.nnz, rec.numel),
                     neg_rate=_ratio(rec.neg, rec.numel), input="analog", op="MAC" if macs else "-", flops=0,
                     sops=0.0, macs=macs, ann_macs=ann_macs)


def _synapse_ops(rec: LayerRecord, fl: int, images: int, first_layer: str, sums: _Sums) -> tuple[float, float, str]:
    """(ACs, MACs, input) of a synapse: events × fan-out (FLOPs / inputs) = rate × S × FLOPs; the
    image-fed layer pays its FLOPs once under ``first_layer="once"``."""
    fan_out = fl / rec.n_in if rec.n_in else 0.0
    sops, macs = rec.ac * fan_out / images, rec.mac * fan_out / images
    if rec.root:
        sums.first_flops += fl
        macs = float(fl) if first_layer == "once" and rec.mac > 0 else macs
        sums.first_macs += macs
    else:
        sums.syn_macs += macs
    return sops, macs, "image" if rec.root else "analog" if rec.analog else "spikes"


def product_ops(rec: LayerRecord) -> tuple[float, float]:
    """(ACs, MACs) of a product layer over the run (see :mod:`ann2snn.energy`).

    A per-step product is driven by its spike operand: the sparser one (fewer events × fan-out
    over the whole run) when both are spikes; with no spike operand, MACs driven alike."""
    if not rec.per_step:  # SpikeMatMul: counted term by term in the hook
        return rec.ac, rec.mac
    ev = [rec.ev_a] * rec.spike_a + [rec.ev_b] * rec.spike_b
    if ev:
        return min(ev), 0.0
    return 0.0, min(rec.ev_a, rec.ev_b)


def _operation_row(rec: LayerRecord, flops: dict[str, int], images: int, first_layer: str,
                   sums: _Sums) -> EnergyRow:
    """A synapse or a product: dense FLOPs, and the SNN's ACs and MACs."""
    fl = int(flops.get(rec.name, 0)) or round(rec.ann_macs / images)  # elementwise products: not in torch's count
    sums.ann_extra += rec.ann_macs / images
    rate_b = None
    if rec.role is Role.SYNAPSE:
        sops, macs, inp = _synapse_ops(rec, fl, images, first_layer, sums)
    else:
        sops, macs = product_ops(rec)
        sops, macs = sops / images, macs / images
        sums.prod_macs += macs
        rate_b = _ratio(rec.nnz_b, rec.numel_b)
        inp = "×".join("spikes" if spikes else "analog" for spikes in (rec.spike_a, rec.spike_b))
    op = "+".join(k for k, v in (("AC", sops), ("MAC", macs)) if v > 0) or "-"
    sums.flops += fl
    sums.sops += sops
    sums.macs += macs
    return EnergyRow(rec.name, rec.type, KIND_NAMES[rec.role], _ratio(rec.nnz, rec.numel), rate_b=rate_b, input=inp,
                     op=op, flops=fl, sops=sops, macs=macs)


def _totals(rows: list[EnergyRow], sums: _Sums, flops: dict[str, int], c: EnergyConstants, images: int,
            spike_levels: int, t: int, extra_t: int, first_layer: str) -> EnergyTotals:
    model_flops = int(flops.get("", sums.flops)) + round(sums.ann_extra)
    e_ann = c.e_mac_pj * (model_flops + sums.f_macs_ann) * 1e-9
    e_snn = (c.e_ac_pj * sums.sops + c.e_mac_pj * (sums.macs + sums.f_macs)) * 1e-9
    breakdown = EnergyBreakdown(ac_spikes=c.e_ac_pj * sums.sops * 1e-9,
                                mac_image_layer=c.e_mac_pj * sums.first_macs * 1e-9,
                                mac_analog_inputs=c.e_mac_pj * sums.syn_macs * 1e-9,
                                mac_products=c.e_mac_pj * sums.prod_macs * 1e-9,
                                mac_float_functions=c.e_mac_pj * sums.f_macs * 1e-9)
    S, bits = t + extra_t, bits_per_step(spike_levels)
    rates = [r.rate for r in rows if r.kind == KIND_NAMES[Role.NEURON]]
    return EnergyTotals(
        images=images, t=t, extra_t=extra_t, steps=S, spike_levels=spike_levels, bits_per_step=bits,
        bit_steps=S * bits, constants=c, first_layer=first_layer, flops=model_flops, flops_layers=sums.flops,
        first_layer_flops=sums.first_flops, first_layer_macs=sums.first_macs,
        other_macs=sums.macs - sums.first_macs, nonlinear_macs=sums.f_macs, nonlinear_macs_ann=sums.f_macs_ann,
        sops=sums.sops, e_ann_mj=e_ann, e_snn_mj=e_snn, energy_breakdown_mj=breakdown,
        non_spike_share=1.0 - breakdown.ac_spikes / e_snn if e_snn > 0 else 0.0,
        ann_snn_ratio=e_ann / e_snn if e_snn > 0 else math.inf,
        mean_rate=sum(rates) / len(rates) if rates else 0.0)


def account(records: Iterable[LayerRecord], images: int, spike_levels: int, flops: dict[str, int], t: int,
            extra_t: int = 0, constants: str | EnergyConstants = "fp32", first_layer: str = "once",
            hardware: HardwareModel | None = None) -> EnergyResult:
    """Per-layer rows and per-image totals of the layers ``records`` over ``images`` images and
    t + extra_t steps; ``flops`` maps a layer's name to its dense MACs per image ("" the model's).
    The result carries the second model too (``result.hardware``: the equal-bit QNN with memory
    traffic, :mod:`ann2snn.energy.hardware`, under ``hardware`` or its defaults)."""
    records = list(records)
    if first_layer not in FIRST_LAYER_MODES:
        raise ValueError(f"first_layer must be one of {FIRST_LAYER_MODES}, got {describe(first_layer)}")
    c = resolve_constants(constants)
    n = max(images, 1)
    sums = _Sums()
    rows = []
    for rec in records:
        if rec.role is Role.NEURON:
            row = _neuron_row(rec)
        elif rec.role is Role.FLOAT:
            row = _float_row(rec, n, sums)
        else:
            row = _operation_row(rec, flops, n, first_layer, sums)
        row.e_ann_mj = c.e_mac_pj * (row.flops + (row.ann_macs if row.ann_macs is not None else 0.0)) * 1e-9
        row.e_snn_mj = (c.e_ac_pj * row.sops + c.e_mac_pj * row.macs) * 1e-9
        rows.append(row)
    totals = _totals(rows, sums, flops, c, images, spike_levels, t, extra_t, first_layer)
    second = hardware_energy(records, rows, n, t, extra_t, spike_levels, sums.f_macs, sums.f_macs_ann, hardware)
    return EnergyResult(rows, totals, hardware=second)


__all__ = ["FIRST_LAYER_MODES", "KIND_NAMES", "account", "product_ops"]
