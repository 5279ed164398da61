"""The energy meter's results: per-layer rows, per-image totals, and the whole result.

Each is a dataclass whose ``to_dict()`` gives the dict the JSON, CSV and tables are written from
(the keys and their order are the file format: :mod:`ann2snn.app.report`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ann2snn.energy.constants import EnergyConstants


@dataclass
class EnergyRow:
    """One counted layer, per image.  Fields left None are not part of the layer's kind and are
    left out of its dict: ``neg_rate`` (neurons, float functions), ``event_rate`` (multi-level
    neurons), ``rate_b`` (products), ``ann_macs`` (float functions)."""

    name: str
    type: str
    kind: str  # "neuron", "synapse", "product" or "nonlinear" (a float function)
    rate: float  # events per entry and step: of the input (synapse), first operand (product), output
    neg_rate: float | None = None
    event_rate: float | None = None
    rate_b: float | None = None
    input: str = ""  # "image", "spikes", "analog"; for products one per operand ("analog×spikes")
    op: str = ""  # "AC", "MAC", "AC+MAC" or "-"
    flops: int = 0  # MACs of the dense ANN layer
    sops: float = 0.0  # ACs of the SNN
    macs: float = 0.0  # MACs of the SNN
    ann_macs: float | None = None  # a float function's MACs in the ANN (once per image)
    e_ann_mj: float = 0.0
    e_snn_mj: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.name in _OPTIONAL and getattr(self, f.name) is None)}


_OPTIONAL = {"neg_rate", "event_rate", "rate_b", "ann_macs"}


@dataclass
class EnergyBreakdown:
    """E_SNN per image (mJ) by what pays it: ACs driven by spikes, and the MACs of the image-fed
    layer, of layers reading analog values, of products and of the float functions."""

    ac_spikes: float
    mac_image_layer: float
    mac_analog_inputs: float
    mac_products: float
    mac_float_functions: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class EnergyTotals:
    """Per-image totals of a measured run of ``steps`` = t + extra_t steps over ``images`` images."""

    images: int
    t: int
    extra_t: int
    steps: int
    spike_levels: int
    bits_per_step: float
    bit_steps: float
    constants: EnergyConstants
    first_layer: str
    flops: int  # the ANN's MACs per image (the whole model, as torch counts it)
    flops_layers: float  # ... summed over the reported layers (equal when every op belongs to one)
    first_layer_flops: float
    first_layer_macs: float
    other_macs: float  # analog-fed synapses and products
    nonlinear_macs: float  # float functions in the SNN (every step)
    nonlinear_macs_ann: float  # ... in the ANN (once)
    sops: float
    e_ann_mj: float
    e_snn_mj: float
    energy_breakdown_mj: EnergyBreakdown
    non_spike_share: float  # the part of E_SNN not driven by spikes
    ann_snn_ratio: float
    mean_rate: float  # over the spiking layers' outputs

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["constants"] = asdict(self.constants)
        out["energy_breakdown_mj"] = self.energy_breakdown_mj.to_dict()
        return out


@dataclass
class EnergyAccuracy:
    """Top-1 (%) on the batches the energy was measured on: the SNN after each step of its run,
    and the ANN (None for a directly trained SNN, which has no ANN)."""

    snn_top1_within_run: list[float]
    ann_top1: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EnergyResult:
    """Rows and totals of :meth:`EnergyMeter.result` (the standard model), ``hardware`` (the second
    model: the equal-bit QNN with memory traffic); :func:`measure_energy` adds the accuracy and
    the effective latency (:func:`ann2snn.metrics.effective_latency`) of the same run."""

    rows: list[EnergyRow]
    totals: EnergyTotals
    accuracy: EnergyAccuracy | None = None
    effective_latency: Any = None
    hardware: Any = None  # the second model: ann2snn.energy.hardware.HardwareEnergy

    def to_dict(self) -> dict[str, Any]:
        """The dict that is written as JSON: ``rows`` and ``totals``, then ``accuracy`` and
        ``effective_latency`` where measured."""
        out: dict[str, Any] = {"rows": [r.to_dict() for r in self.rows], "totals": self.totals.to_dict()}
        if self.hardware is not None:
            out["hardware"] = self.hardware.to_dict()
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy.to_dict()
        if self.effective_latency is not None:
            lat = self.effective_latency
            out["effective_latency"] = lat.to_dict() if hasattr(lat, "to_dict") else lat
        return out


__all__ = ["EnergyAccuracy", "EnergyBreakdown", "EnergyResult", "EnergyRow", "EnergyTotals"]
