"""Converted vs directly trained spiking transformers on Fashion-MNIST (issue 5).

Three models of the same transformer shape (dim, depth, heads, MLP ratio), trained by the
toolkit's own training code on the same data subset for the same number of epochs:

- the QCFS ANN (``configs/fashion_mnist.yml``; Bu et al., ICLR 2022), converted with the ``exact``
  preset and simulated for T = 4 and T = 8 steps;
- Spikformer (Zhou et al., ICLR 2023) and the Spike-driven Transformer (Yao et al., NeurIPS 2023)
  trained directly at T = 4 (``configs/{spikformer,sdt}_fashion_mnist.yml``).

Each keeps its own config's recipe (learning rate, warmup, smoothing); the shape, data, epochs,
batch size and seed are overridden to be equal.  Reported: test top-1 (after step T; the direct
models also per step), training wall time per epoch (the training phase only, timed around the
toolkit's epoch loop) and its ratio to the ANN's, and the energy estimate of ``ann2snn.energy``
(per image, 45 nm constants) with the mean firing rate.  Because other processes on a shared
machine change the speed over minutes, the training-cost ratio is also measured interleaved: after
training, the three models take turns (round-robin, ``--speed_rounds`` rounds) through the same
epoch function on one fixed batch, and the median seconds per batch are compared.

CPU-SIZED: small subsets, few epochs, dim 64 — a comparison at equal (tiny) budget, NOT the
papers' recipes (see configs/*_cifar10.yml for those).  Timings depend on the machine and its load;
the load average is recorded with the results.

    python benchmarks/direct_vs_convert.py                 # the defaults below
    python benchmarks/direct_vs_convert.py --epochs 1 --train_subset 512 --test_subset 256   # smoke
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import statistics

import torch

import ann2snn.app.train as train_mod
from ann2snn.app.config import load_config
from ann2snn.app.files import atomic_write_text
from ann2snn.app.pipeline import load_trained, simulator_for
from ann2snn.energy import measure_energy
from ann2snn.metrics import evaluate_ann
from ann2snn.models import model_kind

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (config, how it is trained, SNN time steps to report)
    "QCFS transformer": ("configs/fashion_mnist.yml", "ANN (QCFS, L = 4) → converted", (4, 8)),
    "Spikformer": ("configs/spikformer_fashion_mnist.yml", "SNN, direct", (4,)),
    "SDT": ("configs/sdt_fashion_mnist.yml", "SNN, direct", (4,)),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--num_heads", type=int, default=4)
    p.add_argument("--mlp_ratio", type=float, default=4.0)
    p.add_argument("--train_subset", type=int, default=10000)
    p.add_argument("--test_subset", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 is far faster on a 2-core machine shared with other jobs "
                        "(2 OpenMP threads stall at every barrier when a core is taken)")
    p.add_argument("--speed_rounds", type=int, default=7, help="round-robin rounds of the interleaved timing")
    p.add_argument("--energy_batches", type=int, default=None,
                   help="batches measured for energy (default: the whole test subset)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "direct_vs_convert"))
    return p.parse_args(argv)


class EpochTimer:
    """Times the toolkit's training-epoch function (the training phase, not the test pass)."""

    def __init__(self):
        self.seconds: list[float] = []  # wall
        self.cpu_seconds: list[float] = []  # this process's CPU time, all threads
        self._orig = train_mod._train_one_epoch

    def __enter__(self):
        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return self._orig(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - t0)
                self.cpu_seconds.append(time.process_time() - c0)

        train_mod._train_one_epoch = timed
        return self

    def __exit__(self, *exc):
        train_mod._train_one_epoch = self._orig


def run_model(name: str, args, work: Path) -> dict:
    config, how, steps = MODELS[name]
    overrides = dict(dim=args.dim, depth=args.depth, num_heads=args.num_heads, mlp_ratio=args.mlp_ratio,
                     train_subset=args.train_subset, test_subset=args.test_subset, epochs=args.epochs,
                     bs=args.bs, seed=args.seed, out_root=str(work), save=True, device="cpu")
    if name != "QCFS transformer":
        overrides["warmup_epochs"] = min(load_config(ROOT / config).warmup_epochs, max(args.epochs - 1, 0))
    cfg = load_config(ROOT / config, overrides)
    run_dir = work / cfg.id
    print(f"\n=== {name}: train {config} with {overrides}", flush=True)
    with EpochTimer() as timer:
        t0 = time.perf_counter()
        train_mod.train(cfg, out=str(run_dir))
        total_s = time.perf_counter() - t0
    model, loader, _ = load_trained(cfg, run_dir / "best_model.pt")
    own = evaluate_ann(model, loader, desc=f"{name} (own forward)")
    x, y = next(iter(loader))  # a fixed batch for the interleaved timing (test images: any batch will do)
    out = {"name": name, "config": config, "how": how, "cfg": cfg.to_dict(), "_speed": (model, cfg, x, y),
           "params": sum(p.numel() for p in model.parameters()), "train_epoch_s": timer.seconds,
           "train_epoch_cpu_s": timer.cpu_seconds,
           "train_total_s": total_s, "own_top1": own.top1, "n_test": own.n, "snn": {}}
    for t in steps:
        res = measure_energy(model, simulator_for(model, cfg), loader, t, max_batches=args.energy_batches)
        tot = res.totals
        out["snn"][t] = {"top1_per_step": res.accuracy.snn_top1_within_run, "e_snn_uj": tot.e_snn_mj * 1e3,
                         "e_ann_uj": tot.e_ann_mj * 1e3, "mean_rate": tot.mean_rate, "sops": tot.sops,
                         "flops": tot.flops, "energy_images": tot.images}
        print(f"{name} T={t}: top-1 within the T-step run {['%.2f' % a for a in res.accuracy.snn_top1_within_run]}, "
              f"E_SNN {tot.e_snn_mj * 1e3:.3f} µJ/image", flush=True)
    return out


def interleaved_speed(results: list[dict], rounds: int) -> None:
    """Median wall seconds per training batch, the models taking turns so that they share the
    machine's load; stored as ``batch_s`` (and the per-round samples as ``batch_s_all``)."""
    setups = []
    for r in results:
        model, cfg, x, y = r.pop("_speed")
        net = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.wd)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        kw = dict(label_smoothing=cfg.label_smoothing, mixup=cfg.mixup, reset=model_kind(cfg.model) == "direct")
        setups.append((r, net, opt, scaler, x[: cfg.bs], y[: cfg.bs], kw))
        r["batch_s_all"] = []
    for i in range(rounds + 1):  # round 0 warms up
        for r, net, opt, scaler, x, y, kw in setups:
            t0 = time.perf_counter()
            train_mod._train_one_epoch(net, [(x, y)], opt, scaler, torch.device("cpu"), False, 0, **kw)
            if i:
                r["batch_s_all"].append(time.perf_counter() - t0)
    for r, *_ in setups:
        r["batch_s"] = statistics.median(r["batch_s_all"])


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def markdown(results: list[dict], meta: dict) -> str:
    ann = results[0]
    ann_wall = _mean(ann["train_epoch_s"])
    lines = ["| model | trained as | T | top-1 (%) | train s/epoch | × ANN (epochs) | × ANN (interleaved) "
             "| E/image (µJ, standard model) | mean firing rate |", "|---|---|---|---|---|---|---|---|---|"]
    e_ann = ann["snn"][4]["e_ann_uj"]
    lines.append(f"| {ann['name']} | ANN (QCFS, L = 4) | – | {ann['own_top1']:.2f} | {ann_wall:.1f} | 1.00 | 1.00 | "
                 f"{e_ann:.2f} (E_ANN) | – |")
    for r in results:
        wall = _mean(r["train_epoch_s"])
        for t, s in sorted(r["snn"].items()):
            how = "converted (exact)" if r is ann else "SNN, direct"
            train = "same ANN | – | –" if r is ann else \
                f"{wall:.1f} | {wall / ann_wall:.2f} | {r['batch_s'] / ann['batch_s']:.2f}"
            lines.append(f"| {r['name']} | {how} | {t} | {s['top1_per_step'][-1]:.2f} | {train} | "
                         f"{s['e_snn_uj']:.2f} | {s['mean_rate']:.3f} |")
    steps = ["", "Top-1 (%) after each step (one pass per model and T):", "",
             "| model | T | " + " | ".join(f"t={k}" for k in range(1, 9)) + " |", "|---" * 10 + "|"]
    for r in results:
        for t, s in sorted(r["snn"].items()):
            cells = [f"{a:.2f}" for a in s["top1_per_step"]] + [""] * (8 - len(s["top1_per_step"]))
            steps.append(f"| {r['name']} | {t} | " + " | ".join(cells) + " |")
    speeds = " / ".join(f"{r['batch_s']:.3f}" for r in results)
    head = (f"Fashion-MNIST, {meta['train_subset']} training images (fixed subset), {meta['n_test']} test images, "
            f"{meta['epochs']} epochs, batch {meta['bs']}; every model dim {meta['dim']}, depth {meta['depth']}, "
            f"{meta['num_heads']} heads, MLP ratio {meta['mlp_ratio']:g}. CPU: {meta['threads']} torch threads, "
            f"load average {meta['load_before']:.1f} before / {meta['load_after']:.1f} after; "
            f"{meta['wall_min']:.1f} min in all. Interleaved: median s per training batch of {meta['bs']} "
            f"({' / '.join(r['name'] for r in results)}) {speeds}.")
    return head + "\n\n" + "\n".join(lines + steps) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before, t0 = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="direct_vs_convert-") as tmp:
        results = [run_model(name, args, Path(tmp)) for name in MODELS]
        interleaved_speed(results, args.speed_rounds)
    meta = {**vars(args), "n_test": results[0]["n_test"], "load_before": load_before,
            "load_after": os.getloadavg()[0], "wall_min": (time.perf_counter() - t0) / 60,
            "command": "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count()}
    md = markdown(results, meta)
    atomic_write_text(out / "direct_vs_convert.md", f"Command: `{meta['command']}`\n\n{md}")
    atomic_write_text(out / "direct_vs_convert.json", json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print("\n" + md)
    print(f"written: {out / 'direct_vs_convert.md'}, {out / 'direct_vs_convert.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
