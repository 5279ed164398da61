"""ANN → SNN conversion as named module-replacement passes.

Each pass is a verb that edits a model in place and returns the qualified names of what it
replaced; :func:`convert` copies the trained ANN, runs the passes a preset asks for, in order, and
logs what each did.  Presets (see :data:`PRESETS`):

- ``seed``: the original toolkit (seed 003) exactly: BatchNorm left unfolded (its shift is
  injected at every step, zero-input steps included), softmax and both attention products
  computed per step on the current spikes, the lazy negative-spike rule (v ≤ −θ), cap = t,
  threshold 1.
- ``rate``: the exact neuron (v < 0), BN folded and biases injected only while the input is
  fed, spike-equivalent attention — but threshold 1 and cap = t.  Its t-step average is QCFS
  with *t* levels, not the trained L (SPEC §7's pitfall); kept to measure exactly that.
- ``exact`` (default): as ``rate`` but level-matched: each neuron's threshold is t/L (in units of
  λ) and its cap L, so the spike count over the run quantizes the t-step input total into the
  trained L levels, whatever t is.  Zero-drive extra steps then only let late spikes settle, so
  every row of a table converges to the L-level ANN.  At t = 1 this is sum coding (SpikeZIP-TF:
  input and biases once, threshold λ/L); for t ≥ L neurons keep up with the drive and t = L
  is already close.  The price: for t < L the diagonal (no extra steps) is below ``rate``'s,
  because a neuron cannot emit the L spikes it owes in t steps.

References: Bu et al. ICLR 2022 (QCFS); Hu et al. TPAMI 2023 (Fast-SNN: signed neurons);
Huang et al. 2024 (ECMT: expectation compensation); You et al. ICML 2024 (SpikeZIP-TF).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ann2snn.layers import LinearBN, MatMul
from ann2snn.neurons import Clock, DriveGate, ECSoftmax, MaxPoolNeuron, ScaledNeuron, SpikeMatMul
from ann2snn.quant import QCFS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConversionOptions:
    fold_bn: bool = True  # fold BatchNorm into the preceding Linear/Conv
    gate_bias: bool = True  # inject biases only on drive steps (needs fold_bn to cover BN shifts)
    neg_rule: str = "exact"  # exact: v < 0 ; seed: v <= -θ
    equivalent_ops: bool = True  # spike-equivalent q·kᵀ, attn·v and expectation-compensated softmax
    level_matched: bool = True  # threshold t/L and cap L (else threshold 1 and cap t)


PRESETS: dict[str, ConversionOptions] = {
    "exact": ConversionOptions(),
    "rate": ConversionOptions(level_matched=False),
    "seed": ConversionOptions(fold_bn=False, gate_bias=False, neg_rule="seed", equivalent_ops=False,
                              level_matched=False),
}


# --------------------------------------------------------------------------------------------
# generic helpers
def _replace(model: nn.Module, match: Callable[[nn.Module], bool],
             make: Callable[[nn.Module], nn.Module]) -> list[str]:
    """Swap every sub-module for which ``match`` holds by ``make(old)``; returns their names."""
    names = [name for name, m in model.named_modules() if name and match(m)]
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, make(getattr(parent, attr)))
    return names


# --------------------------------------------------------------------------------------------
# passes
def _fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold an eval-mode BN that follows ``layer`` (Linear or Conv) into its weight and bias."""
    w = layer.weight
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(scale)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(bn.running_mean)
    shape = (-1,) + (1,) * (w.dim() - 1)
    with torch.no_grad():
        layer.weight = nn.Parameter(w.detach() * scale.reshape(shape))
        layer.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)


def fold_bn(model: nn.Module) -> list[str]:
    """Fold every BatchNorm that directly follows a Linear/Conv (``LinearBN`` or a Sequential
    pair) into it and replace the BN by Identity.  Same affine map, so outputs are unchanged."""
    folded: list[str] = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, LinearBN) and isinstance(mod.bn, nn.BatchNorm1d):
            _fold_into(mod.linear, mod.bn)
            mod.bn = nn.Identity()
            folded.append(f"{name}.bn")
        elif isinstance(mod, nn.Sequential):
            children = list(mod.named_children())
            for (_, a), (bname, b) in zip(children, children[1:]):
                if isinstance(a, (nn.Conv1d, nn.Conv2d, nn.Linear)) and isinstance(
                        b, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    _fold_into(a, b)
                    setattr(mod, bname, nn.Identity())
                    folded.append(f"{name}.{bname}" if name else bname)
    return folded


def replace_activations(model: nn.Module, neg_rule: str = "exact") -> list[str]:
    """QCFS → ScaledNeuron carrying that site's λ and L."""
    return _replace(model, lambda m: isinstance(m, QCFS),
                    lambda m: ScaledNeuron(float(m.lam.detach()), m.levels, neg_rule))


def replace_maxpool(model: nn.Module) -> list[str]:
    """MaxPool2d → MaxPoolNeuron with the same geometry."""
    return _replace(model, lambda m: isinstance(m, nn.MaxPool2d), MaxPoolNeuron.from_maxpool)


def replace_attention_ops(model: nn.Module, clock: Clock) -> list[str]:
    """MatMul → SpikeMatMul and nn.Softmax → ECSoftmax (running sums equal n·f(means))."""
    names = _replace(model, lambda m: isinstance(m, MatMul), lambda m: SpikeMatMul(clock))
    return names + _replace(model, lambda m: isinstance(m, nn.Softmax), lambda m: ECSoftmax(m.dim, clock))


def gate_biases(model: nn.Module, clock: Clock) -> list[str]:
    """Wrap every biased Linear/Conv so its bias is injected only on drive steps."""
    return _replace(model, lambda m: isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.bias is not None,
                    lambda m: DriveGate(m, clock))


# --------------------------------------------------------------------------------------------
class SpikingNetwork(nn.Module):
    """A converted network: ``net`` processes one time step per call; ``clock`` is its time."""

    def __init__(self, net: nn.Module, clock: Clock, options: ConversionOptions, report: dict[str, list[str]]):
        super().__init__()
        self.net, self.clock, self.options, self.report = net, clock, options, report

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def neurons(self) -> list[ScaledNeuron]:
        return [m for m in self.net.modules() if isinstance(m, ScaledNeuron)]


def convert(ann: nn.Module, options: ConversionOptions | str = "exact") -> SpikingNetwork:
    """Copy a trained QCFS ANN and convert the copy; the ANN is left untouched."""
    opts = PRESETS[options] if isinstance(options, str) else options
    if not any(isinstance(m, QCFS) for m in ann.modules()):
        raise ValueError("convert() needs a QCFS-quantized ANN (run ann2snn.quantize before "
                         "training); this model has no QCFS activation sites.")
    net = copy.deepcopy(ann).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    clock = Clock()
    report: dict[str, list[str]] = {}
    if opts.fold_bn:
        report["fold_bn"] = fold_bn(net)
    report["replace_activations"] = replace_activations(net, opts.neg_rule)
    report["replace_maxpool"] = replace_maxpool(net)
    if opts.equivalent_ops:
        report["replace_attention_ops"] = replace_attention_ops(net, clock)
    if opts.gate_bias:
        report["gate_biases"] = gate_biases(net, clock)
    for step, names in report.items():
        log.info("convert: %s replaced %d module(s)", step, len(names))
    return SpikingNetwork(net, clock, opts, report).eval()

