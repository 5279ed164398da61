"""Datasets: a small registry of image-classification sets held in memory.

Loaders (samplers, batch sizes, sharding under torchrun) are made in one place,
:func:`ann2snn.distributed.build_loaders`.

Every dataset yields ``(float tensor [C, H, W], normalized; int label)``.  Registered sets:

- ``digits``: scikit-learn's 8x8 digits (ships inside the wheel; a fixed stratified split).
- ``fashion_mnist``: the four idx files, from ``data_dir``, torchvision's layout under it, or the
  Debian package ``dataset-fashion-mnist``; parsed here with NumPy.
- ``cifar10`` / ``cifar100``: the standard python-pickle folders, read here.  The training
  augmentation follows the recipe of the original toolkit (SPEC section 5): random crop with
  padding, horizontal flip, AutoAugment (CIFAR-10 policy), normalize, Cutout (DeVries & Taylor 2017).

Missing or corrupt data raises :class:`DataError`, whose message says how to get the data.
"""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ann2snn._compat import import_torchvision


class DataError(Exception):
    """A user mistake about data (missing, corrupt, unknown name); printed without traceback."""


@dataclass
class DataInfo:
    name: str
    num_classes: int
    in_channels: int
    img_size: int
    mean: tuple
    std: tuple


# --------------------------------------------------------------------------------------------
# registry
Builder = Callable[..., tuple[Dataset, Dataset, DataInfo]]
DATASETS: dict[str, Builder] = {}


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(cfg, download) -> (train, test, DataInfo)`` under ``name``."""
    def deco(fn: Builder) -> Builder:
        DATASETS[name] = fn
        return fn
    return deco


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_builder(name: str) -> Builder:
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}. Registered datasets: {', '.join(list_datasets())}. "
                        "Set `data:` in the config or pass `--data NAME` with one of these.")
    return DATASETS[key]


# --------------------------------------------------------------------------------------------
# shared pieces
class InMemoryDataset(Dataset):
    """Images (uint8 or float tensor [N, C, H, W]) and labels held in memory, plus a transform."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: Callable | None = None):
        assert len(images) == len(targets)
        self.images, self.targets, self.transform = images, targets.long(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        return (self.transform(x) if self.transform is not None else x), int(self.targets[i])


class ToFloat:
    """uint8 tensor [C, H, W] in 0..255 -> float in [0, 1] (what ToTensor does for PIL images)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32) / 255.0


class Normalize:
    """Per-channel ``(x - mean) / std`` on a float tensor [C, H, W]."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Cutout:
    """Zero one ``size`` x ``size`` square centred at a random pixel, clipped at the borders.

    Uses torch's RNG, so DataLoader workers get distinct, seeded streams.  ``size`` 0 is a no-op.
    """

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return x
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, x0 = cy - self.size // 2, cx - self.size // 2
        x = x.clone()
        x[..., max(y0, 0):y0 + self.size, max(x0, 0):x0 + self.size] = 0
        return x


def compose(*fns: Callable | None) -> Callable:
    tv = import_torchvision()
    return tv.transforms.Compose([f for f in fns if f is not None])


def take_subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """The first ``n`` items of a permutation drawn with ``seed``; the whole set if n is None/large."""
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(int(seed))
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())


TEST_SUBSET_SEED = 0  # fixed, so runs with different cfg.seed evaluate on the same test images


def build_datasets(cfg, download: bool | None = None) -> tuple[Dataset, Dataset, DataInfo]:
    """(train, test, info) for ``cfg.data``, with ``train_subset`` / ``test_subset`` applied.

    ``download``: True allows a download, False forbids it, None (default) tries it only when the
    data is not found locally (and turns a network failure into a DataError).
    """
    train, test, info = get_builder(cfg.data)(cfg, download)
    train = take_subset(train, cfg.train_subset, cfg.seed)
    test = take_subset(test, cfg.test_subset, TEST_SUBSET_SEED)
    return train, test, info


def _root(cfg) -> Path:
    return Path(os.path.expanduser(cfg.data_dir or "./data"))


def _download(fn: Callable[[], object], root: Path, not_found: str) -> None:
    """Run a torchvision download; any failure becomes a DataError saying what was missing."""
    try:
        fn()
    except Exception as err:  # any network/IO/checksum failure is the user's environment
        why = " ".join(f"{type(err).__name__}: {err}".split())
        raise DataError(f"{not_found} Downloading it into {str(root)!r} failed ({why}).") from None


# --------------------------------------------------------------------------------------------
# digits (scikit-learn)
@register_dataset("digits")
def build_digits(cfg, download: bool | None = None):
    """8x8 digits, fixed stratified 75/25 split (independent of cfg.seed), train-split statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.25, stratify=d.target, random_state=0)
    xtr, xte = x[idx_tr], x[idx_te]
    mean, std = xtr.mean().item(), xtr.std().item()
    info = DataInfo("digits", 10, 1, 8, (mean,), (std,))
    return (InMemoryDataset((xtr - mean) / std, y[idx_tr]),
            InMemoryDataset((xte - mean) / std, y[idx_te]), info)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian `dataset-fashion-mnist`
FASHION_MNIST_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
                       "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
_FMNIST_FIXES = ("Fixes: install the Debian package (`sudo apt-get install dataset-fashion-mnist`, "
                 f"which puts the files in {FASHION_MNIST_SYSTEM_DIR}), or put the four idx files "
                 "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                 "t10k-labels-idx1-ubyte[.gz]) in a folder and pass `--data_dir FOLDER`, or allow the "
                 "download (where the internet is reachable) into `--data_dir` (default ./data).")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file (gzip or plain) holding uint8 data of ``ndim`` dims; DataError if corrupt."""
    magic_expected = 0x0800 | ndim
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"Cannot read the idx file {str(path)!r} ({err}); it is corrupt or truncated. "
                        "Delete it and get it again. " + _FMNIST_FIXES) from None
    head = 4 * (1 + ndim)
    bad = f"The idx file {str(path)!r} is corrupt"
    if len(raw) < head:
        raise DataError(f"{bad}: only {len(raw)} bytes. Delete it and get it again. " + _FMNIST_FIXES)
    magic, *dims = np.frombuffer(raw[:head], dtype=">i4").tolist()
    if magic != magic_expected:
        raise DataError(f"{bad}: magic number {magic:#010x}, expected {magic_expected:#010x}. "
                        "Delete it and get it again. " + _FMNIST_FIXES)
    if len(raw) - head != int(np.prod(dims)):
        raise DataError(f"{bad}: header says {dims} ({int(np.prod(dims))} bytes) but it holds "
                        f"{len(raw) - head}. Delete it and get it again. " + _FMNIST_FIXES)
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def _find_idx_dir(dirs: list[Path]) -> dict[str, Path] | None:
    """Paths of the four files in the first folder that holds all of them (plain or .gz)."""
    for d in dirs:
        found = {}
        for key, stem in FASHION_MNIST_FILES.items():
            for cand in (d / stem, d / (stem + ".gz")):
                if cand.is_file():
                    found[key] = cand
                    break
        if len(found) == len(FASHION_MNIST_FILES):
            return found
    return None


def _load_fmnist_split(files: dict[str, Path], split: str):
    x = read_idx(files[f"{split}_x"], 3)
    y = read_idx(files[f"{split}_y"], 1)
    if x.shape[1:] != (28, 28) or len(x) != len(y) or (y.size and y.max() > 9):
        raise DataError(f"The Fashion-MNIST {split} files {str(files[f'{split}_x'])!r} and "
                        f"{str(files[f'{split}_y'])!r} do not match (images {x.shape}, labels {y.shape}, "
                        "28x28 images with labels 0..9 expected). Delete them and get them again. "
                        + _FMNIST_FIXES)
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


@register_dataset("fashion_mnist")
def build_fashion_mnist(cfg, download: bool | None = None):
    dirs = []
    if cfg.data_dir:
        dirs += [_root(cfg), _root(cfg) / "FashionMNIST" / "raw"]
    dirs.append(Path(FASHION_MNIST_SYSTEM_DIR))
    files = _find_idx_dir(dirs)
    not_found = ("Fashion-MNIST not found: looked for the four idx files in "
                 f"{', '.join(repr(str(d)) for d in dirs)}. " + _FMNIST_FIXES)
    if files is None and download is not False:
        tv, root = import_torchvision(), _root(cfg)
        _download(lambda: tv.datasets.FashionMNIST(str(root), download=True), root,
                  not_found)
        files = _find_idx_dir([root / "FashionMNIST" / "raw"])
    if files is None:
        raise DataError(not_found)
    (xtr, ytr), (xte, yte) = _load_fmnist_split(files, "train"), _load_fmnist_split(files, "test")
    info = DataInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,))
    tv = import_torchvision()
    norm = [ToFloat(), Normalize(info.mean, info.std)]
    crop = tv.transforms.RandomCrop(28, padding=2) if cfg.augment else None
    return (InMemoryDataset(xtr, ytr, compose(crop, *norm)),
            InMemoryDataset(xte, yte, compose(*norm)), info)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles)
_CIFAR = {  # name: (folder, train files, test files, label key, classes, mean, std)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100,
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar_fixes(name: str, root: Path) -> str:
    folder, tarball = _CIFAR[name][0], name.replace("cifar", "cifar-") + "-python.tar.gz"
    return (f"Fixes: put the standard python-version folder `{folder}` (extracted from "
            f"https://www.cs.toronto.edu/~kriz/{tarball}) under a folder and pass "
            f"`--data_dir FOLDER` (now {str(root)!r}), or allow the download where the internet is "
            "reachable. CIFAR cannot be installed from Debian; for an offline run use "
            "`--data fashion_mnist` or `--data digits`.")


def read_cifar_pickle(path: Path, label_key: bytes, num_classes: int, fixes: str):
    """(uint8 tensor [N, 3, 32, 32], long labels [N]) from one CIFAR pickle; DataError if corrupt."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
        ok = data.ndim == 2 and data.shape[1] == 3072 and labels.shape == (len(data),)
        ok = ok and (labels.size == 0 or (labels.min() >= 0 and labels.max() < num_classes))
    except Exception as err:  # unpickling garbage raises many kinds of errors
        raise DataError(f"The CIFAR file {str(path)!r} is corrupt or not a CIFAR pickle "
                        f"({type(err).__name__}: {err}). Delete it and get it again. {fixes}") from None
    if not ok:
        raise DataError(f"The CIFAR file {str(path)!r} has an unexpected layout (data {data.shape}, "
                        f"labels {labels.shape}; [N, 3072] uint8 and N labels in 0..{num_classes - 1} "
                        f"expected). Delete it and get it again. {fixes}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _find_cifar(root: Path, folder: str, files: list[str]) -> Path | None:
    for d in (root / folder, root):
        if all((d / f).is_file() for f in files):
            return d
    return None


def cifar_transforms(mean, std, augment: bool, autoaugment: bool, cutout: int):
    """(train, test) transforms on uint8 tensors [3, 32, 32] (SPEC section 5 recipe)."""
    tv = import_torchvision()
    T = tv.transforms
    norm = [ToFloat(), Normalize(mean, std)]
    test = compose(*norm)
    if not augment:
        return test, test
    aa = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10) if autoaugment else None
    train = compose(T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), aa, *norm,
                    Cutout(cutout) if cutout > 0 else None)
    return train, test


def _build_cifar(name: str, cfg, download: bool | None):
    folder, train_files, test_files, label_key, classes, mean, std = _CIFAR[name]
    root = _root(cfg)
    fixes = _cifar_fixes(name, root)
    d = _find_cifar(root, folder, train_files + test_files)
    not_found = (f"{name} not found: looked for {', '.join(train_files + test_files)} in "
                 f"{str(root / folder)!r} and {str(root)!r}. {fixes}")
    if d is None and download is not False:
        tv = import_torchvision()
        cls = tv.datasets.CIFAR10 if name == "cifar10" else tv.datasets.CIFAR100
        _download(lambda: cls(str(root), train=True, download=True), root, not_found)
        d = _find_cifar(root, folder, train_files + test_files)
    if d is None:
        raise DataError(not_found)

    def load(files):
        parts = [read_cifar_pickle(d / f, label_key, classes, fixes) for f in files]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    train_tf, test_tf = cifar_transforms(mean, std, cfg.augment, cfg.autoaugment, cfg.cutout)
    info = DataInfo(name, classes, 3, 32, mean, std)
    return InMemoryDataset(*load(train_files), train_tf), InMemoryDataset(*load(test_files), test_tf), info


@register_dataset("cifar10")
def build_cifar10(cfg, download: bool | None = None):
    return _build_cifar("cifar10", cfg, download)


@register_dataset("cifar100")
def build_cifar100(cfg, download: bool | None = None):
    return _build_cifar("cifar100", cfg, download)


__all__ = ["DataError", "DataInfo", "DATASETS", "register_dataset", "list_datasets", "build_datasets",
           "Cutout", "InMemoryDataset", "FASHION_MNIST_SYSTEM_DIR"]
