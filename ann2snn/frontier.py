"""The accuracy–latency–energy frontier of one converted network across spike levels.

For each spike_levels m (the most spikes a neuron sends per step and sign; 1 is binary), each
row t (input steps) and the extra zero-input steps that help, one point: top-1 on the whole test
loader (:func:`ann2snn.metrics.evaluate_table`), total steps T = t + e, the bits per step
log2(2m + 1) and the spike-step budget T × bits, and the energy per image measured by
:func:`ann2snn.energy.measure_energy` on the first batches.  A point is on the Pareto front when
no other point has at least its accuracy at no more energy (one of them strictly better).

"Where extra steps help": a row's points are e = 0 and the fewest extra steps that reach the
row's best accuracy over e = 0..extra (when that is more than 0).  Multi-level neurons follow
burst spikes (Li & Zeng, IJCAI 2022) and multi-threshold neurons (Huang et al., "ECMT",
ACM MM 2024); see :func:`ann2snn.neurons.signed_if_step`.

Measurement only: the simulator runs the network; tables and files are written by
:mod:`ann2snn.app.report`, the plot by :mod:`ann2snn.app.plots`.
"""
from __future__ import annotations

from torch import nn

from ann2snn.energy import measure_energy
from ann2snn.metrics import evaluate_ann, evaluate_table
from ann2snn.neurons import bits_per_step


def levels_of(sim) -> int:
    """The largest trained L among the network's neurons (the L of ``spike_levels = L``)."""
    levels = [n.levels for n in sim.neurons if getattr(n, "levels", None)]
    if not levels:
        raise ValueError("the frontier needs a converted network whose neurons know their trained L "
                         "(a QCFS ANN converted by ann2snn.convert)")
    return max(levels)


def helpful_extras(top1: list[float]) -> list[int]:
    """0, and the fewest extra steps reaching the row's best top-1 (rounded to 0.01) when that is > 0."""
    best = max(round(a, 2) for a in top1)
    e_best = next(e for e, a in enumerate(top1) if round(a, 2) == best)
    return sorted({0, e_best})


def pareto(points: list[dict]) -> None:
    """Mark each point ``pareto``: no other point has top-1 ≥ and energy ≤ with one strictly better."""
    for p in points:
        p["pareto"] = not any(
            q is not p and q["top1"] >= p["top1"] and q["e_snn_mj"] <= p["e_snn_mj"]
            and (q["top1"] > p["top1"] or q["e_snn_mj"] < p["e_snn_mj"]) for q in points)


def frontier(model: nn.Module, sim, loader, levels: list[int], rows: list[int], extra: int,
             energy_batches: int | None = 4, constants="fp32", first_layer: str = "once") -> dict:
    """Points for every m in ``levels``, t in ``rows`` and helpful e ≤ ``extra`` (see the module
    docstring).  ``sim`` is the converted network's :class:`~ann2snn.simulate.Simulator`; its
    spike_levels is restored afterwards.  Returns ``{"ann", "L", "points", "levels", "rows",
    "extra", "energy_images"}``."""
    if energy_batches is not None and energy_batches < 1:
        raise ValueError(f"energy_batches must be >= 1 (or None for the whole loader), got {energy_batches}")
    L = levels_of(sim)
    ann = evaluate_ann(model, loader)
    points: list[dict] = []
    was = sim.spike_levels
    images = 0
    try:
        for m in levels:
            sim.spike_levels = m
            table = evaluate_table(sim, loader, rows, extra)
            bits = bits_per_step(m)
            for t in rows:
                top1 = table[t]["top1"]
                for e in helpful_extras(top1):
                    en = measure_energy(model, sim, loader, t, e, constants, energy_batches, first_layer)
                    tot = en.totals.to_dict()
                    images = tot["images"]
                    points.append({
                        "spike_levels": m, "t": t, "extra_t": e, "steps": t + e, "bits_per_step": bits,
                        "bit_steps": (t + e) * bits, "top1": top1[e], "top5": table[t]["top5"][e],
                        "delta_top1": top1[e] - ann["top1"], "e_snn_mj": tot["e_snn_mj"],
                        "e_ann_mj": tot["e_ann_mj"], "ann_snn_ratio": tot["ann_snn_ratio"],
                        "non_spike_share": tot["non_spike_share"], "mean_rate": tot["mean_rate"],
                        "sops": tot["sops"]})
    finally:
        sim.spike_levels = was
    pareto(points)
    return {"ann": ann, "L": L, "levels": list(levels), "rows": list(rows), "extra": extra, "points": points,
            "energy_images": images, "constants": constants if isinstance(constants, str) else str(constants),
            "first_layer": first_layer}


def parse_levels(text: str, L: int) -> list[int]:
    """'1,2,L' → [1, 2, L] (L: the network's trained levels; also 'L/2'); duplicates dropped, order kept."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if part.upper() == "L":
                m = L
            elif part.upper().startswith("L/"):
                m = max(1, L // int(part[2:]))
            else:
                m = int(part)
        except ValueError:
            raise ValueError(f"spike levels must be whole numbers, L or L/k, separated by commas (e.g. 1,2,L); "
                             f"got {part!r}") from None
        if m < 1:
            raise ValueError(f"spike levels must be >= 1, got {m}")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("no spike levels given (e.g. --levels 1,2,L)")
    return out


__all__ = ["frontier", "helpful_extras", "levels_of", "pareto", "parse_levels"]
