"""ann2snn against SpikingJelly 2.0's converter on one CNN, same weights, same images, one run.

The network: ``vgg16`` at a quarter of the channels with average pooling (SpikingJelly's rate
coding has no exact max-pool), trained here on a Fashion-MNIST subset with QCFS's SGD recipe:

- (a) SpikingJelly: ``Converter(RateCodingRecipe(loader, mode='Max' | '99.9%'))`` of the ReLU ANN,
  the image fed on every step, the output averaged; top-1 after T steps of one run.
- (b) ann2snn: the same ReLU ANN fine-tuned with QCFS (``--pretrained`` + ``--calibrate_batches``),
  and one trained with QCFS from scratch, converted with ``exact`` and ``rate``.  For ``exact`` two
  readings of "T steps": t = T input steps (the table's diagonal), and t = L input steps followed by
  T − L zero steps (the table's row L); ``rate`` feeds T steps (threshold 1, cap T).

Also the cost of one simulation step against one forward pass of the ANN it came from, for
each converter, as a ratio of medians of interleaved timings in this run.

    python benchmarks/cnn_vs_spikingjelly.py --write

Results go to --runs (default runs/cnn_vs_sj) and, with --write, into benchmarks/RESULTS.md
between the "cnn-vs-spikingjelly" markers.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from _results import load_run, write_marked

from ann2snn.app.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
STEPS = (1, 2, 4, 8, 16, 32, 64)


def train_all(runs: Path, args) -> dict[str, Path]:
    from ann2snn.app.cli import main

    base = ["-c", str(ROOT / "configs" / "vgg16_fashion_mnist.yml"), "--use_maxpool", "false",
            "--train_subset", str(args.train_subset), "--test_subset", str(args.test_subset),
            "--out_root", str(runs), "--l", str(args.levels)]
    plans = {
        "relu": ["--quantize", "false", "--epochs", str(args.relu_epochs)],
        "qcfs_finetuned": ["--pretrained", str(runs / "relu" / "best_model.pt"), "--calibrate_batches", "8",
                           "--epochs", str(args.qcfs_epochs), "--lr", "0.01"],
        "qcfs_scratch": ["--epochs", str(args.relu_epochs + args.qcfs_epochs)],
    }
    out = {}
    for name, extra in plans.items():
        run = runs / name
        if not (run / "best_model.pt").is_file():
            t0 = time.perf_counter()
            assert main(["train", *base, *extra, "--id", name, "--out", str(run)]) == 0
            print(f"trained {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        out[name] = run / "best_model.pt"
    return out


load = load_run


@torch.no_grad()
def spikingjelly_curve(relu, calib, loader, mode: str) -> tuple[dict[int, float], torch.nn.Module]:
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.ann2snn import Converter
    from spikingjelly.activation_based.ann2snn.recipes import RateCodingRecipe

    snn = Converter(recipe=RateCodingRecipe(calib, mode=mode)).convert(relu).eval()
    hits, n = {T: 0 for T in STEPS}, 0
    for x, y in loader:
        functional.reset_net(snn)
        acc = None
        for k in range(1, max(STEPS) + 1):
            out = snn(x)
            acc = out if acc is None else acc + out
            if k in hits:
                hits[k] += int((acc.argmax(-1) == y).sum())
        n += y.shape[0]
    functional.reset_net(snn)
    return {T: 100.0 * h / n for T, h in hits.items()}, snn


def ann2snn_curves(model, cfg, loader) -> dict[str, dict[int, float]]:
    from ann2snn.app.pipeline import simulator_for
    from ann2snn.metrics import evaluate_table

    out = {}
    for preset in ("exact", "rate"):
        cfg.preset = preset
        sim = simulator_for(model, cfg)
        diag = evaluate_table(sim, loader, list(STEPS), 0)
        out[f"{preset}, t = T"] = {T: diag[T].top1[0] for T in STEPS}
        if preset == "exact":
            L = cfg.l
            row = evaluate_table(sim, loader, [L], max(STEPS) - L)[L]
            out[f"exact, t = L = {L}, then T − L zero steps"] = {
                T: row.top1[T - L] for T in STEPS if T >= L}
    cfg.preset = "exact"
    return out


@torch.no_grad()
def step_costs(relu, sj_snn, qcfs, loader, repeats: int) -> dict[str, float]:
    """Median time of one SNN step over the median time of one forward of its ANN (same batch)."""
    from spikingjelly.activation_based import functional

    from ann2snn.convert import convert
    from ann2snn.simulate import Simulator

    x, _ = next(iter(loader))
    sim = Simulator(convert(qcfs, "exact"))
    sim.configure(max(STEPS))
    sim.reset()
    functional.reset_net(sj_snn)
    for _ in range(3):  # warm-up, and past the first step's allocations
        relu(x), sj_snn(x), qcfs(x), sim.step(x, True)
    times = {k: [] for k in ("relu", "sj", "qcfs", "ours")}
    for _ in range(repeats):
        for key, fn in (("relu", lambda: relu(x)), ("sj", lambda: sj_snn(x)), ("qcfs", lambda: qcfs(x)),
                        ("ours", lambda: sim.step(x, True))):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    sim.reset()
    functional.reset_net(sj_snn)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"spikingjelly_step_over_relu_forward": med["sj"] / med["relu"],
            "ann2snn_step_over_qcfs_forward": med["ours"] / med["qcfs"],
            "ann2snn_step_over_relu_forward": med["ours"] / med["relu"],
            "qcfs_forward_over_relu_forward": med["qcfs"] / med["relu"], "batch": int(x.shape[0]),
            "median_s": med}


def markdown(res: dict, args) -> str:
    anns = res["ann"]
    head = "| converter, network | ANN | " + " | ".join(f"T = {T}" for T in STEPS) + " |"
    lines = ["<!-- cnn-vs-spikingjelly:start -->", "## CNN: ann2snn against SpikingJelly's converter (Fashion-MNIST)", "",
             f"Command: `python benchmarks/cnn_vs_spikingjelly.py --write`. Machine: {platform.machine()}, "
             f"{args.threads} torch threads, torch {torch.__version__}, CPU only. `vgg16` at width 0.25 with average "
             f"pooling, SGD (momentum 0.9), a {args.train_subset}-image training subset, the first "
             f"{args.test_subset} test images; L = {args.levels}. ReLU ANN: {args.relu_epochs} epochs; QCFS fine-tuned "
             f"from it: {args.qcfs_epochs} epochs (λ calibrated to the 99.9th percentile); QCFS from scratch: "
             f"{args.relu_epochs + args.qcfs_epochs} epochs. Top-1 (%) after T total steps; same weights and images "
             "for both converters.", "", head, "|---" * (len(STEPS) + 2) + "|"]
    for label, ann_key, curve in res["rows"]:
        cells = [f"{curve[T]:.2f}" if T in curve else "" for T in STEPS]
        lines.append(f"| {label} | {anns[ann_key]:.2f} | " + " | ".join(cells) + " |")
    c = res["costs"]
    lines += ["", f"One simulation step against one forward pass of its ANN (batch {c['batch']}, medians of "
              f"{args.repeats} interleaved timings): SpikingJelly {c['spikingjelly_step_over_relu_forward']:.2f}× the "
              f"ReLU ANN; ann2snn {c['ann2snn_step_over_qcfs_forward']:.2f}× the QCFS ANN "
              f"({c['ann2snn_step_over_relu_forward']:.2f}× the ReLU ANN; a QCFS forward is "
              f"{c['qcfs_forward_over_relu_forward']:.2f}× a ReLU forward).", "", res["goals"],
             "<!-- cnn-vs-spikingjelly:end -->"]
    return "\n".join(lines) + "\n"


def goals(res: dict, L: int) -> str:
    out = []
    for net in ("qcfs_finetuned", "qcfs_scratch"):
        ann = res["ann"][net]
        curves = {label: c for label, k, c in res["rows"] if k == net and label.startswith("ann2snn") and "exact" in label}
        best = max(c.get(2 * L, float("-inf")) for c in curves.values())
        within = [T for T in STEPS if any(c.get(T, float("-inf")) >= ann - 0.5 for c in curves.values())]
        out.append(f"- {net}: best exact top-1 at T = 2L = {2 * L}: {best:.2f} against its ANN {ann:.2f} "
                   f"({best - ann:+.2f}); within 0.5 of the ANN from T = {within[0] if within else 'never (≤ 64)'}.")
    relu = res["ann"]["relu"]
    for label, key, c in res["rows"]:
        if key == "relu":
            within = [T for T in STEPS if c[T] >= relu - 0.5]
            out.append(f"- {label}: within 0.5 of its ANN ({relu:.2f}) from T = {within[0] if within else 'never (≤ 64)'}.")
    return "Against the goals:\n\n" + "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/cnn_vs_sj")
    p.add_argument("--train_subset", type=int, default=20000)
    p.add_argument("--test_subset", type=int, default=1000)
    p.add_argument("--relu_epochs", type=int, default=8)
    p.add_argument("--qcfs_epochs", type=int, default=4)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--calib_batches", type=int, default=20)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    ckpts = train_all(runs, args)
    res = {"ann": {}, "rows": []}
    from ann2snn.metrics import evaluate_ann

    cfg_relu, relu, loader = load(ckpts["relu"], args.test_subset)
    res["ann"]["relu"] = evaluate_ann(relu, loader).top1
    from ann2snn.app.distributed import build_loaders

    calib = [b for _, b in zip(range(args.calib_batches), build_loaders(cfg_relu)[0])]
    sj_snn = None
    for mode in ("Max", "99.9%"):
        t0 = time.perf_counter()
        curve, snn = spikingjelly_curve(relu, calib, loader, mode)
        sj_snn = sj_snn or snn
        res["rows"].append((f"SpikingJelly RateCodingRecipe '{mode}', ReLU ANN", "relu", curve))
        print(mode, curve, f"{time.perf_counter() - t0:.0f} s", flush=True)
    for net in ("qcfs_finetuned", "qcfs_scratch"):
        cfg, model, loader = load(ckpts[net], args.test_subset)
        res["ann"][net] = evaluate_ann(model, loader).top1
        t0 = time.perf_counter()
        for label, curve in ann2snn_curves(model, cfg, loader).items():
            res["rows"].append((f"ann2snn {label}, {net.replace('_', ' ')}", net, curve))
        print(net, f"{time.perf_counter() - t0:.0f} s", flush=True)
    _, qcfs, _ = load(ckpts["qcfs_finetuned"], args.test_subset)
    res["costs"] = step_costs(relu, sj_snn, qcfs, loader, args.repeats)
    res["goals"] = goals(res, args.levels)
    atomic_write_text(runs / "cnn_vs_sj.json", json.dumps(res, indent=2, default=str))
    md = markdown(res, args)
    atomic_write_text(runs / "cnn_vs_sj.md", md)
    print(md)
    if args.write:
        write_marked("cnn-vs-spikingjelly", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
