"""The accuracy–latency–energy frontier of one converted network across spike levels.

For each spike_levels m (the most spikes a neuron sends per step and sign; 1 is binary), each
row t (input steps) and the extra zero-input steps extra_t that help, one point: top-1 on the whole
test loader (:func:`ann2snn.metrics.evaluate_table`), total steps T = t + extra_t, the bits per step
log2(2m + 1) and the spike-step budget T × bits, and the energy per image measured by
:func:`ann2snn.energy.measure_energy` on the first batches, under both energy models (the
standard one against the fp32 ANN; the memory model against the equal-bit QNN, with spikes per
synapse and the break-even rate).  A point is on the Pareto front when
no other point has at least its accuracy at no more energy (one of them strictly better).

"Where extra steps help": a row's points are extra_t = 0 and the fewest extra steps that reach the
row's best accuracy over 0..extra_t (when that is more than 0).  Multi-level neurons follow
burst spikes (Li & Zeng, IJCAI 2022) and multi-threshold neurons (Huang et al., "ECMT",
ACM MM 2024); see :func:`ann2snn.neurons.signed_if_step`.

Measurement only: the simulator runs the network; tables and files are written by
:mod:`ann2snn.app.report`, the plot by :mod:`ann2snn.app.plots`.
"""
from __future__ import annotations

from torch import nn

from ann2snn._checks import check_rows, renamed
from ann2snn.energy import measure_energy
from ann2snn.metrics import evaluate_ann, evaluate_table
from ann2snn.neurons import bits_per_step
from ann2snn.results import Frontier, FrontierPoint


def levels_of(sim) -> int:
    """The largest trained L among the network's neurons (the L of ``spike_levels = L``)."""
    levels = [n.levels for n in sim.neurons if getattr(n, "levels", None)]
    if not levels:
        raise ValueError("the frontier needs a converted network whose neurons know their trained L "
                         "(a QCFS ANN converted by ann2snn.convert)")
    return max(levels)


def helpful_extra_t(top1: list[float], digits: int = 2) -> list[int]:
    """0, and the fewest extra steps reaching the row's best score (``top1``, or any figure where
    higher is better, rounded to ``digits``) when that is > 0."""
    best = max(round(a, digits) for a in top1)
    e_best = next(e for e, a in enumerate(top1) if round(a, digits) == best)
    return sorted({0, e_best})


def pareto_front(points: list[FrontierPoint], energy: str = "e_snn_mj") -> list[FrontierPoint]:
    """The points no other point beats: none has top-1 ≥ and ``energy`` ≤ with one strictly better
    (``energy``: the field to compare, ``e_snn_mj`` or the memory model's ``e_snn_memory_mj``)."""
    def beats(q, p) -> bool:
        eq, ep = getattr(q, energy), getattr(p, energy)
        return q.top1 >= p.top1 and eq <= ep and (q.top1 > p.top1 or eq < ep)

    return [p for p in points if not any(q is not p and beats(q, p) for q in points)]


def pareto(points: list[FrontierPoint]) -> None:
    """Mark each point ``pareto``: on the front of top-1 against the standard model's energy."""
    front = {id(p) for p in pareto_front(points)}
    for p in points:
        p.pareto = id(p) in front


def _arguments(sim, spike_levels, rows, extra_t, energy_batches, levels, extra) -> tuple:
    """:func:`frontier`'s arguments, checked, the old names accepted, the defaults filled in from
    the network's L: (L, spike_levels, rows, extra_t)."""
    if energy_batches is not None and energy_batches < 1:
        raise ValueError(f"energy_batches must be >= 1 (or None for the whole loader), got {energy_batches}")
    L = levels_of(sim)
    spike_levels, name = renamed("frontier", "spike_levels", spike_levels, "levels", levels,
                                 list(dict.fromkeys([1, 2, L])))
    extra_t, _ = renamed("frontier", "extra_t", extra_t, "extra", extra, L)
    rows = check_rows("frontier", "rows", list(range(1, 2 * L + 1)) if rows is None else rows)
    return L, check_rows("frontier", name, spike_levels, "spike levels m"), rows, extra_t


def frontier(model: nn.Module, sim, loader, spike_levels: list[int] | None = None, rows: list[int] | None = None,
             extra_t: int | None = None, energy_batches: int | None = 4, constants="fp32", first_layer: str = "once",
             *, levels: list[int] | None = None, extra: int | None = None, hardware=None, by: str = "top1") -> Frontier:
    """Points for every m in ``spike_levels`` (default 1, 2, L), t in ``rows`` (default 1..2L) and
    the helpful extra steps up to ``extra_t`` (default L) (see the module docstring).  ``sim`` is the converted
    network's :class:`~ann2snn.simulate.Simulator`; its spike_levels is restored afterwards.
    Returns a :class:`~ann2snn.results.Frontier`: ``ann``, ``L``, ``points``, ``spike_levels``,
    ``rows``, ``extra_t``, ``energy_images``, ``constants``, ``first_layer`` (``to_dict()`` names
    ``spike_levels`` "levels" and ``extra_t`` "extra", as the files do).  ``levels`` and ``extra``
    are the old names of ``spike_levels`` and ``extra_t``, still accepted.  ``hardware``: the
    second energy model's :class:`~ann2snn.energy.HardwareModel` (default: its defaults).  ``by``:
    the figure that picks each row's helpful extra steps, ``top1`` or ``loss`` (a language model:
    the extra steps that bring the perplexity down to its best, to 1e-4 nats)."""
    if by not in ("top1", "loss"):
        raise ValueError(f"frontier: by must be 'top1' or 'loss', got {by!r}")
    L, spike_levels, rows, extra_t = _arguments(sim, spike_levels, rows, extra_t, energy_batches, levels, extra)
    ann = evaluate_ann(model, loader)
    points: list[FrontierPoint] = []
    was = sim.spike_levels
    images = 0
    try:
        for m in spike_levels:
            sim.spike_levels = m
            table = evaluate_table(sim, loader, rows, extra_t)
            bits = bits_per_step(m)
            for t in rows:
                top1 = table[t].top1
                helpful = (helpful_extra_t(top1) if by == "top1" else
                           helpful_extra_t([-v for v in table[t].loss], digits=4))
                for e in helpful:
                    en = measure_energy(model, sim, loader, t, e, constants, energy_batches, first_layer,
                                        hardware=hardware)
                    tot, hw = en.totals.to_dict(), en.hardware
                    images = tot["images"]
                    points.append(FrontierPoint(
                        spike_levels=m, t=t, extra_t=e, steps=t + e, bits_per_step=bits,
                        bit_steps=(t + e) * bits, top1=top1[e], top5=table[t].top5[e],
                        delta_top1=top1[e] - ann.top1, e_snn_mj=tot["e_snn_mj"],
                        e_ann_mj=tot["e_ann_mj"], ann_snn_ratio=tot["ann_snn_ratio"],
                        non_spike_share=tot["non_spike_share"], mean_rate=tot["mean_rate"],
                        sops=tot["sops"], e_snn_memory_mj=hw.e_snn_mj, e_qnn_mj=hw.e_qnn_mj,
                        qnn_snn_ratio=hw.qnn_snn_ratio, spikes_per_synapse=hw.spikes_per_synapse,
                        break_even_rate=hw.break_even_rate, loss=table[t].loss[e]))
    finally:
        sim.spike_levels = was
    pareto(points)
    return Frontier(ann=ann, L=L, spike_levels=list(spike_levels), rows=list(rows), extra_t=extra_t, points=points,
                    energy_images=images, constants=constants if isinstance(constants, str) else str(constants),
                    first_layer=first_layer)


__all__ = ["frontier", "helpful_extra_t", "levels_of", "pareto", "pareto_front"]
