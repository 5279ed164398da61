"""The energy convention's constants: energy per operation, and MACs per element of a float function.

Per-operation energies are Horowitz's 45 nm figures ("Computing's energy problem", ISSCC 2014), as
Spikformer (Zhou et al., ICLR 2023) and the Spike-driven Transformer (Yao et al., NeurIPS 2023)
use them.  The float-function costs are a convention, not a measurement (see :mod:`ann2snn.energy`).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ann2snn._checks import describe
from ann2snn.neurons import DriveConst, ECSoftmax, RunningFunction


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
                         f"(e.g. '4.6,0.9'); got {describe(spec)}") from None
    if not (mac > 0 and ac > 0):
        raise ValueError(f"energy constants must be positive, got E_MAC={mac}, E_AC={ac}")
    return EnergyConstants(f"custom {mac:g}/{ac:g}", mac, ac)


# MACs per output element of a float function (see the package docstring): an exponential, erf or
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


__all__ = ["CONSTANTS", "EnergyConstants", "NONLINEAR_DEFAULT_MACS", "NONLINEAR_MACS", "RUNNING_RULE_MACS",
           "nonlinear_macs", "resolve_constants"]
