"""Simulation speed: one SNN step vs one ANN forward, and table rows by branching vs cell by cell.

Measured in one run, on one batch and one model (a QCFS transformer with random weights and λ
calibrated on the batch, so that neurons spike):

(a) ``Simulator.step`` of the converted ``exact`` and ``seed`` networks vs one ANN forward
    (eval, no_grad).  Target: a step costs at most 1.3× a forward.
(b) one table row (t = 8, extra_t = 0..4) with ``run_rows(x, [8], 4)`` vs cell by cell as the
    original does it (one full ``Simulator.run(x, 8, e)`` per cell e = 0..4); then the whole
    1..8 × 0..4 table.  Target: ≥ 3× for the row.  Branched and cell-by-cell results are checked
    to be identical.
(c) the design question: layer-wise multi-step (each stateless layer applied once to a [T·B]
    batch, as spikingjelly's ``step_mode='m'`` with ``SeqToANNContainer``) vs per-step calls (the
    whole network once per step, this package's choice).  The stateless layers are all of an ANN
    forward, so their cost is measured directly: one ANN forward on the [T·B] batch vs T forwards
    on [B].  A ratio near 1 means multi-step buys no GEMM efficiency here.

Timings: warm-up, then the median of the repeats (time.perf_counter); in (a) the ANN forward and
the two steps take turns within every repeat.  Prints a Markdown
table; ``--write`` puts it in benchmarks/RESULTS.md under "## Simulation speed" (replacing an
earlier version of that section only).

    python benchmarks/simulate_speed.py                      # dim 128, depth 2, 32×32, batch 64
    python benchmarks/simulate_speed.py --img 8 --dim 64 --batch 16 --repeats 3   # quick look
"""
from __future__ import annotations

import argparse
import platform
import sys
import statistics
import time
from pathlib import Path

import torch

from ann2snn.convert import convert
from ann2snn.quant import quantize
from ann2snn.models import create_model
from ann2snn.quant import QCFS
from ann2snn.simulate import Simulator
from ann2snn.app.files import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Simulation speed"
IN_CHANNELS = {32: 3, 28: 1, 8: 1}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--levels", type=int, default=4, help="QCFS levels L")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--img", type=int, default=32, choices=sorted(IN_CHANNELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9, help="timed repeats of (a), interleaved")
    p.add_argument("--row-repeats", type=int, default=3, help="timed repeats of the row in (b)")
    p.add_argument("--table-repeats", type=int, default=1, help="timed repeats of the whole table")
    p.add_argument("--t", type=int, default=8, help="the row of (b); the table has rows 1..t")
    p.add_argument("--extra", type=int, default=4, help="extra steps 0..extra")
    p.add_argument("--skip-table", action="store_true", help="skip the whole-table comparison")
    p.add_argument("--profile", action="store_true",
                   help="only print torch.profiler tables of one ANN forward and one step of each preset")
    p.add_argument("--write", action="store_true", help=f"write the section into {RESULTS}")
    return p.parse_args(argv)


def note(msg: str) -> None:
    """Progress on stderr (a full default run takes minutes on a busy 2-core machine)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def build_model(args) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("transformer", dim=args.dim, num_heads=args.heads, depth=args.depth,
                         in_channels=IN_CHANNELS[args.img], img_size=args.img, num_classes=10)
    quantize(model, args.levels)
    x = torch.randn(args.batch, IN_CHANNELS[args.img], args.img, args.img)
    # BN statistics from this batch, then λ = 99th percentile of each site's input (two passes,
    # since a site's input depends on the λ upstream): a network that actually spikes.
    model.train()
    model(x)
    model.eval()
    seen: dict[QCFS, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen.__setitem__(m, inp[0]))
             for m in model.modules() if isinstance(m, QCFS)]
    for _ in range(2):
        model(x)
        for m, inp in seen.items():
            m.lam.fill_(max(float(torch.quantile(inp.flatten()[:100_000].float(), 0.99)), 1e-3))
    for h in hooks:
        h.remove()
    return model, x


def interleaved_medians(jobs: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median time of each job, the jobs taking turns in every repeat, so that a change of load on
    a shared machine hits all of them alike and their ratios stay meaningful."""
    for fn in jobs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(repeats):
        for k, fn in jobs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def spike_rate(sim: Simulator, x: torch.Tensor, t: int) -> float:
    """Fraction of neuron outputs that are spikes (either sign), averaged over sites and t drive
    steps: a sanity check that the benchmark network is not silent."""
    fractions: list[float] = []
    hooks = [n.register_forward_hook(lambda m, i, o: fractions.append(float((o != 0).float().mean())))
             for n in sim.neurons]
    sim.run(x, t, 0)
    for h in hooks:
        h.remove()
    return sum(fractions) / max(len(fractions), 1)


def bench(args) -> dict:
    torch.set_num_threads(args.threads)
    model, x = build_model(args)
    sims = {p: Simulator(convert(model, p)) for p in ("exact", "per_step")}
    res: dict = {"args": vars(args)}
    for sim in sims.values():  # drive steps of row t, from a reset state
        sim.configure(args.t)
        sim.reset()
    jobs = {"ann_s": torch.no_grad()(lambda: model(x))}
    jobs.update({f"step_{p}_s": (lambda s=sim: s.step(x, drive=True)) for p, sim in sims.items()})
    xs = x.repeat(args.t, *([1] * (x.dim() - 1)))  # [T·B, ...]
    jobs["ann_TB_s"] = torch.no_grad()(lambda: model(xs))
    jobs["ann_T_calls_s"] = torch.no_grad()(lambda: [model(x) for _ in range(args.t)])
    res.update(interleaved_medians(jobs, args.repeats))
    note("(c) one forward on [T·B] {:.1f} ms, T forwards on [B] {:.1f} ms".format(
        res["ann_TB_s"] * 1e3, res["ann_T_calls_s"] * 1e3))
    for p, sim in sims.items():
        res[f"rate_{p}"] = spike_rate(sim, x, args.t)
    note("(a) ANN {:.1f} ms, exact step {:.1f} ms, seed step {:.1f} ms".format(
        res["ann_s"] * 1e3, res["step_exact_s"] * 1e3, res["step_seed_s"] * 1e3))

    t, E = args.t, args.extra
    for p, sim in sims.items():
        cells = lambda: [sim.run(x, t, e) for e in range(E + 1)]  # noqa: E731
        branched = lambda: sim.run_rows(x, [t], E)  # noqa: E731
        # the branched row must give the cell-by-cell results, bit for bit
        row, ref = branched()[t], cells()
        assert all(torch.equal(row[e], ref[e][t - 1 + e]) for e in range(E + 1)), p
        res[f"row_cells_{p}_s"] = median_time(cells, args.row_repeats, warmup=0)
        res[f"row_branch_{p}_s"] = median_time(branched, args.row_repeats, warmup=0)
        note(f"(b) {p} row: cells {res[f'row_cells_{p}_s']:.2f} s, run_rows {res[f'row_branch_{p}_s']:.2f} s")
        if not args.skip_table:
            rows = list(range(1, t + 1))
            res[f"table_cells_{p}_s"] = median_time(
                lambda: [sim.run(x, r, e) for r in rows for e in range(E + 1)], args.table_repeats, warmup=0)
            res[f"table_branch_{p}_s"] = median_time(lambda: sim.run_rows(x, rows, E), args.table_repeats,
                                                     warmup=0)
            res[f"table_steps_{p}"] = table_steps(sim, rows, E)
            note(f"(b) {p} table: cells {res[f'table_cells_{p}_s']:.2f} s, "
                 f"run_rows {res[f'table_branch_{p}_s']:.2f} s")
    return res


def profile(args) -> None:
    """Which ops dominate: self CPU time of one ANN forward and one drive step of each preset."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    torch.set_num_threads(args.threads)
    model, x = build_model(args)
    sims = {p: Simulator(convert(model, p)) for p in ("exact", "per_step")}
    for sim in sims.values():
        sim.configure(args.t)
        sim.reset()
        for _ in range(2):
            sim.step(x, drive=True)
    jobs = {"ANN forward": lambda: model(x)}
    jobs.update({f"SNN step ({p})": (lambda s=sim: s.step(x, drive=True)) for p, sim in sims.items()})
    with torch.no_grad():
        model(x)
        for name, fn in jobs.items():
            with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
                fn()
            print(f"### {name}\n")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


def table_steps(sim: Simulator, rows: list[int], E: int) -> tuple[int, int]:
    """(step evaluations by run_rows, by cell-by-cell) for this simulator's presets."""
    trunk = [t for t in rows if sim.shares_trunk(t)]
    branched = (max(trunk) + len(trunk) * E if trunk else 0) + sum(t + E for t in rows if t not in trunk)
    cells = sum(t + e for t in rows for e in range(E + 1))
    return branched, cells


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(res: dict, command: str) -> str:
    a = res["args"]
    ms = lambda s: f"{s * 1e3:.1f} ms"  # noqa: E731
    t, E = a["t"], a["extra"]
    lines = [
        SECTION, "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_model()}, torch {torch.__version__}, {a['threads']} threads "
        f"(shared machine: other jobs were running, so absolute times are noisy; ratios are from one run).  ",
        f"Model: QCFS transformer dim {a['dim']}, depth {a['depth']}, {a['heads']} heads, L = {a['levels']}, "
        f"{a['img']}×{a['img']} input, batch {a['batch']}; median of {a['repeats']} (row: "
        f"{a['row_repeats']}, whole table: {a['table_repeats']}) after warm-up.",
        "",
        "(a) one simulation step vs one ANN forward (target ≤ 1.3×)",
        "",
        "| | time | × ANN forward | fraction of neurons spiking per step |",
        "|---|---|---|---|",
        f"| ANN forward (eval, no_grad) | {ms(res['ann_s'])} | 1.00 | |",
    ]
    for p in ("exact", "per_step"):
        lines.append(f"| SNN step, preset {p} | {ms(res[f'step_{p}_s'])} | "
                     f"{res[f'step_{p}_s'] / res['ann_s']:.2f} | {res[f'rate_{p}']:.3f} |")
    lines += ["", f"(b) table rows: branching (`run_rows`) vs cell by cell (one `run` per cell) (target ≥ 3× for the row)",
              "", "| preset | what | cell by cell | run_rows | speed-up | step evaluations |", "|---|---|---|---|---|---|"]
    for p in ("exact", "per_step"):
        row_steps = f"{t + E} vs {sum(t + e for e in range(E + 1))}"
        lines.append(f"| {p} | row t = {t}, extra 0–{E} | {ms(res[f'row_cells_{p}_s'])} | "
                     f"{ms(res[f'row_branch_{p}_s'])} | {res[f'row_cells_{p}_s'] / res[f'row_branch_{p}_s']:.2f}× | "
                     f"{row_steps} |")
        if f"table_cells_{p}_s" in res:
            b, c = res[f"table_steps_{p}"]
            lines.append(f"| {p} | table t = 1–{t} × extra 0–{E} | {ms(res[f'table_cells_{p}_s'])} | "
                         f"{ms(res[f'table_branch_{p}_s'])} | "
                         f"{res[f'table_cells_{p}_s'] / res[f'table_branch_{p}_s']:.2f}× | {b} vs {c} |")
    lines += ["", f"(c) layer-wise multi-step over [T·B] vs per-step calls: the stateless layers (one ANN "
              f"forward's worth), T = {t}", "", "| | time | ratio |", "|---|---|---|",
              f"| T forwards on [B] (per-step) | {ms(res['ann_T_calls_s'])} | 1.00 |",
              f"| one forward on [T·B] (multi-step) | {ms(res['ann_TB_s'])} | "
              f"{res['ann_TB_s'] / res['ann_T_calls_s']:.2f} |"]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it); other sections stay as they are."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("\n" + old[nxt + 1:] if nxt >= 0 else "")
    atomic_write_text(path, new)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.profile:
        profile(args)
        return
    res = bench(args)
    cmd = "python benchmarks/simulate_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(res, cmd.strip())
    print(text)
    if args.write:
        write_section(text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
