"""ANN → SNN conversion: copy the trained QCFS ANN and let a preset convert the copy.

:func:`convert` is the entry point; a *preset* (:mod:`ann2snn.presets`) says how the copy is
converted and how its neurons are set for a run of t steps, the *passes* (:mod:`ann2snn.passes`)
do the work, and the *rules* (:mod:`ann2snn.rules`) say what each operator becomes.  The result
is a :class:`SpikingNetwork`, which the :class:`~ann2snn.simulate.Simulator` steps one time step
per call.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ann2snn._checks import check_module
from ann2snn.graph import ConversionError
from ann2snn.neurons import Clock, ScaledNeuron, check_spike_levels
from ann2snn.presets import Preset, get_preset
from ann2snn.quant import QCFS

log = logging.getLogger(__name__)


class SpikingNetwork(nn.Module):
    """A converted network: ``net`` processes one time step per call; ``clock`` is its time;
    ``preset`` converted it and sets its neurons for a run; ``report`` lists what each
    conversion step changed; ``spike_levels`` is the simulator's default m."""

    def __init__(self, net: nn.Module, clock: Clock, preset: Preset | str, report: dict[str, list[str]],
                 spike_levels: int = 1, allow_float_ops: bool | set[str] = False):
        super().__init__()
        self.net, self.clock, self.preset, self.report = net, clock, get_preset(preset), report
        self.spike_levels = check_spike_levels(spike_levels)
        self.allow_float_ops = allow_float_ops  # what convert() was allowed to keep as float ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def neurons(self) -> list[ScaledNeuron]:
        return [m for m in self.net.modules() if isinstance(m, ScaledNeuron)]


def convert(ann: nn.Module, preset: Preset | str = "exact", *, allow_float_ops: bool | set[str] = False,
            spike_levels: int = 1, example_input: torch.Tensor | None = None) -> SpikingNetwork:
    """Copy a trained QCFS ANN and convert the copy with ``preset``; the ANN is left untouched.

    ``exact`` (default) and ``rate`` trace the model and convert it node by node: any model
    torch.fx can trace, whose every operation on the path from the input has a rule
    (:mod:`ann2snn.rules`); anything else is refused with a
    :class:`~ann2snn.graph.ConversionError` that names the node (``allow_float_ops``: True, or a
    set of node names, keeps such nodes as per-step float ops instead, with a warning).
    ``per_step`` reproduces the original toolkit on its own transformer by module replacement,
    defects included.

    ``example_input`` (an input of the size the network will see) lets a model whose code branches
    on shapes trace (:class:`~ann2snn.graph.ShapeTracer`; the report's ``traced_with_shapes`` says
    so): the network is then specialised to that input size, except the batch.  Conversion runs in the ANN's dtype (a float64 ANN gives a float64 SNN: :func:`ann2snn.verify`
    converts a float64 copy to compare like with like).  ``spike_levels`` (m) is the default of
    the network's :class:`~ann2snn.simulate.Simulator`:
    each neuron may send up to m spikes per step and sign (1: binary spikes).
    """
    check_module("convert", "ann", ann, "the trained QCFS ANN")
    check_spike_levels(spike_levels)
    preset = get_preset(preset)
    if not any(isinstance(m, QCFS) for m in ann.modules()):
        raise ConversionError("convert() needs a QCFS-quantized ANN (run ann2snn.quantize before training or "
                              "fine-tuning); this model has no QCFS activation sites.")
    net = copy.deepcopy(ann).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    clock = Clock()
    net, report = preset.build(net, clock, allow_float_ops, example_input)
    for step, names in report.items():
        if names:
            log.info("convert: %s: %d", step, len(names))
    snn = SpikingNetwork(net, clock, preset, report, spike_levels, allow_float_ops).eval()
    # the input size the network was traced for (a sequence model is specialised to its length)
    snn.example_shape = None if example_input is None else tuple(example_input.shape[1:])
    return snn


__all__ = ["SpikingNetwork", "convert"]
