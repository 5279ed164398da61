"""Conversion as a table of rules: for every operator kind, what it becomes in the SNN.

A traced QCFS ANN (:func:`ann2snn.graph.trace`) is a list of nodes; every node whose value
depends on the input (a *dynamic* node, :func:`ann2snn.graph.classify`) carries a different value
on every time step of the converted network, so it must be either replaced by a spike-equivalent
operator, or be linear (then the mean over the run stays exact), or be refused.  Each operator
kind -- a module type, a function, a tensor method -- has one :class:`Rule` here that says which
of these it is, and the *role* its result plays in the SNN (what the energy meter of
:mod:`ann2snn.energy` counts for it).  :func:`ann2snn.convert.convert_graph` walks the graph and
applies the rule of each dynamic node; a node with no rule is refused.

Adding an operator is one rule and its test::

    @RULES.functions(torch.special.expit, report="replace_functions", role=Role.FLOAT,
                     makes=(RunningFunction,))
    def _expit(walk, node, fn): ...

The rules, by role:

- neurons: each QCFS call site → its own :class:`~ann2snn.neurons.ScaledNeuron` (a module called
  at two sites gets two neurons); max-pool (module or ``F.max_pool2d``) → its own
  :class:`~ann2snn.neurons.MaxPoolNeuron` (Li, Ma & Furber, Front. Neurosci. 2022);
- products: ``@`` / ``matmul`` / ``bmm`` / :class:`~ann2snn.layers.MatMul` / ``einsum`` / elementwise
  ``*`` of two dynamic tensors → :class:`~ann2snn.neurons.SpikeMatMul` / :class:`SpikeEinsum` /
  :class:`SpikeMul` (running-sum product, Huang et al. "ECMT" 2024; You et al. "SpikeZIP-TF",
  ICML 2024); with a constant operand they are linear;
- float functions that spikes cannot carry: softmax → :class:`~ann2snn.neurons.ECSoftmax`;
  LayerNorm, RMSNorm, GroupNorm, GELU, SiLU, sigmoid, tanh and other elementwise activations →
  :class:`~ann2snn.neurons.RunningFunction` (R_k = n·f(X_k / n)): a float operation on every
  step, whose real-valued output makes the next layer pay MACs;
- synapses: Linear / Conv (their biases are gated to the drive steps after the walk,
  :class:`~ann2snn.neurons.DriveGate`); a functional linear/conv with a bias is refused, since its
  bias would be injected on every step;
- linear: shape and selection ops, sums and means, average pools, add / subtract (a constant
  operand is gated to the drive steps: :class:`~ann2snn.neurons.DriveConst`), concatenation (the
  same), scaling by a constant, zero padding; dropout is removed.

Anything else on a dynamic path (division by a dynamic tensor, ``abs``, sorting, ...) is refused with a :class:`~ann2snn.graph.ConversionError` naming the node,
its module path and source line -- unless the caller's ``allow_float_ops`` keeps it as a per-step
float op, with a warning: the network is then an approximation.
"""
from __future__ import annotations

import enum
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from spikingjelly.activation_based.neuron import BaseNode
from torch import fx, nn

from ann2snn.graph import (DYNAMIC, ConversionError, add_module, describe, module_path, replace_module,
                           wrapped_library_call)
from ann2snn.layers import MatMul
from ann2snn.neurons import (Clock, DriveConst, DriveEmbedding, DriveFill, DriveGate, ECSoftmax, GatedBatchNorm, MaxPoolNeuron, RunningFunction,
                             ScaledNeuron, SpikeAttention, SpikeEinsum, SpikeMatMul, SpikeMul,
                             SpikeMultiheadAttention)
from ann2snn.quant import QCFS


class Role(enum.Enum):
    """What an operator of the SNN does, as the energy meter counts it."""

    NEURON = "neuron"  # emits spikes; the meter records its firing rate
    SYNAPSE = "synapse"  # a weighted sum of one input: events × fan-out operations
    PRODUCT = "product"  # a product of two operands: driven by a spike operand where there is one
    FLOAT = "float"  # a real-valued function computed on every step (MACs per element; analog output)
    LINEAR = "linear"  # passes values linearly (shapes, sums, pools): not counted


# --------------------------------------------------------------------------------------------
# the walk: what a rule may do to the graph
@dataclass
class Walk:
    """The state one conversion shares between the rules it applies.

    ``report`` lists, per step name (``replace_activations``, ``gate_constants``, ...), the
    nodes or modules that step changed; it becomes ``SpikingNetwork.report``."""

    gm: fx.GraphModule
    kinds: dict[fx.Node, str]
    clock: Clock
    neg_rule: str
    gate_bias: bool
    allow_float_ops: bool | set[str] = False
    report: dict[str, list[str]] = field(default_factory=dict)
    _owned: dict[str, nn.Module] = field(default_factory=dict)  # targets replaced at their first call: the module

    def module_of(self, node: fx.Node) -> nn.Module:
        """The ANN's module that the module-call ``node`` calls (a later call of a shared module
        sees the module, not the operator its first call was given)."""
        target = str(node.target)
        return self._owned.get(target) or self.gm.get_submodule(target)

    def is_dynamic(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and self.kinds.get(arg) == DYNAMIC

    def dynamic_args(self, node: fx.Node) -> list[fx.Node]:
        """The dynamic operands of ``node``, with repeats (``h * h`` has two)."""
        return [a for a in list(node.args) + list(node.kwargs.values()) if self.is_dynamic(a)]

    def record(self, step: str, name: str) -> None:
        self.report.setdefault(step, []).append(name)

    def own(self, node: fx.Node, module: nn.Module) -> None:
        """Give the module-call ``node`` its own stateful ``module``: at the node's target on the
        first call of that target, under a new name on later calls (a module called at two sites
        gets two operators, each with its own state)."""
        target = str(node.target)
        if target not in self._owned:
            self._owned[target] = self.gm.get_submodule(target)
            replace_module(self.gm, target, module)
            return
        node.target = add_module(self.gm, target, module)

    def call(self, node: fx.Node, module: nn.Module, base: str, args: tuple) -> str:
        """Make ``node`` a call of the new stateful ``module`` with ``args`` (a function or method
        node becomes a module call named ``<module path>.<base>``); returns the module's name."""
        if node.op == "call_module" and str(node.target) not in self._owned:
            self._owned[str(node.target)] = self.gm.get_submodule(str(node.target))
            replace_module(self.gm, str(node.target), module)
            node.args, node.kwargs = args, {}
            return str(node.target)
        path = module_path(node)
        name = add_module(self.gm, f"{path}.{base}" if path and node.op != "call_module" else base, module)
        node.op, node.target, node.args, node.kwargs = "call_module", name, args, {}
        return name

    def remove(self, node: fx.Node) -> None:
        """Drop ``node`` (an identity at inference, e.g. dropout): its users read its input."""
        node.replace_all_uses_with(node.args[0])
        self.gm.graph.erase_node(node)

    def gate_const(self, node: fx.Node, arg: Any) -> Any:
        """A constant operand of an additive op or a join, injected on drive steps only
        (:class:`~ann2snn.neurons.DriveConst`); dynamic operands and zeros pass unchanged."""
        if self.is_dynamic(arg) or not self.gate_bias:
            return arg
        if isinstance(arg, (int, float)) and not isinstance(arg, bool) and arg == 0:
            return arg
        path = module_path(node)
        name = add_module(self.gm, f"{path}.drive_const_{node.name}" if path else f"drive_const_{node.name}",
                          DriveConst(self.clock, None if isinstance(arg, fx.Node) else arg))
        with self.gm.graph.inserting_before(node):
            new = self.gm.graph.call_module(name, (arg,) if isinstance(arg, fx.Node) else ())
        self.kinds[new] = "const"
        self.record("gate_constants", node.name)
        return new

    def refuse(self, node: fx.Node, why: str, fix: str) -> None:
        """Refuse ``node`` with a ConversionError naming it -- or, where the caller allowed it
        (``allow_float_ops``: True, or a set of node names), keep it as a per-step float op with
        a warning."""
        allowed = self.allow_float_ops
        if allowed is True or (isinstance(allowed, (set, frozenset, list, tuple)) and node.name in allowed):
            warnings.warn(f"convert: keeping {describe(node, self.gm)} as a per-step float op ({why}); the SNN "
                          "is an approximation of the quantized ANN there", stacklevel=4)
            self.record("kept_float_ops", node.name)
            return
        raise ConversionError(f"Cannot convert {describe(node, self.gm)} exactly: {why}. {fix} (To accept a "
                              f"per-step float approximation instead, pass allow_float_ops={{'{node.name}'}}.)")


# --------------------------------------------------------------------------------------------
# the table
Apply = Callable[[Walk, fx.Node, Any], None]


@dataclass(frozen=True)
class Rule:
    """What one operator kind becomes: ``apply(walk, node, op)`` edits the graph at ``node``
    (``op`` is the module, the function or the method name); ``role`` is the role of the operator
    in the SNN, and of the module types in ``makes`` that the rule puts there."""

    apply: Apply
    role: Role
    makes: tuple[type, ...] = ()
    doc: str = ""


class RuleTable:
    """Rules keyed by module type (looked up along the type's MRO, so a subclass of LayerNorm
    follows LayerNorm's rule), by function object and by method name."""

    def __init__(self) -> None:
        self.by_module: dict[type, Rule] = {}
        self.by_function: dict[Any, Rule] = {}
        self.by_method: dict[str, Rule] = {}
        self.by_predicate: list[tuple[Callable[[Any], bool], Rule]] = []
        self.roles: dict[type, Role] = {}

    def _add(self, table: dict, keys, role: Role, makes: tuple[type, ...]) -> Callable[[Apply], Apply]:
        def deco(fn: Apply) -> Apply:
            rule = Rule(fn, role, tuple(makes), (fn.__doc__ or "").strip().split("\n")[0])
            for key in keys:
                if key is None:  # an operator this torch version lacks
                    continue
                if key in table:
                    raise ValueError(f"two conversion rules for {key!r}")
                table[key] = rule
            for t in makes:
                self.roles.setdefault(t, role)
            return fn
        return deco

    def modules(self, *types: type | None, role: Role, makes: tuple[type, ...] = ()):
        """Decorator: the rule for calls of modules of ``types`` (and their subclasses)."""
        return self._add(self.by_module, types, role, makes)

    def functions(self, *fns: Any, role: Role, makes: tuple[type, ...] = ()):
        """Decorator: the rule for calls of the functions ``fns``."""
        return self._add(self.by_function, fns, role, makes)

    def methods(self, *names: str, role: Role, makes: tuple[type, ...] = ()):
        """Decorator: the rule for calls of the tensor methods ``names``."""
        return self._add(self.by_method, names, role, makes)

    def calls_where(self, predicate: Callable[[Any], bool], role: Role):
        """Decorator: the rule for calls of the callables for which ``predicate`` holds (a family
        that no single key names, e.g. every namedtuple class); tried after the keyed rules."""
        def deco(fn: Apply) -> Apply:
            self.by_predicate.append((predicate, Rule(fn, role, (), (fn.__doc__ or "").strip().split("\n")[0])))
            return fn
        return deco

    def add_role(self, module_type: type, role: Role) -> None:
        """The role of a module type that no rule makes (e.g. a directly trained network's neurons)."""
        self.roles[module_type] = role

    def lookup(self, node: fx.Node, gm: fx.GraphModule, module: nn.Module | None = None) -> tuple[Rule | None, Any]:
        """(the rule of ``node``, the operator it applies to), or (None, operator) when there is none;
        ``module``: the module a module-call calls, when not the one now at its target."""
        if node.op == "call_module":
            mod = module if module is not None else gm.get_submodule(str(node.target))
            return next((self.by_module[t] for t in type(mod).__mro__ if t in self.by_module), None), mod
        if node.op == "call_function":
            try:
                rule = self.by_function.get(node.target)
            except TypeError:  # an unhashable callable
                rule = None
            if rule is None:
                rule = next((r for pred, r in self.by_predicate if pred(node.target)), None)
            return rule, node.target
        if node.op == "call_method":
            return self.by_method.get(str(node.target)), node.target
        return None, node.target

    def role_of(self, module: nn.Module) -> Role | None:
        """The role of an SNN module, for the energy meter; None for modules it does not count."""
        return next((self.roles[t] for t in type(module).__mro__ if t in self.roles), None)


RULES = RuleTable()
RULES.add_role(BaseNode, Role.NEURON)  # spikingjelly's neurons: directly trained SNNs
RULES.add_role(DriveConst, Role.FLOAT)  # a constant injected on drive steps: real-valued, no MACs


def _arg(node: fx.Node, pos: int, name: str, default=None):
    return node.kwargs.get(name, node.args[pos] if len(node.args) > pos else default)


# -- neurons -----------------------------------------------------------------------------------
@RULES.modules(QCFS, role=Role.NEURON, makes=(ScaledNeuron,))
def _qcfs(walk: Walk, node: fx.Node, mod: QCFS) -> None:
    """A QCFS site becomes its own two-sign, spike-capped IF neuron with the site's λ and L."""
    walk.own(node, ScaledNeuron(mod.lambda_value(), mod.levels, walk.neg_rule, signed=mod.signed))
    walk.record("replace_activations", str(node.target))


@RULES.modules(nn.MaxPool2d, role=Role.NEURON, makes=(MaxPoolNeuron,))
def _maxpool_module(walk: Walk, node: fx.Node, mod: nn.MaxPool2d) -> None:
    """A max-pool becomes a max-pool neuron of the same geometry."""
    if mod.return_indices:
        walk.refuse(node, "a max-pool that returns indices has no spiking form", "Use return_indices=False.")
        return
    walk.own(node, MaxPoolNeuron.from_maxpool(mod))
    walk.record("replace_maxpool", str(node.target))


@RULES.functions(F.max_pool2d, torch.max_pool2d, role=Role.NEURON, makes=(MaxPoolNeuron,))
def _maxpool_function(walk: Walk, node: fx.Node, fn) -> None:
    """``F.max_pool2d`` becomes a max-pool neuron of the same geometry."""
    a = list(node.args) + [None] * 6
    kw = node.kwargs
    k = kw.get("kernel_size", a[1])
    if kw.get("return_indices", a[6] if len(node.args) > 6 else False):
        walk.refuse(node, "a max-pool that returns indices has no spiking form", "Use return_indices=False.")
        return
    pool = MaxPoolNeuron(k, kw.get("stride", a[2]) or k, kw.get("padding", a[3] if a[3] is not None else 0),
                         kw.get("dilation", a[4] if a[4] is not None else 1),
                         bool(kw.get("ceil_mode", a[5] if a[5] is not None else False)))
    walk.call(node, pool, f"maxpool_{node.name}", (node.args[0],))
    walk.record("replace_maxpool", node.name)


# -- products ------------------------------------------------------------------------------------
@RULES.modules(MatMul, role=Role.PRODUCT, makes=(SpikeMatMul, MatMul))
def _matmul_module(walk: Walk, node: fx.Node, mod: MatMul) -> None:
    """A product of two dynamic operands becomes the running-sum product; with a constant it is linear."""
    if len(walk.dynamic_args(node)) == 2:
        walk.own(node, SpikeMatMul(walk.clock))
        walk.record("replace_products", str(node.target))


@RULES.functions(operator.matmul, torch.matmul, torch.bmm, role=Role.PRODUCT, makes=(SpikeMatMul,))
@RULES.methods("matmul", "bmm", "__matmul__", role=Role.PRODUCT, makes=(SpikeMatMul,))
def _matmul(walk: Walk, node: fx.Node, op) -> None:
    """``a @ b`` of two dynamic operands becomes the running-sum product; with a constant it is linear."""
    if len(walk.dynamic_args(node)) == 2:
        walk.call(node, SpikeMatMul(walk.clock), f"matmul_{node.name}", tuple(node.args[:2]))
        walk.record("replace_products", node.name)


@RULES.functions(torch.einsum, role=Role.PRODUCT, makes=(SpikeEinsum,))
def _einsum(walk: Walk, node: fx.Node, fn) -> None:
    """An einsum of two dynamic operands becomes the running-sum einsum."""
    operands = list(node.args[1]) if isinstance(node.args[1], (list, tuple)) else list(node.args[1:])
    dynamic = [a for a in operands if walk.is_dynamic(a)]
    if len(dynamic) == 2 and len(operands) == 2:
        walk.call(node, SpikeEinsum(node.args[0], walk.clock), f"einsum_{node.name}", tuple(operands))
        walk.record("replace_products", node.name)
    elif len(dynamic) > 1:
        walk.refuse(node, "an einsum of more than two spiking operands is not bilinear",
                    "Split it into products of two operands.")


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


@RULES.functions(getattr(F, "scaled_dot_product_attention", None), role=Role.LINEAR, makes=(SpikeAttention,))
def _attention(walk: Walk, node: fx.Node, fn) -> None:
    """``F.scaled_dot_product_attention`` of three dynamic operands becomes the spike-equivalent
    attention (running-sum products, expectation-compensated softmax, the mask on drive steps)."""
    args = dict(zip(_SDPA_ARGS, node.args)) | dict(node.kwargs)
    q, k, v, mask = args.get("query"), args.get("key"), args.get("value"), args.get("attn_mask")
    if not all(walk.is_dynamic(a) for a in (q, k, v)):
        walk.refuse(node, "attention with a constant query, key or value has no spike-equivalent form here",
                    "Feed q, k and v from the input (or compute the constant part outside the attention).")
        return
    if walk.is_dynamic(mask) or args.get("dropout_p", 0.0) or args.get("enable_gqa", False):
        walk.refuse(node, "an input-dependent mask, dropout or grouped-query attention has no spike-equivalent "
                    "form here", "Pass a constant attn_mask, dropout_p=0 (eval) and repeat the key/value heads.")
        return
    scale = args.get("scale")
    if isinstance(scale, fx.Node) or isinstance(args.get("is_causal"), fx.Node):
        walk.refuse(node, "a scale or is_causal computed in the forward is not known at conversion",
                    "Pass a number for scale and a bool for is_causal.")
        return
    walk.call(node, SpikeAttention(walk.clock, None if scale is None else float(scale), bool(args.get("is_causal"))),
              f"attention_{node.name}", (q, k, v) + ((mask,) if mask is not None else ()))
    walk.record("replace_attention", node.name)


@RULES.modules(nn.MultiheadAttention, role=Role.LINEAR, makes=(SpikeMultiheadAttention,))
def _multihead_attention(walk: Walk, node: fx.Node, mod: nn.MultiheadAttention) -> None:
    """``nn.MultiheadAttention`` (torchvision's ViT) becomes its spike-equivalent: projections with
    drive-gated biases around a spike-equivalent attention.  Its attention weights are not
    produced: a model that reads them (``out[1]``) is refused."""
    reads_weights = any(u.op == "call_function" and u.target is operator.getitem and u.args[1] != 0 and u.users
                        for u in node.users)  # `x, _ = mha(...)` unpacks the weights but never reads them
    if reads_weights or mod.bias_k is not None or mod.add_zero_attn or mod.dropout and mod.training:
        walk.refuse(node, "MultiheadAttention whose attention weights are read, or with add_bias_kv / "
                    "add_zero_attn, has no spike-equivalent form here",
                    "Call it with need_weights=False and read only its output.")
        return
    if any(walk.is_dynamic(a) for a in list(node.args[3:]) + [node.kwargs.get("attn_mask"),
                                                              node.kwargs.get("key_padding_mask")]):
        walk.refuse(node, "an input-dependent attention mask is not linear", "Pass a constant mask.")
        return
    walk.own(node, SpikeMultiheadAttention(mod, walk.clock))
    walk.record("replace_attention", str(node.target))


def _is_stochastic_depth(fn) -> bool:  # torchvision.ops.stochastic_depth (fx-wrapped: one call node)
    return getattr(fn, "__name__", "") == "stochastic_depth" and "torchvision" in getattr(fn, "__module__", "")


@RULES.calls_where(_is_stochastic_depth, role=Role.LINEAR)
def _stochastic_depth(walk: Walk, node: fx.Node, fn) -> None:
    """Stochastic depth (DropPath; torchvision's ConvNeXt, Swin, MaxViT) is the identity at
    inference: removed; in training mode it is random and refused."""
    if _arg(node, 3, "training", True):
        walk.refuse(node, "stochastic depth in training mode is random", "Convert the model in eval mode.")
        return
    walk.remove(node)
    walk.record("remove_dropout", node.name)


# -- float functions -------------------------------------------------------------------------------
@RULES.modules(nn.Softmax, role=Role.FLOAT, makes=(ECSoftmax, nn.Softmax))
def _softmax_module(walk: Walk, node: fx.Node, mod: nn.Softmax) -> None:
    """Softmax becomes the expectation-compensated softmax (running sums equal n·softmax(means))."""
    if mod.dim is None:
        walk.refuse(node, "nn.Softmax with dim=None (implicit dimension)", "Give nn.Softmax a dim.")
        return
    walk.own(node, ECSoftmax(mod.dim, walk.clock))
    walk.record("replace_softmax", str(node.target))


@RULES.functions(F.softmax, torch.softmax, role=Role.FLOAT, makes=(ECSoftmax,))
@RULES.methods("softmax", role=Role.FLOAT, makes=(ECSoftmax,))
def _softmax(walk: Walk, node: fx.Node, op) -> None:
    """Softmax becomes the expectation-compensated softmax (running sums equal n·softmax(means))."""
    dim = _arg(node, 1, "dim")
    if dim is None:
        walk.refuse(node, "softmax without an explicit dim", "Pass dim=... to softmax.")
        return
    walk.call(node, ECSoftmax(dim, walk.clock), f"softmax_{node.name}", (node.args[0],))
    walk.record("replace_softmax", node.name)


RUNNING_MODULES = (nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None), nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                   nn.Softplus, nn.ELU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Softsign, nn.LeakyReLU, nn.CELU,
                   nn.SELU, nn.PReLU)
RUNNING_FUNCTIONS = (F.layer_norm, getattr(F, "rms_norm", None), F.group_norm, F.normalize, F.gelu, F.silu, torch.sigmoid,
                     F.sigmoid, torch.tanh, F.tanh, F.softplus, F.elu, F.mish, F.hardswish, F.hardsigmoid, F.softsign,
                     F.leaky_relu, F.celu, F.selu, torch.exp, torch.erf,
                     # powers, roots and reciprocals of one spiking operand (RMSNorm written out, StarReLU)
                     torch.pow, operator.pow, torch.rsqrt, torch.sqrt, torch.reciprocal, torch.square,
                     # maxima and minima over an axis (Hiera's mask-unit pooling): max of running means, n·max(X/n)
                     torch.amax, torch.amin)
RUNNING_METHODS = ("sigmoid", "tanh", "exp", "erf", "pow", "__pow__", "rsqrt", "sqrt", "reciprocal", "square", "amax",
                   "amin")
_METHOD_FUNCTIONS = {"__pow__": torch.pow}


@RULES.modules(*RUNNING_MODULES, role=Role.FLOAT, makes=(RunningFunction,))
def _running_module(walk: Walk, node: fx.Node, mod: nn.Module) -> None:
    """A norm or a non-ReLU activation becomes the running-sum rule R_k = n·f(X_k / n) (a float op per step)."""
    walk.own(node, RunningFunction(mod, walk.clock, type(mod).__name__))
    walk.record("replace_functions", str(node.target))


@RULES.functions(*RUNNING_FUNCTIONS, role=Role.FLOAT, makes=(RunningFunction,))
@RULES.methods(*RUNNING_METHODS, role=Role.FLOAT, makes=(RunningFunction,))
def _running(walk: Walk, node: fx.Node, op) -> None:
    """A norm or a non-ReLU activation becomes the running-sum rule R_k = n·f(X_k / n) (a float op per step)."""
    if len(walk.dynamic_args(node)) > 1:
        walk.refuse(node, "a function of several spiking operands has no running-sum form here",
                    "Make the other operands constant.")
        return
    if not walk.is_dynamic(node.args[0] if node.args else None):  # 2 ** x: the spiking operand is not the first
        walk.refuse(node, "a power with a spiking exponent has no running-sum form here",
                    "Raise the spiking tensor to a constant power instead.")
        return
    f = op if node.op == "call_function" else _METHOD_FUNCTIONS.get(op) or getattr(torch, op)
    name = getattr(f, "__name__", str(op))
    path = module_path(node)
    target = add_module(walk.gm, f"{path}.{name}_{node.name}" if path else f"{name}_{node.name}",
                        RunningFunction(f, walk.clock, name))
    node.op, node.target = "call_module", target  # same args and kwargs: the function's own
    walk.record("replace_functions", node.name)


# -- synapses and linear maps ----------------------------------------------------------------------
SYNAPSES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PASS_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.ZeroPad2d, getattr(nn, "ZeroPad1d", None),
                getattr(nn, "ZeroPad3d", None), nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
                nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, getattr(nn, "CircularPad2d", None), nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle,
                nn.ChannelShuffle, nn.Unfold, nn.Fold, GatedBatchNorm, DriveGate, DriveFill)
DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@RULES.modules(*SYNAPSES, role=Role.SYNAPSE, makes=(*SYNAPSES, DriveGate))
def _synapse(walk: Walk, node: fx.Node, mod: nn.Module) -> None:
    """A Linear / Conv is linear; its bias is gated to the drive steps after the walk."""


@RULES.modules(nn.Embedding, role=Role.LINEAR, makes=(DriveEmbedding,))
@RULES.functions(F.embedding, role=Role.LINEAR)
def _embedding(walk: Walk, node: fx.Node, op) -> None:
    """A token embedding of the input ids: the network's analog input, read on drive steps only
    (:class:`~ann2snn.neurons.DriveEmbedding`): its rows arrive once per input step like an
    image's pixels, and not at all on the extra steps (whose zero ids would be token 0)."""
    ids = node.args[0] if node.args else node.kwargs.get("input")
    if not walk.is_dynamic(ids) or any(a is not ids for a in walk.dynamic_args(node)):
        walk.refuse(node, "an embedding whose table depends on the input is not a lookup of the input tokens",
                    "Look up the input token ids in a fixed table (nn.Embedding).")
        return
    if isinstance(op, nn.Module):
        walk.own(node, DriveEmbedding(op, walk.clock))
    else:  # F.embedding: keyword arguments become positional ones, in its signature's order
        names = ("input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse")
        given = dict(zip(names, node.args), **node.kwargs)
        last = max(names.index(k) for k in given)
        defaults = (None, None, None, None, 2.0, False, False)
        args = tuple(given.get(k, d) for k, d in zip(names[:last + 1], defaults))
        walk.call(node, DriveEmbedding(op, walk.clock), "drive_embedding", args)
    walk.record("gate_embeddings", node.name)


@RULES.modules(*PASS_MODULES, role=Role.LINEAR)
def _pass_module(walk: Walk, node: fx.Node, mod: nn.Module) -> None:
    """Identity, flatten, average pools, zero padding, gated BatchNorm: linear maps."""


@RULES.modules(nn.modules.batchnorm._BatchNorm, role=Role.LINEAR)
def _batchnorm(walk: Walk, node: fx.Node, mod: nn.Module) -> None:
    """A BatchNorm that was neither folded nor gated (only when gating is off) stays as it is."""


@RULES.modules(*DROPOUT_MODULES, role=Role.LINEAR)
@RULES.functions(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.dropout, role=Role.LINEAR)
@RULES.methods("dropout", role=Role.LINEAR)
def _dropout(walk: Walk, node: fx.Node, op) -> None:
    """Dropout is the identity at inference: removed."""
    walk.remove(node)
    walk.record("remove_dropout", node.name)


# linear in every dynamic argument: shape ops, sums, averages, selection
PASS_FUNCTIONS = (torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
                  torch.mean, torch.sum, torch.chunk, torch.split, torch.narrow, torch.roll, torch.movedim,
                  operator.getitem, operator.neg, torch.neg, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                  F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.t, torch.swapaxes,
                  torch.swapdims, torch.unbind, torch.clone, getattr, torch.flip, torch.tile, torch.tril, torch.triu,
                  torch.diagonal, torch.select, torch.repeat_interleave,
                  # resampling with fixed weights and rearrangements: sums of inputs with constant weights
                  F.interpolate, F.pixel_shuffle, F.pixel_unshuffle, torch.channel_shuffle, F.unfold, F.fold)
PASS_METHODS = ("flatten", "reshape", "view", "transpose", "permute", "squeeze", "unsqueeze", "mean", "sum", "chunk",
                "split", "contiguous", "expand", "expand_as", "repeat", "narrow", "neg", "t", "clone", "unbind",
                "movedim", "swapaxes", "swapdims", "roll", "flip", "view_as", "reshape_as", "unflatten", "type_as",
                "to", "float", "__getitem__", "size", "dim", "tile", "tril", "triu", "diagonal", "select",
                "repeat_interleave", "unfold")


@RULES.functions(*PASS_FUNCTIONS, role=Role.LINEAR)
@RULES.methods(*PASS_METHODS, role=Role.LINEAR)
def _pass(walk: Walk, node: fx.Node, op) -> None:
    """Shape and selection ops, sums and means, average pools, resampling, negation: linear."""


@RULES.methods("type", role=Role.LINEAR)
def _type_cast(walk: Walk, node: fx.Node, op) -> None:
    """``x.type(dtype)`` (GPT-2's attention) is a cast, like ``x.to(dtype)``: linear.  Without a
    dtype it returns the type's name, and to an integer type it rounds: both refused."""
    dtype = _arg(node, 1, "dtype")
    floating = isinstance(dtype, fx.Node) or (isinstance(dtype, torch.dtype) and dtype.is_floating_point)
    if not floating:
        walk.refuse(node, "Tensor.type() without a floating dtype is not a cast of the spiking values",
                    "Cast with x.to(dtype) to a floating dtype.")


@RULES.functions(torch.index_select, torch.gather, torch.take_along_dim, role=Role.LINEAR)
@RULES.methods("index_select", "gather", "take_along_dim", role=Role.LINEAR)
def _select(walk: Walk, node: fx.Node, op) -> None:
    """Selection by constant indices is linear; by indices computed from the input it is not."""
    data = node.args[0] if node.args else None
    if any(a is not data for a in walk.dynamic_args(node)):
        walk.refuse(node, "a selection by input-dependent indices is not linear", "Select by constant indices.")


@RULES.functions(torch.where, role=Role.LINEAR)
def _where(walk: Walk, node: fx.Node, fn) -> None:
    """``torch.where(mask, a, b)`` with a constant mask selects: linear; a constant branch is
    injected on drive steps only (a −inf fill before a softmax included)."""
    if len(node.args) != 3 or node.kwargs or walk.is_dynamic(node.args[0]):
        walk.refuse(node, "a selection by an input-dependent condition is not linear",
                    "Select by a constant mask (a causal or padding mask).")
        return
    node.args = (node.args[0], walk.gate_const(node, node.args[1]), walk.gate_const(node, node.args[2]))


@RULES.functions(torch.masked_fill, role=Role.LINEAR, makes=(DriveFill,))
@RULES.methods("masked_fill", role=Role.LINEAR, makes=(DriveFill,))
def _masked_fill(walk: Walk, node: fx.Node, op) -> None:
    """``x.masked_fill(mask, v)`` with a constant mask: linear in x; a non-zero v is written on
    drive steps only (:class:`~ann2snn.neurons.DriveFill`)."""
    x, mask, value = (list(node.args) + [node.kwargs.get("mask"), node.kwargs.get("value")])[:3]
    if walk.is_dynamic(mask) or walk.is_dynamic(value) or isinstance(value, fx.Node):
        walk.refuse(node, "a fill with an input-dependent mask or value is not linear",
                    "Fill by a constant mask with a number.")
        return
    if value in (0, 0.0):
        return
    walk.call(node, DriveFill(torch.masked_fill, float(value), walk.clock, "masked_fill"), f"fill_{node.name}",
              (x, mask))
    walk.record("gate_constants", node.name)


@RULES.functions(operator.add, operator.sub, torch.add, torch.sub, operator.iadd, operator.isub, role=Role.LINEAR)
@RULES.methods("add", "sub", "__add__", "__sub__", "__radd__", "__rsub__", "add_", "sub_", "__iadd__", "__isub__",
               role=Role.LINEAR)
def _additive(walk: Walk, node: fx.Node, op) -> None:
    """Add / subtract: linear; a constant operand is injected on drive steps only."""
    node.args = tuple(walk.gate_const(node, a) for a in node.args)


@RULES.functions(torch.cat, torch.stack, torch.concat, torch.concatenate, torch.hstack, torch.vstack,
                 role=Role.LINEAR)
def _join(walk: Walk, node: fx.Node, fn) -> None:
    """Concatenation: linear; a constant part (a class token) is injected on drive steps only."""
    seq = node.args[0]
    node.args = (type(seq)(walk.gate_const(node, a) for a in seq),) + tuple(node.args[1:])


_DIVISIONS = (operator.truediv, torch.div, operator.itruediv, "div", "__truediv__", "div_")


@RULES.functions(operator.mul, operator.truediv, torch.mul, torch.div, operator.imul, operator.itruediv,
                 role=Role.PRODUCT, makes=(SpikeMul,))
@RULES.methods("mul", "div", "__mul__", "__truediv__", "__rmul__", "mul_", "div_", role=Role.PRODUCT,
               makes=(SpikeMul,))
def _scaling(walk: Walk, node: fx.Node, op) -> None:
    """Scaling by a constant is linear; a product of two dynamic tensors becomes the running-sum
    product (bilinear, like ``@``); a division by a dynamic tensor is refused."""
    dynamic = walk.dynamic_args(node)
    if op in _DIVISIONS:
        if len(node.args) > 1 and walk.is_dynamic(node.args[1]):
            walk.refuse(node, "division by a spiking tensor is not linear", "Divide by a constant instead.")
        return
    if len(dynamic) == 2 and len(node.args) >= 2 and not node.kwargs:
        walk.call(node, SpikeMul(walk.clock), f"mul_{node.name}", tuple(node.args[:2]))
        walk.record("replace_products", node.name)
    elif len(dynamic) > 1:
        walk.refuse(node, "a product with more than two spiking operands is not bilinear",
                    "Split it into products of two operands.")


_CONV_RANK = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


@RULES.functions(F.linear, F.conv1d, F.conv2d, F.conv3d, role=Role.SYNAPSE)
def _functional_synapse(walk: Walk, node: fx.Node, fn) -> None:
    """A functional linear/conv (timm's ``ScaledStdConv2d`` and ``Linear`` call them) is linear in
    its input; its bias is split off and added on drive steps only, as a module's bias is.  Weights
    computed from the input would make it a product: refused."""
    if walk.is_dynamic(_arg(node, 1, "weight")):
        walk.refuse(node, "a linear map whose weights depend on the input is a product",
                    "Write it as a matrix product (@), which converts by the running-sum rule.")
        return
    bias = _arg(node, 2, "bias")
    if bias is None or not walk.gate_bias:
        return
    if walk.is_dynamic(bias):
        walk.refuse(node, "a bias that depends on the input is not a bias", "Add it as a separate term.")
        return
    if "bias" in node.kwargs:
        node.kwargs = {k: v for k, v in node.kwargs.items() if k != "bias"}
    else:
        node.args = node.args[:2] + (None,) + tuple(node.args[3:])
    graph, rank = walk.gm.graph, _CONV_RANK.get(fn, 0)
    with graph.inserting_after(node):
        shaped = graph.call_method("reshape", (bias, (-1,) + (1,) * rank)) if rank else bias
    if rank:
        walk.kinds[shaped] = "const"
    with graph.inserting_after(shaped if rank else node):
        total = graph.call_function(operator.add, (node, shaped))
    node.replace_all_uses_with(total, delete_user_cb=lambda user: user is not total)
    walk.kinds[total] = DYNAMIC
    total.args = (node, walk.gate_const(total, shaped))


@RULES.functions(torch.addmm, role=Role.SYNAPSE, makes=(SpikeMatMul,))
def _addmm(walk: Walk, node: fx.Node, fn) -> None:
    """``torch.addmm(bias, x, W)`` = bias + x @ W (GPT-2's ``Conv1D``): the product as ``@`` (a
    synapse with a constant W, the running-sum product when both are dynamic), the bias added on
    drive steps only, as a Linear's is.  ``beta`` / ``alpha`` other than 1 and a dynamic bias are refused."""
    bias, a, b = (list(node.args) + [None] * 3)[:3]
    a, b = node.kwargs.get("mat1", a), node.kwargs.get("mat2", b)
    bias = node.kwargs.get("input", bias)
    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1 or walk.is_dynamic(bias):
        walk.refuse(node, "addmm with beta/alpha other than 1, or with an input-dependent bias",
                    "Write it as bias + x @ W.")
        return
    if walk.is_dynamic(a) and walk.is_dynamic(b):
        walk.call(node, SpikeMatMul(walk.clock), f"matmul_{node.name}", (a, b))
        walk.record("replace_products", node.name)
    else:
        node.target, node.args, node.kwargs = torch.mm, (a, b), {}
    graph = walk.gm.graph
    with graph.inserting_after(node):
        total = graph.call_function(operator.add, (node, bias))
    node.replace_all_uses_with(total, delete_user_cb=lambda user: user is not total)
    walk.kinds[total] = DYNAMIC
    total.args = (node, walk.gate_const(total, bias))


@RULES.functions(F.pad, role=Role.LINEAR, makes=(DriveFill,))
def _pad(walk: Walk, node: fx.Node, fn) -> None:
    """Padding is linear (zeros; reflected or replicated entries); a non-zero constant is written
    on drive steps only (:class:`~ann2snn.neurons.DriveFill`)."""
    value = _arg(node, 3, "value", 0)
    if value in (0, 0.0, None) or _arg(node, 2, "mode", "constant") != "constant":
        return
    if isinstance(value, fx.Node):
        walk.refuse(node, "padding with a value computed in the forward is not known at conversion",
                    "Pad with a number.")
        return
    walk.call(node, DriveFill(F.pad, float(value), walk.clock, "pad"), f"pad_{node.name}",
              (node.args[0], _arg(node, 1, "pad")))
    walk.record("gate_constants", node.name)


def _is_output_container(target) -> bool:
    return isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields")


@RULES.calls_where(_is_output_container, role=Role.LINEAR)
def _output_container(walk: Walk, node: fx.Node, cls) -> None:
    """Building a namedtuple (torchvision's GoogLeNetOutputs) only groups tensors into a structured
    output, which the simulator sums tensor by tensor; mappings need no rule (fx rebuilds them as
    plain dicts at the output)."""


_NO_RULE_FIX = ("Replace it by a ReLU (quantized to QCFS) or a supported operator (linear ops, products, softmax, "
                "norms and elementwise activations: see ann2snn.rules)")


def apply_rule(walk: Walk, node: fx.Node) -> None:
    """Apply the rule of the dynamic ``node``, or refuse it when it has none."""
    rule, op = RULES.lookup(node, walk.gm, walk.module_of(node) if node.op == "call_module" else None)
    if rule is not None:
        rule.apply(walk, node, op)
    elif node.op == "call_module":
        walk.refuse(node, f"{type(op).__name__} is not linear and has no spike-equivalent operator here",
                    "Replace it by a ReLU (quantized to QCFS), or by an operator this converter supports.")
    elif wrapped_library_call(node):
        walk.refuse(node, "the library hides this function from torch.fx (torch.fx.wrap), so its operators "
                    "cannot be seen one by one", "Pass example_input= (a batch of one, as the CLI does) to quantize "
                    "and convert: ann2snn then traces through it with the example's shapes.")
    else:
        walk.refuse(node, "this operation is not linear and has no spike-equivalent operator here", _NO_RULE_FIX)


__all__ = ["RULES", "Role", "Rule", "RuleTable", "Walk", "apply_rule"]
