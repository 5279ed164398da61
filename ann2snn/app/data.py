"""Datasets: a small registry of image-classification sets held in memory, and the text sets of
:mod:`ann2snn.app.text` (``python_docs``, ``text``).

Loaders (samplers, batch sizes, sharding under torchrun) are made in one place,
:func:`ann2snn.app.distributed.build_loaders`.

Every dataset yields ``(float tensor [C, H, W], normalized; int label)``.  Registered sets:

- ``digits``: scikit-learn's 8x8 digits (ships inside the wheel; a fixed stratified split).
- ``fashion_mnist``: the four idx files, from ``data_dir``, torchvision's layout under it, or the
  Debian package ``dataset-fashion-mnist``; parsed here with NumPy.
- ``cifar10`` / ``cifar100``: the standard python-pickle folders, read here.  The training
  augmentation follows the recipe of the original toolkit: random crop with
  padding, horizontal flip, AutoAugment (CIFAR-10 policy), normalize, Cutout (DeVries & Taylor 2017).

Missing or corrupt data raises :class:`DataError`, whose message says how to get the data.
"""
from __future__ import annotations

import _compat_pickle
import gzip
import importlib
import logging
import math
import os
import pickle
import resource
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ann2snn._compat import import_torchvision
from ann2snn.app import text
from ann2snn.app.datainfo import DataError, DataInfo

log = logging.getLogger("ann2snn")



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


register_dataset("python_docs")(text.build_python_docs)  # the text sets: ann2snn.app.text
register_dataset("text")(text.build_text)


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def dataset_key(name: str) -> str:
    """A dataset name as the registry spells it: "Fashion-MNIST" and "fashion_mnist" are one (the
    one normalisation: the lookup, checkpoint/config comparisons and resume checks use it)."""
    return str(name).strip().lower().replace("-", "_")


def get_builder(name: str) -> Builder:
    key = dataset_key(name)
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


def take_subset(ds: Dataset, n: int | None, seed: int, key: str = "subset") -> Dataset:
    """The first ``n`` items of a permutation drawn with ``seed``; the whole set if n is None/large
    (then a warning says so: a clipped subset is not what the config asked for)."""
    if n is not None and n > len(ds):
        log.warning("warning: %s is %d but the set has only %d items; using all %d. Lower %s (or drop it) "
                    "to silence this.", key, n, len(ds), len(ds), key)
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
    train = take_subset(train, cfg.train_subset, cfg.seed, "train_subset")
    test = take_subset(test, cfg.test_subset, TEST_SUBSET_SEED, "test_subset")
    return train, test, info


# --------------------------------------------------------------------------------------------
# memory: what a file announcing its size (idx headers, checkpoints' zip entries) or a model may take
def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read(64).strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def host_memory() -> tuple[int, str] | None:
    """(bytes this process can still allocate, where the bound comes from), the smallest of: the
    free memory (MemAvailable, else free pages), the cgroup's limit less its use, the
    address-space limit less this process's size (``ulimit -v``).  None when none can be read."""
    found = []
    avail = _meminfo_available()
    if avail is not None:
        found.append((avail, "available memory (MemAvailable)"))
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        found.append((max(limit - used, 0), "left under the container's memory limit"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found.append((max(soft - _vm_size(), 0), "left under this process's address-space limit (ulimit -v)"))
    return min(found) if found else None


def available_memory() -> int | None:
    """Bytes this process can still allocate (:func:`host_memory`), or None when unknown.  Files
    that announce their size (idx headers, checkpoints' zip entries) are checked against it before
    anything is inflated (issue 17, D6)."""
    found = host_memory()
    return None if found is None else found[0]


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


MAX_IDX_ITEMS = 10_000_000  # ~170x Fashion-MNIST's 60 000: a larger count is a lying header


def read_idx(path: Path, ndim: int, item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse an idx file (gzip or plain) holding uint8 data of ``ndim`` dims; DataError if corrupt.

    Header first: the magic number, the dims (each item ``item_shape`` when given, at most
    ``MAX_IDX_ITEMS`` items, no more than half the available memory) are checked before any data
    is read; then exactly the bytes the header announces are read, and one more read must find
    the end.  So a gzip bomb or a lying header is refused without being inflated (issue 17, D6)."""
    magic_expected = 0x0800 | ndim
    bad = f"The idx file {str(path)!r} is corrupt"
    again = "Delete it and get it again. " + _FMNIST_FIXES
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            head = f.read(4 * (1 + ndim))
            if len(head) < 4 * (1 + ndim):
                raise DataError(f"{bad}: only {len(head)} bytes. {again}")
            magic, *dims = struct.unpack(f">{1 + ndim}i", head)
            if magic != magic_expected:
                raise DataError(f"{bad}: magic number {magic:#010x}, expected {magic_expected:#010x}. {again}")
            size = _check_idx_dims(path, dims, item_shape, again)
            raw = f.read(size)
            if len(raw) != size:
                raise DataError(f"{bad}: header says {dims} ({size} bytes) but it holds {len(raw)}. {again}")
            if f.read(1):
                raise DataError(f"{bad}: header says {dims} ({size} bytes) but more data follows (a "
                                f"damaged file or a compression bomb; it was not inflated). {again}")
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"Cannot read the idx file {str(path)!r} ({err}); it is corrupt or truncated. "
                        f"{again}") from None
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims)


def _check_idx_dims(path: Path, dims: list[int], item_shape: tuple[int, ...] | None, again: str) -> int:
    """The byte count an idx header announces, once its dims are plausible; else a DataError."""
    bad = f"The idx file {str(path)!r} is corrupt"
    if any(d < 0 for d in dims):
        raise DataError(f"{bad}: its header has negative dims {dims}. {again}")
    if item_shape is not None and tuple(dims[1:]) != tuple(item_shape):
        want = "x".join(map(str, item_shape))
        raise DataError(f"{bad}: its header says items of {'x'.join(map(str, dims[1:]))}, expected {want}. {again}")
    if dims[0] > MAX_IDX_ITEMS:
        raise DataError(f"{bad}: its header announces {dims[0]} items, more than the {MAX_IDX_ITEMS} any "
                        f"Fashion-MNIST file holds; it was not read. {again}")
    size = math.prod(dims)
    avail = available_memory()
    if avail is not None and size > avail // 2:
        raise DataError(f"The idx file {str(path)!r} announces {dims} ({size / 2**30:.2f} GiB), more than half "
                        f"of the memory available ({avail / 2**30:.2f} GiB); it was not read. {again}")
    return size


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
    x = read_idx(files[f"{split}_x"], 3, item_shape=(28, 28))
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


class _BlockedGlobal(pickle.UnpicklingError):
    """A CIFAR pickle named a global outside :data:`CIFAR_PICKLE_GLOBALS`; carries ``module.name``."""


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a CIFAR pickle: the only use of the class there is as the
    first argument of ``_reconstruct``.  Calling the real class from a pickle would let a few
    bytes allocate any amount of memory (``ndarray((10**12,))``), so the pickle gets this token."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray may only be passed to _reconstruct in a CIFAR pickle")


_NDARRAY = _NdarrayType()


def _reconstruct(cls, shape, typecode):
    """``numpy.core.multiarray._reconstruct`` as NumPy's pickles call it: ``(ndarray, (0,), b'b')``
    (an empty array that the following ``__setstate__`` fills with the pickled bytes)."""
    if cls is not _NDARRAY or tuple(shape) != (0,):
        raise pickle.UnpicklingError("_reconstruct is allowed only as numpy pickles an array: (ndarray, (0,), 'b')")
    return _np_core("multiarray")._reconstruct(np.ndarray, (0,), typecode)


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as Python 3 pickles ``bytes`` for protocols 0-2 (a str and 'latin1'), only."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "").replace("_", "") != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only to turn a str into latin-1 bytes")
    return text.encode("latin-1")


def _empty_bytes(*args):
    """``bytes`` as protocols 0-2 pickle ``b""`` (no argument), only: ``bytes(10**12)`` is a bomb."""
    if args:
        raise pickle.UnpicklingError("bytes is allowed only without arguments (how pickle writes b'')")
    return b""


def _np_core(name: str):
    """numpy's private ``multiarray`` / ``numeric`` module (``numpy._core`` since NumPy 2, else
    ``numpy.core``), imported directly so that NumPy 2 does not warn about ``numpy.core``."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def _cifar_globals() -> dict[tuple[str, str], Callable[[], object]]:
    """(module, name) -> what a CIFAR pickle gets for it.  The real batches (cPickle protocol 2,
    Python 2, NumPy 1) name only ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype``; the rest covers the same dict of arrays and lists written by Python 3's
    ``pickle.dumps``: NumPy 2's module names, protocol 5's ``_frombuffer``, NumPy scalars (e.g.
    ``np.int64`` labels), and ``_codecs.encode`` and ``bytes()`` (how protocols 0-2 write
    bytes).  Lists, dicts, strings, bytes and numbers are pickle opcodes and need no global.
    Values are factories so that importing this module touches no private NumPy module."""
    allowed: dict[tuple[str, str], Callable[[], object]] = {
        ("numpy", "ndarray"): lambda: _NDARRAY, ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode, ("builtins", "bytes"): lambda: _empty_bytes}
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = lambda: _reconstruct
        allowed[(f"{pkg}.multiarray", "scalar")] = lambda: _np_core("multiarray").scalar
        allowed[(f"{pkg}.numeric", "_frombuffer")] = lambda: _np_core("numeric")._frombuffer
    return allowed


CIFAR_PICKLE_GLOBALS = tuple(f"{m}.{n}" for m, n in _cifar_globals())


class CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch and nothing else: ``find_class`` resolves only the globals of
    :func:`_cifar_globals`, so a pickle that names any other (``os.system``, ``builtins.eval``,
    …) stops before anything is called (issue 17, D7).  ``pickle.load`` would call them."""

    def find_class(self, module: str, name: str):
        # Python 2's names (``__builtin__.eval``) as pickle's own find_class maps them, so that the
        # allowed set and the error speak of Python 3's (``builtins.eval``).
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        factory = _cifar_globals().get((module, name))
        if factory is None:
            raise _BlockedGlobal(f"{module}.{name}"[:120])
        return factory()


def read_cifar_pickle(path: Path, label_key: bytes, num_classes: int, fixes: str):
    """(uint8 tensor [N, 3, 32, 32], long labels [N]) from one CIFAR pickle; DataError if corrupt
    or if it names a global a CIFAR batch never holds (read with :class:`CifarUnpickler`)."""
    try:
        with open(path, "rb") as f:
            d = CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
        ok = data.ndim == 2 and data.shape[1] == 3072 and labels.shape == (len(data),)
        ok = ok and (labels.size == 0 or (labels.min() >= 0 and labels.max() < num_classes))
    except _BlockedGlobal as err:
        raise DataError(f"The CIFAR file {str(path)!r} is not a CIFAR batch: it names the Python global {err}, "
                        "which the CIFAR loader does not allow (it allows only NumPy's array reconstruction, "
                        "dtypes and plain lists, dicts, bytes and strings); it was refused and nothing in it "
                        f"was run. Delete the file (it may be malicious) and get the data again. {fixes}") from None
    except Exception as err:  # unpickling garbage raises many kinds of errors
        raise DataError(f"The CIFAR file {str(path)!r} is corrupt or not a CIFAR pickle "
                        f"({type(err).__name__}: {' '.join(str(err).split())[:200]}). Delete it and get it "
                        f"again. {fixes}") from None
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
    """(train, test) transforms on uint8 tensors [3, 32, 32] (the original toolkit's recipe)."""
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
           "Cutout", "InMemoryDataset", "FASHION_MNIST_SYSTEM_DIR", "available_memory", "dataset_key", "host_memory"]
