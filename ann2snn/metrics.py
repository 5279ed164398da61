"""Per-step metrics of an SNN run: correct counts, losses, k-step curves, tables, effective latency.

What each figure means (all accuracies in percent, losses in nats, over the whole loader):

- **Within a run** (``within_run``): a run has thresholds set for ``t`` drive steps (under the
  ``exact`` preset, t/L in units of λ) and lasts S = t + extra_t steps.  The figure at step s is
  the cumulative output after step s of *that* run.  Its loss is the cross-entropy of the prefix's
  running mean as the schedule defines it: the sum so far divided by the drive steps so far,
  min(s, t) (the output of a t-step run is its sum divided by t; before step t fewer inputs have
  arrived).  Under ``exact``, step s < t of a t-step run is *not* the accuracy of an s-step run:
  its neurons still integrate towards a threshold set for t.
- **k-step runs** (``k_step``): for every k = 1..t the accuracy of a run of its own with k drive
  steps (thresholds set for k), then extra_t zero steps.  This is the accuracy-versus-latency
  curve, and equals the table's cell (k, k + extra_t).  Under ``rate`` and ``per_step`` (threshold 1
  everywhere) and for directly trained SNNs a k-step run *is* the first k steps of the t-step
  run, so without extra steps the two listings coincide and one pass gives both; under ``exact``
  every k needs a pass of its own.
- **Tables** (:func:`evaluate_table`): rows t, columns t + extra_t, each cell the output of a t-step
  run after extra_t zero-input steps, divided by t.
- **Effective latency** (:func:`effective_latency`): the first step after which the predictions of
  at least 99.9 % of the samples no longer change, observed over the run (optionally continued
  with zero input beyond t + extra_t).  A sample whose prediction still changed at the last
  observed step has not been seen to settle; when such samples decide the quantile the latency is
  reported as *not settled within S steps*, never as S.

Under torchrun, counts are summed over the ranks' shards (:meth:`Counts.sum_over_ranks`)
and the settle steps gathered, so every figure covers the whole test set.  Results are typed
(:mod:`ann2snn.results`); ``to_dict()`` gives the plain dicts the files are written from.
"""
from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ann2snn import shards
from ann2snn._checks import check_int, check_rows, check_run_args, check_simulator, renamed
from ann2snn.progress import progress
from ann2snn.results import Accuracy, Evaluation, KStep, Latency, SnnSteps, Table, TableRow, WithinRun
from ann2snn.simulate import logits_of, logits_view

LATENCY_FRACTION = 0.999
# An evaluation that runs more simulation steps per batch than this says so up front and shows
# its progress per k-step run (under `exact`, t = 1000 runs 1 + 2 + … + 1000 = 500 500 steps per
# batch: hours with no sign of life otherwise).  Off a terminal, at most one line per
# PROGRESS_EVERY_S seconds (tqdm redraws a bar on a terminal).
LONG_RUN_STEPS = 10_000
PROGRESS_EVERY_S = 10.0
log = logging.getLogger("ann2snn")


@dataclass
class Counts:
    """Running correct-counts and summed loss over a data set, per step or per cell."""

    n: int = 0
    top1: list[int] = field(default_factory=list)
    top5: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def add(self, cum: torch.Tensor, y: torch.Tensor, divisor: float | list[float]) -> None:
        """``cum``: [S, B, C] cumulative outputs; ``divisor``: the averaging factor of each of the
        S entries (one number for all), applied before the cross-entropy."""
        S = cum.shape[0]
        divs = list(divisor) if isinstance(divisor, (list, tuple)) else [divisor] * S
        if len(divs) != S:
            raise ValueError(f"Counts.add: {len(divs)} divisors for {S} steps")
        if not self.top1:
            self.top1, self.top5, self.loss = [0] * S, [0] * S, [0.0] * S
        cum, y = per_target(cum, y)
        k = min(5, cum.shape[-1])
        top = cum.topk(k, dim=-1).indices  # [S, N, k]
        hit = top == y.view(1, -1, 1)
        for s in range(S):
            self.top1[s] += int(hit[s, :, 0].sum())
            self.top5[s] += int(hit[s].any(-1).sum())
            self.loss[s] += float(F.cross_entropy(cum[s] / divs[s], y, reduction="sum"))
        self.n += y.shape[0]

    def sum_over_ranks(self, loader, steps: int) -> "Counts":
        """Sum the counts over torchrun ranks, in place, when ``loader`` is sharded
        (:mod:`ann2snn.shards`); ``steps`` is the number of per-step entries (a rank may have seen
        no batch).  Correct counts are integers, so the sum equals the single-process count."""
        if not shards.is_sharded(loader):
            return self
        if not self.top1:
            self.top1, self.top5, self.loss = [0] * steps, [0] * steps, [0.0] * steps
        ints = shards.sum_ints([self.n, *self.top1, *self.top5])
        self.n, self.top1, self.top5 = ints[0], ints[1:1 + steps], ints[1 + steps:]
        self.loss = shards.sum_floats(self.loss)
        return self

    def percents(self) -> dict[str, list[float]]:
        n = max(self.n, 1)
        return {"top1": [100.0 * c / n for c in self.top1], "top5": [100.0 * c / n for c in self.top5],
                "loss": [c / n for c in self.loss]}

    def accuracy(self, n: int | None = None) -> Accuracy:
        """The single-entry counts (an ANN's) as an :class:`~ann2snn.results.Accuracy` of ``n`` samples."""
        p = self.percents()
        return Accuracy(p["top1"][0], p["top5"][0], p["loss"][0], n)


def per_target(cum: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and targets as one row per scored target: [S, B, C] and [B] as they are; a sequence
    model's [S, B, L, V] and [B, L] (next-token targets) as [S, B·L, V] and [B·L], so that every
    token counts once: top-1 is next-token accuracy, the loss the per-token cross-entropy (nats)
    and exp(loss) the perplexity.  Targets of −100 (padding, PyTorch's ``ignore_index``) are
    left out."""
    if cum.dim() > 3:
        cum, y = cum.flatten(1, -2), y.flatten()
    if y.shape[0] != cum.shape[1]:
        raise ValueError(f"the network gives {cum.shape[1]} scored rows ({list(cum.shape[1:])}) for "
                         f"{y.shape[0]} targets; a sequence model's targets are [B, L] for its [B, L, V] output")
    keep = y != -100
    if not bool(keep.all()):
        cum, y = cum[:, keep], y[keep]
    return cum, y


def predictions(cum: torch.Tensor) -> torch.Tensor:
    """The predicted class of every scored target of a cumulative output: [B] for [B, C], [B·L]
    for a sequence model's [B, L, V] (see :func:`per_target`)."""
    return cum.argmax(-1).flatten()


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def step_divisors(t: int, steps: int) -> list[float]:
    """The schedule's averaging factor after each of ``steps`` steps of a t-step run: the drive
    steps so far, min(s, t) (the original divides the final sum by t)."""
    return [float(min(s, t)) for s in range(1, steps + 1)]


# --------------------------------------------------------------------------------------------
# effective latency
def settle_steps(preds: torch.Tensor) -> torch.Tensor:
    """[S, B] predicted classes per step → per sample the first step (1-based) from which the
    prediction never changes again within the S steps.  A value of S (for S > 1) means the
    prediction changed at the last step: the sample has not been seen to settle."""
    S = preds.shape[0]
    if S <= 1:
        return torch.ones(preds.shape[1], dtype=torch.long, device=preds.device)
    changed = preds[1:] != preds[:-1]  # [S-1, B]: the prediction changes at step s (2..S)
    steps = torch.arange(2, S + 1, device=preds.device).view(-1, 1)
    return torch.where(changed, steps, torch.ones_like(steps)).amax(0)


def effective_latency(settle: torch.Tensor, steps: int, fraction: float = LATENCY_FRACTION) -> Latency:
    """The first step after which the predictions of ≥ ``fraction`` of the samples no longer
    change, over a run of ``steps`` observed steps.

    Returns a :class:`~ann2snn.results.Latency` (``steps``: L or None, ``settled``,
    ``observed_steps``, ``fraction``, ``unsettled_fraction``: the share of samples whose prediction
    still changed at the last observed step).  When the quantile falls on such a sample,
    ``settled`` is False and ``steps`` None: the run was too short to tell (continue it with zero
    input to find out).
    """
    n = settle.numel()
    unsettled = float((settle == steps).sum()) / n if n and steps > 1 else 0.0
    out = Latency(None, False, int(steps), fraction, unsettled)
    if n == 0:
        return out
    s = settle.sort().values
    q = int(s[max(math.ceil(fraction * n) - 1, 0)])
    if steps <= 1 or q < steps:
        out.steps, out.settled = q, True
    return out


def latency_text(lat: Latency | dict | None) -> str:
    """One phrase for an :func:`effective_latency` result (or its dict, as an energy result holds it)."""
    if not lat:
        return "effective latency: not measured"
    return (Latency.from_dict(lat) if isinstance(lat, dict) else lat).text()


# --------------------------------------------------------------------------------------------
# evaluation
@torch.no_grad()
def evaluate_ann(model: nn.Module, loader, desc: str = "ANN") -> Accuracy:
    """Top-1/top-5 (percent), mean cross-entropy and sample count of an ANN (or of a direct SNN
    as trained), as an :class:`~ann2snn.results.Accuracy`."""
    model.eval()
    dev, counts = device_of(model), Counts()
    for x, y in progress(loader, desc=desc):
        x, y = x.to(dev), y.to(dev)
        counts.add(logits_of(model(x)).unsqueeze(0), y, 1.0)
    counts.sum_over_ranks(loader, 1)  # sum over torchrun ranks when the loader is sharded
    return counts.accuracy(counts.n)


class _Logits(nn.Module):
    """An ANN as the metrics see it: its forward reduced to the logits (:func:`logits_of`)."""

    def __init__(self, ann: nn.Module):
        super().__init__()
        self.ann = ann

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.ann(x))


def _evaluate_args(sim, ann, t, extra_t, latency_extra, max_batches) -> tuple:
    """:func:`evaluate`'s arguments, checked, with the simulator and the ANN seen through their
    logits (:func:`ann2snn.simulate.logits_of`: a model may return a tuple, dict or ModelOutput)."""
    t, extra_t, latency_extra, max_batches = check_run_args("evaluate", sim, t, extra_t, latency_extra, max_batches)
    return logits_view(sim), (None if ann is None else _Logits(ann)), t, extra_t, latency_extra, max_batches


def _paused(meter):
    return meter.paused() if meter is not None else nullcontext()


def _k_step_groups(sim, t: int) -> list[list[int]]:
    """The k-step runs k = 1..t-1 as ``sim.run_rows`` calls: the rows that share one trunk pass in
    one call (split, the trunk would run again for each), every other row in a call of its own
    (a run of its own anyway: the same results), so that progress can be shown between them."""
    ks = list(range(1, t))
    shares = getattr(sim, "shares_trunk", None)
    if shares is None or not ks:
        return [ks] if ks else []
    trunk = [k for k in ks if shares(k)]
    in_trunk = set(trunk)
    return ([trunk] if trunk else []) + [[k] for k in ks if k not in in_trunk]


def _k_step_plan(sim, t: int, extra_t: int, steps: int, separate: bool, label: str) -> tuple[list[list[int]], bool]:
    """(the k-step runs' groups, long?) of an evaluation whose t-step run has ``steps`` steps;
    ``separate``: the k-step runs are not prefixes of it.  A long one (over LONG_RUN_STEPS
    simulation steps per batch) is announced in the log with its count."""
    groups = _k_step_groups(sim, t) if separate else []
    per_batch = steps + sum(max(g) + len(g) * extra_t for g in groups)
    long = per_batch > LONG_RUN_STEPS
    if long:
        log.info("%s: %d simulation steps per batch (the %d-step run, and the k-step runs k = 1..%d); progress "
                 "is shown per k-step run", label, per_batch, steps, t - 1)
    return groups, long


def _add_k_step_rows(sim, x, y, cum, rows: dict, groups: list[list[int]], t: int, extra_t: int, meter,
                     desc: str | None) -> None:
    """Add batch ``x``'s k-step figures to ``rows``: row t from ``cum`` (the t-step run's
    cumulative outputs), the others from the same run when ``groups`` is empty (they are its
    prefixes), else from the runs of ``groups`` (not metered), with progress titled ``desc``
    between them unless ``desc`` is None."""
    rows[t].add(cum[[t - 1, cum.shape[0] - 1]], y, [float(t)] * 2)
    if not groups:
        for k in range(1, t):
            rows[k].add(cum[[k - 1, k - 1]], y, [float(k)] * 2)
        return
    runs = groups if desc is None else progress(groups, desc=desc, every_s=PROGRESS_EVERY_S, unit="k-step runs")
    with _paused(meter):
        for group in runs:
            for k, c in sim.run_rows(x, group, extra_t).items():
                rows[k].add(c[[0, -1]], y, [float(k)] * 2)


@torch.no_grad()
def evaluate(sim, loader, t: int, extra_t: int = 0, *, k_step: bool = True, ann: nn.Module | None = None,
             meter=None, latency_extra: int = 0, max_batches: int | None = None, desc: str = "SNN") -> Evaluation:
    """Everything one evaluation of a converted (or direct) SNN reports, in one loop over ``loader``.

    Per batch: the ANN (when given), the t-step run with ``extra_t`` extra steps (observed by
    ``meter``, an :class:`~ann2snn.energy.EnergyMeter`, when given), continued for
    ``latency_extra`` more zero-input steps that only the effective latency sees, and, with
    ``k_step``, the k-step runs k = 1..t-1 (not metered).  Returns an
    :class:`~ann2snn.results.Evaluation`: ``n``, ``ann`` (an Accuracy, or None),
    ``within_run`` (steps 1..S), ``k_step`` (k = 1..t, after their extra_t steps and without
    them; None without ``k_step``), ``k_step_is_prefix``, ``spike_levels``, ``bits_per_step`` and
    ``effective_latency`` (see the module docstring for what each figure means; structured
    outputs: on their logits).  ``to_dict()`` gives the plain dict.
    """
    sim, ann, t, extra_t, latency_extra, max_batches = _evaluate_args(sim, ann, t, extra_t, latency_extra, max_batches)
    dev, steps = device_of(sim.snn), t + extra_t
    prefix = sim.k_step_runs_share_one_pass(t)
    ann_counts, within = (None if ann is None else Counts()), Counts()
    rows = {k: Counts() for k in range(1, t + 1)} if k_step else {}
    label = f"{desc} t={t}+{extra_t}"
    groups, long = _k_step_plan(sim, t, extra_t, steps + latency_extra, k_step and not (prefix and extra_t == 0),
                                label)
    settle: list[torch.Tensor] = []
    if ann is not None:
        ann.eval()
    for i, (x, y) in enumerate(progress(loader, desc=label)):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(dev), y.to(dev)
        if ann is not None:
            with _paused(meter):
                ann_counts.add(ann(x).unsqueeze(0), y, 1.0)
        cum, batch_settle = _observe_run(sim, x, t, steps, latency_extra, meter)
        within.add(cum, y, step_divisors(t, steps))
        settle.append(batch_settle)
        if k_step:
            title = f"{label} batch {i + 1}" if long else None
            _add_k_step_rows(sim, x, y, cum, rows, groups, t, extra_t, meter, title)
    return _evaluation(sim, loader, ann_counts, within, rows, settle, (t, extra_t, latency_extra), prefix)


def _observe_run(sim, x, t: int, steps: int, latency_extra: int, meter) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``x``'s t-step run: (its cumulative outputs after each of its ``steps`` steps,
    [steps, B, C]; each sample's settle step over ``steps + latency_extra`` observed steps, on the
    CPU).  ``meter`` sees the ``steps`` only, not the latency-only steps after them."""
    cums, preds = [], []
    try:
        for s, cum in enumerate(sim.iter_run(x, t, steps + latency_extra), 1):
            preds.append(predictions(cum))
            if s <= steps:
                cums.append(cum)
            if s == steps and latency_extra and meter is not None:
                meter.pause()  # the latency-only steps are not part of the measured run
    finally:
        if meter is not None:
            meter.resume()
    return torch.stack(cums), settle_steps(torch.stack(preds)).cpu()


def _evaluation(sim, loader, ann_counts: Counts | None, within: Counts, rows: dict[int, Counts],
                settle: list[torch.Tensor], run: tuple[int, int, int], prefix: bool) -> Evaluation:
    """:func:`evaluate`'s result from its counts, summed over torchrun ranks (every rank makes
    the same collective calls in the same order: a rank may have had no batch); ``run``: (t,
    extra_t, latency_extra)."""
    t, extra_t, latency_extra = run
    steps = t + extra_t
    local = torch.cat(settle) if settle else torch.zeros(0, dtype=torch.long)
    all_settle = torch.cat(shards.gather_objects(local)) if shards.is_sharded(loader) else local
    if not all_settle.numel():
        raise ValueError("evaluate: the loader yielded no batch")
    within.sum_over_ranks(loader, steps)
    for c in rows.values():
        c.sum_over_ranks(loader, 2)
    bits = getattr(sim, "bits_per_step", math.log2(3))
    ann = None if ann_counts is None else ann_counts.sum_over_ranks(loader, 1).accuracy()
    return Evaluation(
        n=within.n, ann=ann, k_step=_k_step_result(rows, extra_t, bits) if rows else None, k_step_is_prefix=prefix,
        spike_levels=getattr(sim, "spike_levels", 1), bits_per_step=bits,
        within_run=WithinRun(list(range(1, steps + 1)), [s * bits for s in range(1, steps + 1)], **within.percents()),
        effective_latency=effective_latency(all_settle, steps + latency_extra))


def _k_step_result(rows: dict[int, Counts], extra_t: int, bits: float) -> KStep:
    """The k-step figures: entry 1 of each row's counts is after its extra_t steps, entry 0 at k."""
    per = {k: c.percents() for k, c in sorted(rows.items())}
    ks = sorted(per)
    figures = {}
    for m in ("top1", "top5", "loss"):
        figures[m] = [per[k][m][1] for k in ks]
        figures[f"{m}_no_extra"] = [per[k][m][0] for k in ks]
    return KStep(k=ks, total_steps=[k + extra_t for k in ks], bit_steps=[(k + extra_t) * bits for k in ks], **figures)


def evaluate_snn(sim, loader, t: int, extra_t: int = 0) -> SnnSteps:
    """Within-run per-step top-1/top-5/loss for steps 1..t+extra_t of one t-step run (one pass a
    batch), as a :class:`~ann2snn.results.SnnSteps` (``t``, ``extra_t``, ``steps``, ``top1`` …).
    See :func:`evaluate` for the k-step curve."""
    within = evaluate(sim, loader, t, extra_t, k_step=False).within_run
    return SnnSteps(t, extra_t, **within.to_dict())


def count_table(sim, loader, rows: list[int], extra_t: int) -> dict[int, Counts]:
    dev = device_of(sim.snn)
    counts = {t: Counts() for t in rows}
    for x, y in progress(loader, desc=f"table t={min(rows)}..{max(rows)} +0..{extra_t}"):
        x, y = x.to(dev), y.to(dev)
        for t, cum in sim.run_rows(x, rows, extra_t).items():
            counts[t].add(cum, y, float(t))
    for t in rows:
        counts[t].sum_over_ranks(loader, extra_t + 1)
    return counts


def evaluate_table(sim, loader, rows: list[int], extra_t: int | None = None, *, extra: int | None = None) -> Table:
    """The t × (t + extra_t) table, a :class:`~ann2snn.results.Table` of rows by t, each with
    ``cols`` [t..t+extra_t], ``bit_steps``, ``top1``, ``top5`` and ``loss``: cell (t, t + e) is a
    t-step run after e zero-input steps, its sum divided by t, and its spike-step budget is
    (t + e) × log2(2m + 1) bits for the simulator's spike_levels m.  ``rows`` must list at least
    one t ≥ 1 and ``extra_t`` be ≥ 0 (default 0; else ValueError / TypeError).  ``extra`` is the
    old name of ``extra_t``, still accepted."""
    rows = check_rows("evaluate_table", "rows", rows)
    extra_t, name = renamed("evaluate_table", "extra_t", extra_t, "extra", extra, 0)
    extra_t = check_int("evaluate_table", name, extra_t, 0, "zero-input steps after each row's input")
    sim = logits_view(check_simulator("evaluate_table", sim))
    bits = getattr(sim, "bits_per_step", math.log2(3))
    table = Table()
    for t, c in count_table(sim, loader, rows, extra_t).items():
        cols = list(range(t, t + extra_t + 1))
        table.rows[t] = TableRow(cols, [col * bits for col in cols], **c.percents())
    return table


__all__ = ["Counts", "LATENCY_FRACTION", "device_of", "per_target", "predictions", "effective_latency", "evaluate", "evaluate_ann",
           "evaluate_snn", "evaluate_table", "latency_text", "settle_steps", "step_divisors"]
