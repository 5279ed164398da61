"""A converted language model: the byte-level ``gpt`` on the embedded corpus (issue 21).

Trains ``configs/gpt_python_docs.yml`` twice (the QCFS QANN, and the same model with
``quantize: false`` as the float reference) unless the runs exist, then on the same test windows:

- the float model's and the QANN's per-token perplexity;
- the SNN's perplexity table, rows t (input steps), columns t + e (e extra steps), with binary
  spikes (m = 1), and the m = L row t = 1; the fewest total steps T = t + e within 0.5 % of the
  QANN's perplexity for each;
- ``verify`` on one test batch (float64, until quiescent);
- greedy generation: the first half of each of the first ``--prompts`` test windows, continued
  ``--new-tokens`` tokens by the QANN and by the SNN (binary spikes at t = L with ``--settle``
  extra steps, and m = L at t = 1 with the same settle steps), the sequences compared, and the
  time per generated token of each;
- energy per token under both energy models at those two settings.

    python benchmarks/language_model.py --write

Runs go to --runs (default runs/language_model); --write puts the section between the
"language-model" markers of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from _results import write_marked

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gpt_python_docs.yml"
WITHIN = 0.5  # percent of the QANN's perplexity


def train(runs: Path, name: str, extra: list[str]) -> float | None:
    """Train run ``name`` unless it finished before; its training seconds (None when reused)."""
    from ann2snn.app.cli import main

    run = runs / name
    if (run / "train_seconds.txt").is_file():
        return None
    args = ["--resume"] if (run / "last.pt").is_file() else []
    t0 = time.perf_counter()
    assert main(["train", "-c", str(CONFIG), "--id", name, "--out", str(run), "--out_root", str(runs), *args,
                 *extra]) == 0
    seconds = time.perf_counter() - t0
    (run / "train_seconds.txt").write_text(f"{seconds:.0f}\n")
    return seconds


def load(ckpt: Path, test_subset: int):
    """(config, model, test loader, data info) of a checkpoint on ``test_subset`` test windows."""
    from ann2snn.app.checkpoint import checkpoint_config, load_checkpoint
    from ann2snn.app.config import load_config
    from ann2snn.app.pipeline import load_trained

    stored = checkpoint_config(load_checkpoint(ckpt), ckpt)
    cfg = load_config(None, {**stored.to_dict(), "test_subset": test_subset, "eval_bs": 64})
    model, loader, info = load_trained(cfg, ckpt)
    return cfg, model.eval(), loader, info


def ppl(loss: float) -> float:
    return math.exp(loss)


def fewest_steps(table, ref: float) -> dict | None:
    """The cell of fewest total steps (then fewest input steps) within WITHIN % of ``ref``."""
    cells = [(t + e, t, e, ppl(loss)) for t, row in table.items() for e, loss in enumerate(row.loss)]
    ok = sorted(c for c in cells if c[3] <= ref * (1 + WITHIN / 100))
    return None if not ok else {"T": ok[0][0], "t": ok[0][1], "extra_t": ok[0][2], "perplexity": ok[0][3]}


def tables(sim, loader, L: int) -> dict:
    """Perplexity tables: binary spikes over rows 1, 2, 4, …, 2L with 0..L extra steps; m = L at t = 1."""
    from ann2snn.metrics import evaluate_table

    rows = sorted({1, 2, *range(4, 2 * L + 1, 4), L, 2 * L})
    out = {}
    t0 = time.perf_counter()
    out["m1"] = evaluate_table(sim, loader, rows, L)
    sim.spike_levels = L
    out["mL"] = evaluate_table(sim, loader, [1], L)
    sim.spike_levels = 1
    out["seconds"] = time.perf_counter() - t0
    return out


def prompts_of(loader, count: int, length: int) -> torch.Tensor:
    ds = loader.dataset
    return torch.stack([ds[i][0][:length] for i in range(count)])


def generation(model, sim, prompts, args, L: int) -> dict:
    from ann2snn.generate import generate

    out = {}
    for name, m, t in (("m1_tL", 1, L), ("mL_t1", L, 1)):
        sim.spike_levels = m
        res = generate(model, sim, prompts, args.new_tokens, t, args.settle)
        out[name] = res.to_dict()
        print(f"generation {name}: identical {res.identical}, first differences {res.first_difference}, "
              f"{res.seconds_per_token_snn * 1e3:.0f} ms/token SNN vs {res.seconds_per_token_qann * 1e3:.1f} QANN",
              flush=True)
    sim.spike_levels = 1
    return out


def energy(model, sim, loader, L: int, settle: int, tokens: int, batches: int) -> dict:
    from ann2snn.energy import measure_energy

    out = {}
    for name, m, t in (("m1_tL", 1, L), ("mL_t1", L, 1)):
        sim.spike_levels = m
        res = measure_energy(model, sim, loader, t, settle, max_batches=batches)
        tot, hw = res.totals, res.hardware
        out[name] = {"e_ann_uj": tot.e_ann_mj / tokens * 1e3, "e_snn_uj": tot.e_snn_mj / tokens * 1e3,
                     "ann_snn_ratio": tot.ann_snn_ratio, "non_spike_share": tot.non_spike_share,
                     "e_qnn_uj": hw.e_qnn_mj / tokens * 1e3, "e_snn_memory_uj": hw.e_snn_mj / tokens * 1e3,
                     "qnn_snn_ratio": hw.qnn_snn_ratio, "spikes_per_synapse": hw.spikes_per_synapse,
                     "break_even_rate": hw.break_even_rate}
    sim.spike_levels = 1
    return out


def measure(args) -> dict:
    from ann2snn import verify
    from ann2snn.app.pipeline import simulator_for
    from ann2snn.metrics import evaluate_ann

    runs = Path(args.runs)
    seconds = {"qann": train(runs, "qann", []), "float": train(runs, "float", ["--quantize", "false"])}
    for name, sec in seconds.items():  # reused runs: the time their training took
        saved = runs / name / "train_seconds.txt"
        seconds[name] = sec if sec is not None else float(saved.read_text())
    cfg, model, loader, info = load(runs / "qann" / "best_model.pt", args.test_subset)
    _, fmodel, floader, _ = load(runs / "float" / "best_model.pt", args.test_subset)
    L = cfg.l
    res = {"L": L, "context": info.context, "test_windows": len(loader.dataset), "train_seconds": seconds,
           "float": evaluate_ann(fmodel, floader).to_dict(), "qann": evaluate_ann(model, loader).to_dict()}
    sim = simulator_for(model, cfg, info)
    x = next(iter(loader))[0][:16]
    res["verify"] = verify(model, sim.snn, x).to_dict()
    tabs = tables(sim, loader, L)
    ref = ppl(res["qann"]["loss"])
    res["table_m1"] = {str(t): row.to_dict() for t, row in tabs["m1"].items()}
    res["table_mL"] = {str(t): row.to_dict() for t, row in tabs["mL"].items()}
    res["table_seconds"] = tabs["seconds"]
    res["fewest_m1"], res["fewest_mL"] = fewest_steps(tabs["m1"], ref), fewest_steps(tabs["mL"], ref)
    res["generation"] = generation(model, sim, prompts_of(loader, args.prompts, info.context // 2), args, L)
    res["energy"] = energy(model, sim, loader, L, args.settle, info.context, args.energy_batches)
    res["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU"
    return res


def _table_md(table: dict, ref: float, L: int) -> list[str]:
    cols = sorted({int(c) for row in table.values() for c in row["cols"]})
    lines = ["| t \\ T = t + e | " + " | ".join(map(str, cols)) + " |", "|---" * (len(cols) + 1) + "|"]
    for t, row in sorted(table.items(), key=lambda kv: int(kv[0])):
        cells = {c: ppl(loss) for c, loss in zip(row["cols"], row["loss"])}
        lines.append(f"| {t} | " + " | ".join(
            (f"**{cells[c]:.3f}**" if cells[c] <= ref * (1 + WITHIN / 100) else f"{cells[c]:.3f}") if c in cells else ""
            for c in cols) + " |")
    return lines


def markdown(res: dict, command: str) -> str:
    ref, L = ppl(res["qann"]["loss"]), res["L"]
    v, g, e = res["verify"], res["generation"], res["energy"]
    lines = ["<!-- language-model:start -->", "## A converted language model (issue 21)", "",
             f"`{command}` on {res['machine']}: `configs/gpt_python_docs.yml` (byte-level `gpt`, dim 128, depth 2, "
             f"4 heads, context {res['context']}, L = {L}, `placement: synapses`) trained on the embedded `python_docs` "
             f"corpus; everything below on the same {res['test_windows']} test windows "
             f"({res['test_windows'] * res['context']} tokens).", "",
             f"- float model (`quantize: false`, same recipe): perplexity **{ppl(res['float']['loss']):.4f}**, "
             f"next-token top-1 {res['float']['top1']:.2f} %",
             f"- QANN (L = {L}): perplexity **{ref:.4f}**, next-token top-1 {res['qann']['top1']:.2f} % "
             f"({100 * (ref / ppl(res['float']['loss']) - 1):+.2f} % perplexity against the float model)",
             f"- training (8 epochs, 1 thread): QANN {res['train_seconds']['qann']:.0f} s, float model "
             f"{res['train_seconds']['float']:.0f} s; the SNN tables below took {res['table_seconds']:.0f} s",
             f"- verify (16 windows, {v['dtype']}): max |SNN − QANN| = {v['max_abs_diff']:.3g} (logit scale "
             f"{v['scale']:.3g}), {'OK' if v['ok'] else 'FAILED'}, settled after {v['settle_steps']} steps", ""]
    for key, title in (("m1", "binary spikes (m = 1)"), ("mL", f"m = L = {L} spikes per step")):
        best = res[f"fewest_{key}"]
        lines += [f"SNN perplexity, {title}; rows t, columns T = t + e; **bold**: within {WITHIN} % of the QANN:", "",
                  *_table_md(res[f"table_{key}"], ref, L), "",
                  "Fewest total steps within 0.5 %: " + ("not reached" if best is None else
                  f"T = {best['T']} (t = {best['t']} + e = {best['extra_t']}), perplexity {best['perplexity']:.4f} "
                  f"({100 * (best['perplexity'] / ref - 1):+.3f} %)"), ""]
    lines += ["Greedy generation (first half of each test window as the prompt; the QANN and the SNN each decode on "
              "their own outputs):", "",
              "| SNN setting | steps per token | identical to the QANN | first differences | ms per token SNN | "
              "ms per token QANN |", "|---|---|---|---|---|---|"]
    for name, label in (("m1_tL", f"m = 1, t = {L}"), ("mL_t1", f"m = {L}, t = 1")):
        r = g[name]
        same = sum(d is None for d in r["first_difference"])
        lines.append(f"| {label} + {r['extra_t']} settle | {r['steps_per_token']} | {same} of {len(r['snn'])} "
                     f"({len(r['snn'][0])} new tokens each) | {[d for d in r['first_difference'] if d is not None] or '–'} "
                     f"| {r['seconds_per_token_snn'] * 1e3:.0f} | {r['seconds_per_token_qann'] * 1e3:.1f} |")
    lines += ["", "Energy per scored token: one window's run divided by its "
              f"{res['context']} tokens, all scored at once (standard model: fp32 E_MAC/E_AC against the fp32 ANN; "
              "memory model: against the equal-bit QNN, `ann2snn/energy/hardware.py`). A generated token re-runs its "
              f"whole window (no key/value cache): {res['context']}× these figures, the last column.", "",
              "| SNN setting | E_ANN (µJ) | E_SNN (µJ) | ANN/SNN | not spike-driven | memory: E_QNN (µJ) | "
              "memory: E_SNN (µJ) | QNN/SNN | spikes per synapse | break-even rate | E_SNN per generated token (µJ) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, label in (("m1_tL", f"m = 1, t = {L}"), ("mL_t1", f"m = {L}, t = 1")):
        r = e[name]
        be = "none" if r["break_even_rate"] is None else f"{r['break_even_rate']:.3g}"
        lines.append(f"| {label} + settle | {r['e_ann_uj']:.4g} | {r['e_snn_uj']:.4g} | {r['ann_snn_ratio']:.2f}× | "
                     f"{100 * r['non_spike_share']:.0f} % | {r['e_qnn_uj']:.4g} | {r['e_snn_memory_uj']:.4g} | "
                     f"{r['qnn_snn_ratio']:.2f}× | {r['spikes_per_synapse']:.3g} | {be} | "
                     f"{r['e_snn_uj'] * res['context']:.4g} |")
    lines += ["", "<!-- language-model:end -->", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "language_model"))
    p.add_argument("--test-subset", type=int, default=128, help="test windows for every figure")
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--settle", type=int, default=16, help="extra (settle) steps per generated token and for energy")
    p.add_argument("--energy-batches", type=int, default=1)
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    res = measure(args)
    out = Path(args.runs) / "language_model.json"
    out.write_text(json.dumps(res, indent=1))
    md = markdown(res, "python benchmarks/language_model.py" + (" --write" if args.write else ""))
    print(md)
    if args.write:
        write_marked("language-model", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
