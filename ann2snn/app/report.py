"""Presentation of results: per-step listings, t × (t + extra_t) tables, energy tables and the
frontier, as text, Markdown, CSV and JSON.

The edge where typed results (:mod:`ann2snn.results`) become files: each is read by attribute
here and written through its ``to_dict()``, so the files keep their keys.  ``convert``'s result
is one document (:func:`convert_result`) that its listing and plot read.  All accuracies are
percentages.  Plots (:mod:`ann2snn.app.plots`) are drawn from the same results.  What each
per-step figure means is defined in :mod:`ann2snn.metrics`; every listing here says which one it
shows.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ann2snn.app.files import atomic_write_text
from ann2snn.energy.result import EnergyResult, EnergyRow, EnergyTotals
from ann2snn.metrics import latency_text
from ann2snn.neurons import bits_per_step
from ann2snn.results import Accuracy, Evaluation, Frontier, FrontierPoint, Table, VerifyResult


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON, written atomically (:mod:`ann2snn.app.files`: never through a link, and
    a full disk leaves no partial file; the OSError names the file)."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _csv_text(write_rows) -> str:
    """The CSV text ``write_rows(file)`` writes (built in memory, then written atomically)."""
    buf = io.StringIO(newline="")
    write_rows(buf)
    return buf.getvalue()


def budget_text(spike_levels: int) -> str:
    """'spike_levels m = 1 (1.58 bits per step; spike-step budget T × bits)'."""
    return (f"spike_levels m = {spike_levels} ({bits_per_step(spike_levels):.2f} bits per step, log2(2m+1); "
            "spike-step budget T × bits)")


def perplexity(loss: float) -> float:
    """exp(per-token cross-entropy in nats): a language model's perplexity (inf where it overflows,
    NaN for a NaN loss)."""
    if math.isnan(loss):
        return math.nan
    return math.exp(loss) if loss < 700 else math.inf


def add_perplexities(result: dict[str, Any]) -> dict[str, Any]:
    """A language model's document gains ``perplexity`` beside every ``loss`` (list or number) of
    its ANN, k-step and within-run figures, in place; returns it."""
    parts = [result.get("ann"), result["snn"].get("k_step"), result["snn"].get("within_run")]
    for part in parts:
        if not part:
            continue
        for key in [k for k in part if k == "loss" or k.startswith("loss_")]:
            value = part[key]
            name = key.replace("loss", "perplexity")
            part[name] = [perplexity(v) for v in value] if isinstance(value, list) else perplexity(value)
    return result


def convert_result(res: Evaluation, t: int, extra_t: int, preset: str, checkpoint: str | Path,
                   verify: VerifyResult | None = None, tokens: int = 0) -> dict[str, Any]:
    """``convert``'s result document (its JSON, and what its listing and plot read): the
    evaluation ``res`` of a ``t`` + ``extra_t`` step run under ``preset``, and the self-check.
    ``tokens``: a language model's tokens per sample (its context; 0 for images): every figure is
    then per token, and perplexities join the losses."""
    d = res.to_dict()
    out = {"ann": d["ann"],
           "snn": {"t": t, "extra_t": extra_t, "preset": preset, "spike_levels": d["spike_levels"],
                   "bits_per_step": d["bits_per_step"], "k_step": d["k_step"],
                   "k_step_is_prefix": d["k_step_is_prefix"], "within_run": d["within_run"]},
           "effective_latency": d["effective_latency"], "checkpoint": str(checkpoint), "n": d["n"]}
    if verify is not None:
        out["verify"] = verify.to_dict()
    if tokens:
        out["tokens_per_sample"] = tokens
        add_perplexities(out)
    return out


def verify_line(res: VerifyResult) -> str:
    """One line for ``convert --verify``: the self-check's difference, tolerance and settle steps."""
    state = "quiescent" if res.quiescent else f"NOT quiescent after {res.steps_run} steps"
    return (f"verify (exact, first test batch, t = {res.t}, {res.dtype}): max |SNN - quantized ANN| = "
            f"{res.max_abs_diff:.3g} (logit scale {res.scale:.3g}, tolerance {res.tolerance:g} x max(1, "
            f"scale)): {'OK' if res.ok else 'FAILED'}; {state}, settled after {res.settle_steps} steps")


def _steps_cells(part: dict[str, Any], i: int, ann: dict[str, Any], text: bool) -> str:
    """The figures of entry ``i`` of a k-step or within-run listing: top-1 and top-5 against the
    ANN's top-1, or for a language model top-1 (next-token) and perplexity against the ANN's."""
    a1 = part["top1"][i]
    if not text:
        return f"{a1:6.2f}%  {part['top5'][i]:6.2f}%   {a1 - ann['top1']:+6.2f}"
    ppl, ref = part["perplexity"][i], ann["perplexity"]
    return f"{a1:6.2f}%  {ppl:10.4f}   {100 * (ppl / ref - 1):+8.3f}%"


def format_steps(result: dict[str, Any]) -> str:
    """``convert``'s listing (of :func:`convert_result`'s document): the k-step curve, then the
    steps within the t-step run (one listing when the two coincide); for a language model
    (``tokens_per_sample``) next-token top-1 and perplexity, per token."""
    if result.get("tokens_per_sample"):
        return _format_steps(result, text=True)
    return _format_steps(result, text=False)


def _format_steps(result: dict[str, Any], text: bool) -> str:
    ann, snn = result["ann"], result["snn"]
    t, extra_t = snn["t"], snn["extra_t"]
    bits = snn.get("bits_per_step", math.log2(3))
    figures = (f"top-1 {ann['top1']:6.2f}%   perplexity {ann.get('perplexity', math.nan):.4f}   ("
               f"{result.get('n', '?')} test tokens)" if text else
               f"top-1 {ann['top1']:6.2f}%   top-5 {ann['top5']:6.2f}%   ({result.get('n', '?')} test samples)")
    cols = "   top-1    perplexity   Δppl vs ANN" if text else "   top-1    top-5   Δtop-1 vs ANN"
    lines = [f"ANN   {figures}",
             f"SNN   preset {snn.get('preset', '?')}, t = {t}, extra_t = {extra_t}; "
             f"{budget_text(snn.get('spike_levels', 1))}"]
    ks, within = snn.get("k_step"), snn["within_run"]
    same = ks is not None and snn.get("k_step_is_prefix") and extra_t == 0
    if ks is not None:
        then = f", then {extra_t} zero steps" if extra_t else ""
        lines.append(f"k-step runs (each a run of its own: input for k steps{then}, thresholds set for k; "
                     "output sum / k) = the table's cells (k, k + extra_t)")
        head = "     k  steps  T×bits" + cols
        lines.append(head + ("   top-1 at k (no extra)" if extra_t else ""))
        for i, k in enumerate(ks["k"]):
            row = (f"  {k:4d}  {ks['total_steps'][i]:5d}  {ks['total_steps'][i] * bits:6.1f}  "
                   + _steps_cells(ks, i, ann, text))
            if extra_t:
                row += f"         {ks['top1_no_extra'][i]:6.2f}%"
            lines.append(row)
    if same:
        lines.append(f"(under this preset a k-step run is the first k steps of the {t}-step run, so the steps "
                     f"within the {t}-step run are the same numbers)")
    else:
        lines.append(f"within the one {t}-step run (thresholds set for t = {t}; cumulative output after step s, "
                     f"divided by min(s, {t})):")
        lines.append("  step  T×bits" + cols)
        for i, s in enumerate(within["steps"]):
            mark = "" if s <= t else "  (extra, zero input)"
            lines.append(f"  {s:4d}  {s * bits:6.1f}  {_steps_cells(within, i, ann, text)}{mark}")
        if snn.get("k_step_is_prefix") is False and t > 1:
            lines.append(f"  (under the {snn.get('preset', '?')} preset step s < {t} here is not the accuracy of an "
                         "s-step run: its neurons integrate towards thresholds set for t; see the k-step runs)")
    return "\n".join(lines)


def table_grid(table: Table, extra_t: list[int], metric: str = "top1") -> tuple[list[int], list[int], dict]:
    """(rows, columns, {(t, col): value}) keeping only the requested extra steps ``extra_t``;
    ``metric``: ``top1`` or ``perplexity`` (exp of the per-token loss)."""
    cells = {}
    for t, row in table.items():
        values = row.top1 if metric == "top1" else [perplexity(v) for v in row.loss]
        for col, acc in zip(row.cols, values):
            if col - t in extra_t:
                cells[(t, col)] = acc
    rows = sorted(table)
    cols = sorted({c for (_, c) in cells})
    return rows, cols, cells


def _grid_markdown(table: Table, extra_t: list[int], bits: float, metric: str) -> list[str]:
    rows, cols, cells = table_grid(table, extra_t, metric)
    head = "| t \\ t+extra_t | " + " | ".join(str(c) for c in cols) + " |"
    sep = "|---" * (len(cols) + 1) + "|"
    fmt = "{:.2f}" if metric == "top1" else "{:.4f}"
    body = [f"| {t} | " + " | ".join(fmt.format(cells[(t, c)]) if (t, c) in cells else "" for c in cols) + " |"
            for t in rows]
    return [head, sep, *body, "| T × bits | " + " | ".join(f"{c * bits:.1f}" for c in cols) + " |"]


def table_markdown(ann: Accuracy, table: Table, extra_t: list[int], title: str = "", spike_levels: int = 1,
                   text: bool = False) -> str:
    """The table as Markdown: SNN top-1 per cell; for a language model (``text``) per-token
    perplexity first, then next-token top-1."""
    bits = bits_per_step(spike_levels)
    top = f"{title}\n\n" if title else ""
    where = (f"rows t (input steps), columns t + extra_t (total steps T); {budget_text(spike_levels)}")
    if text:
        ref = perplexity(ann.loss)
        return (f"{top}QANN perplexity {ref:.4f} per token, next-token top-1 {ann.top1:.2f}%. SNN perplexity, {where}:"
                "\n\n" + "\n".join(_grid_markdown(table, extra_t, bits, "perplexity"))
                + "\n\nSNN next-token top-1 (%):\n\n" + "\n".join(_grid_markdown(table, extra_t, bits, "top1")) + "\n")
    return (f"{top}ANN top-1: {ann.top1:.2f}% (top-5 {ann.top5:.2f}%). SNN top-1 (%), {where}:\n\n"
            + "\n".join(_grid_markdown(table, extra_t, bits, "top1")) + "\n")


def write_table(out: Path, ann: Accuracy, table: Table, extra_t: list[int], meta: dict | None = None,
                echo: bool = True) -> dict[str, Path]:
    """Write table.md / table.csv / table.json into ``out``, each atomically, showing the columns
    of the extra steps ``extra_t`` (the JSON's ``extras``); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = (meta or {}).get("spike_levels", 1)
    text = bool((meta or {}).get("tokens_per_sample"))
    md = table_markdown(ann, table, extra_t, title=f"# Accuracy table ({(meta or {}).get('preset', '')})",
                        spike_levels=m, text=text)
    paths = {"md": out / "table.md", "csv": out / "table.csv", "json": out / "table.json"}
    atomic_write_text(paths["md"], md)

    def rows(f) -> None:
        w = csv.writer(f)
        w.writerow(["t", "extra_t", "steps", "spike_levels", "bit_steps", "top1", "top5", "loss"]
                   + (["perplexity"] if text else []))
        for t, row in sorted(table.items()):
            for col, a1, a5, loss in zip(row.cols, row.top1, row.top5, row.loss):
                if col - t in extra_t:
                    w.writerow([t, col - t, col, m, f"{col * bits_per_step(m):.3f}", f"{a1:.2f}", f"{a5:.2f}",
                                f"{loss:.4f}"] + ([f"{perplexity(loss):.4f}"] if text else []))

    atomic_write_text(paths["csv"], _csv_text(rows))
    rows_json = {str(t): row.to_dict() for t, row in sorted(table.items())}
    ann_json = ann.to_dict()
    if text:  # a language model: perplexities beside the losses
        ann_json["perplexity"] = perplexity(ann.loss)
        for row in rows_json.values():
            row["perplexity"] = [perplexity(v) for v in row["loss"]]
    payload = {"ann": ann_json, "rows": rows_json,
               "extras": extra_t, "spike_levels": m, "bits_per_step": bits_per_step(m), **(meta or {})}
    write_json(paths["json"], payload)
    if echo:
        print(md)
        print(f"written: {paths['md']}, {paths['csv']}, {paths['json']}")
    return paths


# --------------------------------------------------------------------------------------------
# energy (the typed results of ann2snn.energy.measure_energy / EnergyMeter.result)
def _si(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _energy_row_line(r: EnergyRow) -> str:
    """One layer of :func:`format_energy_table`."""
    if r.kind == "neuron" or (r.kind == "nonlinear" and not r.macs):
        rate = f"out {r.rate:.3f}"
        return f"{r.name:<28} {r.type:<13} {'':<14} {'':<7} {rate:>11}"
    if r.kind == "nonlinear":
        return (f"{r.name:<28} {r.type:<13} {r.input:<14} {r.op:<7} {'':>11} "
                f"{'':>8} {'':>8} {_si(r.macs):>8} "
                f"{r.e_ann_mj * 1e3:>9.4f} {r.e_snn_mj * 1e3:>9.4f}")
    rate = f"{r.rate:.3f}" + (f"/{r.rate_b:.3f}" if r.rate_b is not None else "")
    return (f"{r.name:<28} {r.type:<13} {r.input:<14} {r.op:<7} {rate:>11} "
            f"{_si(r.flops):>8} {_si(r.sops):>8} {_si(r.macs):>8} "
            f"{r.e_ann_mj * 1e3:>9.4f} {r.e_snn_mj * 1e3:>9.4f}")


def _energy_totals_lines(tot: EnergyTotals) -> list[str]:
    """The totals of :func:`format_energy_table`: steps and constants, MACs, SOPs, energies."""
    c = tot.constants
    once = "once, papers' convention" if tot.first_layer == "once" else "on every step"
    lines = [
        f"per image, S = t + extra_t = {tot.t} + {tot.extra_t} steps, {tot.images} images, "
        f"{c.name}: E_MAC = {c.e_mac_pj:g} pJ, E_AC = {c.e_ac_pj:g} pJ",
        f"  {budget_text(tot.spike_levels)}: S × bits = {tot.steps * bits_per_step(tot.spike_levels):.1f}",
        f"  ANN  MACs {_si(tot.flops + tot.nonlinear_macs_ann):>7}   E_ANN = {tot.e_ann_mj:.4g} mJ"
        + (f" (float functions {_si(tot.nonlinear_macs_ann)})" if tot.nonlinear_macs_ann else ""),
        f"  SNN  MACs {_si(snn_macs(tot)):>7}   image-fed layer "
        f"{_si(tot.first_layer_macs)} ({once}); analog inputs and 1/n rescaling {_si(tot.other_macs)}"
        + (f"; float functions {_si(tot.nonlinear_macs)}" if tot.nonlinear_macs else ""),
        f"       SOPs {_si(tot.sops):>7}   E_SNN = {tot.e_snn_mj:.4g} mJ",
        f"  E_ANN / E_SNN = {tot.ann_snn_ratio:.2f}x; mean firing rate over spiking layers {tot.mean_rate:.3f}",
    ]
    parts = ", ".join(f"{k.replace('_', ' ')} {100 * v / tot.e_snn_mj:.1f}%"
                      for k, v in tot.energy_breakdown_mj.to_dict().items() if v > 0 and tot.e_snn_mj > 0)
    lines.append(f"  not driven by spikes: {100 * tot.non_spike_share:.1f}% of E_SNN ({parts})")
    return lines


def format_energy_table(result: EnergyResult) -> str:
    """Per-layer table and totals, for a terminal."""
    tot = result.totals
    head = (f"{'layer':<28} {'type':<13} {'input':<14} {'op':<7} {'rate':>11} {'FLOPs':>8} "
            f"{'SOPs':>8} {'MACs':>8} {'E_ANN µJ':>9} {'E_SNN µJ':>9}")
    lines = [head, "-" * len(head)] + [_energy_row_line(r) for r in result.rows]
    lines += ["-" * len(head)] + _energy_totals_lines(tot) + hardware_lines(result.hardware)
    acc = result.accuracy
    if acc and acc.snn_top1_within_run:
        ann = f"ANN top-1 {acc.ann_top1:.2f}%, " if acc.ann_top1 is not None else ""
        lines.append(f"{ann}SNN top-1 {acc.snn_top1_within_run[-1]:.2f}% after the {len(acc.snn_top1_within_run)} "
                     f"steps of the t = {tot.t} run")
    if result.effective_latency is not None:
        lines.append(latency_text(result.effective_latency))
    return "\n".join(lines)


_READS = {"event": "per event", "dense": "once per step", "best": "per event or once per step, the cheaper per layer"}


def hardware_lines(hw) -> list[str]:
    """The second energy model's totals (:mod:`ann2snn.energy.hardware`), for a terminal."""
    if hw is None:
        return []
    m = hw.model

    def parts(book: dict[str, float], total: float) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {100 * v / total:.1f}%" for k, v in book.items() if v > 0 and total > 0)

    return [
        f"second model (memory: equal-bit QNN, {hw.activation_bits}-bit activations, {m.weight_bits}-bit weights, "
        f"{m.acc_bits}-bit accumulators, {m.membrane_bits}-bit membranes, weights read "
        f"{_READS[m.weight_reads]}; Horowitz 45 nm with SRAM traffic):",
        f"  E_QNN = {hw.e_qnn_mj:.4g} mJ ({parts(hw.qnn_breakdown_mj, hw.e_qnn_mj)})",
        f"  E_SNN = {hw.e_snn_mj:.4g} mJ ({parts(hw.snn_breakdown_mj, hw.e_snn_mj)})",
        f"  E_QNN / E_SNN = {hw.qnn_snn_ratio:.3g}x; {hw.spikes_per_synapse:.3g} spikes per synapse per inference; "
        + ("no break-even" if hw.break_even_spikes_per_synapse is None else
           f"break-even {hw.break_even_spikes_per_synapse:.3g} spikes per synapse ({hw.break_even_rate:.3g} per step)"),
        f"  verdict: {hw.verdict}",
    ]


def snn_macs(tot: EnergyTotals) -> float:
    """All MACs of the SNN per image: the image-fed layer, analog inputs, products, float functions."""
    return tot.first_layer_macs + tot.other_macs + tot.nonlinear_macs


CSV_FIELDS = ("name", "type", "kind", "input", "op", "rate", "rate_b", "neg_rate", "flops", "ann_macs", "sops", "macs",
              "e_ann_mj", "e_snn_mj")


def write_energy_csv(path: str | Path, result: EnergyResult) -> Path:
    """One row per layer (columns :data:`CSV_FIELDS`), then a ``TOTAL`` row; written atomically."""
    tot = result.totals

    def rows(f) -> None:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in result.rows:
            w.writerow(r.to_dict())
        w.writerow({"name": "TOTAL", "flops": tot.flops, "sops": tot.sops, "macs": snn_macs(tot),
                    "e_ann_mj": tot.e_ann_mj, "e_snn_mj": tot.e_snn_mj})

    return atomic_write_text(path, _csv_text(rows))


def write_energy_json(path: str | Path, result: EnergyResult, meta: dict[str, Any] | None = None) -> Path:
    """``result.to_dict()`` as JSON, followed by the keys of ``meta`` (the command's checkpoint and
    preset)."""
    return write_json(path, {**result.to_dict(), **(meta or {})})


def per_token(result: EnergyResult, tokens: int) -> dict[str, float]:
    """A language model's energies per token (mJ): the per-sample figures of both models divided
    by the ``tokens`` of a sample (every position is scored, so every token costs the same share)."""
    tot, hw = result.totals, result.hardware
    out = {"tokens_per_sample": tokens, "e_ann_mj": tot.e_ann_mj / tokens, "e_snn_mj": tot.e_snn_mj / tokens}
    if hw is not None:
        out.update(e_qnn_mj=hw.e_qnn_mj / tokens, e_snn_memory_mj=hw.e_snn_mj / tokens)
    return out


def summary_line(result: EnergyResult, tokens: int = 0) -> str:
    """One line: energies per image (per token too for a language model of ``tokens`` per sample),
    their ratio, the mean firing rate and the effective latency."""
    tot, hw = result.totals, result.hardware
    second = "" if hw is None else (f"second model (memory): equal-bit QNN {hw.e_qnn_mj:.4g} mJ, SNN "
                                    f"{hw.e_snn_mj:.4g} mJ (QNN/SNN {hw.qnn_snn_ratio:.2f}x); ")
    if tokens:
        tok = per_token(result, tokens)
        memory = "" if hw is None else (f"; memory model: QNN {tok['e_qnn_mj'] * 1e3:.4g} µJ, SNN "
                                        f"{tok['e_snn_memory_mj'] * 1e3:.4g} µJ")
        second += (f"energy per scored token (the {tokens} tokens of a window scored at once; a generated token "
                   f"re-runs its window, the per-window figure): ANN {tok['e_ann_mj'] * 1e3:.4g} µJ, SNN "
                   f"{tok['e_snn_mj'] * 1e3:.4g} µJ{memory}; ")
    unit = "window" if tokens else "image"
    return (f"energy/{unit} ({tot.constants.name}): ANN {tot.e_ann_mj:.4g} mJ, SNN {tot.e_snn_mj:.4g} mJ "
            f"(ANN/SNN {tot.ann_snn_ratio:.2f}x); mean firing rate {tot.mean_rate:.3f}; "
            f"{100 * tot.non_spike_share:.0f}% of E_SNN not spike-driven; " + second
            + latency_text(result.effective_latency))


# --------------------------------------------------------------------------------------------
# the frontier (ann2snn.frontier.frontier's Frontier)
FRONTIER_FIELDS = ("spike_levels", "bits_per_step", "t", "extra_t", "steps", "bit_steps", "top1", "top5",
                   "delta_top1", "e_snn_mj", "e_ann_mj", "ann_snn_ratio", "non_spike_share", "mean_rate", "pareto",
                   "e_snn_memory_mj", "e_qnn_mj", "qnn_snn_ratio", "spikes_per_synapse", "break_even_rate", "loss")


def fewest_steps(res: Frontier, m: int, within: float) -> FrontierPoint | None:
    """The point of spike_levels ``m`` with the fewest total steps (then the least energy) whose top-1
    is within ``within`` points of the ANN, or None."""
    ok = [p for p in res.points if p.spike_levels == m and p.delta_top1 >= -within]
    return min(ok, key=lambda p: (p.steps, p.e_snn_mj)) if ok else None


def _memory_cells(p: FrontierPoint) -> str:
    if p.e_snn_memory_mj is None:
        return "– | – | – | –"
    be = "none" if p.break_even_rate is None else f"{p.break_even_rate:.3g}"
    return f"{p.e_snn_memory_mj:.4g} | {p.qnn_snn_ratio:.2f}× | {p.spikes_per_synapse:.3g} | {be}"


def _perplexity_lines(res: Frontier, tokens: int) -> list[str]:
    """A language model's frontier: each point's per-token perplexity against the QANN's, and
    energy per token under both models."""
    ref = perplexity(res.ann.loss)
    lines = ["", f"Per token ({tokens} tokens per window): QANN perplexity {ref:.4f}.", "",
             "| m | t | extra | T | perplexity | Δppl vs QANN | E_SNN/token (µJ) | E_ANN/token (µJ) | "
             "memory: E_SNN/token (µJ) | E_QNN/token (µJ) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in res.points:
        ppl = perplexity(p.loss) if p.loss is not None else math.nan
        mem = ("– | –" if p.e_snn_memory_mj is None else
               f"{p.e_snn_memory_mj / tokens * 1e3:.4g} | {p.e_qnn_mj / tokens * 1e3:.4g}")
        lines.append(f"| {p.spike_levels} | {p.t} | {p.extra_t} | {p.steps} | {ppl:.4f} | {100 * (ppl / ref - 1):+.3f}% | "
                     f"{p.e_snn_mj / tokens * 1e3:.4g} | {p.e_ann_mj / tokens * 1e3:.4g} | {mem} |")
    lines += ["", "Fewest total steps within 0.5 % / 0.1 % of the QANN's perplexity:", ""]
    for m in res.spike_levels:
        cells = []
        for within in (0.5, 0.1):
            ok = [p for p in res.points if p.spike_levels == m and p.loss is not None
                  and perplexity(p.loss) <= ref * (1 + within / 100)]
            p = min(ok, key=lambda q: (q.steps, q.e_snn_mj)) if ok else None
            cells.append(f"within {within} %: " + ("not reached" if p is None else
                         f"T = {p.steps} (t = {p.t} + {p.extra_t}), {p.e_snn_mj / tokens * 1e3:.4g} µJ per token"))
        lines.append(f"- m = {m}: " + "; ".join(cells))
    return lines


def frontier_markdown(res: Frontier, tokens: int = 0) -> str:
    """The frontier as Markdown; ``tokens``: a language model's tokens per window (adds the
    perplexity and per-token energy of every point)."""
    ann = res.ann
    lines = [f"# Accuracy, latency and energy (L = {res.L})", "",
             f"ANN top-1 {ann.top1:.2f}% ({ann.n} test images). Energy per image on the first "
             f"{res.energy_images} test images ({res.constants}). Bits per step log2(2m+1); the spike-step "
             "budget is T × bits. * marks the Pareto front of accuracy against energy (standard model). "
             "Standard model: E_MAC / E_AC against the fp32 ANN; memory model: against the equal-bit QNN "
             "on integer hardware with memory traffic (ann2snn.energy.hardware), with spikes per synapse "
             "per inference and the break-even rate per step.", "",
             "| m | bits/step | t | extra | T | T × bits | top-1 | Δ vs ANN | E_SNN (mJ) | ANN/SNN | not spike-driven "
             "| memory: E_SNN (mJ) | QNN/SNN | spikes/synapse | break-even rate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in res.points:
        lines.append(f"| {p.spike_levels} | {p.bits_per_step:.2f} | {p.t} | {p.extra_t} | {p.steps} | "
                     f"{p.bit_steps:.1f} | {p.top1:.2f}{' *' if p.pareto else ''} | {p.delta_top1:+.2f} | "
                     f"{p.e_snn_mj:.4g} | {p.ann_snn_ratio:.2f}× | {100 * p.non_spike_share:.0f}% | "
                     + _memory_cells(p) + " |")
    lines += ["", "Fewest total steps within 0.5 / 0.1 points of the ANN:", ""]
    for m in res.spike_levels:
        cells = []
        for within in (0.5, 0.1):
            p = fewest_steps(res, m, within)
            cells.append(f"within {within}: " + ("not reached" if p is None else
                         f"T = {p.steps} (t = {p.t} + {p.extra_t}; {p.bit_steps:.1f} bit-steps, "
                         f"{p.e_snn_mj:.4g} mJ)"))
        lines.append(f"- m = {m}: " + "; ".join(cells))
    if tokens:  # a language model: its samples are windows of tokens, scored at every position
        lines = [ln.replace("test images", "test windows").replace("per image", "per window") for ln in lines]
        lines += _perplexity_lines(res, tokens)
    return "\n".join(lines) + "\n"


def write_frontier(out: str | Path, res: Frontier, meta: dict | None = None, echo: bool = True) -> dict[str, Path]:
    """frontier.md / frontier.csv / frontier.json in ``out``, each atomically (``meta``: more keys
    for the JSON, e.g. the checkpoint); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "frontier.md", "csv": out / "frontier.csv", "json": out / "frontier.json"}
    md = frontier_markdown(res, (meta or {}).get("tokens_per_sample", 0))
    atomic_write_text(paths["md"], md)

    def rows(f) -> None:
        w = csv.DictWriter(f, fieldnames=FRONTIER_FIELDS, extrasaction="ignore")
        w.writeheader()
        for p in res.points:
            w.writerow(p.to_dict())

    atomic_write_text(paths["csv"], _csv_text(rows))
    write_json(paths["json"], {**res.to_dict(), **(meta or {})})
    if echo:
        print(md)
        print(f"written: {paths['md']}, {paths['csv']}, {paths['json']}")
    return paths


# --------------------------------------------------------------------------------------------
# generation (ann2snn.generate.generate's Generation results, one per prompt length)
def generation_texts(results: list, order: list[list[int]]) -> list[dict[str, Any]]:
    """Every prompt of ``generate`` in the order given (``order``: each result's places), as text:
    the prompt, the QANN's and the SNN's continuations, and ``first_difference`` (the index from 0
    of the first generated token where they differ; None: identical)."""
    from ann2snn.app.text import decode

    rows = []
    for res, places in zip(results, order):
        for place, prompt, q, s, diff in zip(places, res.prompts, res.qann, res.snn, res.first_difference):
            rows.append((place, {"prompt": decode(prompt), "qann": decode(q), "snn": decode(s),
                                 "first_difference": diff}))
    return [row for _, row in sorted(rows, key=lambda r: r[0])]


def generation_lines(results: list, order: list[list[int]]) -> list[str]:
    """Each prompt (in the order given) with the QANN's and the SNN's greedy continuations (bytes
    shown as text), the verdict (identical, or the first generated token, counted from 1, where
    they differ) and the time per token of each batch of prompts."""
    lines, texts = [], generation_texts(results, order)
    for i, row in enumerate(texts, 1):
        diff = row["first_difference"]
        lines += [f"prompt {i}: {row['prompt']!r}", f"  QANN: {row['qann']!r}", f"  SNN:  {row['snn']!r}",
                  "  identical" if diff is None else f"  first differs at generated token {diff + 1} (of "
                  f"{len(results[0].qann[0])})"]
    first, same = results[0], sum(row["first_difference"] is None for row in texts)
    lines.append(f"{same} of {len(texts)} continuations identical to the QANN's ({len(first.qann[0])} new tokens each; "
                 f"SNN t = {first.t} + {first.extra_t} steps per token, m = {first.spike_levels}; each token is a run "
                 "of the whole window from rest)")
    for res, places in zip(results, order):
        which = ", ".join(str(p + 1) for p in places)
        lines.append(f"time per generated token (prompts {which}, one batch): QANN "
                     f"{res.seconds_per_token_qann * 1e3:.1f} ms, SNN {res.seconds_per_token_snn * 1e3:.1f} ms "
                     f"({res.seconds_per_token_snn / max(res.seconds_per_token_qann, 1e-12):.1f}x)")
    return lines
