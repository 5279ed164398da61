"""Distributed training and evaluation: unit tests of the sharding and synchronised BatchNorm, and
end-to-end runs that launch ``torchrun --nproc_per_node 2`` (gloo, CPU) themselves.

- training: a 2-process run with the same global batch and seed reaches the same final test top-1
  as a 1-process run within TOLERANCE points (sync_bn on: the global batches are the same samples,
  only the float summation order of gradients and statistics differs);
- evaluation: 2-process ``table`` and ``convert`` results equal the 1-process results exactly
  (both commands in one torchrun launch, to save a start-up).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ann2snn.app import cli, distributed
from ann2snn.app.config import ConfigError, load_config
from ann2snn.app.distributed import Context
from ann2snn.shards import BatchShardSampler

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yml")
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
SMALL = ["--train_subset", "512", "--test_subset", "192", "--bs", "32", "--dim", "32", "--num_heads", "4",
         "--device", "cpu", "--sync_bn", "true"]
EPOCHS = 6
TOLERANCE = 3.0  # points of test top-1 (digits, 192 test images: about 6 images)
needs_torchrun = pytest.mark.skipif(TORCHRUN is None or not torch.distributed.is_available()
                                    or not torch.distributed.is_gloo_available(),
                                    reason="torchrun / gloo not available")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as each torchrun worker (OMP_NUM_THREADS=1): the same kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchrun(args: list[str], cwd: Path, nproc: int = 2,
             script: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANN2SNN_NO_TQDM": "1"}
    entry = [script] if script else ["-m", "ann2snn"]
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", str(nproc), *entry, *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def final_top1(run: Path) -> tuple[float, list[dict]]:
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["test_top1"]), rows


# ----------------------------------------------------------------------------- units
@pytest.mark.parametrize("n_batches,world", [(7, 2), (7, 3), (2, 3), (5, 1)])
def test_batch_shards_partition_the_batches(n_batches, world):
    batches = [[i] for i in range(n_batches)]
    shards = [list(BatchShardSampler(batches, world, r)) for r in range(world)]
    assert sorted(b for s in shards for b in s) == batches
    assert [len(BatchShardSampler(batches, world, r)) for r in range(world)] == [len(s) for s in shards]


def test_global_batches_are_the_same_for_any_number_of_processes():
    cfg = load_config(DIGITS, {"train_subset": 128, "bs": 32})
    single, _, _ = distributed.build_loaders(cfg, Context())
    ranks = [distributed.build_loaders(cfg, Context(rank=r, world_size=2))[0] for r in range(2)]
    for epoch in (1, 2):
        for loader in (single, *ranks):
            distributed.set_epoch(loader, epoch)
        one = [sorted(b) for b in _index_batches(single)]
        two = [sorted(a + b) for a, b in zip(*(_index_batches(r) for r in ranks))]
        assert one == two and len(one) == 4
    distributed.set_epoch(single, 1)
    first = _index_batches(single)
    distributed.set_epoch(single, 2)
    assert _index_batches(single) != first  # reshuffled per epoch ...
    distributed.set_epoch(single, 1)
    assert _index_batches(single) == first  # ... as a function of (seed, epoch) only


def _index_batches(loader) -> list[list[int]]:
    idx = list(loader.sampler)
    return [idx[i:i + loader.batch_size] for i in range(0, len(idx), loader.batch_size)]


def test_global_batch_must_divide_among_processes():
    cfg = load_config(DIGITS, {"bs": 30})
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        distributed.build_loaders(cfg, Context(rank=0, world_size=4))


@pytest.mark.parametrize("shape", [(12, 6), (6, 4, 3, 3)])
def test_cpu_sync_batchnorm_matches_batchnorm(monkeypatch, shape):
    """With the all-reduce an identity (one rank), the synchronised path equals plain BatchNorm in
    outputs, gradients and running statistics; state dicts are interchangeable."""
    torch.manual_seed(0)
    bn = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(shape[1])
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    ref = nn.Sequential(bn)
    sync = distributed.convert_sync_batchnorm(nn.Sequential(type(bn)(shape[1])))
    sync.load_state_dict(ref.state_dict())
    assert isinstance(sync[0], distributed.CPUSyncBatchNorm)
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed._AllReduceSum, "apply", staticmethod(lambda x: x))
    x = torch.randn(shape) * 3 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), sync(xb)
    g = torch.randn(shape)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    assert torch.allclose(ya, yb, atol=1e-5)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-4)
    assert torch.allclose(bn.weight.grad, sync[0].weight.grad, atol=1e-4)
    for k, v in ref.state_dict().items():
        assert torch.allclose(v.float(), sync.state_dict()[k].float(), atol=1e-5), k


def test_sync_batchnorm_conversion_shares_parameters():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    params = list(model.parameters())
    out = distributed.convert_sync_batchnorm(model)
    assert out is model and [p is q for p, q in zip(params, out.parameters())] == [True] * len(params)
    assert isinstance(model[1], distributed.CPUSyncBatchNorm)
    assert isinstance(model[2][0], distributed.CPUSyncBatchNorm)


def test_single_process_helpers_are_no_ops():
    assert not distributed.active() and distributed.is_main()
    assert distributed.all_reduce_sum(3, 1.5) == (3, 1.5)
    assert distributed.all_finite(torch.tensor(1.0)) and not distributed.all_finite(torch.tensor(float("nan")))
    assert distributed.on_rank0(lambda: 7) == 7
    assert distributed.rng_payload({"a": 1}) == {"rng": {"a": 1}}


# ----------------------------------------------------------------------------- torchrun
@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    torch.set_num_threads(1)
    assert cli.main(["train", "-c", DIGITS, *SMALL, "--epochs", str(EPOCHS), "--out", str(out),
                     "--out_root", str(out.parent)]) == 0
    return out


@pytest.mark.slow
@needs_torchrun
def test_two_process_training_matches_one_process(one_process_run, tmp_path):
    run = tmp_path / "run"
    res = torchrun(["train", "-c", DIGITS, *SMALL, "--epochs", str(EPOCHS), "--out", str(run),
                    "--out_root", str(tmp_path)], tmp_path)
    assert res.stdout.count("best test top-1") == 1  # only rank 0 reports
    top1_2, rows_2 = final_top1(run)
    top1_1, rows_1 = final_top1(one_process_run)
    # epoch 1 sees the same global batches from the same initial weights: equal up to rounding.
    # The summation order of gradients and BN statistics differs, and QCFS's floor turns a last-bit
    # difference into a level step at a few sites, which the epoch's 16 updates carry forward: the
    # epoch means differed by 0.0036 (0.2 %) on the 2026-12-06 machine and by < 0.002 on an earlier
    # one, with identical code; the bound is half a percent of the loss.
    assert abs(float(rows_2[0]["train_loss"]) - float(rows_1[0]["train_loss"])) < 5e-3 * float(rows_1[0]["train_loss"])
    assert abs(top1_2 - top1_1) <= TOLERANCE, (rows_1, rows_2)
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2 and ckpt["epoch"] == EPOCHS
    assert (tmp_path / "LATEST").read_text().strip() == str(run.resolve())
    assert not any(k.startswith("module.") for k in ckpt["model"])


@pytest.mark.slow
@needs_torchrun
def test_two_process_table_and_convert_equal_one_process_exactly(one_process_run, tmp_path):
    """``table`` and ``convert`` under torchrun (one launch, tests/_torchrun_cli.py) against the
    same commands in one process: every accuracy and loss equal, bit for bit."""
    ckpt = str(one_process_run / "best_model.pt")
    table = ["table", "--checkpoint", ckpt, "--t", "1-4", "--extra-t", "0-2", "--eval_bs", "24"]
    convert = ["convert", "--checkpoint", ckpt, "--t", "4", "--extra_t", "2", "--eval_bs", "40"]
    assert cli.main([*table, "--out", str(tmp_path / "t1")]) == 0
    assert cli.main([*convert, "--json", str(tmp_path / "one.json"), "--out", str(tmp_path / "c1")]) == 0
    res = torchrun([*table, "--out", str(tmp_path / "t2"), "--",
                    *convert, "--json", str(tmp_path / "two.json"), "--out", str(tmp_path / "c2")],
                   tmp_path, script=str(Path(__file__).with_name("_torchrun_cli.py")))
    assert (tmp_path / "t2" / "table.csv").read_text() == (tmp_path / "t1" / "table.csv").read_text()
    one, two = (json.loads((tmp_path / d / "table.json").read_text()) for d in ("t1", "t2"))
    assert two["ann"] == one["ann"] and two["rows"] == one["rows"]  # accuracies and losses, all cells
    assert one["ann"]["n"] == 192
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (two["ann"], two["snn"], two["n"]) == (one["ann"], one["snn"], one["n"]) and one["n"] == 192
    assert res.stdout.count("test samples)") == 1  # printed by rank 0 only
