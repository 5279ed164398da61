"""The simulator: the one place where SNN time advances and state is reset.

Schedule (the original's): the analog image is fed for ``t`` drive steps, then zeros for
``extra_t`` steps; the network's per-step outputs are summed.  :meth:`Simulator.iter_run` yields
the cumulative output after every step of one run, so every per-step figure of a run comes from
one pass (see :mod:`ann2snn.metrics` for what those figures mean and how they are averaged).

Accuracy tables (rows t, columns t + e: the original toolkit's table) share work: rows whose neurons have the same
threshold (1) share a trunk pass; after step t the state is snapshotted, the row's extra steps
run with cap = t from the snapshot, and the trunk resumes.  A T × E table then costs T + T·E
steps instead of Σ(t + E) for one pass per row.  Rows with level-matched thresholds (t/L under
the ``exact`` preset, which differ per row; row L has threshold 1) get one pass each.

Nothing else in the package ticks the clock or resets a network: metrics and energy
measurements observe runs of this simulator.  Tensors over time are [T, B, ...].

Structured outputs: a network whose forward returns a tuple, list, dict, namedtuple or Hugging
Face ``ModelOutput`` (anything ``torch.utils._pytree`` flattens) is accumulated tensor by tensor,
and the runs return the same structure with every tensor summed (and stacked over steps); a
converted network returns a mapping as a plain dict (torch.fx rebuilds it so).  Where
one tensor of class scores is needed (accuracies, losses), :func:`logits_of` takes it by one rule.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import closing
from typing import Any

import torch
import torch.utils._pytree as pytree
from spikingjelly.activation_based import base, functional
from torch import nn

from ann2snn._checks import check_int, check_module, check_rows, describe, renamed
from ann2snn.neurons import ScaledNeuron, bits_per_step, check_spike_levels
from ann2snn.presets import AS_TRAINED

log = logging.getLogger("ann2snn")

_OUTPUT_FIX = ("Return tensors only (a tensor, or a tuple/list/dict of tensors), e.g. by wrapping the model in a "
               "module whose forward returns model(x)[0].")


# --------------------------------------------------------------------------------------------
# structured outputs: summed and stacked leaf by leaf (torch's pytree: tuple, list, dict,
# namedtuple, and classes registered with it such as transformers' ModelOutput)
def named_leaves(out: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """The tensors (and other leaves) of an output, each with its place: ``[0]``, ``['logits']``,
    ``.aux`` (a namedtuple's field); ``""`` for a plain tensor.  Mappings of any class (a
    ``ModelOutput``, an ``OrderedDict``) are walked by their items, so two outputs compare by
    place even where one is a dict and the other a ModelOutput (torch.fx rebuilds a traced
    model's mappings as plain dicts)."""
    if isinstance(out, Mapping):
        items = [(f"[{k!r}]", v) for k, v in out.items()]
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        items = [(f".{f}", v) for f, v in zip(out._fields, out)]
    elif isinstance(out, (tuple, list)):
        items = [(f"[{i}]", v) for i, v in enumerate(out)]
    else:
        return [(prefix, out)]
    return [pair for key, v in items for pair in named_leaves(v, prefix + key)]


def _leaves(out: Any, what: str = "the network's output") -> tuple[list, Any]:
    """(leaves, spec) of an output; every leaf is a tensor or None, else a TypeError naming it."""
    leaves, spec = pytree.tree_flatten(out)
    if all(leaf is None or isinstance(leaf, torch.Tensor) for leaf in leaves):
        return leaves, spec
    where, leaf = next(((k, v) for k, v in named_leaves(out) if v is not None and not isinstance(v, torch.Tensor)),
                       ("", out))
    raise TypeError(f"Simulator: {what} holds {describe(leaf)} at {where or 'the top'} ({type(out).__name__} output); "
                    f"only tensors can be summed over time steps. {_OUTPUT_FIX}")


def _same_spec(spec, other) -> None:
    if spec != other:
        raise TypeError("Simulator: the network's output changed its structure between time steps; the runs sum "
                        f"it step by step, so it must keep one structure. {_OUTPUT_FIX}")


def accumulate(acc: Any, y: Any) -> Any:
    """``acc + y`` for tensors; for a structured output the same structure with each tensor summed."""
    if isinstance(y, torch.Tensor) and (acc is None or isinstance(acc, torch.Tensor)):
        return y if acc is None else acc + y
    leaves, spec = _leaves(y)
    if acc is None:
        return y
    acc_leaves, acc_spec = pytree.tree_flatten(acc)
    _same_spec(acc_spec, spec)
    _same_spec([a is None for a in acc_leaves], [b is None for b in leaves])  # None stays None
    return pytree.tree_unflatten([a if b is None else a + b for a, b in zip(acc_leaves, leaves)], spec)


def stack_steps(outs: list) -> Any:
    """Per-step outputs → one output over time ([S, ...] per tensor), structure kept."""
    if all(isinstance(o, torch.Tensor) for o in outs):
        return torch.stack(outs)
    flat = [_leaves(o) for o in outs]
    for leaves, spec in flat[1:]:
        _same_spec(flat[0][1], spec)
        _same_spec([v is None for v in flat[0][0]], [v is None for v in leaves])
    cols = zip(*(leaves for leaves, _ in flat))
    return pytree.tree_unflatten([None if col[0] is None else torch.stack(col) for col in cols], flat[0][1])


def select_steps(out: Any, index) -> Any:
    """``out[index]`` of every tensor of an output over time."""
    if isinstance(out, torch.Tensor):
        return out[index]
    return pytree.tree_map(lambda v: v[index] if isinstance(v, torch.Tensor) else v, out)


def logits_of(out: Any) -> torch.Tensor:
    """The classifier logits of a network's output, by one documented rule: a tensor as is; a
    dict or ``ModelOutput``: its ``logits`` entry; a tuple or list (namedtuples included, e.g.
    torchvision's ``GoogLeNetOutputs``): its first element (the rule applied again to it).
    Accuracies, losses and predictions are computed on it; anything else is a TypeError."""
    seen = out
    for _ in range(8):  # a bounded descent: ((logits, aux), extra) is two levels
        if isinstance(seen, torch.Tensor):
            return seen
        if isinstance(seen, Mapping) and "logits" in seen:
            seen = seen["logits"]
        elif isinstance(seen, (tuple, list)) and len(seen):
            seen = seen[0]
        else:
            break
    raise TypeError(f"the network's output is {describe(out)}, from which no classifier logits can be taken: "
                    "accuracies need a tensor, a dict/ModelOutput with a 'logits' entry, or a tuple/list whose "
                    "first element is the logits. Wrap the model so that its forward returns the logits.")


class Simulator:
    """Steps a :class:`~ann2snn.convert.SpikingNetwork` (or a
    :class:`~ann2snn.models.direct.DirectNetwork`: anything with ``net``, ``clock`` and
    ``neurons()``), owning its clock, neuron parameters and resets.  The network's ``preset``
    (:mod:`ann2snn.presets`; none for a directly trained SNN: :data:`~ann2snn.presets.AS_TRAINED`)
    sets each neuron's threshold and cap for a run of t steps."""

    def __init__(self, snn: nn.Module, spike_levels: int | None = None):
        check_module("Simulator", "snn", snn, "a converted network: ann2snn.convert(model)")
        if not callable(getattr(snn, "neurons", None)) or not hasattr(snn, "clock"):
            raise TypeError(f"Simulator: snn must be a converted network (ann2snn.convert(model)) or a DirectNetwork, "
                            f"got a {type(snn).__name__}, which has no clock or neurons(). Convert the ANN first: "
                            "Simulator(ann2snn.convert(model)).")
        self.snn = snn.eval()
        self.preset = getattr(snn, "preset", None) or AS_TRAINED
        self.neurons = snn.neurons()
        self.memory_modules = [m for m in snn.modules() if isinstance(m, base.MemoryModule)]
        self.spike_levels = getattr(snn, "spike_levels", 1) if spike_levels is None else spike_levels

    @property
    def spike_levels(self) -> int:
        """m, the most spikes a converted neuron sends per step and sign (1: binary spikes)."""
        return self._spike_levels

    @spike_levels.setter
    def spike_levels(self, m: int) -> None:
        m = check_spike_levels(m)
        if m != 1 and not all(isinstance(n, ScaledNeuron) for n in self.neurons):
            raise ValueError("spike_levels > 1 applies to converted networks (ScaledNeuron); this network's "
                             "neurons are trained spiking neurons, which send one spike per step")
        self._spike_levels = m

    @property
    def bits_per_step(self) -> float:
        """log2(2m + 1): what one signed m-level spike carries per step."""
        return bits_per_step(self._spike_levels)

    # -- neuron parameters for a row t ---------------------------------------------------------
    def neuron_params(self, neuron, t: int) -> tuple[float, float]:
        """(threshold in units of λ, cap) of ``neuron`` for t drive steps."""
        return self.preset.neuron_params(neuron, t)

    def configure(self, t: int, cap_active: bool = True) -> None:
        for nrn in self.neurons:
            nrn.theta, cap = self.neuron_params(nrn, t)
            nrn.cap = cap if cap_active else math.inf
            if isinstance(nrn, ScaledNeuron):
                nrn.m = self._spike_levels

    def shares_trunk(self, t: int) -> bool:
        """True when row t's neurons have threshold 1, so its first t steps equal the trunk's.

        Only with binary spikes: the trunk runs without caps, which a binary neuron cannot reach
        within t ≤ cap steps anyway; a neuron sending m > 1 spikes per step could pass its cap."""
        return self._spike_levels == 1 and all(self.neuron_params(n, t)[0] == 1.0 for n in self.neurons)

    def k_step_runs_share_one_pass(self, t: int) -> bool:
        """True when a k-step run (k ≤ t) is the first k steps of the t-step run for every k
        (threshold 1 everywhere: the ``rate`` and ``per_step`` presets, directly trained SNNs)."""
        return all(self.shares_trunk(k) for k in range(1, t + 1))

    # -- state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        functional.reset_net(self.snn)
        self.snn.clock.reset()

    def snapshot(self):
        # Operators never modify state tensors in place, so references are a faithful snapshot.
        return [dict(m._memories) for m in self.memory_modules], self.snn.clock.state()

    def restore(self, snap) -> None:
        mems, clock = snap
        for m, saved in zip(self.memory_modules, mems):
            m._memories.update(saved)
        self.snn.clock.load(clock)

    # -- stepping -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, x: torch.Tensor, drive: bool) -> torch.Tensor:
        self.snn.clock.tick(drive)
        return self.snn(x if drive else torch.zeros_like(x))

    @torch.no_grad()
    def first_step(self, x: torch.Tensor) -> torch.Tensor:
        """The output of one drive step from rest (e.g. to count one step's operations); the
        network is reset before and after."""
        self.configure(1)
        self.reset()
        try:
            return self.step(x, drive=True)
        finally:
            self.reset()

    @torch.no_grad()
    def iter_run(self, x: torch.Tensor, t: int, steps: int) -> Iterator[torch.Tensor]:
        """One run with thresholds set for ``t`` drive steps: yields the cumulative output sum
        after each of ``steps`` steps (drive for the first ``t``, zeros after).  The network is
        reset before the first step and when the generator is closed or exhausted."""
        t = check_int("Simulator.iter_run", "t", t, 1, "input steps")
        steps = check_int("Simulator.iter_run", "steps", steps, 0, "steps to run")
        self.configure(t)
        self.reset()
        try:
            acc = None
            for k in range(steps):
                acc = accumulate(acc, self.step(x, drive=k < t))
                yield acc
        finally:
            self.reset()

    @torch.no_grad()
    def run(self, x: torch.Tensor, t: int, extra_t: int = 0) -> torch.Tensor:
        """Cumulative output sums after each step: [t + extra_t, B, classes] (for a structured
        output, the same structure with each tensor so stacked)."""
        t = check_int("Simulator.run", "t", t, 1, "input steps")
        extra_t = check_int("Simulator.run", "extra_t", extra_t, 0, "zero-input steps after the input")
        return stack_steps(list(self.iter_run(x, t, t + extra_t)))

    @torch.no_grad()
    def run_rows(self, x: torch.Tensor, rows: list[int], extra_t: int | None = None, *,
                 extra: int | None = None) -> dict[int, torch.Tensor]:
        """For each row t: cumulative sums at columns t..t+extra_t, [extra_t + 1, B, classes].
        (``extra`` is the old name of ``extra_t``, still accepted.)"""
        rows = check_rows("Simulator.run_rows", "rows", rows)
        extra_t, name = renamed("Simulator.run_rows", "extra_t", extra_t, "extra", extra, 0)
        extra_t = check_int("Simulator.run_rows", name, extra_t, 0, "zero-input steps after each row's input")
        out: dict[int, torch.Tensor] = {}
        trunk = sorted(t for t in rows if self.shares_trunk(t))
        if trunk:
            self.configure(max(trunk), cap_active=False)
            self.reset()
            acc = None
            for k in range(1, max(trunk) + 1):
                acc = accumulate(acc, self.step(x, drive=True))
                if k in trunk:
                    cols = [acc]
                    if extra_t:
                        snap = self.snapshot()
                        self.configure(k)  # the row's own cap (= t) for its extra steps
                        branch = acc
                        for _ in range(extra_t):
                            branch = accumulate(branch, self.step(x, drive=False))
                            cols.append(branch)
                        self.restore(snap)
                        self.configure(max(trunk), cap_active=False)
                    out[k] = stack_steps(cols)
        for t in rows:
            if t not in out:
                out[t] = select_steps(self.run(x, t, extra_t), slice(t - 1, None))
        self.reset()
        return out


class LogitsView:
    """A simulator as the metrics see it: the same runs, each output reduced to its classifier
    logits (:func:`logits_of`).  Everything else is the simulator's own."""

    def __init__(self, sim: Simulator):
        self.sim = sim

    def __getattr__(self, name: str):
        return getattr(self.sim, name)

    def iter_run(self, x: torch.Tensor, t: int, steps: int) -> Iterator[torch.Tensor]:
        with closing(self.sim.iter_run(x, t, steps)) as run:  # closing it resets the network
            for cum in run:
                yield logits_of(cum)

    def run(self, x: torch.Tensor, t: int, extra_t: int = 0) -> torch.Tensor:
        return logits_of(self.sim.run(x, t, extra_t))

    def run_rows(self, x: torch.Tensor, rows: list[int], extra_t: int = 0) -> dict[int, torch.Tensor]:
        return {t: logits_of(v) for t, v in self.sim.run_rows(x, rows, extra_t).items()}


def logits_view(sim) -> Any:
    """``sim`` seen through :class:`LogitsView` (once: a view is returned as is)."""
    return sim if isinstance(sim, LogitsView) else LogitsView(sim)


__all__ = ["LogitsView", "Simulator", "accumulate", "logits_of", "logits_view", "named_leaves", "select_steps",
           "stack_steps"]
