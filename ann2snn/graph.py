"""torch.fx plumbing shared by quantization (:mod:`ann2snn.quant`) and conversion
(:mod:`ann2snn.convert`): tracing with source locations, what each node is, and errors that
name the node.

A traced model is a :class:`torch.fx.GraphModule`: every call of a module, a function or a
tensor method is a node, so that a module called at two sites, a functional ``F.relu`` or a
``Tensor.softmax`` is seen where it is used, not only where it is defined (the module tree alone
cannot tell a ReLU shared by two sites from two ReLUs).  Our own operators are leaves: the
tracer records calls of them and does not look inside.

Each node gets a *kind* (:func:`classify`):

- ``dynamic``: a tensor that depends on the network input, i.e. one that, in the converted
  network, carries a different value on every time step (spikes, or sums and linear maps of them);
- ``const``: a tensor or value that does not depend on the input (parameters, buffers, Python
  numbers);
- ``meta``: values computed from shapes (``x.shape``, ``x.size(1)``, arithmetic on them), which
  are the same on every step.
"""
from __future__ import annotations

import contextlib
import inspect
import operator
import os
import re
import traceback
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import fx, nn

# with the separator: ".../site-packages/torchvision" starts with ".../site-packages/torch" too
_TORCH_DIR = str(Path(torch.__file__).resolve().parent) + os.sep
_HERE = str(Path(__file__).resolve().parent) + os.sep


DYNAMIC = "dynamic"  # the kind of a node whose value depends on the input (see the module docstring)


class ConversionError(ValueError):
    """A model (or one node of it) that cannot be quantized or converted exactly; the message
    names the node, its module path and source line, and the way out."""


class Tracer(fx.Tracer):
    """``torch.fx`` tracer that records source lines and keeps ``leaves`` (module types: our
    operators, :func:`ann2snn.quant.trace_leaves`) as leaves."""

    def __init__(self, leaves: tuple[type, ...] = ()):
        super().__init__()
        self.record_stack_traces = True
        self.leaves = tuple(leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        """A module the model calls but does not hold as a sub-module (Hugging Face's kernel
        wrappers: ``apply_rotary_pos_emb`` called as a module kept in a plain attribute) cannot be
        a node, since a node names a sub-module: its forward is traced through, as the code it is."""
        try:
            self.path_of_module(m)
        except NameError:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def _user_frame(frames: Iterable[tuple[str, int, str, str]]) -> str:
    """``file:line (code)`` of the innermost frame that is not in torch or in this package."""
    chosen = None
    for file, line, _, code in frames:
        path = str(Path(file).resolve()) if file and not file.startswith("<") else file
        if path.startswith(_TORCH_DIR) or path.startswith(_HERE):
            continue
        chosen = f"{file}:{line}" + (f" ({code.strip()})" if code else "")
    return chosen or "an unknown line"


def _after_interrupt(err: BaseException) -> bool:
    """True when a KeyboardInterrupt is among the exceptions ``err`` was raised while handling
    (its ``__context__`` / ``__cause__`` chain): a Ctrl-C during tracing, turned by some cleanup
    code into another error, must end as an interrupt and never be reported as a model error."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        todo += [e.__context__, e.__cause__]
    return False


class ShapeTracer(Tracer):
    """A tracer that runs an example input along (Zhang et al.'s concrete tracing idea, as Hugging
    Face's ``HFTracer`` does for its models): every proxy carries its value for the example, and
    a shape query answers with the example's sizes -- so code that branches on shapes (MobileViT's
    ``if new_h != H``, timm's VGG head, "same" padding) traces, specialised to the example's
    spatial size.  The example is run as a batch of :data:`BATCH` = 13 (a prime few layer sizes
    are multiples of); a size that is a multiple of it -- the batch, or the batch folded with other
    axes (MobileViT's ``B * patch_area``) -- stays symbolic (``x.size(d)``), so the graph runs at
    any batch size.  A branch on a value, or on such a size, still fails as it should."""

    BATCH = 13

    def __init__(self, leaves: tuple[type, ...], example: torch.Tensor):
        super().__init__(leaves)
        self.example = example.detach()[:1].expand(self.BATCH, *example.shape[1:]).clone()
        self.values: dict[fx.Node, object] = {}
        self._fed = False  # the example went to the first placeholder
        self._computing = False  # computing a value: module calls run, they are not traced

    def call_module(self, m, forward, args, kwargs):
        return forward(*args, **kwargs) if self._computing else super().call_module(m, forward, args, kwargs)

    def trace(self, root, concrete_args=None):
        """Trace through the functions libraries hide from torch.fx with ``torch.fx.wrap``
        (torchvision's ``shifted_window_attention``, ``_patch_merging_pad``): they are wrapped
        because their code branches on shapes, which this tracer answers; left whole, the
        converter would see one opaque call in place of the attention inside it."""
        with _library_wraps_lifted():
            return super().trace(root, concrete_args)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        return attr_val if self._computing else super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, lambda node: _ShapedProxy(node, self))
        self.values[proxy.node] = self._value(kind, target, args, kwargs)
        return proxy

    def _value(self, kind, target, args, kwargs):
        """The node's value for the example input (None where it cannot be computed)."""
        def value(a):
            return self.values.get(a.node) if isinstance(a, fx.Proxy) else a

        args, kwargs = fx.node.map_aggregate(args, value), fx.node.map_aggregate(kwargs, value)
        self._computing = True
        try:
            with torch.no_grad():
                if kind == "placeholder":  # the model's first input gets the example
                    fed, self._fed = self._fed, True
                    return None if fed else self.example
                if kind == "get_attr":
                    obj = self.root
                    for part in str(target).split("."):
                        obj = getattr(obj, part)
                    return obj
                if kind == "call_module":
                    return self.root.get_submodule(str(target))(*args, **kwargs)
                if kind == "call_function":
                    return target(*args, **kwargs)
                if kind == "call_method":
                    return getattr(args[0], target)(*args[1:], **kwargs)
        except Exception:  # a value the example cannot give: shape queries on it fall back to symbols
            return None
        finally:
            self._computing = False
        return None


@contextlib.contextmanager
def _library_wraps_lifted():
    """For the duration, torch.fx does not patch the ``torch.fx.wrap`` functions of modules outside
    torch (see :meth:`ShapeTracer.trace`); restored afterwards, also on error."""
    table = fx._symbolic_trace._wrapped_fns_to_patch
    lifted = {key: frame for key, frame in table.items() if _liftable(str(frame.get("__name__", "")))}
    for key in lifted:
        del table[key]
    try:
        yield
    finally:
        table.update(lifted)


def _liftable(module: str) -> bool:
    """A module whose ``torch.fx.wrap`` functions the shape tracer traces through: not torch's,
    not ours, and not torchvision's operators (``stochastic_depth`` has its own rule)."""
    return not (module == "torch" or module.startswith(("torch.", "ann2snn.", "torchvision.ops")))


def wrapped_library_call(node: fx.Node) -> bool:
    """True for a call of a function a library wrapped with ``torch.fx.wrap`` (outside torch):
    a symbolic trace keeps it whole; :class:`ShapeTracer` traces through it."""
    if node.op != "call_function":
        return False
    module = getattr(node.target, "__module__", "") or ""
    name = getattr(node.target, "__name__", "")
    if not _liftable(module):
        return False
    return any(frame.get("__name__") == module and key[1] == name
               for key, frame in fx._symbolic_trace._wrapped_fns_to_patch.items())


class _ShapedProxy(fx.Proxy):
    """A proxy whose shape queries answer from its value for the example (see :class:`ShapeTracer`)."""

    def _sizes(self, value: torch.Tensor) -> tuple:
        return tuple(self.tracer.create_proxy("call_method", "size", (self, d), {}) if n % ShapeTracer.BATCH == 0 else n
                     for d, n in enumerate(value.shape))

    def __getattr__(self, k: str):
        value = self.tracer.values.get(self.node) if isinstance(self.tracer, ShapeTracer) else None
        if isinstance(value, torch.Tensor):
            if k == "shape":
                return self._sizes(value)
            if k == "size":
                return lambda dim=None: self._sizes(value) if dim is None else self._sizes(value)[dim]
            if k == "ndim":
                return value.ndim
            if k in ("dim", "ndimension", "is_floating_point"):
                return getattr(value, k)
            if k in ("dtype", "device", "is_cuda", "layout"):
                return getattr(value, k)
        return super().__getattr__(k)

    def __setitem__(self, key, value) -> None:
        """``t[idx] = v`` as an ``operator.setitem`` node (side-effectful: kept in the graph), as
        Swin's shifted-window mask is built; the example's value is updated in place too."""
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __len__(self) -> int:
        value = self.tracer.values.get(self.node)
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] % ShapeTracer.BATCH:
            return int(value.shape[0])
        return super().__len__()


def trace(model: nn.Module, leaves: tuple[type, ...] = (),
          example_input: torch.Tensor | None = None) -> fx.GraphModule:
    """The model as a GraphModule (parameters shared with ``model``), or a ConversionError that
    says which line of the model could not be traced and why.

    A model that is already a GraphModule (what :func:`ann2snn.quantize` returns for shared or
    functional activations) is not traced again: its graph is copied with each node's record of
    the model's source line, so that a refusal cites the model's own code rather than the
    generated ``forward`` of the GraphModule.  When symbolic tracing fails and ``example_input``
    is given, the model is traced again with it (:class:`ShapeTracer`): the graph is then
    specialised to that input's size except the batch, and ``gm.meta["traced_with_shapes"]``
    records the size.  With ``example_input``, a model whose symbolic graph calls a function a
    library hid from torch.fx (:func:`wrapped_library_call`, e.g. torchvision's Swin attention) is
    traced with it too, through that function."""
    if isinstance(model, fx.GraphModule):
        graph = fx.Graph()
        graph.output(graph.graph_copy(model.graph, {}))
        gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
        gm.meta.update(getattr(model, "meta", {}))
        return gm
    try:
        gm = _trace_with(Tracer(leaves), model)
    except Exception as err:  # torch.fx raises TraceError, TypeError, RuntimeError, ... from user code
        if _after_interrupt(err):  # an error raised while a Ctrl-C unwound is the interrupt, not the model's
            raise KeyboardInterrupt from err
        gm, first_error = None, err
    if gm is not None and (example_input is None or not any(map(wrapped_library_call, gm.graph.nodes))):
        return gm
    if example_input is not None:
        try:
            shaped = _trace_with(ShapeTracer(leaves, example_input), model)
            _follow_model_dtype(shaped)
            shaped.meta["traced_with_shapes"] = tuple(example_input.shape[1:])
            return shaped
        except Exception as err:
            if _after_interrupt(err):
                raise KeyboardInterrupt from err
            if gm is not None:  # the symbolic graph, with the library's call whole, is still a graph
                return gm
    raise _untraceable(model, first_error, example_input is not None) from None


def _trace_with(tracer: fx.Tracer, model: nn.Module) -> fx.GraphModule:
    graph = tracer.trace(model, concrete_args=_defaults_after_input(model))
    return fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)


def _follow_model_dtype(gm: fx.GraphModule) -> None:
    """Make the casts of a shape-traced graph follow the model's dtype.

    :class:`ShapeTracer` answers ``x.dtype`` with the example's dtype (code may branch on it, or
    call ``torch.finfo`` of it), so ``y.to(x.dtype)``, ``softmax(..., dtype=torch.float32)`` or
    Hugging Face's ``hidden_states.to(torch.float32)`` would be recorded with the literal dtype
    the model had when traced, and a graph moved to float64 (what :func:`ann2snn.verify` compares
    in) would cast back to float32 halfway.  Every argument equal to the dtype of the model's
    first floating parameter is therefore read from that parameter when the graph runs
    (``getattr(param, "dtype")``, a shape-like ``meta`` node), as a symbolic trace records it."""
    name, param = next(((n, p) for n, p in gm.named_parameters() if p.is_floating_point()), (None, None))
    if param is None:
        return
    dtype, graph = param.dtype, gm.graph
    users = [n for n in graph.nodes if any(a is dtype for a in _flat(n.args) + _flat(n.kwargs))]
    if not users:
        return
    first = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first):
        read = graph.call_function(getattr, (graph.get_attr(name), "dtype"))
    for node in users:
        node.args = fx.node.map_aggregate(node.args, lambda a: read if a is dtype else a)
        node.kwargs = fx.node.map_aggregate(node.kwargs, lambda a: read if a is dtype else a)
    graph.lint()
    gm.recompile()


def _flat(args) -> list:
    out: list = []
    fx.node.map_aggregate(args, lambda a: out.append(a))
    return out


def _defaults_after_input(model: nn.Module) -> dict | None:
    """The forward's parameters after the input that have defaults (timm's ``attn_mask=None``,
    a ``return_features=False``), bound to them: the converted network is fed the input alone,
    so the graph is specialised to the defaults (``if attn_mask is None`` is then taken as the
    call without a mask takes it, not traced as a tensor)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    bound = {p.name: p.default for p in params[1:]
             if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return bound or None


def _untraceable(model: nn.Module, err: BaseException, tried_shapes: bool) -> ConversionError:
    frames = [(f.filename, f.lineno, f.name, f.line or "") for f in traceback.extract_tb(err.__traceback__)]
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    shapes = ("; tracing again with the example input's shapes failed too" if tried_shapes else
              "; a branch on shapes only traces with an example input (pass example_input=, as the CLI does)")
    return ConversionError(
        f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {first}, at {_user_frame(frames)}"
        f"{shapes}. Python control flow on a tensor's value (an `if` on a tensor, a loop over a tensor) cannot "
        "be traced: rewrite that line with tensor ops (torch.where, masks).")


def module_path(node: fx.Node) -> str:
    """The qualified name of the module whose forward made ``node`` ('' for the top level)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return str(last[0]) if isinstance(last, tuple) else str(last)


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def source_line(node: fx.Node) -> str:
    """Where in the model's code ``node`` was created, as ``file:line (code)``."""
    text = node.stack_trace or node.meta.get("stack_trace") or ""
    frames = [(m.group(1), int(m.group(2)), m.group(3), m.group(4)) for m in _FRAME.finditer(text)]
    return _user_frame(frames)


def target_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if node.op == "call_function":
        mod = getattr(t, "__module__", None) or ""
        name = getattr(t, "__name__", str(t))
        if mod in ("_operator", "operator"):
            return f"operator.{name}"
        if mod.startswith("torch"):
            mod = {"torch._C._nn": "torch.nn.functional", "torch._C._VariableFunctions": "torch"}.get(mod, mod)
            return f"{mod}.{name}"
        return f"{mod}.{name}" if mod else name
    return str(t)


def describe(node: fx.Node, gm: fx.GraphModule | None = None) -> str:
    """``node 'relu_1' (torch.sigmoid) in module 'layer1.0', at model.py:42 (x = torch.sigmoid(x))``."""
    what = target_name(node)
    if node.op == "call_module" and gm is not None:
        what = f"{type(gm.get_submodule(str(node.target))).__name__} module"
    path = module_path(node)
    where = f" in module '{path}'" if path else " at the top level"
    return f"node '{node.name}' ({what}){where}, at {source_line(node)}"


# --------------------------------------------------------------------------------------------
# node kinds
SHAPE_METHODS = {"size", "dim", "numel", "ndimension", "nelement"}
SHAPE_ATTRS = {"shape", "ndim", "dtype", "device"}
# tensors made from another's shape, dtype and device only: constants however the other varies
SHAPED_LIKE_METHODS = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"}
SHAPED_LIKE_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}


def _arg_nodes(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n))
    return out


def classify(gm: fx.GraphModule) -> dict[fx.Node, str]:
    """Every node's kind: :data:`DYNAMIC`, ``const`` or ``meta`` (see the module docstring)."""
    kinds: dict[fx.Node, str] = {}
    fed = False
    for node in gm.graph.nodes:
        if node.op == "placeholder":  # the input; later placeholders keep their defaults (see trace)
            kinds[node], fed = (DYNAMIC if not fed else "const"), True
            continue
        if node.op == "get_attr":
            kinds[node] = "const"
            continue
        ins = [kinds[a] for a in _arg_nodes(node)]
        shape_query = (node.op == "call_method" and node.target in SHAPE_METHODS) or (
            node.op == "call_function" and node.target is getattr and len(node.args) > 1
            and node.args[1] in SHAPE_ATTRS)
        shaped_like = (node.op == "call_method" and node.target in SHAPED_LIKE_METHODS) or (
            node.op == "call_function" and node.target in SHAPED_LIKE_FUNCTIONS)
        if shape_query:
            kinds[node] = "meta"
        elif shaped_like and DYNAMIC not in [kinds[a] for a in _arg_nodes(node)[1:]]:
            kinds[node] = "const"  # only the first operand's shape is read
        elif DYNAMIC in ins:
            kinds[node] = DYNAMIC
        elif ins and all(k == "meta" for k in ins):
            kinds[node] = "meta"  # arithmetic on shapes
        else:
            kinds[node] = "const"  # a parameter, buffer or constant, possibly shaped by meta values
    return kinds


def replace_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified name ``target`` of ``gm`` (creating no new parents)."""
    parent_name, _, attr = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, attr, module)


def add_module(gm: fx.GraphModule, base: str, module: nn.Module) -> str:
    """Register ``module`` under a fresh qualified name derived from ``base`` (``layer1.0.relu`` →
    ``layer1.0.relu_2`` when taken), inside ``base``'s parent module when it exists; returns it."""
    parent_name, _, leaf = base.rpartition(".")
    try:
        parent = gm.get_submodule(parent_name) if parent_name else gm
    except AttributeError:
        parent_name, leaf, parent = "", base, gm
    leaf = re.sub(r"[^0-9a-zA-Z_]", "_", leaf) or "m"
    candidate, i = leaf, 1
    while hasattr(parent, candidate):
        i += 1
        candidate = f"{leaf}_{i}"
    name = f"{parent_name}.{candidate}" if parent_name else candidate
    gm.add_submodule(name, module)
    return name


__all__ = ["DYNAMIC", "ConversionError", "Tracer", "add_module", "classify", "describe", "module_path", "replace_module",
           "source_line", "target_name", "trace", "wrapped_library_call"]
