"""QCFS: the quantization-clip-floor-shift activation.

Bu, Fang, Ding, Dai, Yu, Huang, "Optimal ANN-SNN Conversion for High-accuracy and Ultra-low-latency
Spiking Neural Networks", ICLR 2022.  One learnable threshold λ per activation site and L levels:

    y = λ · clamp(floor(x·L/λ + 1/2) / L, 0, 1)          values in {0, λ/L, …, λ}

A *signed* site (``signed=True``: a :class:`~ann2snn.layers.SignedSite` or a symmetric
``Hardtanh(−c, c)``) clamps to [−1, 1] instead: values in {−λ, …, −λ/L, 0, λ/L, …, λ}.

Backward: the floor is straight-through (gradient 1), the clamp passes the gradient where the
quantized value lies inside [0, 1] and blocks it outside, and λ receives the gradient of the whole
expression (``q − x/λ`` inside the range, ``1`` above it, ``0`` below).  The forward and backward
are written as one autograd function so that training stores a single mask, not the
intermediates of five elementwise ops.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ann2snn._checks import check_int, check_module, check_positive
from ann2snn.graph import ConversionError, add_module, describe, module_path, replace_module, trace
from ann2snn.layers import MatMul, SignedSite
from ann2snn.neurons import DriveGate, ECSoftmax, MaxPoolNeuron, ScaledNeuron, SpikeMatMul
from ann2snn.placements import OTHER_ACTIVATIONS, PLACEMENTS, Site, find_sites

log = logging.getLogger("ann2snn")


def qcfs(x: torch.Tensor, lam: torch.Tensor, levels: int, signed: bool = False) -> torch.Tensor:
    """Reference QCFS forward (no autograd tricks); the module below must agree with it."""
    return lam * torch.clamp(torch.floor(x * levels / lam + 0.5) / levels, -1.0 if signed else 0.0, 1.0)


class _QCFSFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor, levels: int, low: float = 0.0) -> torch.Tensor:
        s = torch.floor(x * (levels / lam) + 0.5) / levels  # quantized value in units of λ, unclipped
        inside = (s >= low) & (s <= 1)
        q = s.clamp(low, 1.0)
        ctx.save_for_backward(x, lam, inside, q)
        return q * lam

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, lam, inside, q = ctx.saved_tensors
        grad_x = grad_lam = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out * inside.to(grad_out.dtype)
        if ctx.needs_input_grad[1]:
            # d/dλ [λ·clamp(s)] with d s/dλ = -x/λ² · (L/L) through the straight-through floor.
            dlam = q - inside.to(x.dtype) * (x / lam)
            grad_lam = (grad_out * dlam).sum().reshape(lam.shape)
        return grad_x, grad_lam, None, None


class QCFS(nn.Module):
    """QCFS activation with a learnable threshold ``lam`` (λ) and ``levels`` (L) steps.

    ``clip`` (for a clipped ReLU such as ReLU6): the effective threshold is min(λ, clip), so the
    output never exceeds the clip the model was built with.  ``calibrating`` (set by
    :func:`calibrate`) makes the site a plain (clipped) ReLU while its statistics are gathered.
    """

    def __init__(self, levels: int = 4, lambda_init: float = 8.0, clip: float | None = None, signed: bool = False):
        super().__init__()
        self.signed = bool(signed)
        self.levels = check_int("QCFS", "levels", levels, 1, "quantization levels L")
        lambda_init = check_positive("QCFS", "lambda_init", lambda_init, "the initial threshold λ")
        self.clip = None if clip is None else float(clip)
        init = float(lambda_init) if clip is None else min(float(lambda_init), float(clip))
        self.lam = nn.Parameter(torch.tensor(init))
        self.calibrating = False

    def effective_lambda(self) -> torch.Tensor:
        return self.lam if self.clip is None else self.lam.clamp(max=self.clip)

    def lambda_value(self) -> float:
        """λ as a number, the scale the converted neuron's spikes carry: min(λ, clip).  (The
        neuron's threshold θ is in units of this λ: see :class:`~ann2snn.neurons.ScaledNeuron`.)"""
        return float(self.effective_lambda().detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            if self.signed:
                return x if self.clip is None else x.clamp(-self.clip, self.clip)
            return x.clamp(min=0) if self.clip is None else x.clamp(0, self.clip)
        lam = self.effective_lambda()
        lam = lam.to(x.dtype) if x.dtype != lam.dtype else lam
        return _QCFSFunction.apply(x, lam, self.levels, -1.0 if self.signed else 0.0)

    def extra_repr(self) -> str:
        clip = "" if self.clip is None else f", clip={self.clip:g}"
        return f"levels={self.levels}, lam={float(self.lam.detach()):.4g}{clip}" + (", signed" if self.signed else "")


# --------------------------------------------------------------------------------------------
# quantize: every activation call site gets its own QCFS
def trace_leaves() -> tuple[type, ...]:
    """Module types torch.fx records as calls without looking inside: QCFS, the marker product,
    and the spiking operators of a converted network."""
    return (QCFS, MatMul, SignedSite, ScaledNeuron, MaxPoolNeuron, SpikeMatMul, ECSoftmax, DriveGate)


def _quantize_args(model, levels, lambda_init) -> tuple[int, float]:
    """:func:`quantize`'s arguments, checked: ``levels`` an int ≥ 1 (2.5 is refused, not truncated
    to 2), ``lambda_init`` finite and > 0."""
    check_module("quantize", "model", model, "the ReLU network to quantize")
    return (check_int("quantize", "levels", levels, 1, "quantization levels L of every QCFS site"),
            check_positive("quantize", "lambda_init", lambda_init, "the initial threshold λ of every site"))


def quantize(model: nn.Module, levels: int, lambda_init: float = 8.0, calibrate=None,
             percentile: float = 99.9, calibration_batches: int = 4, placement: str = "activations",
             example_input: torch.Tensor | None = None) -> nn.Module:
    """Give every call site of a ReLU-family activation of ``model`` its own :class:`QCFS` site
    with ``levels`` levels (done before training or fine-tuning: QCFS's "replace the activation by
    the quantization-clip-floor-shift function", Bu et al., ICLR 2022), and, under the default
    ``placement="activations"``, follow every other activation with a site of its own.

    Placements (:data:`PLACEMENTS`):

    - ``"activations"`` (default): ReLU-family activations become sites; any other activation
      (GELU, SiLU, Hardswish, Mish, ELU, LeakyReLU, PReLU, tanh, sigmoid, ...; module, function or
      method) is kept -- the converter carries it by the running-sum rule -- and a site follows it,
      *signed* where its output can be negative (all of these but sigmoid, softplus and
      hardsigmoid), so the layer after it reads spikes, as after a ReLU.  An activation whose
      only reader is already a site (timm's and ann2snn's ViT put a ReLU after GELU) gets no
      second one.  Any network gets a QANN this way.
    - ``"relu"``: ReLU-family activations only (other activations stay float operations, which the
      next layer reads as real values); a model without one is refused.
    - ``"synapses"``: as ``"activations"``, and a site (signed where it can be negative) on every
      operand of a Linear, convolution or product of two input-dependent tensors that is not a
      site yet -- after each LayerNorm, on q, k, v, the softmax and the attention output -- so
      every weight is read by spikes (:mod:`ann2snn.placements`, which documents each).

    The model is traced with torch.fx (:func:`ann2snn.graph.trace`), so every *call* is found:
    ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.Hardtanh(0, c)`` modules (a module called at two sites gets
    two QCFS sites), ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` / ``relu_`` / ``F.relu6`` /
    ``F.hardtanh(x, 0, c)``, in place or not.  A clipped ReLU becomes QCFS with its clip
    respected (λ ≤ c).  When every site is a module called exactly once, the modules are replaced
    in place and ``model`` itself is returned (its class and state-dict names are kept);
    otherwise the rewritten :class:`torch.fx.GraphModule` is returned (QCFS modules of shared or
    functional sites are added under new names; the original parameters are shared).

    ``example_input``: an input of the size the model will see (any batch size); used only when
    symbolic tracing fails on code that branches on shapes (:class:`~ann2snn.graph.ShapeTracer`):
    the model is then returned as a GraphModule specialised to that input size (except the
    batch), which :func:`ann2snn.convert` converts without tracing again.

    ``calibrate``: a loader (or iterable of ``(x, y)`` / ``x`` batches); each λ is then initialised
    to the ``percentile``-th percentile of its site's (clipped) ReLU activations over the first
    ``calibration_batches`` batches (:func:`calibrate`), the usual start for fine-tuning a
    pretrained ReLU network.  Raises :class:`~ann2snn.graph.ConversionError` for an untraceable
    model (naming the line) or one with no ReLU activation.
    """
    levels, lambda_init = _quantize_args(model, levels, lambda_init)
    if placement not in PLACEMENTS:
        raise ValueError(f"quantize: placement must be one of {PLACEMENTS}, got {str(placement)[:40]!r}")
    gm = trace(model, trace_leaves(), example_input)
    sites = find_sites(gm, model, placement)
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            uses[str(node.target)] = uses.get(str(node.target), 0) + 1
    specialised = "traced_with_shapes" in gm.meta  # only the graph holds what tracing made concrete
    if not specialised and all(s.node.op == "call_module" and uses[str(s.node.target)] == 1 and s.readers is None
                               for s in sites):
        # the module tree already has one module per site: keep the model's own class
        for site in sites:
            q = QCFS(levels, lambda_init, site.clip, signed=site.signed)
            act = model.get_submodule(str(site.node.target))
            replace_module(model, str(site.node.target), nn.Sequential(act, q) if site.follows else q)
        log.info("quantize: %d activation site(s) -> QCFS(L=%d), in place", len(sites), levels)
        out = model
    else:
        out = _rewrite_sites(gm, sites, levels, lambda_init)
        log.info("quantize: %d activation site(s) -> QCFS(L=%d); the model is rewritten as a graph "
                 "(shared or functional activations)", len(sites), levels)
    if not any(isinstance(m, QCFS) for m in out.modules()):  # pragma: no cover - defensive
        raise ConversionError(f"quantize: no QCFS site was created in {describe(sites[0].node, gm)}")
    if calibrate is not None:
        calibrate_lambdas(out, calibrate, percentile, calibration_batches)
    return out


def _rewrite_sites(gm: torch.fx.GraphModule, sites: list[Site], levels: int, lambda_init: float):
    """Give each site its own QCFS module in the graph: a shared module's first call keeps its
    name, later calls and functional / method calls get new modules beside the code that made them."""
    seen: set[str] = set()
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for site in sites:
        node, q = site.node, QCFS(levels, lambda_init, site.clip, signed=site.signed)
        if site.follows:
            _site_after(gm, node, q, site.readers)
            continue
        if node.op == "call_module" and str(node.target) not in seen:
            seen.add(str(node.target))
            replace_module(gm, str(node.target), q)  # its first call site keeps the module's name
            continue
        if node.op == "call_module":  # a later call of a shared module: a sibling site
            base = str(node.target)
        else:  # a functional or method call: a site in the module whose forward made it
            path = module_path(node)
            base = f"{path}.{node.name}" if path else node.name
        name = add_module(gm, base, q)
        src = node.args[0]
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (src,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        if site.inplace and isinstance(src, torch.fx.Node):  # later readers of the input saw the activation
            for user in list(src.users):
                if user is not new and order.get(user, -1) > order[node]:
                    user.replace_input_with(src, new)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def _site_after(gm: torch.fx.GraphModule, node: torch.fx.Node, q: QCFS, readers: frozenset | None = None) -> None:
    """Insert the site ``q`` after ``node``: every reader of ``node`` (or those of ``readers``)
    reads the site instead."""
    if node.op == "call_module":
        base = f"{node.target}_site"  # beside the activation module
    else:
        path = module_path(node)
        base = f"{path}.{node.name}_site" if path else f"{node.name}_site"
    name = add_module(gm, base, q)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node,))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new and (readers is None or user in readers))


@torch.no_grad()
def calibrate_lambdas(model: nn.Module, loader, percentile: float = 99.9, batches: int = 4) -> dict[str, float]:
    """Set every QCFS site's λ to the ``percentile``-th percentile of its activations.

    The sites act as plain (clipped) ReLUs while the first ``batches`` batches of ``loader`` run
    through the model in eval mode, so the statistics are those of the ReLU network; then
    λ = percentile of each site's outputs (at most its clip; left unchanged where a site never
    fires).  Returns {site name: λ}.  A robust-percentile start is the usual choice for
    pretrained networks (Rueckauer et al., Front. Neurosci. 2017; SpikingJelly's '99.9%' mode).
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    sites = {name: m for name, m in model.named_modules() if isinstance(m, QCFS)}
    if not sites:
        raise ValueError("calibrate: the model has no QCFS site; run quantize first")
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in sites}
    gen = torch.Generator().manual_seed(0)
    limit = 1 << 18  # values kept per site and batch: enough for a 99.9th percentile

    def keep(name):
        def hook(module, args, out):
            flat = out.detach().flatten().float().cpu()
            if sites[name].signed:  # a signed site's λ bounds |x|
                flat = flat.abs()
            if flat.numel() > limit:
                flat = flat[torch.randint(flat.numel(), (limit,), generator=gen)]
            samples[name].append(flat)
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in sites.items()]
    was = model.training
    model.eval()
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    try:
        for m in sites.values():
            m.calibrating = True
        seen = 0
        for batch in loader:
            if seen >= batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(dev))
            seen += 1
        if not seen:
            raise ValueError("calibrate: the loader yielded no batch")
    finally:
        for m in sites.values():
            m.calibrating = False
        for h in handles:
            h.remove()
        model.train(was)
    out = {}
    for name, m in sites.items():
        vals = torch.cat(samples[name])
        lam = float(torch.quantile(vals, percentile / 100.0)) if vals.numel() else 0.0
        if lam > 0:
            m.lam.fill_(lam if m.clip is None else min(lam, m.clip))
        out[name] = float(m.lam)
    log.info("calibrate: λ of %d QCFS site(s) from the %.4g-th percentile over %d batch(es): min %.3g, max %.3g",
             len(out), percentile, seen, min(out.values()), max(out.values()))
    return out


__all__ = ["OTHER_ACTIVATIONS", "PLACEMENTS", "QCFS", "calibrate_lambdas", "qcfs", "quantize"]  # the first two: from placements
