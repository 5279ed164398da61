"""Conversion fidelity: how closely, and how fast, each preset's SNN reaches its ANN.

For every attention variant (softmax, query_softmax, ssa) this trains the given config (or reuses
a checkpoint already in --runs), converts it under every preset (exact, rate, per_step) and computes
the t × (t + extra_t) accuracy table, then summarises per preset: the ANN's top-1, the SNN's
top-1 at t = L, 2L, 4L (extra_t = 0), the smallest evaluated t at which the SNN is within 0.1
point of the ANN, and whether any row falls as extra steps are added.

    python benchmarks/fidelity.py -c configs/fashion_mnist.yml --test_subset 2000 --write

Results go to --runs/<attn>/table-<preset>/ and, with --write, into benchmarks/RESULTS.md between
the "fidelity" markers.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ann2snn.app.config import load_config, parse_steps
from ann2snn.app.files import atomic_write_text
from ann2snn.app.pipeline import load_trained, simulator_for
from ann2snn.app.report import table_markdown, write_table
from ann2snn.app.train import train
from ann2snn.metrics import evaluate_ann, evaluate_table
from ann2snn.results import Accuracy, Table

RESULTS = Path(__file__).with_name("RESULTS.md")
START, END = "<!-- fidelity:start -->", "<!-- fidelity:end -->"


def summarise(ann: Accuracy, table: Table, levels: int) -> dict:
    diag = {t: row.top1[0] for t, row in table.items()}
    within = [t for t in sorted(diag) if diag[t] >= ann.top1 - 0.1]
    drops = []
    for t, row in table.items():
        acc = row.top1
        drops.append(max([acc[i - 1] - acc[i] for i in range(1, len(acc))] + [0.0]))
    return {
        "ann_top1": ann.top1,
        **{f"t={m}L": diag.get(m * levels) for m in (1, 2, 4)},
        "first_t_within_0.1": within[0] if within else None,
        "max_row_drop": max(drops),
        "any_row_falls": max(drops) > 0,
    }


def _cached(path: Path, rows: list[int], extra_t: int, n: int) -> Table | None:
    """A table computed earlier with the same rows, extra steps and test-set size, if any."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    table = Table.from_dict(saved["rows"])
    if sorted(table) != rows or saved.get("n") != n or any(len(r.top1) != extra_t + 1 for r in table.rows.values()):
        return None
    return table


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="configs/fashion_mnist.yml")
    ap.add_argument("--attn", nargs="+", default=["softmax", "query_softmax", "ssa"])
    ap.add_argument("--presets", nargs="+", default=["exact", "rate", "per_step"])
    ap.add_argument("--rows", default="1-8,12,16", help="table rows t")
    ap.add_argument("--extra-t", "--extra", dest="extra_t", type=int, default=4,
                    help="extra steps per row (columns t..t+extra_t); --extra is the old spelling")
    ap.add_argument("--test_subset", type=int, default=2000)
    ap.add_argument("--runs", default="runs/fidelity")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--also-cached", action="store_true",
                    help="also report the other presets' tables where --runs already holds them (computes nothing more)")
    ap.add_argument("--write", action="store_true", help="write the summary into benchmarks/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = parse_steps(args.rows, "--rows", 1)
    runs = Path(args.runs)
    report, summary_rows = [], []
    for attn in args.attn:
        over = {"attn": attn, "id": attn, "out_root": str(runs), "test_subset": args.test_subset}
        cfg = load_config(args.config, over)
        ckpt = runs / attn / "best_model.pt"
        if not ckpt.exists():
            t0 = time.perf_counter()
            train(cfg, out=str(runs / attn))
            print(f"[{attn}] trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        model, loader, _ = load_trained(cfg, ckpt)
        ann = evaluate_ann(model, loader)
        presets = list(args.presets)
        if args.also_cached:
            presets += [p for p in ("exact", "rate", "per_step") if p not in presets
                        and _cached(runs / attn / f"table-{p}" / "table.json", rows, args.extra_t, ann.n)]
        for preset in presets:
            cfg.preset = preset
            out = runs / attn / f"table-{preset}"
            table, dt = _cached(out / "table.json", rows, args.extra_t, ann.n), 0.0
            if table is None:
                t0 = time.perf_counter()
                table = evaluate_table(simulator_for(model, cfg), loader, rows, args.extra_t)
                dt = time.perf_counter() - t0
                write_table(out, ann, table, list(range(args.extra_t + 1)),
                            meta={"preset": preset, "attn": attn, "n": ann.n, "seconds": dt}, echo=False)
            s = summarise(ann, table, cfg.l)
            summary_rows.append((attn, preset, s, dt))
            report.append(table_markdown(ann, table, list(range(args.extra_t + 1)),
                                         title=f"#### attn = {attn}, preset = {preset}"))
            print(f"[{attn}/{preset}] {json.dumps(s)}  ({dt:.0f} s)", file=sys.stderr)

    L = cfg.l
    head = (f"| attn | preset | ANN | SNN t={L} (L) | t={2 * L} (2L) | t={4 * L} (4L) | first t within 0.1 | "
            "largest fall along a row | any row falls |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head] + [
        f"| {a} | {p} | {_fmt(s['ann_top1'])} | {_fmt(s['t=1L'])} | {_fmt(s['t=2L'])} | {_fmt(s['t=4L'])} | "
        f"{_fmt(s['first_t_within_0.1'])} | {_fmt(s['max_row_drop'])} | {_fmt(s['any_row_falls'])} |"
        for a, p, s, _ in summary_rows]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    cmd = "python " + " ".join(sys.argv)
    text = (f"{START}\n## Conversion fidelity\n\nCommand: `{cmd}` (config `{args.config}`, "
            f"{ann.n} test images, rows {args.rows}, extra_t 0..{args.extra_t}). Machine: {cpu}, "
            f"{args.threads} threads, torch {torch.__version__}.\n\n" + "\n".join(lines) + "\n\n"
            "<details><summary>Full tables</summary>\n\n" + "\n".join(report) + "\n</details>\n" + END)
    print(text)
    if args.write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        if START in old and END in old:
            new = old.split(START)[0] + text + old.split(END, 1)[1]
        else:
            new = old.rstrip() + "\n\n" + text + "\n"
        atomic_write_text(RESULTS, new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
