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
import operator
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ann2snn._checks import check_int, check_module, check_optional_int, check_positive
from ann2snn._checks import describe as describe_value
from ann2snn.graph import ConversionError, add_module, classify, describe, module_path, replace_module, trace
from ann2snn.layers import LinearBN, MatMul
from ann2snn.neurons import (Clock, DriveConst, DriveGate, ECSoftmax, GatedBatchNorm, MaxPoolNeuron,
                             RunningFunction, ScaledNeuron, SpikeEinsum, SpikeMatMul, check_spike_levels)
from ann2snn.quant import QCFS, trace_leaves

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
                    lambda m: ScaledNeuron(m.threshold(), m.levels, neg_rule, signed=getattr(m, "signed", False)))


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
# the graph path (exact, rate): every call site of a traced model, each checked
_BN_PARTNERS = {nn.BatchNorm1d: (nn.Linear, nn.Conv1d), nn.BatchNorm2d: (nn.Conv2d,), nn.BatchNorm3d: (nn.Conv3d,)}
_RESHAPES_M = {"reshape", "view", "flatten"}
_PASS_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.ZeroPad2d)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_SYNAPSES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# linear in every spiking argument: shape ops, sums, averages, selection
_PASS_FUNCTIONS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze,
                   torch.mean, torch.sum, torch.chunk, torch.split, torch.narrow, torch.roll, torch.movedim,
                   operator.getitem, operator.neg, torch.neg, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                   F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.t,
                   torch.swapaxes, torch.swapdims, torch.unbind, torch.clone}
_PASS_METHODS = {"flatten", "reshape", "view", "transpose", "permute", "squeeze", "unsqueeze", "mean", "sum",
                 "chunk", "split", "contiguous", "expand", "expand_as", "repeat", "narrow", "neg", "t", "clone",
                 "unbind", "movedim", "swapaxes", "swapdims", "roll", "flip", "view_as", "reshape_as", "unflatten",
                 "type_as", "to", "float", "__getitem__", "size", "dim"}
_ADDITIVE = {operator.add, operator.sub, torch.add, torch.sub, operator.iadd, operator.isub}
_JOINS = {torch.cat, torch.stack, torch.concat, torch.concatenate, torch.hstack, torch.vstack}
_SCALING = {operator.mul, operator.truediv, torch.mul, torch.div, operator.imul, operator.itruediv}
_MATMULS = {operator.matmul, torch.matmul, torch.bmm}
_SOFTMAX = {F.softmax, torch.softmax}
_MAXPOOL_F = {F.max_pool2d, torch.max_pool2d}
# Non-linear functions of one operand that become RunningFunction (R_k = n·f(X_k / n)): row-wise
# normalisations and elementwise activations.  Each is a float operation on every step, kept
# because spikes cannot carry it; its real-valued output makes the next layer pay MACs.
_RUNNING_MODULES = tuple(t for t in (nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None), nn.GELU, nn.SiLU,
                                     nn.Sigmoid, nn.Tanh, nn.Softplus, nn.ELU, nn.Mish, nn.Hardswish,
                                     nn.Hardsigmoid, nn.Softsign, nn.LeakyReLU, nn.CELU, nn.SELU)
                         if t is not None)
_RUNNING_FUNCTIONS = {f for f in (F.layer_norm, getattr(F, "rms_norm", None), F.group_norm, F.gelu, F.silu,
                                  torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus, F.elu, F.mish,
                                  F.hardswish, F.hardsigmoid, F.softsign, F.leaky_relu, F.celu, F.selu,
                                  torch.exp, torch.erf)
                      if f is not None}
_RUNNING_METHODS = {"sigmoid", "tanh", "exp", "erf"}


def _fold_bn_graph(gm: fx.GraphModule, kinds: dict, clock: Clock, gate: bool, report: dict) -> None:
    """Fold every eval-mode BatchNorm into the Conv/Linear that feeds it when that layer has no
    other consumer (following the graph: a Linear, then reshapes to [-1, C], then BatchNorm1d also
    folds, as in :class:`~ann2snn.layers.LinearBN`), with torch's ``fuse_conv_bn_eval`` /
    ``fuse_linear_bn_eval``.  A BatchNorm that cannot be folded (after an add, at the input, after
    a layer with two consumers) becomes :class:`~ann2snn.neurons.GatedBatchNorm`: its shift is
    injected on drive steps only, like a folded bias."""
    folded, gated = report.setdefault("fold_bn", []), report.setdefault("gate_batchnorm", [])
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(str(node.target))
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        if kinds.get(node) != "spike":
            continue
        def consumers(n: fx.Node) -> int:  # shape queries (x.shape, x.size()) read no values
            return sum(1 for u in n.users if kinds.get(u) != "meta")

        src, chain = node.args[0], []
        while isinstance(src, fx.Node) and consumers(src) == 1 and (
                (src.op == "call_method" and src.target in _RESHAPES_M) or
                (src.op == "call_function" and src.target in (torch.reshape, torch.flatten))):
            chain.append(src)
            src = src.args[0]
        layer = gm.get_submodule(str(src.target)) if isinstance(src, fx.Node) and src.op == "call_module" else None
        partners = next((p for t, p in _BN_PARTNERS.items() if type(bn) is t), ())
        ok = (layer is not None and isinstance(layer, partners) and consumers(src) == 1
              and sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == src.target) == 1
              and bn.track_running_stats and bn.running_mean is not None)
        if ok and chain:  # only Linear -> reshape(-1, C) -> BatchNorm1d keeps the channels in place
            last = chain[-1]
            shape = list(last.args[1:])
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = list(shape[0])
            ok = (isinstance(layer, nn.Linear) and len(chain) == 1 and len(shape) == 2 and shape[0] == -1
                  and (last.op == "call_method" and last.target in ("reshape", "view")
                       or last.op == "call_function" and last.target is torch.reshape))
        if ok:
            fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
            replace_module(gm, str(src.target), fuse(layer.eval(), bn.eval()))
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            folded.append(str(node.target))
        elif gate:
            replace_module(gm, str(node.target), GatedBatchNorm(bn, clock))
            gated.append(str(node.target))


def _is_output_container(target) -> bool:
    """True for a namedtuple class (torchvision's GoogLeNetOutputs): torch.fx records building one
    as a call, which only groups tensors into a structured output that the simulator sums tensor
    by tensor (:func:`ann2snn.simulate.accumulate`).  Mappings need no rule: fx rebuilds them as
    plain dicts at the output."""
    return isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields")


def _dim_arg(node: fx.Node, pos: int, default=None):
    return node.kwargs.get("dim", node.args[pos] if len(node.args) > pos else default)


def convert_graph(net: nn.Module, opts: "ConversionOptions", clock: Clock,
                  allow_float_ops: bool | set[str] = False) -> tuple[fx.GraphModule, dict[str, list[str]]]:
    """Convert a traced QCFS ANN node by node (the ``exact`` and ``rate`` presets).

    Every node that depends on the input (a *spiking* node, :func:`ann2snn.graph.classify`) is
    either turned into its spike-equivalent operator or checked to be linear, so that the run's
    mean stays exact:

    - each QCFS call site → its own :class:`~ann2snn.neurons.ScaledNeuron` (a module called at
      two sites gets two neurons); max-pool (module or ``F.max_pool2d``) → its own
      :class:`~ann2snn.neurons.MaxPoolNeuron`; ``@`` / ``matmul`` / ``bmm`` / ``einsum`` of two
      spiking tensors → :class:`~ann2snn.neurons.SpikeMatMul` / :class:`SpikeEinsum`; softmax
      (``F.softmax``, ``Tensor.softmax``, ``nn.Softmax``) → :class:`~ann2snn.neurons.ECSoftmax`;
    - BatchNorm folded or gated (:func:`_fold_bn_graph`), biases of Linear/Conv gated
      (:class:`~ann2snn.neurons.DriveGate`), constants added or concatenated into a spiking path
      gated (:class:`~ann2snn.neurons.DriveConst`), dropout removed;
    - linear operations pass: pools by averaging, shape and selection ops, sums and means, add /
      subtract of spiking tensors, scaling by constants, matmul by a constant;
    - LayerNorm, RMSNorm, GroupNorm (row-wise) and GELU, SiLU, sigmoid, tanh and other elementwise
      activations (module, function or method) → :class:`~ann2snn.neurons.RunningFunction`, the
      running-sum rule R_k = n·f(X_k / n): a float operation on every step, kept because spikes cannot
      carry these non-linearities; its output is real-valued, so the next layer pays MACs;
    - anything else on a spiking path (``*`` or division of two spiking tensors, ``abs``, sorting,
      …) raises :class:`~ann2snn.graph.ConversionError` naming the node, its module path
      and source line — unless ``allow_float_ops`` (True, or a set of node names) keeps it as a
      per-step float op, with a warning: the network is then an approximation.

    SpikingJelly 2.0's ``FXConverter`` runs a recipe's fixed template (trace, observers,
    calibration, replace) built for rate coding of ReLU networks; here there is no calibration
    (λ comes from training) and every node must be accounted for, so the walk is our own.  Its
    conv-BN fusion pattern is the same as ours, and both use torch's ``fuse_conv_bn_eval``.
    """
    gm = trace(net, trace_leaves())
    kinds = classify(gm)
    report: dict[str, list[str]] = {}
    _fold_bn_graph(gm, kinds, clock, opts.gate_bias, report)
    neurons, pools, products, softmaxes, running = [], [], [], [], []
    gated_consts, removed, kept_float = [], [], []
    seen_targets: set[str] = set()

    def site(node: fx.Node, module: nn.Module, base: str) -> None:
        """Give ``node`` its own stateful ``module``: at the node's target on its first call, under a
        new name on later calls (or for a function/method node)."""
        if node.op == "call_module" and str(node.target) not in seen_targets:
            seen_targets.add(str(node.target))
            replace_module(gm, str(node.target), module)
            return
        node.target = add_module(gm, base, module)

    def retarget(node: fx.Node, module: nn.Module, base: str, args: tuple) -> str:
        path = module_path(node)
        base = f"{path}.{base}" if path and node.op != "call_module" else base
        if node.op == "call_module" and str(node.target) not in seen_targets:
            seen_targets.add(str(node.target))
            replace_module(gm, str(node.target), module)
            node.args, node.kwargs = args, {}
            return str(node.target)
        name = add_module(gm, base, module)
        node.op, node.target, node.args, node.kwargs = "call_module", name, args, {}
        return name

    def gate_const(node: fx.Node, arg):
        """A constant operand of an additive op, injected on drive steps only."""
        if isinstance(arg, fx.Node) and kinds.get(arg) == "spike":
            return arg
        if isinstance(arg, (int, float)) and not isinstance(arg, bool) and arg == 0:
            return arg
        if not opts.gate_bias:
            return arg
        path = module_path(node)
        name = add_module(gm, f"{path}.drive_const_{node.name}" if path else f"drive_const_{node.name}",
                          DriveConst(clock, None if isinstance(arg, fx.Node) else arg))
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (arg,) if isinstance(arg, fx.Node) else ())
        kinds[new] = "const"
        gated_consts.append(node.name)
        return new

    def refuse(node: fx.Node, why: str, fix: str) -> None:
        if allow_float_ops is True or (isinstance(allow_float_ops, (set, frozenset, list, tuple))
                                       and node.name in allow_float_ops):
            warnings.warn(f"convert: keeping {describe(node, gm)} as a per-step float op ({why}); the SNN "
                          "is an approximation of the quantized ANN there", stacklevel=3)
            kept_float.append(node.name)
            return
        raise ConversionError(f"Cannot convert {describe(node, gm)} exactly: {why}. {fix} (To accept a "
                              f"per-step float approximation instead, pass allow_float_ops={{'{node.name}'}}.)")

    for node in list(gm.graph.nodes):
        if kinds.get(node) != "spike" or node.op in ("placeholder", "output"):
            continue
        spiking_args = [a for a in list(node.args) + list(node.kwargs.values())  # with repeats: h * h has two
                        if isinstance(a, fx.Node) and kinds.get(a) == "spike"]
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if isinstance(mod, QCFS):
                site(node, ScaledNeuron(mod.threshold(), mod.levels, opts.neg_rule, signed=getattr(mod, "signed", False)), str(node.target))
                neurons.append(str(node.target))
            elif isinstance(mod, nn.MaxPool2d):
                if mod.return_indices:
                    refuse(node, "a max-pool that returns indices has no spiking form", "Use return_indices=False.")
                    continue
                site(node, MaxPoolNeuron.from_maxpool(mod), str(node.target))
                pools.append(str(node.target))
            elif isinstance(mod, MatMul):
                if len(spiking_args) == 2:
                    site(node, SpikeMatMul(clock), str(node.target))
                    products.append(str(node.target))
            elif isinstance(mod, nn.Softmax):
                if mod.dim is None:
                    refuse(node, "nn.Softmax with dim=None (implicit dimension)", "Give nn.Softmax a dim.")
                    continue
                site(node, ECSoftmax(mod.dim, clock), str(node.target))
                softmaxes.append(str(node.target))
            elif isinstance(mod, _DROPOUT):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                removed.append(node.name)
            elif isinstance(mod, _RUNNING_MODULES):
                site(node, RunningFunction(mod, clock, type(mod).__name__), str(node.target))
                running.append(str(node.target))
            elif isinstance(mod, _SYNAPSES + _PASS_MODULES + (GatedBatchNorm, DriveGate)):
                pass  # linear maps (biases gated below)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                pass  # left unfolded and ungated: only when gate_bias is off
            else:
                refuse(node, f"{type(mod).__name__} is not linear and has no spike-equivalent operator here",
                       "Replace it by a ReLU (quantized to QCFS), or by an operator this converter supports.")
            continue
        t = node.target
        fn = node.op == "call_function"
        meth = node.op == "call_method"
        if (fn and t in _MATMULS) or (meth and t in ("matmul", "bmm", "__matmul__")):
            if len(spiking_args) == 2:
                retarget(node, SpikeMatMul(clock), f"matmul_{node.name}", tuple(node.args[:2]))
                products.append(node.name)
            continue  # a product with a constant is linear
        if fn and t is torch.einsum:
            operands = [a for a in node.args[1:]] if not isinstance(node.args[1], (list, tuple)) else list(node.args[1])
            sp = [a for a in operands if isinstance(a, fx.Node) and kinds.get(a) == "spike"]
            if len(sp) == 2 and len(operands) == 2:
                retarget(node, SpikeEinsum(node.args[0], clock), f"einsum_{node.name}", tuple(operands))
                products.append(node.name)
            elif len(sp) > 1:
                refuse(node, "an einsum of more than two spiking operands is not bilinear",
                       "Split it into products of two operands.")
            continue
        if (fn and t in _SOFTMAX) or (meth and t == "softmax"):
            dim = _dim_arg(node, 1)
            if dim is None:
                refuse(node, "softmax without an explicit dim", "Pass dim=... to softmax.")
                continue
            retarget(node, ECSoftmax(dim, clock), f"softmax_{node.name}", (node.args[0],))
            softmaxes.append(node.name)
            continue
        if (fn and t in _RUNNING_FUNCTIONS) or (meth and t in _RUNNING_METHODS):
            if len(spiking_args) > 1:
                refuse(node, "a function of several spiking operands has no running-sum form here",
                       "Make the other operands constant.")
                continue
            f = t if fn else getattr(torch, t)
            name = getattr(f, "__name__", str(t))
            path = module_path(node)
            mod_name = add_module(gm, f"{path}.{name}_{node.name}" if path else f"{name}_{node.name}",
                                  RunningFunction(f, clock, name))
            node.op, node.target = "call_module", mod_name
            running.append(node.name)
            continue
        if fn and t in _MAXPOOL_F:
            a = list(node.args) + [None] * 6
            kw = node.kwargs
            k = kw.get("kernel_size", a[1])
            stride = kw.get("stride", a[2]) or k
            if kw.get("return_indices", a[6] if len(node.args) > 6 else False):
                refuse(node, "a max-pool that returns indices has no spiking form", "Use return_indices=False.")
                continue
            pool = MaxPoolNeuron(k, stride, kw.get("padding", a[3] if a[3] is not None else 0),
                                 kw.get("dilation", a[4] if a[4] is not None else 1),
                                 bool(kw.get("ceil_mode", a[5] if a[5] is not None else False)))
            retarget(node, pool, f"maxpool_{node.name}", (node.args[0],))
            pools.append(node.name)
            continue
        if (fn and t in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.dropout)) or \
                (meth and t == "dropout"):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed.append(node.name)
            continue
        if (fn and t in _ADDITIVE) or (meth and t in ("add", "sub", "__add__", "__sub__", "__radd__", "__rsub__")):
            node.args = tuple(gate_const(node, a) for a in node.args)
            continue
        if fn and t in _JOINS:
            seq = node.args[0]
            node.args = (type(seq)(gate_const(node, a) for a in seq),) + tuple(node.args[1:])
            continue
        if (fn and t in _SCALING) or (meth and t in ("mul", "div", "__mul__", "__truediv__", "__rmul__")):
            if len(spiking_args) > 1:
                refuse(node, "a product of two spiking tensors (elementwise *) has no exact running-sum form "
                       "here", "Use a matrix product (@), which converts exactly, or make one factor constant.")
            elif (t in (operator.truediv, torch.div, operator.itruediv) or (meth and t in ("div", "__truediv__"))) \
                    and len(node.args) > 1 and isinstance(node.args[1], fx.Node) and kinds.get(node.args[1]) == "spike":
                refuse(node, "division by a spiking tensor is not linear", "Divide by a constant instead.")
            continue
        if (fn and t in _PASS_FUNCTIONS) or (meth and t in _PASS_METHODS) or (fn and t is getattr):
            continue
        if fn and _is_output_container(t):  # a namedtuple built of spiking tensors: no arithmetic
            continue
        if fn and t in (F.linear, F.conv1d, F.conv2d, F.conv3d):
            bias = node.kwargs.get("bias", node.args[2] if len(node.args) > 2 else None)
            if bias is not None and opts.gate_bias:
                refuse(node, "a functional linear/conv with a bias would inject the bias on every step",
                       "Use an nn.Linear / nn.Conv module, whose bias is gated to the input steps.")
            continue
        if fn and t in (F.pad,) and node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0) in (0, 0.0, None):
            continue
        refuse(node, "this operation is not linear and has no spike-equivalent operator here",
               "Replace it by a ReLU (quantized to QCFS) or a supported operator (linear ops, products, softmax, "
               "norms and elementwise activations: see ann2snn.convert.convert_graph)")
    if opts.gate_bias:
        gates = []
        for name, mod in list(gm.named_modules()):
            if isinstance(mod, _SYNAPSES) and mod.bias is not None:
                parent = name.rpartition(".")[0]
                if parent and isinstance(gm.get_submodule(parent), DriveGate):
                    continue
                replace_module(gm, name, DriveGate(mod, clock))
                gates.append(name)
        report["gate_biases"] = gates
    report.update(replace_activations=neurons, replace_maxpool=pools, replace_products=products,
                  replace_softmax=softmaxes, replace_functions=running, gate_constants=gated_consts, remove_dropout=removed,
                  kept_float_ops=kept_float)
    gm.graph.lint()
    gm.delete_all_unused_submodules()  # folded BatchNorms, replaced dropouts
    gm.recompile()
    if not neurons:
        raise ConversionError("convert: no QCFS site lies on the path from the input to the output; nothing "
                              "would spike. Quantize the model's activations (ann2snn.quantize) first.")
    return gm, report


# --------------------------------------------------------------------------------------------
class SpikingNetwork(nn.Module):
    """A converted network: ``net`` processes one time step per call; ``clock`` is its time."""

    def __init__(self, net: nn.Module, clock: Clock, options: ConversionOptions, report: dict[str, list[str]],
                 spike_levels: int = 1):
        super().__init__()
        self.net, self.clock, self.options, self.report = net, clock, options, report
        self.spike_levels = check_spike_levels(spike_levels)  # the simulator's default m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def neurons(self) -> list[ScaledNeuron]:
        return [m for m in self.net.modules() if isinstance(m, ScaledNeuron)]


def convert(ann: nn.Module, options: ConversionOptions | str = "exact", *,
            allow_float_ops: bool | set[str] = False, spike_levels: int = 1) -> SpikingNetwork:
    """Copy a trained QCFS ANN and convert the copy; the ANN is left untouched.

    ``exact`` and ``rate`` trace the model and convert it node by node (:func:`convert_graph`):
    any model torch.fx can trace, whose every operation on the path from the input is either a
    QCFS site, a max-pool, a product, a softmax or linear; anything else is refused with a
    :class:`~ann2snn.graph.ConversionError` that names the node (``allow_float_ops`` keeps such
    nodes as per-step float ops instead, with a warning).  ``seed`` reproduces the original
    toolkit on its own models by module replacement, defects included.

    ``spike_levels`` (m) is the default of the network's :class:`~ann2snn.simulate.Simulator`:
    each neuron may send up to m spikes per step and sign (1: binary spikes).
    """
    check_module("convert", "ann", ann, "the trained QCFS ANN")
    check_spike_levels(spike_levels)
    if isinstance(options, str) and options not in PRESETS:
        raise ValueError(f"unknown preset {options!r}; choose one of {sorted(PRESETS)}")
    opts = PRESETS[options] if isinstance(options, str) else options
    if not any(isinstance(m, QCFS) for m in ann.modules()):
        raise ConversionError("convert() needs a QCFS-quantized ANN (run ann2snn.quantize before training or "
                              "fine-tuning); this model has no QCFS activation sites.")
    net = copy.deepcopy(ann).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    clock = Clock()
    report: dict[str, list[str]]
    if opts.equivalent_ops and opts.fold_bn:
        net, report = convert_graph(net, opts, clock, allow_float_ops)
    else:  # the seed preset: the original's per-step operators on its own model family
        from ann2snn.models.transformer import Transformer

        if not isinstance(ann, Transformer):
            raise ConversionError(
                f"The {options if isinstance(options, str) else 'given'} preset reproduces the original toolkit's "
                f"module replacement, which is defined for its own transformer only; on a {type(ann).__name__} it "
                "could give one neuron to two call sites or leave BatchNorm shifts on every step. Use the exact "
                "(or rate) preset, which converts any traceable model node by node.")
        report = {}
        if opts.fold_bn:
            report["fold_bn"] = fold_bn(net)
        report["replace_activations"] = replace_activations(net, opts.neg_rule)
        report["replace_maxpool"] = replace_maxpool(net)
        if opts.equivalent_ops:
            report["replace_attention_ops"] = replace_attention_ops(net, clock)
        if opts.gate_bias:
            report["gate_biases"] = gate_biases(net, clock)
    for step, names in report.items():
        if names:
            log.info("convert: %s: %d", step, len(names))
    return SpikingNetwork(net, clock, opts, report, spike_levels).eval()


def simulator_for(model: nn.Module, cfg):
    """The :class:`~ann2snn.simulate.Simulator` for a trained model: converted with ``cfg.preset`` when it is a QCFS ANN,
    stepped as trained (no conversion; ``preset`` does not apply) when it is a direct SNN."""
    from ann2snn.models import model_kind
    from ann2snn.models.direct import DirectNetwork
    from ann2snn.simulate import Simulator

    m = getattr(cfg, "spike_levels", 1)
    if model_kind(cfg.model) == "convertible":
        return Simulator(convert(model, cfg.preset), spike_levels=m)
    if m != 1:
        raise ConversionError(f"spike_levels: {m} applies to converted networks; {cfg.model} is a directly trained "
                              "SNN whose neurons send one spike per step. Leave spike_levels at 1 for it.")
    log.info("%s is a directly trained SNN: evaluated step by step as trained, no conversion "
             "(preset %r does not apply)", cfg.model, cfg.preset)
    return Simulator(DirectNetwork(model))


# --------------------------------------------------------------------------------------------
# verify: does the converted network settle on the quantized ANN?
VERIFY_TOLERANCE = 1e-4


@torch.no_grad()
def verify(ann: nn.Module, snn, batch, t: int | None = None, tolerance: float = VERIFY_TOLERANCE,
           max_steps: int = 1024, dtype: torch.dtype | None = torch.float64,
           spike_levels: int | None = None) -> dict:
    """Run the converted network on ``batch`` until it is quiescent and compare its output mean with
    the quantized ANN's logits.

    ``snn``: a :class:`SpikingNetwork` (or a :class:`~ann2snn.simulate.Simulator` of one, whose
    ``spike_levels`` is used unless ``spike_levels`` is given);
    ``batch``: an input tensor or an ``(x, y)`` pair.  The run feeds ``t`` input steps (default:
    the largest L of the network's neurons) and then zeros until a zero-input step changes no
    operator's state (no neuron fires, no running sum moves): from then on nothing can change, so
    the output is final.

    The check runs on copies of both networks in ``dtype`` (float64 by default).  In float32 the
    SNN's sums of spike trains and the ANN's products round differently in the last bit, and a
    pre-activation that lies on a QCFS rounding boundary to within that last bit can fall on the
    other side, which moves every later value: on a trained VGG with a batch of 64 a few such
    activations are common, and they say nothing about the conversion.  In float64 they are about
    10⁹ times rarer.  ``dtype=None`` checks the networks as they are.

    Returns ``{"max_abs_diff", "scale", "tolerance", "ok", "t", "settle_steps", "quiescent",
    "steps_run", "dtype", "leaf"}``, where ``scale`` is the largest |ANN logit|, ``ok`` means
    ``max_abs_diff ≤ tolerance · max(1, scale)`` once quiescent, and ``settle_steps`` counts the
    steps until the last state change (input steps included).  A model whose forward returns a
    tuple, dict or ModelOutput is compared tensor by tensor, each against its own scale;
    ``max_abs_diff`` and ``scale`` are then the largest over its tensors and ``leaf`` names the
    tensor farthest off (``[1]``, ``['logits']``); ``leaf`` is None for a plain tensor output.
    An empty batch, a non-module or a step count below 1 is refused (ValueError / TypeError).
    Under the ``exact`` preset a correct conversion gives ok = True; under ``rate`` or ``seed`` the
    SNN approximates the ANN and the difference says by how much.
    """
    from spikingjelly.activation_based import base

    from ann2snn.simulate import Simulator

    x, t, tolerance, max_steps = _verify_args(ann, snn, batch, t, tolerance, max_steps)
    net = snn.snn if isinstance(snn, Simulator) else snn
    if spike_levels is None:
        spike_levels = snn.spike_levels if isinstance(snn, Simulator) else getattr(net, "spike_levels", 1)
    if dtype is not None:
        net, ann = copy.deepcopy(net).to(dtype), copy.deepcopy(ann).to(dtype)
        x = x.to(dtype)
    sim = Simulator(net, spike_levels=spike_levels)
    p = next(sim.snn.parameters(), None)
    x = x.to(p.device if p is not None else torch.device("cpu"))
    levels = [n.levels for n in sim.neurons if n.levels]
    t = int(t or (max(levels) if levels else 1))
    was = ann.training
    ann.eval()
    ref = ann(x)
    ann.train(was)
    moved = [False]
    stateful = [m for m in sim.snn.modules() if isinstance(m, base.MemoryModule)]

    def watch(module, args, out):
        if isinstance(out, torch.Tensor) and bool((out != 0).any()):
            moved[0] = True

    handles = [m.register_forward_hook(watch) for m in stateful]
    settle, quiescent, steps, cum = t, False, 0, None
    try:
        for steps, cum in enumerate(sim.iter_run(x, t, max_steps), 1):
            if steps > t and not moved[0]:
                quiescent = True
                break
            if moved[0] or steps <= t:
                settle = steps
            moved[0] = False
    finally:
        for h in handles:
            h.remove()
    diff, scale, ok, leaf = _compare_outputs(cum, ref, t, tolerance)
    return {"max_abs_diff": diff, "scale": scale, "tolerance": tolerance, "ok": bool(ok and quiescent), "t": t,
            "settle_steps": settle, "quiescent": quiescent, "steps_run": steps, "spike_levels": sim.spike_levels,
            "dtype": str(dtype or x.dtype).replace("torch.", ""), "leaf": leaf}


def _verify_args(ann, snn, batch, t, tolerance, max_steps) -> tuple:
    """:func:`verify`'s arguments, checked: (the input tensor, t, tolerance, max_steps)."""
    from ann2snn.simulate import Simulator

    check_module("verify", "ann", ann, "the quantized ANN the network was converted from")
    if not isinstance(snn, Simulator):
        check_module("verify", "snn", snn, "ann2snn.convert(ann), or a Simulator of it")
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"verify: batch must be an input tensor or an (x, y) pair, got {describe_value(batch)}. "
                        "Pass a batch of inputs, e.g. next(iter(loader)).")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"verify: batch holds no sample (input of shape {list(x.shape)}); the check needs at "
                         "least one. Pass a batch of one or more inputs.")
    return (x, check_optional_int("verify", "t", t, 1, "input steps; None: the largest L"),
            check_positive("verify", "tolerance", tolerance, "relative to max(1, |logit|)", allow_zero=True),
            check_int("verify", "max_steps", max_steps, 1, "the most steps to wait for quiescence"))


def _compare_outputs(cum, ref, t: int, tolerance: float) -> tuple[float, float, bool, str | None]:
    """(max |cum/t − ref|, max |ref|, ok, leaf) over every tensor of the outputs.  A structured
    output (tuple, dict, ModelOutput) is compared tensor by tensor, each against its own scale
    (``diff ≤ tolerance · max(1, scale)``); ``leaf`` names the worst tensor (``[0]``, ``['logits']``)
    of a structured output, None for a plain tensor."""
    from ann2snn.simulate import named_leaves

    got, want = named_leaves(cum), named_leaves(ref)
    if [k for k, _ in got] != [k for k, _ in want]:
        raise TypeError(f"verify: the converted network's output ({type(cum).__name__}) and the ANN's "
                        f"({type(ref).__name__}) differ in structure; they cannot be compared. Convert this ANN.")
    diff, scale, ok, worst, leaf = 0.0, 0.0, True, -1.0, None
    for (path, c), (_, r) in zip(got, want):
        if c is None and r is None:
            continue
        if not isinstance(c, torch.Tensor) or not isinstance(r, torch.Tensor):
            raise TypeError(f"verify: the outputs hold {describe_value(r)} at {path or 'the top'}; only tensors can be "
                            "compared. Wrap the model so that its forward returns tensors only.")
        d = float((c / t - r).abs().max()) if r.numel() else 0.0
        size = float(r.abs().max()) if r.numel() else 0.0
        diff, scale, ok = max(diff, d), max(scale, size), ok and d <= tolerance * max(1.0, size)
        if len(got) > 1 and d / max(1.0, size) > worst:
            worst, leaf = d / max(1.0, size), path
    return diff, scale, ok, leaf
