"""Plain helpers shared by the test modules: the tiny config, the CLI harness and its assertions,
file-system faults, synthetic dataset files and small random QCFS models.

Why a module of its own and not ``conftest.py``: pytest loads ``conftest.py`` itself and hands
out its fixtures by name; it is not meant to be imported (``from conftest import …`` works only
under the default "prepend" import mode, and a second ``conftest.py`` in a sub-folder would shadow
the name).  Test modules import these functions with ``from helpers import …`` (pytest puts the
``tests/`` folder on ``sys.path``, as for any rootless test folder); the fixtures that use them
live in ``conftest.py``.  No test module imports another (``tests/test_layout.py`` checks this).
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import os
import pickle
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

# The smallest config that trains end to end (one epoch on 32 digits: well under a second on one
# core once torch is warm): the shared trained run (conftest's ``tiny_run``) and most CLI fault
# tests start from it.
TINY = {"data": "digits", "dim": 16, "num_heads": 2, "depth": 1, "mlp_ratio": 1.0, "bs": 16, "epochs": 1,
        "train_subset": 32, "test_subset": 16, "t": 2, "l": 2, "device": "cpu", "use_amp": False}


# ----------------------------------------------------------------------------- the CLI harness
def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def run_cli(capsys, argv: list) -> tuple[int, str]:
    """``ann2snn ARGV`` in this process: (exit status, stderr)."""
    from ann2snn.app import cli

    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    _, err = capsys.readouterr()
    return rc, err


def assert_user_error(rc: int, err: str, command: str, *words: str) -> str:
    """Exit 2, no traceback, exactly one error paragraph (one line) naming the problem."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"ann2snn {command}: error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def assert_no_partial_run(out_root: Path) -> None:
    """Nothing a later `convert` could pick up: every run folder left holds a checkpoint, and
    LATEST (if any) names a run with a best_model.pt."""
    if not out_root.exists():
        return
    for cfg_file in out_root.rglob("config.yaml"):
        assert list(cfg_file.parent.glob("*.pt")), f"partial run left behind: {cfg_file.parent}"
    latest = out_root / "LATEST"
    if latest.exists():
        assert (Path(latest.read_text().strip()) / "best_model.pt").is_file()


# ----------------------------------------------------------------------------- run folders
def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show that nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(run: Path, out_root: Path, name: str = "run", latest: bool = False) -> Path:
    """A copy of the trained run folder ``run`` at ``out_root/name``, for a test that changes it
    (the shared run is read-only); ``latest``: ``out_root/LATEST`` names the copy, so that
    ``convert --out_root OUT_ROOT`` finds it."""
    from ann2snn.app import rundir

    dest = out_root / name
    shutil.copytree(run, dest)
    if latest:
        rundir.write_latest(dest, out_root)
    return dest


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *options: str):
    """A small tmpfs at ``where`` (skips the test when it cannot be mounted: not root, no mount)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- dataset files
def write_cifar(root, name: str, per_file: int = 20, rng=np.random.default_rng(0)):
    """CIFAR-10 or -100 python batches of random images under ``root``; returns their folder."""
    if name == "cifar10":
        folder, files, key, classes = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + [
            "test_batch"], b"labels", 10
    else:
        folder, files, key, classes = "cifar-100-python", ["train", "test"], b"fine_labels", 100
    d = root / folder
    d.mkdir(parents=True)
    for f in files:
        payload = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                   key: rng.integers(0, classes, per_file).tolist()}
        (d / f).write_bytes(pickle.dumps(payload))
    return d


def write_idx(path, arr: np.ndarray, magic: int | None = None):
    magic = (0x0800 | arr.ndim) if magic is None else magic
    head = struct.pack(">" + "i" * (1 + arr.ndim), magic, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def write_fmnist(d, n_train=30, n_test=12, rng=np.random.default_rng(1)):
    """Fashion-MNIST's four gzipped idx files of random images in folder ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))


# ----------------------------------------------------------------------------- small QCFS models
def randomize_bn(model: nn.Module, gen: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (in place)."""
    g = gen or torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                c = bn.num_features
                bn.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                bn.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                if bn.affine:
                    bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    bn.bias.copy_(torch.rand(c, generator=g) * 0.7 - 0.2)
    return model


def randomize_lambdas(model: nn.Module, low: float = 0.5, high: float = 2.0,
                      gen: torch.Generator | None = None) -> nn.Module:
    """Spread the QCFS thresholds λ of a model over [low, high] (in place)."""
    from ann2snn.quant import QCFS

    g = gen or torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QCFS):
                m.lam.fill_(float(torch.rand((), generator=g)) * (high - low) + low)
    return model


def small_transformer(levels: int | None = 4, seed: int = 0, **kw) -> nn.Module:
    """The brief's small random transformer (dim 32, 2 heads, depth 1, 8×8×1 input), QCFS-quantized
    with ``levels`` unless None, random BN statistics and λ, in eval mode."""
    from ann2snn.models import create_model
    from ann2snn.quant import quantize

    torch.manual_seed(seed)
    args = dict(dim=32, num_heads=2, depth=1, in_channels=1, img_size=8, num_classes=10)
    args.update(kw)
    model = create_model("transformer", **args)
    if levels is not None:
        quantize(model, levels)
        randomize_lambdas(model, gen=torch.Generator().manual_seed(seed + 1))
    randomize_bn(model, torch.Generator().manual_seed(seed + 2))
    return model.eval()


def hand_net() -> tuple[nn.Module, nn.Module]:
    """(ANN, SNN) of the energy tests' hand-built network: Linear(4→3) → ReLU / signed IF (λ = 1) →
    Linear(3→2); with x = 1 the neurons see 0.5, 1, 0 (6 spikes in 3 neurons × 4 steps)."""
    from ann2snn.neurons import ScaledNeuron

    l1, l2 = nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[0.125] * 4, [0.25] * 4, [0.0] * 4]))
        l2.weight.fill_(1.0)
    return nn.Sequential(l1, nn.ReLU(), l2), nn.Sequential(l1, ScaledNeuron(1.0), l2)
