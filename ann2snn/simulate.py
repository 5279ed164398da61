"""The time-step runner: the one place where SNN time advances and state is reset.

Schedule (the original's): the analog image is fed for ``t`` drive steps, then zeros for
``extra_t`` steps; the network's per-step outputs are summed and divided by ``t``.  Every
accuracy for steps 1..t+extra_t comes from the cumulative outputs of one pass.

Accuracy tables (rows t, columns t + e, SPEC §6) share work: rows whose neurons have the same
threshold (1) share a trunk pass; after step t the state is snapshotted, the row's extra steps
run with cap = t from the snapshot, and the trunk resumes.  A T × E table then costs T + T·E
steps instead of Σ(t + E) for one pass per row.  Rows with level-matched thresholds (t/L under
the ``exact`` preset, which differ per row; row L has threshold 1) get one pass each.

Tensors over time are [T, B, ...].
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import base, functional
from torch import nn

from ann2snn.convert import SpikingNetwork
from ann2snn.distributed import reduce_counts
from ann2snn.neurons import Clock
from ann2snn.progress import progress

log = logging.getLogger("ann2snn")


# --------------------------------------------------------------------------------------------
class Simulator:
    """Steps a :class:`SpikingNetwork`, owning its clock, neuron parameters and resets."""

    def __init__(self, snn: SpikingNetwork):
        self.snn = snn.eval()
        self.neurons = snn.neurons()
        self.memory_modules = [m for m in snn.modules() if isinstance(m, base.MemoryModule)]

    # -- neuron parameters for a row t ---------------------------------------------------------
    def neuron_params(self, neuron, t: int) -> tuple[float, float]:
        """(threshold in units of λ, cap) of ``neuron`` for t drive steps."""
        if self.snn.options.level_matched and neuron.levels:
            return t / neuron.levels, float(neuron.levels)
        return 1.0, float(t)

    def configure(self, t: int, cap_active: bool = True) -> None:
        for nrn in self.neurons:
            nrn.theta, cap = self.neuron_params(nrn, t)
            nrn.cap = cap if cap_active else math.inf

    def shares_trunk(self, t: int) -> bool:
        """True when row t's neurons have threshold 1, so its first t steps equal the trunk's."""
        return all(self.neuron_params(n, t)[0] == 1.0 for n in self.neurons)

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
    def run(self, x: torch.Tensor, t: int, extra_t: int = 0) -> torch.Tensor:
        """Cumulative output sums after each step: [t + extra_t, B, classes]."""
        self.configure(t)
        self.reset()
        outs, acc = [], None
        for k in range(t + extra_t):
            y = self.step(x, drive=k < t)
            acc = y if acc is None else acc + y
            outs.append(acc)
        self.reset()
        return torch.stack(outs)

    @torch.no_grad()
    def run_rows(self, x: torch.Tensor, rows: list[int], extra: int) -> dict[int, torch.Tensor]:
        """For each row t: cumulative sums at columns t..t+extra, [extra + 1, B, classes]."""
        out: dict[int, torch.Tensor] = {}
        trunk = sorted(t for t in rows if self.shares_trunk(t))
        if trunk:
            self.configure(max(trunk), cap_active=False)
            self.reset()
            acc = None
            for k in range(1, max(trunk) + 1):
                y = self.step(x, drive=True)
                acc = y if acc is None else acc + y
                if k in trunk:
                    cols = [acc]
                    if extra:
                        snap = self.snapshot()
                        self.configure(k)  # the row's own cap (= t) for its extra steps
                        branch = acc
                        for _ in range(extra):
                            branch = branch + self.step(x, drive=False)
                            cols.append(branch)
                        self.restore(snap)
                        self.configure(max(trunk), cap_active=False)
                    out[k] = torch.stack(cols)
        for t in rows:
            if t not in out:
                out[t] = self.run(x, t, extra)[t - 1:]
        self.reset()
        return out


# --------------------------------------------------------------------------------------------
@dataclass
class Counts:
    """Running correct-counts and summed loss over a data set, per step or per cell."""

    n: int = 0
    top1: list[int] = field(default_factory=list)
    top5: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def add(self, cum: torch.Tensor, y: torch.Tensor, divisor: float | list[float]) -> None:
        """``cum``: [S, B, C] cumulative outputs; ``divisor``: per-step averaging factor(s)."""
        S = cum.shape[0]
        divs = divisor if isinstance(divisor, list) else [divisor] * S
        if not self.top1:
            self.top1, self.top5, self.loss = [0] * S, [0] * S, [0.0] * S
        k = min(5, cum.shape[-1])
        top = cum.topk(k, dim=-1).indices  # [S, B, k]
        hit = top == y.view(1, -1, 1)
        for s in range(S):
            self.top1[s] += int(hit[s, :, 0].sum())
            self.top5[s] += int(hit[s].any(-1).sum())
            self.loss[s] += float(F.cross_entropy(cum[s] / divs[s], y, reduction="sum"))
        self.n += y.shape[0]

    def merge(self, other: "Counts") -> None:
        """Add counts from another shard (e.g. another rank)."""
        if not self.top1:
            self.top1, self.top5, self.loss = [0] * len(other.top1), [0] * len(other.top1), [0.0] * len(other.top1)
        self.n += other.n
        self.top1 = [a + b for a, b in zip(self.top1, other.top1)]
        self.top5 = [a + b for a, b in zip(self.top5, other.top5)]
        self.loss = [a + b for a, b in zip(self.loss, other.loss)]

    def percents(self) -> dict[str, list[float]]:
        n = max(self.n, 1)
        return {"top1": [100.0 * c / n for c in self.top1], "top5": [100.0 * c / n for c in self.top5],
                "loss": [c / n for c in self.loss]}


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate_ann(model: nn.Module, loader, desc: str = "ANN") -> dict[str, float]:
    """Top-1/top-5 (percent) and mean cross-entropy of an ANN."""
    model.eval()
    dev, counts = _device_of(model), Counts()
    for x, y in progress(loader, desc=desc):
        x, y = x.to(dev), y.to(dev)
        counts.add(model(x).unsqueeze(0), y, 1.0)
    reduce_counts(counts, loader, 1)  # sum over torchrun ranks when the loader is sharded
    p = counts.percents()
    return {"top1": p["top1"][0], "top5": p["top5"][0], "loss": p["loss"][0], "n": counts.n}


def count_snn(sim: Simulator, loader, t: int, extra_t: int = 0, desc: str = "SNN") -> Counts:
    dev, counts = _device_of(sim.snn), Counts()
    for x, y in progress(loader, desc=desc):
        x, y = x.to(dev), y.to(dev)
        counts.add(sim.run(x, t, extra_t), y, float(t))
    return reduce_counts(counts, loader, t + extra_t)


def evaluate_snn(sim: Simulator, loader, t: int, extra_t: int = 0) -> dict:
    """Per-step top-1/top-5/loss (percent / nats) for steps 1..t+extra_t, from one pass a batch."""
    p = count_snn(sim, loader, t, extra_t, desc=f"SNN t={t}+{extra_t}").percents()
    return {"t": t, "extra_t": extra_t, **p}


def count_table(sim: Simulator, loader, rows: list[int], extra: int) -> dict[int, Counts]:
    dev = _device_of(sim.snn)
    counts = {t: Counts() for t in rows}
    for x, y in progress(loader, desc=f"table t={min(rows)}..{max(rows)} +0..{extra}"):
        x, y = x.to(dev), y.to(dev)
        for t, cum in sim.run_rows(x, rows, extra).items():
            counts[t].add(cum, y, float(t))
    for t in rows:
        reduce_counts(counts[t], loader, extra + 1)
    return counts


def evaluate_table(sim: Simulator, loader, rows: list[int], extra: int) -> dict[int, dict]:
    """{t: {"cols": [t..t+extra], "top1": [...], "top5": [...], "loss": [...]}}."""
    out = {}
    for t, c in count_table(sim, loader, rows, extra).items():
        out[t] = {"cols": list(range(t, t + extra + 1)), **c.percents()}
    return out


class DirectNetwork(nn.Module):
    """A directly trained SNN (registry kind ``direct``) behind the SpikingNetwork protocol.

    No conversion: ``net`` is the model's stepwise copy (one time step per call, neuron state kept
    between calls; see ``ann2snn.models.spikformer.DirectSNN``).  Its LIF neurons keep their
    trained thresholds, so there is nothing to configure per row (``neurons()`` is empty) and the
    clock only counts steps.  Input fed on extra steps is zeros, as for converted networks.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.net, self.clock = model.stepwise_copy(), Clock()
        self.options = SimpleNamespace(level_matched=False)
        self.report: dict[str, list[str]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def neurons(self) -> list:
        return []


def simulator_for(model: nn.Module, cfg) -> Simulator:
    """The simulator for a trained model: converted with ``cfg.preset`` when it is a QCFS ANN,
    stepped as trained (no conversion; ``preset`` does not apply) when it is a direct SNN."""
    from ann2snn.convert import convert
    from ann2snn.models import model_kind

    if model_kind(cfg.model) == "convertible":
        return Simulator(convert(model, cfg.preset))
    log.info("%s is a directly trained SNN: evaluated step by step as trained, no conversion "
             "(preset %r does not apply)", cfg.model, cfg.preset)
    return Simulator(DirectNetwork(model))
