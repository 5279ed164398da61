"""PNG plots of conversion results, drawn from the same results that are written as JSON.

- :func:`plot_accuracy`: SNN top-1 of the k-step runs and within the t-step run, the ANN as a
  horizontal line, the effective latency marked (``convert``'s result document,
  :func:`ann2snn.app.report.convert_result`).
- :func:`plot_table_heatmap`: the t × (t + extra_t) accuracy table as an annotated heatmap
  (``evaluate_table``'s :class:`~ann2snn.results.Table`).
- :func:`plot_firing_rates`: output firing rate of every spiking layer (``measure_energy``'s
  :class:`~ann2snn.energy.EnergyResult`).
- :func:`plot_energy`: energy per layer, SNN against ANN (the same result).
- :func:`plot_frontier`: accuracy against energy per image across spike levels, steps marked, the
  Pareto front drawn (``ann2snn.frontier.frontier``'s :class:`~ann2snn.results.Frontier`).

Figures are rendered with matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), so
nothing here touches pyplot's global state or the user's backend.  Sizes are fixed by
:data:`DPI` and :func:`figure_size` so tests (and READMEs) can rely on them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ann2snn.app.files import atomic_open
from ann2snn.app.report import table_grid
from ann2snn.frontier import pareto_front
from ann2snn.results import Accuracy, Frontier, Table

if TYPE_CHECKING:  # only for annotations: the plots need matplotlib, not torch
    from ann2snn.energy.result import EnergyResult

DPI = 100
WIDTH_IN = 9.0
NAMES = {"accuracy": "accuracy.png", "heatmap": "table_heatmap.png", "rates": "firing_rates.png",
         "energy": "energy.png", "frontier": "frontier.png"}


def figure_size(kind: str, n: int = 0) -> tuple[float, float]:
    """(width, height) in inches; per-layer plots grow with the number of layers ``n``."""
    if kind in ("rates", "energy"):
        return WIDTH_IN, max(4.5, 1.6 + 0.26 * n)
    if kind == "heatmap":
        return WIDTH_IN, 6.0
    return WIDTH_IN, 5.0


def _figure(kind: str, n: int = 0):
    fig = Figure(figsize=figure_size(kind, n), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to the PNG ``path`` atomically (:mod:`ann2snn.app.files`: never through a link,
    no partial file on a full disk)."""
    path = Path(path)
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, dpi=DPI, format="png")
    return path


# --------------------------------------------------------------------------------------------
def plot_accuracy(result: dict, path: str | Path, effective_latency: dict | None = None) -> Path:
    """Top-1 (%) against steps, from ``convert``'s dict: the k-step runs (each its own run of k
    input steps, plus extra_t zero steps: plotted at k + extra_t total steps) and, when they differ,
    the steps within the one t-step run; the ANN as a horizontal line, the effective latency of the
    t-step run marked when it settled."""
    snn, ann = result["snn"], result["ann"]
    t, extra_t = snn["t"], snn["extra_t"]
    within = snn["within_run"]
    fig, ax = _figure("accuracy")
    if extra_t:
        ax.axvspan(t + 0.5, t + extra_t + 0.5, color="0.92",
                   label=f"{extra_t} extra steps of the t = {t} run (zero input)")
    ks = snn.get("k_step")
    preset = snn.get("preset", "?")
    if ks is not None:
        label = f"k-step runs, k = 1..{t}" + (f" (+{extra_t} zero steps)" if extra_t else "") + f" ({preset} preset)"
        ax.plot(ks["total_steps"], ks["top1"], "s-", color="C1", label=label)
    if ks is None or not (snn.get("k_step_is_prefix") and extra_t == 0):
        ax.plot(within["steps"], within["top1"], "o-", color="C0", ms=4,
                label=f"within the one t = {t} run (cumulative output after each step)")
    ax.axhline(ann["top1"], color="C3", ls="--", label=f"ANN {ann['top1']:.2f}%")
    lat = effective_latency if effective_latency is not None else result.get("effective_latency")
    if isinstance(lat, dict) and lat.get("settled") and lat.get("steps"):
        ax.axvline(lat["steps"], color="C2", ls=":", label=f"effective latency of the t = {t} run: {lat['steps']} steps")
    elif isinstance(lat, dict) and lat:
        ax.plot([], [], " ", label=f"effective latency: not settled within {lat['observed_steps']} steps")
    n = max(within["steps"][-1], max(ks["total_steps"]) if ks else 0)
    ax.set_xlabel("total time steps")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_xticks(np.arange(1, n + 1))
    ax.set_xlim(0.5, n + 0.5)
    ax.set_title("SNN top-1 accuracy vs time steps")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path)


def plot_table_heatmap(ann: Accuracy, table: Table, extra_t: list[int], path: str | Path, title: str = "") -> Path:
    """Annotated heatmap of top-1 (%): rows t (input steps), columns t + extra_t (total steps) for
    the extra steps ``extra_t``."""
    rows, cols, cells = table_grid(table, extra_t)
    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), acc in cells.items():
        grid[rows.index(r), cols.index(c)] = acc
    fig, ax = _figure("heatmap")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="SNN top-1 accuracy (%)")
    finite = grid[np.isfinite(grid)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    small = len(cols) > 10
    for i in range(len(rows)):
        for j in range(len(cols)):
            if math.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7 if small else 9,
                        color="black" if grid[i, j] > mid else "white")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel("total time steps t + extra_t")
    ax.set_ylabel("input time steps t")
    ax.set_title(title or f"SNN top-1 (%) per t and t + extra_t  (ANN {ann.top1:.2f}%)")
    return _save(fig, path)


def plot_firing_rates(energy: EnergyResult, path: str | Path) -> Path:
    """Horizontal bars: output firing rate of every spiking layer, negative spikes shown apart."""
    rows = [r for r in energy.rows if r.kind == "neuron"]
    tot = energy.totals
    fig, ax = _figure("rates", len(rows))
    y = np.arange(len(rows))
    rate = np.array([r.rate for r in rows])
    neg = np.array([r.neg_rate or 0.0 for r in rows])
    ax.barh(y, rate - neg, color="C0", label="positive spikes")
    if neg.any():
        ax.barh(y, neg, left=rate - neg, color="C1", label="negative spikes")
    for yi, r in zip(y, rate):
        ax.text(r, yi, f" {r:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, [f"{r.name} ({r.type})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(rate.max(initial=0) * 1.18, 0.05))
    ax.set_xlabel("firing rate (non-zero spikes per neuron per step)")
    ax.set_title(f"Firing rate per spiking layer (t = {tot.t}, extra_t = {tot.extra_t}; mean {tot.mean_rate:.3f})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _unit(max_mj: float) -> tuple[str, float]:
    for unit, scale in (("mJ", 1.0), ("µJ", 1e3), ("nJ", 1e6)):
        if max_mj * scale >= 1:
            return unit, scale
    return "pJ", 1e9


def plot_energy(energy: EnergyResult, path: str | Path) -> Path:
    """Grouped horizontal bars: energy per image of each synaptic layer, ANN against SNN."""
    rows = [r for r in energy.rows if r.kind in ("synapse", "product")]
    tot, c = energy.totals, energy.totals.constants
    ann = np.array([r.e_ann_mj for r in rows])
    snn = np.array([r.e_snn_mj for r in rows])
    unit, scale = _unit(max(ann.max(initial=0), snn.max(initial=0)))
    fig, ax = _figure("energy", len(rows))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, ann * scale, height=0.4, color="C3", label=f"ANN (MAC {c.e_mac_pj:g} pJ)")
    ax.barh(y + 0.2, snn * scale, height=0.4, color="C0", label=f"SNN (AC {c.e_ac_pj:g} pJ, MAC where analog)")
    ax.set_yticks(y, [f"{r.name} ({r.op})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    positive = np.concatenate([ann, snn])
    positive = positive[positive > 0]
    if positive.size and positive.max() / positive.min() > 100:
        ax.set_xscale("log")
    ax.set_xlabel(f"energy per image ({unit})")
    ax.set_title(f"Energy per layer, {c.name}: ANN {tot.e_ann_mj:.3g} mJ vs SNN "
                 f"{tot.e_snn_mj:.3g} mJ per image (t = {tot.t})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def write_energy_plots(energy: EnergyResult, out: str | Path) -> list[Path]:
    """Firing-rate and energy PNGs into ``out``."""
    out = Path(out)
    return [plot_firing_rates(energy, out / NAMES["rates"]), plot_energy(energy, out / NAMES["energy"])]


def write_convert_plots(result: dict, energy: EnergyResult | None, out: str | Path) -> list[Path]:
    """``convert``'s PNGs into ``out``: accuracy per step, and firing rates / energy if measured."""
    out = Path(out)
    paths = [plot_accuracy(result, out / NAMES["accuracy"])]
    return paths + (write_energy_plots(energy, out) if energy else [])


def plot_frontier(res: Frontier, path: str | Path) -> Path:
    """Top-1 (%) against energy per image (mJ, log scale) of the frontier's points, one marker per
    spike_levels m, each point labelled with its total steps T; the Pareto front as a step line and
    the ANN as a horizontal line.  Two panels when the points carry the second energy model: the
    standard model (the fp32 ANN's energy as a vertical line) and the memory model (the equal-bit
    QNN's)."""
    memory = bool(res.points) and all(p.e_snn_memory_mj is not None for p in res.points)
    w, h = figure_size("frontier")
    fig = Figure(figsize=(w * (1.8 if memory else 1.0), h), dpi=DPI)
    FigureCanvasAgg(fig)
    panels = [("e_snn_mj", "e_ann_mj", "standard model (E_MAC/E_AC)", "fp32 ANN")]
    if memory:
        panels.append(("e_snn_memory_mj", "e_qnn_mj", "memory model (integer, SRAM traffic)", "equal-bit QNN"))
    for i, (key, ref, title, ref_name) in enumerate(panels, 1):
        _frontier_panel(fig.add_subplot(1, len(panels), i), res, key, ref, f"{title}, L = {res.L}", ref_name)
    return _save(fig, path)


def _frontier_panel(ax, res: Frontier, key: str, ref: str, title: str, ref_name: str) -> None:
    markers = "osD^v<>p*h"
    for i, m in enumerate(res.spike_levels):
        pts = [p for p in res.points if p.spike_levels == m]
        if not pts:
            continue
        ax.scatter([getattr(p, key) for p in pts], [p.top1 for p in pts], marker=markers[i % len(markers)],
                   s=36, label=f"m = {m} ({pts[0].bits_per_step:.2f} bits/step)", alpha=0.85)
        for p in pts:
            ax.annotate(f"T={p.steps}", (getattr(p, key), p.top1), textcoords="offset points", xytext=(4, 3),
                        fontsize=7)
    front = sorted(pareto_front(res.points, key), key=lambda p: getattr(p, key))
    if front:
        ax.step([getattr(p, key) for p in front], [p.top1 for p in front], where="post", color="0.3", lw=1,
                label="Pareto front")
    ax.axhline(res.ann.top1, color="k", ls="--", lw=1, label=f"ANN {res.ann.top1:.2f}%")
    refs = [getattr(p, ref) for p in res.points if getattr(p, ref)]
    if refs:
        ax.axvline(refs[0], color="tab:red", ls=":", lw=1, label=f"{ref_name} {refs[0]:.3g} mJ")
    if all(getattr(p, key) > 0 for p in res.points) and res.points:
        ax.set_xscale("log")
    ax.set_xlabel("energy per image (mJ)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
