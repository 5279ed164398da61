"""Presets: one object per conversion recipe, which both converts and answers the simulator.

A preset says how a QCFS ANN becomes an SNN (:meth:`Preset.build`) and how that SNN's neurons are
set for a run of ``t`` drive steps (:meth:`Preset.neuron_params`: threshold in units of the
site's λ, and the cap on the net spike count).  Nothing outside this module compares a preset's
name; only the combinations below exist.

- ``exact`` (default): the graph conversion (:func:`ann2snn.passes.convert_graph`), level-matched:
  each neuron's threshold is t/L (in units of λ) and its cap L, so the spike count over the run
  quantizes the t-step input total into the trained L levels, whatever t is.  Zero-drive extra
  steps only let late spikes settle, so every row of a table converges to the L-level ANN.  At
  t = 1 this is sum coding (SpikeZIP-TF: input and biases once, threshold λ/L); for t ≥ L neurons
  keep up with the drive.  The price: for t < L the diagonal (no extra steps) is below ``rate``'s,
  because a neuron cannot emit the L spikes it owes in t steps.
- ``rate``: the same graph conversion with threshold 1 (λ) and cap t: its t-step average is QCFS
  with *t* levels, not the trained L (Bu et al.'s pitfall); kept to measure exactly that.
- ``per_step`` (formerly ``seed``): the original toolkit exactly: BatchNorm left
  unfolded (its shift is injected at every step, zero-input steps included), softmax and both
  attention products computed per step on the current spikes, the lazy negative-spike rule
  (v ≤ −θ), threshold 1 and cap t.  Defined for the original's transformer only.

Directly trained SNNs are stepped as trained: :data:`AS_TRAINED` answers the simulator for them.

References: Bu et al. ICLR 2022 (QCFS); Hu et al. TPAMI 2023 (Fast-SNN: signed neurons);
Huang et al. 2024 (ECMT: expectation compensation); You et al. ICML 2024 (SpikeZIP-TF).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from ann2snn.graph import ConversionError
from ann2snn.models.transformer import Transformer  # the one family the per_step recipe is defined for
from ann2snn.neurons import Clock, check_neg_rule
from ann2snn.passes import convert_graph, replace_per_step

log = logging.getLogger("ann2snn")


@dataclass(frozen=True)
class Preset:
    """A conversion recipe (see the module docstring)."""

    name: str
    neg_rule: str = "exact"  # exact: a negative spike where v < 0; lazy: where v <= −θ
    level_matched: bool = False  # threshold t/L and cap L (else threshold 1 and cap t)
    exact: bool = False  # the SNN settles on the quantized ANN (what `verify` checks)

    def __post_init__(self) -> None:
        object.__setattr__(self, "neg_rule", check_neg_rule(self.neg_rule))

    def build(self, net: nn.Module, clock: Clock, allow_float_ops: bool | set[str] = False,
              example_input=None) -> tuple[nn.Module, dict[str, list[str]]]:
        """Convert ``net`` (a copy of the ANN, edited in place) → (stepped network, report)."""
        raise NotImplementedError

    def neuron_params(self, neuron: nn.Module, t: int) -> tuple[float, float]:
        """(threshold in units of λ, cap) of ``neuron`` for a run of ``t`` drive steps."""
        levels = getattr(neuron, "levels", None)
        if self.level_matched and levels:
            return t / levels, float(levels)
        return 1.0, float(t)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class GraphPreset(Preset):
    """Any traceable model, node by node (:func:`ann2snn.passes.convert_graph`): BatchNorm folded,
    biases and constants gated to the drive steps, spike-equivalent products, softmax and norms."""

    def build(self, net, clock, allow_float_ops=False, example_input=None):
        return convert_graph(net, clock, self.neg_rule, gate_bias=True, allow_float_ops=allow_float_ops,
                             example_input=example_input)


@dataclass(frozen=True)
class PerStepPreset(Preset):
    """The original toolkit's module replacement (:func:`ann2snn.passes.replace_per_step`)."""

    def build(self, net, clock, allow_float_ops=False, example_input=None):
        if not isinstance(net, Transformer):
            raise ConversionError(
                f"The {self.name} preset reproduces the original toolkit's module replacement, which is defined "
                f"for its own transformer only; on a {type(net).__name__} it could give one neuron to two call "
                "sites or leave BatchNorm shifts on every step. Use the exact (or rate) preset, which converts any "
                "traceable model node by node.")
        return net, replace_per_step(net, self.neg_rule)


EXACT = GraphPreset("exact", level_matched=True, exact=True)
RATE = GraphPreset("rate")
PER_STEP = PerStepPreset("per_step", neg_rule="lazy")
AS_TRAINED = Preset("as_trained")  # a directly trained SNN: threshold and cap as trained
PRESETS: dict[str, Preset] = {p.name: p for p in (EXACT, RATE, PER_STEP)}
OLD_NAMES = {"seed": "per_step"}  # spellings of earlier versions, still accepted


def get_preset(preset: Preset | str) -> Preset:
    """The preset object for ``preset`` (an object, a name, or an old name, with a note)."""
    if isinstance(preset, Preset):
        return preset
    if not isinstance(preset, str):
        raise TypeError(f"preset must be a name ({', '.join(PRESETS)}) or a Preset, got {type(preset).__name__}")
    key = preset.strip().lower()
    if key in OLD_NAMES:
        log.info("preset %r is now called %r", key, OLD_NAMES[key])
        key = OLD_NAMES[key]
    if key not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]


__all__ = ["AS_TRAINED", "EXACT", "GraphPreset", "PER_STEP", "PRESETS", "PerStepPreset", "Preset", "RATE",
           "get_preset"]
