"""Models of one's own through the graph converter: torchvision CNNs, verified and measured.

Part ``verify``: torchvision's resnet18, vgg11_bn, mobilenet_v2 and densenet121 with random
weights (random BatchNorm statistics and λ in [0.5, 2], as in tests/test_graph_convert.py) on
32×32 inputs: quantize time, conversion time, and for the exact preset at t = 1 and t = L the
largest |SNN − quantized ANN| once quiescent and the steps until the last state change.

Part ``table``: the field's workflow on Fashion-MNIST through the CLI, CPU-sized: a ReLU
``torchvision:vgg11_bn`` trained for a few epochs on a subset (standing in for a pretrained
model), then ``--pretrained`` → ``--calibrate_batches`` → QCFS fine-tuning → ``convert --verify``
→ ``table`` (rows t = 1..8, extra steps 0..4) against the quantized ANN.

    python benchmarks/own_models.py --part verify table --write

Results go to --runs (default runs/own_models) and, with --write, into benchmarks/RESULTS.md
between the "own-models" markers.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from _results import write_marked

from ann2snn.app.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def part_verify(levels: int = 4) -> list[dict]:
    import ann2snn
    from ann2snn._compat import import_torchvision
    from ann2snn.verify import verify
    from conftest import randomize_bn, randomize_lambdas

    tv = import_torchvision()
    rows = []
    for name in ("resnet18", "vgg11_bn", "mobilenet_v2", "densenet121"):
        torch.manual_seed(0)
        model = getattr(tv.models, name)(num_classes=10).eval()
        t0 = time.perf_counter()
        q = ann2snn.quantize(model, levels)
        t1 = time.perf_counter()
        randomize_bn(q, torch.Generator().manual_seed(0))
        randomize_lambdas(q, 0.5, 2.0, torch.Generator().manual_seed(1))
        q.eval()
        t2 = time.perf_counter()
        snn = ann2snn.convert(q, "exact")
        t3 = time.perf_counter()
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        row = {"model": name, "sites": len(snn.neurons()), "fold_bn": len(snn.report["fold_bn"]),
               "gated_bn": len(snn.report["gate_batchnorm"]), "quantize_s": t1 - t0, "convert_s": t3 - t2}
        for t in (1, levels):
            r = verify(q, snn, x, t=t)
            row[f"t{t}"] = {k: getattr(r, k) for k in ("max_abs_diff", "scale", "ok", "settle_steps", "quiescent")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def part_table(runs: Path, args) -> dict:
    from ann2snn.app.cli import main

    base = ["-c", str(ROOT / "configs" / "fashion_mnist.yml"), "--model", f"torchvision:{args.model}",
            "--train_subset", str(args.train_subset), "--test_subset", str(args.test_subset), "--bs", "64",
            "--out_root", str(runs), "--augment", "false"]
    relu, qcfs = runs / "relu", runs / "qcfs"
    timing = {}
    t0 = time.perf_counter()
    if not (relu / "best_model.pt").is_file():
        assert main(["train", *base, "--quantize", "false", "--epochs", str(args.relu_epochs), "--lr", "1e-3",
                     "--id", "relu", "--out", str(relu)]) == 0
    timing["relu_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not (qcfs / "best_model.pt").is_file():
        assert main(["train", *base, "--pretrained", str(relu / "best_model.pt"), "--calibrate_batches", "8",
                     "--epochs", str(args.qcfs_epochs), "--lr", "5e-4", "--l", str(args.levels), "--id", "qcfs",
                     "--out", str(qcfs)]) == 0
    timing["qcfs_train_s"] = time.perf_counter() - t0
    saved = runs / "train_timing.json"  # training is cached between runs: keep the times it took
    if timing["relu_train_s"] > 1 and timing["qcfs_train_s"] > 1:
        atomic_write_text(saved, json.dumps(timing))
    elif saved.is_file():
        timing.update(json.loads(saved.read_text()))
    ckpt = qcfs / "best_model.pt"
    t0 = time.perf_counter()
    assert main(["convert", "--checkpoint", str(ckpt), "--t", str(args.levels), "--verify",
                 "--json", str(runs / "convert.json")]) == 0
    timing["convert_eval_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = runs / "table" / "table.json"
    if not (cached.is_file() and json.loads(cached.read_text()).get("checkpoint") == str(ckpt)
            and ckpt.stat().st_mtime < cached.stat().st_mtime):  # the same checkpoint's table: reuse it
        assert main(["table", "--checkpoint", str(ckpt), "--t", "1-8", "--extra-t", "0-4",
                     "--out", str(runs / "table")]) == 0
    timing["table_s"] = json.loads(cached.read_text()).get("timing", {}).get("table_s", time.perf_counter() - t0)
    relu_log = (relu / "log.csv").read_text().strip().splitlines()
    from ann2snn import convert, verify
    from ann2snn.app.checkpoint import checkpoint_config, load_checkpoint
    from ann2snn.app.pipeline import load_trained

    model, loader, _ = load_trained(checkpoint_config(load_checkpoint(ckpt), ckpt), ckpt)
    x, _ = next(iter(loader))
    snn = convert(model, "exact")
    checks = {"float64": verify(model, snn, x).to_dict(), "float32": verify(model, snn, x, dtype=None).to_dict()}
    return {"convert": json.loads((runs / "convert.json").read_text()),
            "table": json.loads((runs / "table" / "table.json").read_text()),
            "table_md": (runs / "table" / "table.md").read_text(), "relu_last_epoch": relu_log[-1],
            "timing": timing, "checks": checks}


def markdown(verify_rows, table, args) -> str:
    lines = ["<!-- own-models:start -->", "## Models of one's own (graph converter)", "",
             f"Command: `python benchmarks/own_models.py --part {' '.join(args.part)} --write`. Machine: "
             f"{platform.machine()}, {args.threads} torch threads, torch {torch.__version__}, CPU only.", ""]
    if verify_rows:
        lines += ["### torchvision models, random weights, exact preset (batch of 4, 32×32)", "",
                  "Random BatchNorm statistics and λ ∈ [0.5, 2]; L = 4. Tolerance 1e-4 · max(1, max |logit|). "
                  "Settle steps: steps until the last state change (input steps included).", "",
                  "| model | QCFS sites | BN folded / gated | quantize s | convert s | t = 1: max abs diff, settle | "
                  "t = 4: max abs diff, settle | ok |", "|---|---|---|---|---|---|---|---|"]
        for r in verify_rows:
            a, b = r["t1"], r["t4"]
            lines.append(f"| {r['model']} | {r['sites']} | {r['fold_bn']} / {r['gated_bn']} | {r['quantize_s']:.2f} | "
                         f"{r['convert_s']:.2f} | {a['max_abs_diff']:.2g}, {a['settle_steps']} | "
                         f"{b['max_abs_diff']:.2g}, {b['settle_steps']} | {a['ok'] and b['ok']} |")
        lines.append("")
    if table:
        c = table["convert"]
        v = c.get("verify", {})
        lines += [f"### Fashion-MNIST, torchvision:{args.model}: ReLU → calibrate → QCFS fine-tune → convert", "",
                  f"ReLU pretraining: {args.relu_epochs} epoch(s) on a {args.train_subset}-image subset (AdamW 1e-3, no "
                  f"augmentation); last epoch `{table['relu_last_epoch']}` (epoch, lr, train loss, train top-1, "
                  "test loss, test top-1, …). QCFS: L = "
                  f"{args.levels}, λ from the 99.9th percentile over 8 batches, {args.qcfs_epochs} epoch(s) at 5e-4. "
                  f"Test: the first {args.test_subset} test images.", "",
                  f"- `convert --t {args.levels} --verify` (first test batch of 64, float64 copies): max |SNN − quantized ANN| = "
                  f"{v.get('max_abs_diff', float('nan')):.2g} (logit scale {v.get('scale', float('nan')):.3g}), ok = "
                  f"{v.get('ok')}, settled after {v.get('settle_steps')} steps. The same check in float32: max |Δ| = "
                  f"{table['checks']['float32']['max_abs_diff']:.2g} (activations on a rounding boundary to within the "
                  "last bit round the other way; float64: "
                  f"{table['checks']['float64']['max_abs_diff']:.2g}).",
                  "- Time (training: the run that trained; later runs reuse its checkpoints and "
                  f"runs/…/train_timing.json): ReLU training {table['timing']['relu_train_s']:.0f} s, QCFS fine-tuning "
                  f"{table['timing']['qcfs_train_s']:.0f} s, convert {table['timing']['convert_eval_s']:.0f} s, table "
                  f"{table['timing']['table_s']:.0f} s.", "", table["table_md"].replace("# Accuracy table", "#### Table"), ""]
    lines.append("<!-- own-models:end -->")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", nargs="+", choices=("verify", "table"), default=["verify", "table"])
    p.add_argument("--runs", default="runs/own_models")
    p.add_argument("--model", default="vgg11_bn")
    p.add_argument("--train_subset", type=int, default=20000)
    p.add_argument("--test_subset", type=int, default=2000)
    p.add_argument("--relu_epochs", type=int, default=2)
    p.add_argument("--qcfs_epochs", type=int, default=1)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    verify_rows = part_verify(args.levels) if "verify" in args.part else []
    table = part_table(runs, args) if "table" in args.part else None
    md = markdown(verify_rows, table, args)
    atomic_write_text(runs / "own_models.md", md)
    print(md)
    if args.write:
        write_marked("own-models", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
