"""``verify``: does a converted network settle on the quantized ANN it was converted from?

Under the ``exact`` preset it must (:mod:`ann2snn.presets`): after the input steps, zero-input
steps run until no operator's state changes any more, and the output mean is compared with the
ANN's logits within a stated tolerance.  A converter that can be wrong says so at run time: the
CLI runs this check on the first test batch of every ``exact`` conversion.
"""
from __future__ import annotations

import contextlib
import copy
import logging

import torch
from spikingjelly.activation_based import base
from torch import nn

from ann2snn._checks import check_int, check_module, check_optional_int, check_positive
from ann2snn._checks import describe as describe_value
from ann2snn.convert import SpikingNetwork, convert
from ann2snn.results import VerifyResult
from ann2snn.simulate import Simulator, named_leaves

VERIFY_TOLERANCE = 1e-4
log = logging.getLogger("ann2snn")


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@torch.no_grad()
def verify(ann: nn.Module, snn, batch, t: int | None = None, tolerance: float = VERIFY_TOLERANCE,
           max_steps: int = 1024, dtype: torch.dtype | None = torch.float64,
           spike_levels: int | None = None) -> VerifyResult:
    """Run the converted network on ``batch`` until it is quiescent and compare its output mean with
    the quantized ANN's logits.

    ``snn``: a :class:`SpikingNetwork` (or a :class:`~ann2snn.simulate.Simulator` of one, whose
    ``spike_levels`` is used unless ``spike_levels`` is given);
    ``batch``: an input tensor or an ``(x, y)`` pair.  The run feeds ``t`` input steps (default:
    the largest L of the network's neurons) and then zeros until a zero-input step changes no
    operator's state (no neuron fires, no running sum moves): from then on nothing can change, so
    the output is final.

    The check runs on copies of both networks in ``dtype`` (float64 by default).  In float32 the
    SNN's sums of spike trains and the ANN's products round differently in the last bit, and so
    does a BatchNorm folded in float32: a pre-activation that lies on a QCFS rounding boundary to
    within that last bit can fall on the other side, which moves every later value (on a trained
    VGG with a batch of 64 a few such activations are common; timm's inception_v4 had one 7.6e-8
    levels from a boundary).  Such a flip says nothing about the conversion, so the comparison is
    made like with like: when the copy of ``snn`` misses, the ANN is converted again in ``dtype``
    under ``snn``'s preset, and when ``snn`` equals that conversion up to its own rounding (same
    modules, parameters within 1e-5 relative, same neurons) the result of the ``dtype`` conversion
    is returned.  A network that differs more (a wrong λ, another model) keeps its failure.
    ``dtype=None`` checks the networks as they are.

    Returns a :class:`~ann2snn.results.VerifyResult` (``max_abs_diff``, ``scale``, ``tolerance``,
    ``ok``, ``t``, ``settle_steps``, ``quiescent``, ``steps_run``, ``spike_levels``, ``dtype``,
    ``leaf``; ``to_dict()`` for the plain dict), where ``scale`` is the largest |ANN logit|, ``ok`` means
    ``max_abs_diff ≤ tolerance · max(1, scale)`` once quiescent, and ``settle_steps`` counts the
    steps until the last state change (input steps included).  A model whose forward returns a
    tuple, dict or ModelOutput is compared tensor by tensor, each against its own scale;
    ``max_abs_diff`` and ``scale`` are then the largest over its tensors and ``leaf`` names the
    tensor farthest off (``[1]``, ``['logits']``); ``leaf`` is None for a plain tensor output.
    An empty batch, a non-module or a step count below 1 is refused (ValueError / TypeError).
    Under the ``exact`` preset a correct conversion gives ok = True; under ``rate`` or ``per_step`` the
    SNN approximates the ANN and the difference says by how much.
    """
    x, t, tolerance, max_steps = _verify_args(ann, snn, batch, t, tolerance, max_steps)
    net = snn.snn if isinstance(snn, Simulator) else snn
    if spike_levels is None:
        spike_levels = snn.spike_levels if isinstance(snn, Simulator) else getattr(net, "spike_levels", 1)
    if dtype is None:
        return _check(ann, net, x, t, tolerance, max_steps, spike_levels)
    ann = copy.deepcopy(ann).to(dtype)
    x = x.to(dtype) if x.is_floating_point() else x  # token ids stay integers
    res = _check(ann, copy.deepcopy(net).to(dtype), x, t, tolerance, max_steps, spike_levels)
    if res.ok or not isinstance(net, SpikingNetwork):
        return res
    with _quiet(logging.getLogger("ann2snn.convert")):  # the user saw this conversion's log already
        again = convert(ann, net.preset, allow_float_ops=net.allow_float_ops, spike_levels=net.spike_levels)
    if not _same_up_to_rounding(net, again):
        return res  # not the conversion of this ANN (or not up to float32 rounding): the failure stands
    redone = _check(ann, again, x, t, tolerance, max_steps, spike_levels)
    if redone.ok:
        log.info("verify: the %s network misses the quantized ANN only by its own rounding (a pre-activation "
                 "on a QCFS boundary to within float32 precision); its conversion in %s settles on the ANN",
                 str(next(iter(net.parameters()), torch.empty(0)).dtype).replace("torch.", ""), res.dtype)
    return redone if redone.ok else res


def _same_up_to_rounding(net: nn.Module, again: nn.Module, rtol: float = 1e-5) -> bool:
    """Whether ``net`` is ``again`` (the same conversion redone in a wider dtype) up to the rounding
    of its own dtype: the same modules, buffers and parameters equal within ``rtol``, and the
    same neurons (λ, L, rule, sign)."""
    mine, theirs = net.state_dict(), again.state_dict()
    kinds = [[type(m).__name__ for m in n.modules()] for n in (net, again)]  # GraphModule classes are per instance
    if mine.keys() != theirs.keys() or kinds[0] != kinds[1]:
        return False
    for key, value in mine.items():
        other = theirs[key]
        if value.shape != other.shape:
            return False
        if value.is_floating_point() and not torch.allclose(value.to(other.dtype), other, rtol=rtol,
                                                            atol=rtol * float(other.abs().max()) if other.numel() else 0):
            return False
    pairs = zip(net.neurons(), again.neurons())
    return all(a.levels == b.levels and a.neg_rule == b.neg_rule and a.signed == b.signed
               and abs(a.lam - b.lam) <= rtol * abs(b.lam) for a, b in pairs)


def _check(ann: nn.Module, net: nn.Module, x: torch.Tensor, t: int | None, tolerance: float, max_steps: int,
           spike_levels: int) -> VerifyResult:
    """Run ``net`` on ``x`` until quiescent and compare its output mean with ``ann``'s (both as given)."""
    sim = Simulator(net, spike_levels=spike_levels)
    p = next(sim.snn.parameters(), None)
    x = x.to(p.device if p is not None else torch.device("cpu"))
    levels = [n.levels for n in sim.neurons if n.levels]
    t = int(t or (max(levels) if levels else 1))
    was = ann.training
    ann.eval()
    ref = ann(x)
    ann.train(was)
    settle, quiescent, steps, cum = _run_to_quiescence(sim, x, t, max_steps)
    diff, scale, ok, leaf = _compare_outputs(cum, ref, t, tolerance)
    return VerifyResult(max_abs_diff=diff, scale=scale, tolerance=tolerance, ok=bool(ok and quiescent), t=t,
                        settle_steps=settle, quiescent=quiescent, steps_run=steps, spike_levels=sim.spike_levels,
                        dtype=str(p.dtype if p is not None else x.dtype).replace("torch.", ""), leaf=leaf)


def _run_to_quiescence(sim: Simulator, x: torch.Tensor, t: int, max_steps: int) -> tuple:
    """(settle steps, quiescent, steps run, cumulative output): ``t`` input steps, then zero steps
    until one changes no operator's state (or ``max_steps``)."""
    moved = [False]

    def watch(module, args, out):
        if isinstance(out, torch.Tensor) and bool((out != 0).any()):
            moved[0] = True

    handles = [m.register_forward_hook(watch) for m in sim.snn.modules() if isinstance(m, base.MemoryModule)]
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
    return settle, quiescent, steps, cum


def _verify_args(ann, snn, batch, t, tolerance, max_steps) -> tuple:
    """:func:`verify`'s arguments, checked: (the input tensor, t, tolerance, max_steps)."""
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


__all__ = ["VERIFY_TOLERANCE", "verify"]
