"""Where :func:`ann2snn.quantize` puts QCFS sites: the placements.

A *site* is a point of the network whose values the converted network sends as spikes (a
:class:`~ann2snn.quant.QCFS` in the ANN, a :class:`~ann2snn.neurons.ScaledNeuron` after
conversion).  A layer that reads a site pays accumulates (one per spike and synapse) instead of
multiply-accumulates on real values, so where the sites are decides what the SNN costs; each site
also quantizes, so it decides what the QANN loses.

- ``"relu"``: every call of a ReLU-family activation (``nn.ReLU``, ``ReLU6``, ``Hardtanh(0, c)``,
  ``F.relu``, ``Tensor.relu`` ...) becomes a site, as in QCFS (Bu et al., ICLR 2022).  A
  :class:`~ann2snn.layers.SignedSite` or a symmetric ``Hardtanh(−c, c)`` is a *signed* site.
- ``"activations"`` (the default): as ``"relu"``, and any other activation (GELU, SiLU, Hardswish,
  tanh, sigmoid ...: :data:`OTHER_ACTIVATIONS`) is kept and a site follows it, signed where its
  output can be negative.  The layer after every activation reads spikes, whatever the activation.
- ``"synapses"``: as ``"activations"``, and every operand of a synapse that is not yet a site gets
  one: the input of every Linear and convolution (module or functional), both operands of every
  product of two input-dependent tensors (``@``, ``torch.matmul``, ``*`` of two such tensors, the
  gates of squeeze-excitation and GLU), q, k and v of ``scaled_dot_product_attention`` and the
  inputs of ``nn.MultiheadAttention``.  In a transformer that puts sites after each LayerNorm,
  on q, k and v, on the softmax output and on the attention output (the spike-driven placement of
  SpikeZIP-TF, You et al., ICML 2024, and of the Spike-driven Transformer, Yao et al., NeurIPS
  2023), so that every weight is read by spikes and the network's MACs are all accumulates.  The
  site serves the synapses only: other readers (the residual sum, a norm) keep the real value,
  so the residual stream is not quantized where no synapse reads it.  A site is signed unless its
  value cannot be negative (a softmax, a sigmoid).  The network's own input is not given a site:
  the first layer encodes the analog input, as in every converted and directly trained SNN.

A site is placed on the operand as the synapse reads it; reshapes, transposes, selections and
identities between a site and a synapse (q, k, v split out of one qkv Linear) are looked through,
so an operand that is a site already reshaped gets no second one.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ann2snn.graph import DYNAMIC, ConversionError, classify
from ann2snn.layers import MatMul, SignedSite

PLACEMENTS = ("activations", "relu", "synapses")

# Activations other than the ReLU family that a site follows under placement="activations": the
# module types, functions and tensor methods, each with whether its output can be negative.
OTHER_ACTIVATIONS: dict[Any, bool] = {
    nn.GELU: True, nn.SiLU: True, nn.Mish: True, nn.Hardswish: True, nn.ELU: True, nn.CELU: True, nn.SELU: True,
    nn.LeakyReLU: True, nn.PReLU: True, nn.Tanh: True, nn.Softsign: True,
    nn.Sigmoid: False, nn.Softplus: False, nn.Hardsigmoid: False,
    F.gelu: True, F.silu: True, F.mish: True, F.hardswish: True, F.elu: True, F.celu: True, F.selu: True,
    F.leaky_relu: True, torch.tanh: True, F.tanh: True, F.softsign: True,
    torch.sigmoid: False, F.sigmoid: False, F.softplus: False, F.hardsigmoid: False,
    "tanh": True, "sigmoid": False,
}


@dataclass(frozen=True)
class Site:
    """One site to create: at ``node`` (in its place) or after it (``follows``)."""

    node: fx.Node
    clip: float | None  # a clipped ReLU's clip (λ ≤ clip)
    inplace: bool
    signed: bool
    follows: bool = False  # a site after the node (another activation, kept), not in its place
    readers: frozenset | None = None  # after the node, for these readers only (None: all of them)


def signed_site(node: fx.Node, gm: fx.GraphModule) -> tuple[bool, float | None]:
    """(is a signed site, its clip or None): a SignedSite module or a symmetric Hardtanh(−c, c)."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if isinstance(m, SignedSite):
            return True, None
        if isinstance(m, nn.Hardtanh) and float(m.min_val) == -float(m.max_val) and float(m.max_val) > 0:
            return True, float(m.max_val)
    return False, None


def _flag(node: fx.Node, index: int, name: str, default):
    return node.kwargs.get(name, node.args[index] if len(node.args) > index else default)


def activation_clip(node: fx.Node, gm: fx.GraphModule) -> tuple[bool, float | None, bool]:
    """(is a ReLU-family activation, its clip or None, in place) for an fx node."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if type(m) is nn.ReLU:
            return True, None, bool(m.inplace)
        if isinstance(m, nn.Hardtanh) and float(m.min_val) == 0.0:  # ReLU6 is a Hardtanh(0, 6)
            return True, float(m.max_val), bool(m.inplace)
        return False, None, False
    if node.op == "call_function":
        t = node.target
        if t in (F.relu, torch.relu):
            return True, None, bool(_flag(node, 1, "inplace", False))
        if t in (torch.relu_, F.relu_):
            return True, None, True
        if t is F.relu6:
            return True, 6.0, bool(_flag(node, 1, "inplace", False))
        if t is F.hardtanh:
            lo, hi = _flag(node, 1, "min_val", -1.0), _flag(node, 2, "max_val", 1.0)
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and float(lo) == 0.0:
                return True, float(hi), bool(_flag(node, 3, "inplace", False))
        return False, None, False
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return True, None, node.target == "relu_"
    return False, None, False


def other_activation(node: fx.Node, gm: fx.GraphModule) -> bool | None:
    """Whether ``node`` is an activation of :data:`OTHER_ACTIVATIONS` with a signed output (True),
    a non-negative one (False), or not such an activation (None)."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        return next((v for k, v in OTHER_ACTIVATIONS.items() if isinstance(k, type) and type(mod) is k), None)
    if node.op in ("call_function", "call_method"):
        try:
            return OTHER_ACTIVATIONS.get(node.target)
        except TypeError:  # an unhashable callable
            return None
    return None


def find_sites(gm: fx.GraphModule, model: nn.Module, placement: str = "activations") -> list[Site]:
    """Every site of ``placement`` in the traced model; a ConversionError when there is none."""
    sites = []
    for node in gm.graph.nodes:
        is_signed, clip = signed_site(node, gm)
        if is_signed:
            sites.append(Site(node, clip, False, True))
            continue
        is_act, clip, inplace = activation_clip(node, gm)
        if is_act:
            sites.append(Site(node, clip, inplace, False))
    if placement in ("activations", "synapses"):
        taken = {s.node for s in sites}
        for node in gm.graph.nodes:
            signed = other_activation(node, gm)
            if signed is not None and node.users and not all(u in taken for u in node.users):
                sites.append(Site(node, None, False, signed, follows=True))
    if placement == "synapses":
        sites += synapse_sites(gm, {s.node for s in sites}, {s.node for s in sites if not s.signed})
    if not sites:
        raise ConversionError(f"quantize: {type(model).__name__} has no activation to quantize (a ReLU-family "
                              "activation, or with placement='activations' GELU, SiLU, sigmoid, tanh ...). Build "
                              "the model with activations between its layers, or use placement='synapses'.")
    return sites


# --------------------------------------------------------------------------------------------
# placement="synapses"
_SYNAPSE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                    nn.ConvTranspose3d, nn.Bilinear)
_WEIGHTED_FUNCTIONS = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                       F.conv_transpose3d}
_PRODUCT_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm, torch.mm, operator.mul, torch.mul}
_PRODUCT_METHODS = {"matmul", "bmm", "mm", "mul"}
_VIEW_METHODS = {"reshape", "view", "permute", "transpose", "flatten", "unflatten", "contiguous", "squeeze",
                 "unsqueeze", "expand", "chunk", "split", "unbind", "t", "swapaxes", "movedim"}
_VIEW_FUNCTIONS = {torch.reshape, torch.flatten, torch.transpose, torch.permute, operator.getitem, torch.unbind,
                   torch.chunk, torch.split, torch.squeeze, torch.unsqueeze, torch.swapaxes, torch.movedim}
_NON_NEGATIVE = {F.softmax, torch.softmax, "softmax", F.sigmoid, torch.sigmoid, "sigmoid"}


def _operands(node: fx.Node, gm: fx.GraphModule, kinds: dict) -> list[fx.Node]:
    """The input-dependent operands through which ``node`` multiplies by weights or by another
    input-dependent tensor (none when ``node`` is not a synapse)."""
    def dynamic(args) -> list[fx.Node]:
        return [a for a in args if isinstance(a, fx.Node) and kinds.get(a) == DYNAMIC]

    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, _SYNAPSE_MODULES):
            return dynamic(node.args[:1])
        if isinstance(mod, nn.MultiheadAttention):
            return dynamic([*node.args[:3], *(node.kwargs.get(k) for k in ("query", "key", "value"))])
        if isinstance(mod, MatMul):
            return dynamic(node.args[:2])
        return []
    if node.op == "call_function" and node.target in _WEIGHTED_FUNCTIONS:
        return dynamic([_flag(node, 0, "input", None), _flag(node, 1, "weight", None)])
    if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
        return dynamic([_flag(node, i, k, None) for i, k in enumerate(("query", "key", "value"))])
    products = (node.op == "call_function" and node.target in _PRODUCT_FUNCTIONS) or (
        node.op == "call_method" and node.target in _PRODUCT_METHODS)
    if products:
        both = dynamic(node.args[:2])
        return both if len(both) == 2 else []  # by a constant it is a scaling, not a synapse
    return []


def _is_view(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), (nn.Identity, nn.Flatten, nn.Dropout))
    return False


_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_MAX_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                       F.adaptive_max_pool3d}


def _passes_spikes(node: fx.Node, gm: fx.GraphModule) -> bool:
    """A view, or a max-pool: the max-pool neuron of a spike train emits a spike train (each step
    the pooled running count rises by at most one spike of the same site)."""
    if _is_view(node, gm):
        return True
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _MAX_POOLS)
    return node.op == "call_function" and node.target in _MAX_POOL_FUNCTIONS


def _origin(node: fx.Node, gm: fx.GraphModule) -> fx.Node:
    """The node whose values ``node`` only rearranges (through views, selections, identities and
    max-pools)."""
    while _passes_spikes(node, gm) and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


_KEEPS_SIGN_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                         F.adaptive_avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.mean, torch.sum,
                         torch.cat, torch.stack, operator.add, torch.add, operator.mul, torch.mul, operator.matmul,
                         torch.matmul, torch.flatten}
_KEEPS_SIGN_METHODS = {"mean", "sum", "add", "mul", "matmul"}
_KEEPS_SIGN_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                       nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, MatMul)


class _Signs:
    """Which nodes' values cannot be negative: unsigned sites, softmax and sigmoid outputs, and
    pools, sums, products, concatenations and views of such values only (memoised)."""

    def __init__(self, gm: fx.GraphModule, kinds: dict, unsigned: set[fx.Node]):
        self.gm, self.kinds, self.unsigned, self.memo = gm, kinds, set(unsigned), {}

    def non_negative(self, node: fx.Node) -> bool:
        if node not in self.memo:
            self.memo[node] = False  # set before the walk: each node is walked once
            self.memo[node] = node in self.unsigned or self._by_op(node)
        return self.memo[node]

    def _by_op(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            mod = self.gm.get_submodule(str(node.target))
            if isinstance(mod, (nn.Softmax, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid)):
                return True
            return (isinstance(mod, _KEEPS_SIGN_MODULES) or _is_view(node, self.gm)) and self._inputs(node)
        if node.op not in ("call_function", "call_method"):
            return False
        try:
            if node.target in _NON_NEGATIVE:
                return True
            keeps = node.target in (_KEEPS_SIGN_METHODS if node.op == "call_method" else _KEEPS_SIGN_FUNCTIONS)
        except TypeError:  # an unhashable callable
            return False
        return (keeps or _is_view(node, self.gm)) and self._inputs(node)

    def _inputs(self, node: fx.Node) -> bool:
        tensors: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), tensors.append)
        tensors = [a for a in tensors if self.kinds.get(a) == DYNAMIC]  # not shapes, not constants
        numbers = [a for a in _flat(node.args) if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if node.target in (operator.mul, torch.mul, "mul") and any(v < 0 for v in numbers):
            return False  # a scaling by a negative number flips the sign
        constants = [a for a in _flat((node.args, node.kwargs)) if isinstance(a, fx.Node) and self.kinds.get(a) == "const"]
        if constants and node.target in (operator.mul, torch.mul, "mul", operator.add, torch.add, "add"):
            return False  # a constant of unknown sign
        return bool(tensors) and all(self.non_negative(a) for a in tensors)


def _flat(args) -> list:
    out: list = []
    fx.node.map_aggregate(args, out.append)
    return out


def synapse_sites(gm: fx.GraphModule, sites: set[fx.Node], unsigned: set[fx.Node] = frozenset()) -> list[Site]:
    """A site on every operand of a synapse that is not a site already (see the module docstring);
    ``unsigned``: the sites among ``sites`` whose values are not negative."""
    kinds = classify(gm)
    signs = _Signs(gm, kinds, unsigned)
    readers: dict[fx.Node, set[fx.Node]] = {}
    for node in gm.graph.nodes:
        for a in _operands(node, gm, kinds):
            origin = _origin(a, gm)
            if origin in sites or origin.op == "placeholder":
                continue
            readers.setdefault(a, set()).add(node)
    return [Site(a, None, False, not signs.non_negative(a), follows=True, readers=frozenset(users))
            for a, users in readers.items()]


__all__ = ["OTHER_ACTIVATIONS", "PLACEMENTS", "Site", "activation_clip", "find_sites", "other_activation",
           "signed_site", "synapse_sites"]
