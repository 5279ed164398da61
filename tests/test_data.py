"""Tests for ann2snn.app.data: the digits split, CIFAR / Fashion-MNIST readers on synthetic files,
helpful errors and Cutout (the samplers are tested in test_distributed.py)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ann2snn.app import data
from ann2snn.app.config import Config
from ann2snn.app.data import DataError, build_datasets
from ann2snn.app.distributed import build_loaders

from helpers import write_cifar, write_fmnist, write_idx


def make_cfg(**kw) -> Config:
    kw.setdefault("bs", 8)
    return Config(**kw)


# ------------------------------------------------------------------------------------ digits
def test_digits_shapes_and_split():
    train, test, info = build_datasets(make_cfg(data="digits"))
    assert (len(train), len(test)) == (1347, 450)
    assert (info.num_classes, info.in_channels, info.img_size) == (10, 1, 8)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    assert set(test.targets.tolist()) == set(range(10))
    # normalized with the train split's statistics
    assert abs(train.images.mean().item()) < 1e-5 and abs(train.images.std().item() - 1) < 1e-4


def test_digits_split_fixed_across_calls_and_seeds():
    a_tr, a_te, _ = build_datasets(make_cfg(data="digits", seed=1))
    b_tr, b_te, _ = build_datasets(make_cfg(data="digits", seed=999))
    assert torch.equal(a_tr.images, b_tr.images) and torch.equal(a_te.targets, b_te.targets)


def test_subsets_reproducible_and_clamped():
    tr1, te1, _ = build_datasets(make_cfg(data="digits", train_subset=100, test_subset=30, seed=3))
    tr2, te2, _ = build_datasets(make_cfg(data="digits", train_subset=100, test_subset=30, seed=3))
    tr3, _, _ = build_datasets(make_cfg(data="digits", train_subset=100, seed=4))
    assert (len(tr1), len(te1)) == (100, 30)
    assert tr1.indices == tr2.indices and te1.indices == te2.indices
    assert tr1.indices != tr3.indices
    big, _, _ = build_datasets(make_cfg(data="digits", train_subset=10**6))
    assert len(big) == 1347


def test_loaders_digits():
    cfg = make_cfg(data="digits", bs=64, eval_bs=100, train_subset=200)
    tl, vl, info = build_loaders(cfg)
    xb, yb = next(iter(tl))
    assert xb.shape == (64, 1, 8, 8) and yb.dtype == torch.int64
    assert vl.batch_size == 100
    # evaluation order is fixed; training order is seeded
    first = torch.cat([y for _, y in vl])
    assert torch.equal(first, torch.cat([y for _, y in vl]))
    epoch = [torch.cat([y for _, y in build_loaders(cfg)[0]]) for _ in range(2)]
    assert torch.equal(epoch[0], epoch[1])
    other = torch.cat([y for _, y in build_loaders(make_cfg(data="digits", train_subset=200, seed=7))[0]])
    assert len(other) == 200 and not torch.equal(epoch[0], other)


# ------------------------------------------------------------------------------------ CIFAR
@pytest.mark.parametrize("name,classes,n_train", [("cifar10", 10, 100), ("cifar100", 100, 20)])
def test_cifar_synthetic(tmp_path, name, classes, n_train):
    folder = write_cifar(tmp_path, name)
    cfg = make_cfg(data=name, data_dir=str(tmp_path), augment=False)
    train, test, info = build_datasets(cfg, download=False)
    assert (len(train), len(test)) == (n_train, 20)
    assert (info.num_classes, info.in_channels, info.img_size) == (classes, 3, 32)
    x, y = test[3]
    assert x.shape == (3, 32, 32) and 0 <= y < classes
    # normalization matches ToTensor + Normalize on the raw bytes (HWC -> CHW)
    raw = pickle.loads((folder / ("test_batch" if name == "cifar10" else "test")).read_bytes(),
                       encoding="bytes")[b"data"][3].reshape(3, 32, 32) / 255.0
    expect = (raw - np.array(info.mean)[:, None, None]) / np.array(info.std)[:, None, None]
    assert np.allclose(x.numpy(), expect, atol=1e-5)
    # the folder itself may be passed as data_dir
    again, _, _ = build_datasets(make_cfg(data=name, data_dir=str(folder), augment=False), download=False)
    assert len(again) == n_train


def test_cifar_augmentation_pipeline(tmp_path):
    write_cifar(tmp_path, "cifar10")
    cfg = make_cfg(data="cifar10", data_dir=str(tmp_path), augment=True, autoaugment=True, cutout=16,
                   bs=10, eval_bs=7)
    tl, vl, _ = build_loaders(cfg)
    xb, yb = next(iter(tl))
    assert xb.shape == (10, 3, 32, 32) and xb.dtype == torch.float32 and torch.isfinite(xb).all()
    assert [len(y) for _, y in vl] == [7, 7, 6]
    # augmentation is random, the test transform is not
    train, test, _ = build_datasets(cfg, download=False)
    assert not torch.equal(train[0][0], train[0][0])
    assert torch.equal(test[0][0], test[0][0])


@pytest.mark.parametrize("size", [16, 5])
def test_cutout_square(size):
    torch.manual_seed(0)
    cut = data.Cutout(size)
    h = w = 32
    full = 0
    for _ in range(200):
        out = cut(torch.ones(3, h, w))
        zero = out[0] == 0
        assert torch.equal(zero, out[1] == 0) and torch.equal(zero, out[2] == 0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert zero[r0:r1, c0:c1].all() and zero.sum() == (r1 - r0) * (c1 - c0)  # one rectangle
        assert (r1 - r0) <= size and (c1 - c0) <= size
        # a side shorter than `size` only where it is clipped at a border
        assert (r1 - r0) == size or r0 == 0 or r1 == h
        assert (c1 - c0) == size or c0 == 0 or c1 == w
        full += int(zero.sum()) == size * size
    assert full > 50
    assert torch.equal(data.Cutout(0)(torch.ones(1, 4, 4)), torch.ones(1, 4, 4))


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError) as e:
        build_datasets(make_cfg(data="cifar10", data_dir=str(tmp_path)), download=False)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "--data_dir" in msg and str(tmp_path) in msg
    folder = write_cifar(tmp_path, "cifar100")
    (folder / "test").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="test"):
        build_datasets(make_cfg(data="cifar100", data_dir=str(tmp_path)), download=False)


# ---------------------------------------------------------------------------- Fashion-MNIST
@pytest.fixture
def no_system_fmnist(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-such-system-dir"))


@pytest.mark.parametrize("sub", ["", "FashionMNIST/raw"])
def test_fashion_mnist_synthetic(tmp_path, no_system_fmnist, sub):
    write_fmnist(tmp_path / sub if sub else tmp_path)
    cfg = make_cfg(data="fashion_mnist", data_dir=str(tmp_path), augment=True, bs=16)
    train, test, info = build_datasets(cfg, download=False)
    assert (len(train), len(test)) == (30, 12)
    assert (info.num_classes, info.in_channels, info.img_size) == (10, 1, 28)
    x, y = test[0]
    expect = (test.images[0].float() / 255 - 0.2860) / 0.3530
    assert x.shape == (1, 28, 28) and torch.allclose(x, expect) and 0 <= y < 10
    xb, _ = next(iter(build_loaders(cfg)[0]))
    assert xb.shape == (16, 1, 28, 28)


def test_fashion_mnist_corrupt(tmp_path, no_system_fmnist):
    write_fmnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(12), magic=0x0803)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*magic"):
        build_datasets(make_cfg(data="fashion_mnist", data_dir=str(tmp_path)), download=False)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        build_datasets(make_cfg(data="fashion_mnist", data_dir=str(tmp_path)), download=False)


def test_fashion_mnist_missing(tmp_path, no_system_fmnist):
    with pytest.raises(DataError) as e:
        build_datasets(make_cfg(data="fashion_mnist", data_dir=str(tmp_path)), download=False)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data_dir" in msg
    assert str(tmp_path) in msg and "\n" not in msg


# ------------------------------------------------------------------------------ registry etc.
def test_unknown_dataset_lists_names():
    with pytest.raises(DataError) as e:
        build_datasets(make_cfg(data="imagenet"))
    for name in ("digits", "fashion_mnist", "cifar10", "cifar100"):
        assert name in str(e.value)
    assert set(data.list_datasets()) >= {"digits", "fashion_mnist", "cifar10", "cifar100"}


def test_register_dataset(monkeypatch):
    monkeypatch.setitem(data.DATASETS, "dummy", None)
    info = data.DataInfo("dummy", 2, 1, 4, (0.0,), (1.0,))

    @data.register_dataset("dummy")
    def _build(cfg, download=None):
        ds = data.InMemoryDataset(torch.zeros(5, 1, 4, 4), torch.tensor([0, 1, 0, 1, 0]))
        return ds, ds, info

    train, _, got = build_datasets(make_cfg(data="dummy"))
    assert got is info and len(train) == 5
