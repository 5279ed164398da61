"""What the meter records about one layer over the measured runs (counts, not costs).

A typed record, with slots: a misspelt field is an ``AttributeError`` where it is read or
written, never a count that silently stays zero.
"""
from __future__ import annotations

from dataclasses import dataclass

from ann2snn.rules import Role


@dataclass(slots=True)
class LayerRecord:
    """The counts of one hooked module, summed over every step and image the meter saw.

    ``role`` is the module's role in :data:`ann2snn.rules.RULES` (neuron, synapse, product or
    float function); ``type`` the class name reported (a bias-gated layer's own class)."""

    name: str
    role: Role
    type: str
    # the driving input of a synapse or the first operand of a product; the output of a neuron or
    # a float function: events (non-zero entries; k for an entry k·λθ of a multi-level neuron
    # that a layer reads) and entries
    nnz: float = 0.0
    numel: float = 0.0
    nnz_b: float = 0.0  # a product's second operand
    numel_b: float = 0.0
    neg: float = 0.0  # negative output entries (neurons, float functions)
    events: float | None = None  # a multi-level neuron's output events (up to m per entry and step)
    ac: float = 0.0  # spike-driven operations, or events of a synapse's spike input (× fan-out later)
    mac: float = 0.0  # analog-driven operations, or events of a synapse's analog input
    n_in: int = 0  # a synapse's input entries per sample and step
    root: bool = False  # a synapse that reads the network's input (the image)
    analog: bool = False  # a synapse that read an analog input on some step
    per_step: bool = False  # a per-step product a_k·b_k (else the running-sum form, or none)
    spike_a: bool = True  # a product's first operand was spikes on every step
    spike_b: bool = True
    ev_a: float = 0.0  # a per-step product's operations driven by its first operand (events × fan-out)
    ev_b: float = 0.0
    f_macs: int = 0  # a float function's MACs per output element (ann2snn.energy.nonlinear_macs)
    running: bool = False  # a float function under the running-sum rule (+2 MACs per element and step)
    f_elems: float = 0.0  # a float function's output elements, every step
    f_elems_first: float = 0.0  # ... on the first step only (the ANN evaluates it once)
    ann_macs: float = 0.0  # an elementwise product's MACs in the ANN (once; torch's FLOP counter skips them)
    weights: int = 0  # a synapse's weights (the memory model's weight buffer)
    levels: int | None = None  # a converted neuron's trained L (None: a directly trained neuron)
    signed: bool = False  # a converted neuron of a signed site


__all__ = ["LayerRecord"]
