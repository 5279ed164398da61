"""Fewer steps with multi-level spikes: the accuracy–latency–energy frontier of the Fashion-MNIST
transformer (softmax and ssa attention), and pipeline lag against depth.

1. Frontier.  ``configs/fashion_mnist.yml`` trained with ``attn: softmax`` and ``attn: ssa`` (or the
   checkpoints already in --runs), then :func:`ann2snn.frontier.frontier` for spike_levels
   m ∈ {1, 2, L}, t = 1..2L and the extra steps (≤ L) that help: top-1 on the first --test_subset
   test images, energy per image on the first --energy_batches batches.  Goals: within 0.5 of the
   ANN at T = 1 with m = L and at T = 2 with m = L/2; the fewest total steps at which binary
   spikes come within 0.1 of the ANN; the energy of each point.
2. Pipeline lag.  Transformers of the same width with depth 1, 2 and 4 blocks (random weights,
   λ calibrated to the 99.9th percentile of their activations on Fashion-MNIST test images, the
   default placement), converted with ``exact``, run in float64 on 64 test images for t = 1 and
   t = L with m = 1 and m = L: the steps until the output mean stays within 1e-4 · max(1, max
   |logit|) of the quantized ANN (``exact steps``) and until no operator's state moves
   (``verify``'s settle steps).

    python benchmarks/spike_levels.py --write

Results go to --runs (default runs/spike_levels) and, with --write, into benchmarks/RESULTS.md
between the "spike-levels" markers.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from _results import load_run, write_marked

from ann2snn.app.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


def train(runs: Path, attn: str) -> Path:
    from ann2snn.app.cli import main

    run = runs / attn
    if not (run / "best_model.pt").is_file():
        t0 = time.perf_counter()
        assert main(["train", "-c", str(ROOT / "configs" / "fashion_mnist.yml"), "--attn", attn, "--id", attn,
                     "--out", str(run), "--out_root", str(runs)]) == 0
        print(f"trained {attn} in {time.perf_counter() - t0:.0f} s", flush=True)
    return run / "best_model.pt"


load = load_run


def frontier_of(ckpt: Path, args, levels: list[int] | None = None, rows: list[int] | None = None) -> dict:
    from ann2snn.app.pipeline import simulator_for
    from ann2snn.frontier import frontier

    cfg, model, loader = load(ckpt, args.test_subset)
    sim = simulator_for(model, cfg)
    L = cfg.l
    t0 = time.perf_counter()
    res = frontier(model, sim, loader, levels or [1, max(1, L // 2), L], rows or list(range(1, 2 * L + 1)), L,
                   args.energy_batches).to_dict()
    res["seconds"] = time.perf_counter() - t0
    if levels is None and rows is None:  # a full frontier: its own files next to the run
        save_frontier(res, ckpt.parent / "frontier")
    print(f"frontier {ckpt.parent.name}: {res['seconds']:.0f} s", flush=True)
    return res


@torch.no_grad()
def lag(model, x, t: int, m: int, max_steps: int = 64) -> dict:
    """Steps until the output mean stays within tolerance of the quantized ANN, and verify's settle steps."""
    from ann2snn.convert import convert
    from ann2snn.verify import verify
    from ann2snn.simulate import Simulator

    q, x = copy.deepcopy(model).double(), x.double()
    ref = q(x)
    tol = TOL * max(1.0, float(ref.abs().max()))
    sim = Simulator(convert(q, "exact"), spike_levels=m)
    exact_from = None
    for k, cum in enumerate(sim.iter_run(x, t, max_steps), 1):
        ok = float((cum / t - ref).abs().max()) <= tol
        exact_from = (exact_from or k) if ok else None
    v = verify(q, sim, x, t=t, dtype=None)
    return {"exact_steps": exact_from, "settle_steps": v.settle_steps, "ok": v.ok}


def pipeline_lag(args) -> list[dict]:
    from ann2snn.app.config import load_config
    from ann2snn.app.distributed import build_loaders
    from ann2snn.models import create_model
    from ann2snn.quant import calibrate_lambdas, quantize

    cfg = load_config(str(ROOT / "configs" / "fashion_mnist.yml"), {"test_subset": 256})
    _, test, info = build_loaders(cfg)
    x = next(iter(test))[0][:64]
    rows = []
    for depth in (1, 2, 4):
        torch.manual_seed(depth)
        model = create_model("transformer", dim=cfg.dim, num_heads=cfg.num_heads, depth=depth, mlp_ratio=cfg.mlp_ratio,
                             in_channels=info.in_channels, img_size=info.img_size, num_classes=info.num_classes)
        quantize(model, cfg.l)
        calibrate_lambdas(model, [(x, None)], batches=1)
        model.eval()
        for t in (1, cfg.l):
            for m in (1, cfg.l):
                r = lag(model, x, t, m)
                rows.append({"depth": depth, "t": t, "m": m, **r})
                print(rows[-1], flush=True)
    return rows


def markdown(res: dict, args) -> str:
    L = res["L"]
    lines = ["<!-- spike-levels:start -->", "## Multi-level spikes: accuracy, steps and energy (Fashion-MNIST transformer)", "",
             f"Command: `python benchmarks/spike_levels.py --write`. Machine: {platform.machine()}, {args.threads} torch "
             f"threads, torch {torch.__version__}, CPU only. `configs/fashion_mnist.yml` (dim 128, depth 2, L = {L}, 4 "
             "epochs on a 20 000-image subset) trained with each attention variant; top-1 on the first "
             f"{args.test_subset} test images, energy per image (standard model: fp32, 45 nm) on the first {res['energy_images']}. "
             "Bits per step log2(2m+1): 1.58 (m = 1), 2.32 (m = 2), 3.17 (m = 4); T × bits is the spike-step budget. "
             "Each point is a t-step run followed by e zero steps (e = 0, and the fewest that reach the row's best), "
             "T = t + e; * marks the Pareto front of accuracy against energy.", ""]
    for attn, fr in res["frontiers"].items():
        ann = fr["ann"]["top1"]
        redo = "".join(f"; points {r.split(':')[0]} (rows) × m = {r.split(':')[1]} recomputed with "
                       f"`--merge {r}` after a simulator fix (the uncapped trunk pass of the table let m > 1 neurons "
                       "pass their cap)" for r in fr.get("recomputed", []))
        lines += [f"### attn: {attn} (quantized ANN {ann:.2f} %; frontier in {fr['seconds']:.0f} s{redo})", "",
                  "| m | t | e | T | T × bits | top-1 | Δ vs ANN | E_SNN (mJ) | ANN/SNN | not spike-driven |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for p in fr["points"]:
            lines.append(f"| {p['spike_levels']} | {p['t']} | {p['extra_t']} | {p['steps']} | {p['bit_steps']:.1f} | "
                         f"{p['top1']:.2f}{' *' if p['pareto'] else ''} | {p['delta_top1']:+.2f} | {p['e_snn_mj']:.4g} | "
                         f"{p['ann_snn_ratio']:.2f}× | {100 * p['non_spike_share']:.0f} % |")
        lines += ["", "Against the goals:", ""] + [f"- {g}" for g in goals(fr)] + [""]
    lines += ["### Pipeline lag against depth", "",
              f"Random-weight transformers of the same width (λ calibrated on 64 Fashion-MNIST test images), `exact`, "
              "float64, those 64 images. *exact steps*: the first step from which the output mean stays within "
              f"{TOL:g} · max(1, max |logit|) of the quantized ANN; *settle*: the last step at which any operator's "
              "state moved (`verify`).", "",
              "| depth | t | m | exact steps | settle | verify ok |", "|---|---|---|---|---|---|"]
    for r in res["lag"]:
        lines.append(f"| {r['depth']} | {r['t']} | {r['m']} | {r['exact_steps']} | {r['settle_steps']} | {r['ok']} |")
    lines += ["", lag_summary(res["lag"], L), "<!-- spike-levels:end -->"]
    return "\n".join(lines) + "\n"


def _point(fr, m, T):
    pts = [p for p in fr["points"] if p["spike_levels"] == m and p["steps"] == T]
    return max(pts, key=lambda p: p["top1"]) if pts else None


def goals(fr: dict) -> list[str]:
    from ann2snn.app.report import fewest_steps
    from ann2snn.results import Frontier

    L = fr["L"]
    out = []
    for m, T in ((L, 1), (max(1, L // 2), 2)):
        p = _point(fr, m, T)
        if p is None:
            out.append(f"m = {m} at T = {T}: no point")
            continue
        met = "met" if p["delta_top1"] >= -0.5 else "missed"
        out.append(f"m = {m} at T = {T}: {p['top1']:.2f} ({p['delta_top1']:+.2f}; goal within 0.5: {met}), "
                   f"{p['bit_steps']:.1f} bit-steps, {p['e_snn_mj']:.4g} mJ")
    for m in fr["levels"]:
        p = fewest_steps(Frontier.from_dict(fr), m, 0.1)
        out.append(f"fewest total steps within 0.1 of the ANN with m = {m}: " + (
            "not reached within t ≤ 2L plus ≤ L extra steps" if p is None else
            f"T = {p.steps} (t = {p.t} + {p.extra_t}; {p.bit_steps:.1f} bit-steps; {p.e_snn_mj:.4g} mJ; "
            f"top-1 {p.top1:.2f})"))
    return out


def lag_summary(rows: list[dict], L: int) -> str:
    def get(depth, t, m):
        return next(r["exact_steps"] for r in rows if (r["depth"], r["t"], r["m"]) == (depth, t, m))

    parts = []
    for t in (1, L):
        for m in (1, L):
            seq = [get(d, t, m) for d in (1, 2, 4)]
            parts.append(f"t = {t}, m = {m}: {' → '.join(str(s) for s in seq)}")
    first = all(get(d, 1, L) == 1 for d in (1, 2, 4))
    binary = [get(d, 1, 1) for d in (1, 2, 4)]
    grows = (all(a is not None and b is not None and b >= a for a, b in zip(binary, binary[1:]))
             and binary[-1] > binary[0])
    text = "Exact steps at depth 1 → 2 → 4: " + "; ".join(parts) + "."
    if first:
        text += (" With m = L and t = 1 the first step was exact at every depth: each block delivers its whole count "
                 "in the step it receives its input.")
    if grows:
        text += (f" With binary spikes (t = 1) the lag grew with depth, from {binary[0]} to {binary[-1]} steps: each "
                 "neuron needs up to L steps to send its count, and a block's neurons receive their input over the "
                 "previous block's steps, so the delays partly add up.")
    else:
        text += f" With binary spikes (t = 1) the exact steps did not grow steadily with depth ({binary})."
    return text


def publish(res: dict, runs: Path, args) -> int:
    """The JSON and Markdown in --runs, the Markdown printed and, with --write, put into RESULTS.md."""
    atomic_write_text(runs / "spike_levels.json", json.dumps(res, indent=2, default=str))
    md = markdown(res, args)
    atomic_write_text(runs / "spike_levels.md", md)
    print(md)
    if args.write:
        write_marked("spike-levels", md)
    return 0


def save_frontier(fr: dict, folder: Path) -> None:
    """A frontier's files from its dict (as frontier.json holds it); keys of the benchmark's own
    (``seconds``, ``recomputed``) go into the JSON too."""
    from ann2snn.app.plots import plot_frontier
    from ann2snn.app.report import write_frontier
    from ann2snn.results import Frontier

    typed = Frontier.from_dict(fr)
    own = typed.to_dict()
    write_frontier(folder, typed, meta={k: v for k, v in fr.items() if k not in own}, echo=False)
    plot_frontier(typed, folder / "frontier.png")


def merge(runs: Path, args) -> int:
    from ann2snn.frontier import pareto
    from ann2snn.results import FrontierPoint

    rows_text, levels_text = args.merge.split(":")
    rows, levels = [int(v) for v in rows_text.split(",")], [int(v) for v in levels_text.split(",")]
    res = json.loads((runs / "spike_levels.json").read_text())
    for attn, fr in res["frontiers"].items():
        new = frontier_of(runs / attn / "best_model.pt", args, levels, rows)
        keep = [p for p in fr["points"] if not (p["spike_levels"] in levels and p["t"] in rows)]
        points = sorted((FrontierPoint.from_dict(p) for p in keep + new["points"]),
                        key=lambda p: (p.spike_levels, p.t, p.extra_t))
        pareto(points)
        fr["points"] = [p.to_dict() for p in points]
        fr.setdefault("recomputed", []).append(args.merge)
        save_frontier(fr, runs / attn / "frontier")
    return publish(res, runs, args)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/spike_levels")
    p.add_argument("--test_subset", type=int, default=2000)
    p.add_argument("--energy_batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true")
    p.add_argument("--merge", metavar="ROWS:LEVELS",
                   help="recompute only these points (e.g. 4:2,4 = row t = 4 for m = 2 and 4) and merge them into "
                        "the saved runs/.../spike_levels.json; the pipeline-lag part is kept")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    if args.merge:
        return merge(runs, args)
    res = {"frontiers": {}}
    for attn in ("softmax", "ssa"):
        fr = frontier_of(train(runs, attn), args)
        res["frontiers"][attn] = fr
        res["L"], res["energy_images"] = fr["L"], fr["energy_images"]
    res["lag"] = pipeline_lag(args)
    return publish(res, runs, args)


if __name__ == "__main__":
    raise SystemExit(main())
