"""A spike-driven ViT: where the sites go and which float operations stay decide what the converted
transformer costs (issue 20).  Fashion-MNIST, the ``vit_fashion_mnist`` size (dim 64, depth 2,
4 heads, patch 4, L = 4, 12 epochs), trained here once per variant:

- ``qkv``: today's placement (sites on q, k, v and after GELU; LayerNorm, softmax, GELU kept);
- ``norm``: also a signed site after every LayerNorm (SpikeZIP-TF's placement);
- ``synapses``: ``placement: synapses``, every Linear and product reads spikes (sites after each
  LayerNorm, on the softmax and on the attention output); LayerNorm, softmax and GELU kept;
- ``spike_driven``: ``configs/vit_spike_driven.yml``: ``placement: synapses`` and no float
  operation left (``attn: ssa``, ``norm: batch``, ``mlp_act: relu``);
- ``synapses_ssa``, ``synapses_batchnorm``: ``synapses`` with the softmax-free attention alone, and
  with the LayerNorm-free BatchNorm alone;
- ``spike_driven_l3``, ``spike_driven_l2``: the same with L = 3 and L = 2 levels: fewer spikes per
  activation, at the cost the QANN's accuracy shows.

For each, :func:`ann2snn.frontier.frontier` over m ∈ {1, 2, L}, t = 1..2L and the helpful extra
steps up to L: top-1 on the first ``--test-subset`` (2000) test images, energy per image on the
first ``--energy-batches`` (8 × 64 = 512) under both energy models (the standard one against the
fp32 ANN, the memory model against the equal-bit QNN).  The point reported per variant is the
one of least standard-model energy within 0.5 of its own quantized ANN.

    python benchmarks/vit_spike_driven.py --write              # all variants
    python benchmarks/vit_spike_driven.py --variants spike_driven --write

Runs go to --runs (default runs/vit_spike_driven), each with its frontier files; --write puts the
section between the "vit-spike-driven" markers of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from _results import load_run, write_marked

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "qkv": ["-c", "configs/vit_fashion_mnist.yml"],
    "norm": ["-c", "configs/vit_fashion_mnist.yml", "--placement", "norm"],
    "synapses": ["-c", "configs/vit_fashion_mnist.yml", "--placement", "synapses"],
    "spike_driven": ["-c", "configs/vit_spike_driven.yml"],
    # each float-free change alone, with every synapse reading spikes: softmax-free; LayerNorm-free
    "synapses_ssa": ["-c", "configs/vit_fashion_mnist.yml", "--placement", "synapses", "--attn", "ssa"],
    "synapses_batchnorm": ["-c", "configs/vit_fashion_mnist.yml", "--placement", "synapses", "--norm", "batch"],
    # fewer levels: fewer spikes per activation at T = 1 (m = L), at the QANN's own accuracy cost
    "spike_driven_l3": ["-c", "configs/vit_spike_driven.yml", "--l", "3"],
    "spike_driven_l2": ["-c", "configs/vit_spike_driven.yml", "--l", "2"],
}
WITHIN = 0.5


def train(runs: Path, name: str, epochs: int | None) -> tuple[Path, float | None]:
    from ann2snn.app.cli import main

    run = runs / name
    if (run / "train_seconds.txt").is_file():  # written when its training finished
        return run / "best_model.pt", None
    args = [a if not a.startswith("configs/") else str(ROOT / a) for a in VARIANTS[name]]
    args += ["--epochs", str(epochs)] if epochs else []
    args += ["--resume"] if (run / "last.pt").is_file() else []  # an interrupted training goes on
    t0 = time.perf_counter()
    assert main(["train", *args, "--id", name, "--out", str(run), "--out_root", str(runs)]) == 0
    seconds = time.perf_counter() - t0
    (run / "train_seconds.txt").write_text(f"{seconds:.0f}\n")
    return run / "best_model.pt", seconds


def frontier_of(ckpt: Path, args) -> dict:
    from ann2snn.app.pipeline import simulator_for
    from ann2snn.app.plots import plot_frontier
    from ann2snn.app.report import write_frontier
    from ann2snn.frontier import frontier

    cfg, model, loader = load_run(ckpt, args.test_subset)
    sim = simulator_for(model, cfg)
    L = cfg.l
    t0 = time.perf_counter()
    res = frontier(model, sim, loader, sorted({1, 2, L}), list(range(1, 2 * L + 1)), L, args.energy_batches)
    seconds = time.perf_counter() - t0
    write_frontier(ckpt.parent / "frontier", res, meta={"seconds": seconds}, echo=False)
    plot_frontier(res, ckpt.parent / "frontier" / "frontier.png")
    out = res.to_dict()
    out["seconds"] = seconds
    print(f"frontier {ckpt.parent.name}: {seconds:.0f} s", flush=True)
    return out


def best_point(fr: dict) -> dict | None:
    """The point of least standard-model energy within WITHIN of the variant's own QANN."""
    ok = [p for p in fr["points"] if p["top1"] >= fr["ann"]["top1"] - WITHIN]
    return min(ok, key=lambda p: (p["e_snn_mj"], p["steps"])) if ok else None


def _row(name: str, fr: dict) -> str:
    p = best_point(fr)
    ann = fr["ann"]["top1"]
    name = f"{name}` (L = {fr.get('L', '?')})"
    if p is None:
        return f"| `{name} | {ann:.2f} | not within {WITHIN} | | | | | | | | | |"
    be = "none" if p["break_even_rate"] is None else f"{p['break_even_rate']:.3g}"
    return (f"| `{name} | {ann:.2f} | T = {p['steps']} (t = {p['t']} + {p['extra_t']}), m = {p['spike_levels']} | "
            f"{p['top1']:.2f} | {p['e_snn_mj']:.4g} | {p['e_snn_mj'] / p['e_ann_mj']:.2f}× | "
            f"{100 * p['non_spike_share']:.1f} % | {p['e_snn_memory_mj']:.4g} | {p['e_qnn_mj']:.4g} | "
            f"{1 / p['qnn_snn_ratio']:.2f}× | {p['spikes_per_synapse']:.3g} | {be} |")


GOAL = 0.3  # issue 20: a point within WITHIN of its own QANN at <= 0.3x the fp32 ANN's energy (standard model)


def _goal_line(results: dict) -> str:
    """Which variants reach the goal, with their QANN's accuracy (what the cheaper point costs)."""
    met = []
    for name, fr in results.items():
        p = best_point(fr)
        if p is not None and p["e_snn_mj"] / p["e_ann_mj"] <= GOAL:
            met.append(f"`{name}` ({p['e_snn_mj'] / p['e_ann_mj']:.2f}× at T = {p['steps']}, m = {p['spike_levels']}; "
                       f"its QANN {fr['ann']['top1']:.2f} %)")
    if not met:
        return f"No variant has a point within {WITHIN} of its QANN at ≤ {GOAL}× the fp32 ANN's energy."
    return (f"Within {WITHIN} of their own QANN at ≤ {GOAL}× the fp32 ANN's energy (standard model): " + "; ".join(met)
            + ". Fewer levels send fewer spikes per activation; what that costs shows in the QANN column.")


def _energy_images(results: dict) -> str:
    counts = sorted({fr.get("energy_images") for fr in results.values()} - {None})
    return " / ".join(map(str, counts)) or "?"


def markdown(results: dict, args) -> str:
    threads = torch.get_num_threads()
    lines = ["<!-- vit-spike-driven:start -->", "## A spike-driven ViT: placements, variants and energy under both models "
             "(Fashion-MNIST)", "",
             f"Command: `python benchmarks/vit_spike_driven.py --write`. Machine: {platform.machine()}, {threads} torch "
             f"threads, torch {torch.__version__}, CPU only. The `vit_fashion_mnist` size (dim 64, depth 2, 4 heads, "
             "patch 4, L = 4, AdamW, 12 epochs on 60 000 images), one training per variant; top-1 on the first "
             f"{args.test_subset} test images, energy per image on the first {args.energy_batches} test batches of 64 "
             f"({_energy_images(results)} images), the same images for every variant. Frontier: m ∈ {{1, 2, L}}, t = 1..2L and the helpful "
             "extra steps up to L. The point shown is the one of least standard-model energy within "
             f"{WITHIN} of the variant's own quantized ANN. Standard model: E_MAC 4.6 pJ / E_AC 0.9 pJ (fp32, 45 nm) "
             "against the fp32 ANN; memory model: integer hardware and SRAM traffic against the equal-bit QNN "
             "(`ann2snn/energy/hardware.py`: 8-bit weights, each layer's weights read per event or once per step, the cheaper).", "",
             "| variant | QANN top-1 | point | top-1 | E_SNN std (mJ) | E_SNN / E_ANN(fp32) | not spike-driven | "
             "E_SNN memory (mJ) | E_QNN (mJ) | E_SNN / E_QNN | spikes / synapse | break-even rate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(name, fr) for name, fr in results.items()]
    lines += ["", _goal_line(results)]
    lines += ["", "Per variant (trained in; frontier files in `runs/vit_spike_driven/<variant>/frontier/`):", ""]
    for name, fr in results.items():
        p = best_point(fr)
        verdict = "" if p is None else (
            f"; memory model: the SNN {'wins' if p['qnn_snn_ratio'] > 1 else 'loses'} against its equal-bit QNN "
            f"({1 / p['qnn_snn_ratio']:.2f}× its energy)")
        trained = f"trained in {fr['train_seconds']:.0f} s" if fr.get("train_seconds") else "trained earlier"
        lines.append(f"- `{name}`: {trained}, frontier in {fr['seconds']:.0f} s; {len(fr['points'])} points{verdict}.")
    lines += ["<!-- vit-spike-driven:end -->", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    p.add_argument("--runs", default=str(ROOT / "runs" / "vit_spike_driven"))
    p.add_argument("--epochs", type=int, default=None, help="override the configs' 12 epochs (a quick look)")
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--energy-batches", type=int, default=8)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    runs = Path(args.runs)
    results = {}
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
        ckpt, seconds = train(runs, name, args.epochs)
        saved = ckpt.parent / "frontier" / "frontier.json"
        fr = json.loads(saved.read_text()) if saved.is_file() else frontier_of(ckpt, args)
        secs_file = ckpt.parent / "train_seconds.txt"
        fr["train_seconds"] = seconds or (float(secs_file.read_text()) if secs_file.is_file() else None)
        results[name] = fr
    md = markdown(results, args)
    print(md)
    if args.write:
        write_marked("vit-spike-driven", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
