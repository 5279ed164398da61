"""2-process (torchrun, gloo, CPU) against 1-process training of the same config: throughput and
final accuracy.  Both runs use one intra-op thread per process (torchrun's default for N > 1), the
same global batch and seed, so the 2-process run has twice the compute.

    python benchmarks/distributed_train.py -c configs/fashion_mnist.yml --train_subset 4096 \
        --test_subset 1000 --epochs 2

Prints a Markdown row per run and the ratio; run directories go to a temporary folder.  Epoch
time includes the test-set evaluation (sharded over the processes too).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANN2SNN_NO_TQDM": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"wall_s": wall, "epoch_s": [float(r["epoch_s"]) for r in rows], "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--sync-too", action="store_true", help="also run the N-process case with sync_bn: true")
    args, rest = p.parse_known_args()
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    tmp = Path(tempfile.mkdtemp(prefix="ann2snn-dist-bench-"))
    common = ["train", "-c", args.config, *rest, "--device", "cpu", "--out_root", str(tmp)]
    res = {}
    cases = [(1, False), (args.nproc, False)] + ([(args.nproc, True)] if args.sync_too else [])
    for n, sync in cases:
        out = tmp / f"p{n}{'-sync' if sync else ''}"
        launcher = [sys.executable, "-m", "ann2snn"] if n == 1 else \
            [torchrun, "--standalone", "--nproc_per_node", str(n), "-m", "ann2snn"]
        res[(n, sync)] = run([*launcher, *common, *(["--sync_bn", "true"] if sync else []), "--out", str(out)], out)
    # samples per second of one epoch: train subset size from the config stored in the run
    import yaml

    cfg = yaml.safe_load((tmp / "p1" / "config.yaml").read_text())  # the 1-process run
    n_train = cfg["train_subset"]
    print(f"config: {args.config} {' '.join(rest)}  (train images/epoch: {n_train})")
    print("| processes | epoch times (s) | images/s (mean epoch, incl. eval) | final train loss | final test top-1 "
          "| best test top-1 | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for (n, sync), r in res.items():
        mean_epoch = sum(r["epoch_s"]) / len(r["epoch_s"])
        best = max(float(row["test_top1"]) for row in r["rows"])
        print(f"| {n}{' (sync_bn)' if sync else ''} | {', '.join(f'{e:.1f}' for e in r['epoch_s'])} | {n_train / mean_epoch:.1f} | "
              f"{float(r['rows'][-1]['train_loss']):.4f} | {float(r['rows'][-1]['test_top1']):.2f} | {best:.2f} | "
              f"{r['wall_s']:.0f} |")
    m1 = sum(res[(1, False)]["epoch_s"]) / len(res[(1, False)]["epoch_s"])
    for (n, sync), r in res.items():
        if n > 1:
            mn = sum(r["epoch_s"]) / len(r["epoch_s"])
            print(f"throughput ratio ({n} processes{' sync_bn' if sync else ''} / 1 process, mean epoch time): "
                  f"{m1 / mn:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
