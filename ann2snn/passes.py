"""The conversion passes: what a preset (:mod:`ann2snn.presets`) runs on a copy of the ANN.

- :func:`convert_graph` (the ``exact`` and ``rate`` presets): trace the model, fold or gate
  every BatchNorm (:func:`fold_batchnorms`), apply the rule of every node that depends on the
  input (:mod:`ann2snn.rules`), then gate the biases of every Linear/Conv to the drive steps
  (:func:`gate_biases`).  Any model torch.fx can trace converts exactly or is refused.
- :func:`replace_per_step` (the ``per_step`` preset): the original toolkit's module replacement
  defects included, on its own transformer.

Every pass edits the model in place and records what it changed in a report
(step name → names), which becomes ``SpikingNetwork.report``.

SpikingJelly 2.0's ``FXConverter`` runs a recipe's fixed template (trace, observers, calibration,
replace) built for rate coding of ReLU networks; here there is no calibration (λ comes from
training) and every node must be accounted for, so the walk is our own.  Its conv-BN fusion
pattern is the same as ours, and both use torch's ``fuse_conv_bn_eval``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ann2snn.graph import DYNAMIC, ConversionError, add_module, classify, module_path, replace_module, trace
from ann2snn.neurons import Clock, DriveGate, GatedBatchNorm, MaxPoolNeuron, ScaledNeuron
from ann2snn.quant import QCFS, trace_leaves
from ann2snn.rules import SYNAPSES, Walk, apply_rule

_BN_PARTNERS = {nn.BatchNorm1d: (nn.Linear, nn.Conv1d), nn.BatchNorm2d: (nn.Conv2d,), nn.BatchNorm3d: (nn.Conv3d,)}
_RESHAPE_METHODS = ("reshape", "view", "flatten")


# --------------------------------------------------------------------------------------------
# BatchNorm
def _feeding_layer(gm: fx.GraphModule, node: fx.Node, kinds: dict) -> tuple[fx.Node, list[fx.Node]]:
    """(the node feeding the BatchNorm ``node`` through reshapes that have no other reader, those
    reshapes).  Shape queries (x.shape, x.size()) read no values, so they are not readers."""
    src, chain = node.args[0], []
    while isinstance(src, fx.Node) and _readers(src, kinds) == 1 and (
            (src.op == "call_method" and src.target in _RESHAPE_METHODS)
            or (src.op == "call_function" and src.target in (torch.reshape, torch.flatten))):
        chain.append(src)
        src = src.args[0]
    return src, chain


def _readers(node: fx.Node, kinds: dict) -> int:
    return sum(1 for u in node.users if kinds.get(u) != "meta")


def _foldable(gm: fx.GraphModule, bn: nn.Module, src: fx.Node, chain: list[fx.Node], kinds: dict) -> bool:
    """Whether ``bn`` folds into the layer ``src`` calls: a matching Linear/Conv called once, whose
    output only ``bn`` reads; through a reshape only as Linear → reshape(-1, C) → BatchNorm1d
    (as in :class:`~ann2snn.layers.LinearBN`), which keeps the channels in place."""
    if not (isinstance(src, fx.Node) and src.op == "call_module"):
        return False
    layer = gm.get_submodule(str(src.target))
    partners = next((p for t, p in _BN_PARTNERS.items() if type(bn) is t), ())
    calls = sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == src.target)
    if not (isinstance(layer, partners) and _readers(src, kinds) == 1 and calls == 1
            and bn.track_running_stats and bn.running_mean is not None):
        return False
    if not chain:
        return True
    last = chain[-1]
    shape = list(last.args[1:])
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
    return (isinstance(layer, nn.Linear) and len(chain) == 1 and len(shape) == 2 and shape[0] == -1
            and (last.op == "call_method" and last.target in ("reshape", "view")
                 or last.op == "call_function" and last.target is torch.reshape))


def _attr(gm: fx.GraphModule, arg) -> torch.Tensor | None:
    """The tensor a ``get_attr`` node reads (None for None); raises ValueError for anything else."""
    if arg is None:
        return None
    if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
        raise ValueError("not a constant")
    obj = gm
    for part in str(arg.target).split("."):
        obj = getattr(obj, part)
    return obj.detach()


def functional_batchnorm(gm: fx.GraphModule, node: fx.Node) -> nn.modules.batchnorm._BatchNorm | None:
    """An eval-mode ``F.batch_norm`` call with constant statistics (timm's ``BatchNormAct2d`` and
    other fused norm + activation layers call it) as an equivalent BatchNorm module; None for any
    other node, or a call in training mode or with input-dependent statistics."""
    if node.op != "call_function" or node.target is not F.batch_norm:
        return None
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    args = dict(zip(names, node.args)) | dict(node.kwargs)
    if args.get("training", False):
        return None
    try:
        mean, var = _attr(gm, args.get("running_mean")), _attr(gm, args.get("running_var"))
        weight, bias = _attr(gm, args.get("weight")), _attr(gm, args.get("bias"))
    except ValueError:
        return None
    if mean is None or var is None:
        return None
    bn = nn.BatchNorm1d(mean.numel(), eps=float(args.get("eps", 1e-5)))  # the class only names the rank
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(weight if weight is not None else torch.ones_like(mean))
        bn.bias.copy_(bias if bias is not None else torch.zeros_like(mean))
    return bn.eval()


def fold_batchnorms(gm: fx.GraphModule, kinds: dict, clock: Clock, gate: bool, report: dict) -> None:
    """Fold every eval-mode BatchNorm on a dynamic path into the Conv/Linear that feeds it
    (:func:`_foldable`), with torch's ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``.  A
    BatchNorm that cannot be folded (after an add, at the input, after a layer with two readers)
    becomes :class:`~ann2snn.neurons.GatedBatchNorm` when ``gate``: its shift is injected on drive
    steps only, like a folded bias.  A functional ``F.batch_norm`` (:func:`functional_batchnorm`)
    folds into a convolution that feeds it alone (the channel axis of a convolution's output is
    always 1, as ``F.batch_norm`` normalises) and is gated otherwise."""
    folded, gated = report.setdefault("fold_bn", []), report.setdefault("gate_batchnorm", [])
    for node in list(gm.graph.nodes):
        if kinds.get(node) != DYNAMIC:
            continue
        functional = functional_batchnorm(gm, node)
        if functional is not None:
            _fold_functional(gm, node, functional, kinds, clock, gate, report)
            continue
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(str(node.target))
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        src, chain = _feeding_layer(gm, node, kinds)
        if _foldable(gm, bn, src, chain, kinds):
            layer = gm.get_submodule(str(src.target))
            fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
            replace_module(gm, str(src.target), fuse(layer.eval(), bn.eval()))
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            folded.append(str(node.target))
        elif gate:
            replace_module(gm, str(node.target), GatedBatchNorm(bn, clock))
            gated.append(str(node.target))


def _fold_functional(gm: fx.GraphModule, node: fx.Node, bn: nn.Module, kinds: dict, clock: Clock, gate: bool,
                     report: dict) -> None:
    """Fold the functional BatchNorm ``node`` (as the module ``bn``) into the convolution feeding it
    alone, or make it a call of a :class:`~ann2snn.neurons.GatedBatchNorm`."""
    src = node.args[0]
    layer = gm.get_submodule(str(src.target)) if isinstance(src, fx.Node) and src.op == "call_module" else None
    calls = sum(1 for n in gm.graph.nodes if n.op == "call_module" and isinstance(src, fx.Node)
                and n.target == src.target)
    path = module_path(node)
    if (isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and layer.out_channels == bn.num_features
            and _readers(src, kinds) == 1 and calls == 1):
        replace_module(gm, str(src.target), fuse_conv_bn_eval(layer.eval(), bn))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        report["fold_bn"].append(f"{path}.{node.name}" if path else node.name)
    elif gate:
        name = add_module(gm, f"{path}.{node.name}" if path else node.name, GatedBatchNorm(bn, clock))
        node.op, node.target, node.args, node.kwargs = "call_module", name, (src,), {}
        report["gate_batchnorm"].append(name)


def gate_biases(gm: nn.Module, clock: Clock) -> list[str]:
    """Wrap every biased Linear/Conv (not yet gated) in a :class:`~ann2snn.neurons.DriveGate`, so
    its bias is injected on drive steps only; returns their names."""
    gates = []
    for name, mod in list(gm.named_modules()):
        if isinstance(mod, SYNAPSES) and mod.bias is not None:
            parent = name.rpartition(".")[0]
            if parent and isinstance(gm.get_submodule(parent), DriveGate):
                continue
            replace_module(gm, name, DriveGate(mod, clock))
            gates.append(name)
    return gates


# --------------------------------------------------------------------------------------------
# the graph walk
REPORT_STEPS = ("replace_activations", "replace_maxpool", "replace_products", "replace_softmax", "replace_attention",
                "replace_functions", "gate_constants", "remove_dropout", "kept_float_ops")


def convert_graph(net: nn.Module, clock: Clock, neg_rule: str, gate_bias: bool = True,
                  allow_float_ops: bool | set[str] = False,
                  example_input: torch.Tensor | None = None) -> tuple[fx.GraphModule, dict[str, list[str]]]:
    """Convert a traced QCFS ANN node by node: every dynamic node follows its rule
    (:mod:`ann2snn.rules`) or is refused, so the run's mean stays exact.  Returns the converted
    GraphModule and the report."""
    gm = trace(net, trace_leaves(), example_input)
    kinds = classify(gm)
    report: dict[str, list[str]] = {}
    if "traced_with_shapes" in gm.meta:  # say so: the network is specialised to this input size
        report["traced_with_shapes"] = [str(list(gm.meta["traced_with_shapes"]))]
    fold_batchnorms(gm, kinds, clock, gate_bias, report)
    walk = Walk(gm, kinds, clock, neg_rule, gate_bias, allow_float_ops, report)
    for node in list(gm.graph.nodes):
        if kinds.get(node) == DYNAMIC and node.op not in ("placeholder", "output"):
            apply_rule(walk, node)
    if gate_bias:
        report["gate_biases"] = gate_biases(gm, clock)
    for step in REPORT_STEPS:
        report.setdefault(step, [])
    gm.graph.lint()
    gm.delete_all_unused_submodules()  # folded BatchNorms, removed dropouts
    gm.recompile()
    if not report["replace_activations"]:
        raise ConversionError("convert: no QCFS site lies on the path from the input to the output; nothing "
                              "would spike. Quantize the model's activations (ann2snn.quantize) first.")
    return gm, report


# --------------------------------------------------------------------------------------------
# the original's module replacement
def _replace(model: nn.Module, kind: type, make) -> list[str]:
    """Swap every sub-module of type ``kind`` by ``make(old)``; returns their names."""
    names = [name for name, m in model.named_modules() if name and isinstance(m, kind)]
    for name in names:
        replace_module(model, name, make(model.get_submodule(name)))
    return names


def replace_per_step(model: nn.Module, neg_rule: str) -> dict[str, list[str]]:
    """The original toolkit's conversion by module replacement: every QCFS module →
    a :class:`~ann2snn.neurons.ScaledNeuron` with that module's λ and L, every ``nn.MaxPool2d`` → a
    :class:`~ann2snn.neurons.MaxPoolNeuron`; BatchNorm, softmax and both attention products stay
    as they are, computed per step on the current spikes (so a BatchNorm shift is injected on
    every step, zero-input steps included)."""
    return {"replace_activations": _replace(model, QCFS, lambda m: ScaledNeuron(m.lambda_value(), m.levels,
                                                                                neg_rule, signed=m.signed)),
            "replace_maxpool": _replace(model, nn.MaxPool2d, MaxPoolNeuron.from_maxpool)}


__all__ = ["REPORT_STEPS", "convert_graph", "fold_batchnorms", "gate_biases", "replace_per_step"]
