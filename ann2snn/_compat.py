"""Import-time compatibility shims, kept in one place.

1. torchvision vs. a CPU-only torch.  On machines where a CUDA build of torchvision sits next to a
   CPU build of torch, torchvision's C extension cannot load and ``import torchvision`` fails with
   ``RuntimeError: operator torchvision::nms does not exist`` (its meta registrations refer to ops
   the extension would have defined).  Everything this package uses from torchvision (datasets,
   transforms, AutoAugment) is pure Python, so we declare the two missing operator schemas through
   ``torch.library`` and import again.  ``torchvision.ops.nms`` and ``torchvision.io`` stay
   unusable in that situation; nothing here needs them.  On a normal install the first import
   succeeds and nothing is touched.
   :func:`install_torchvision_repair` (run by ``import ann2snn``) makes a user's own
   ``import torchvision`` -- or ``import timm``, which imports it -- go through the same repair,
   without importing torch until torchvision is imported.
2. Noise: torch logs "Triton not available" style warnings on first use of some code paths;
   users should not see them.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
import warnings

_MISSING_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keep the torch.library.Library alive for the life of the process


def _purge(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def import_torchvision():
    """Return the ``torchvision`` module, repairing the CPU-torch/CUDA-torchvision mismatch."""
    global _LIBRARY
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::" not in str(err) or "does not exist" not in str(err):
            raise
    import torch.library

    _purge("torchvision")
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
        for schema in _MISSING_OP_SCHEMAS.values():
            _LIBRARY.define(schema)
    return importlib.import_module("torchvision")


class _TorchvisionRepair(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first import of ``torchvision`` it imports it through
    :func:`import_torchvision` (repaired where needed) and hands the import system that module."""

    busy = False

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision" or self.busy:
            return None
        type(self).busy = True
        try:
            module = import_torchvision()
        finally:
            type(self).busy = False
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionRepair)]  # once is enough
        return importlib.util.spec_from_loader(name, _Loaded(module), origin=getattr(module, "__file__", None))


class _Loaded(importlib.abc.Loader):
    """A loader of a module that is already loaded."""

    def __init__(self, module):
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        pass


def install_torchvision_repair() -> None:
    """Route a later ``import torchvision`` through :func:`import_torchvision` (cheap: no import now)."""
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionRepair) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionRepair())


def silence_noise() -> None:
    """Hide third-party warnings that say nothing about the user's run."""
    for name in ("torch._inductor", "torch.utils._sympy", "torch._dynamo", "torch.distributed.elastic", "torch._library"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*[Tt]riton.*")
    warnings.filterwarnings("ignore", message=".*Failed to initialize NumPy.*")
    warnings.filterwarnings("ignore", message=".*torchaudio.*")
    try:  # spikingjelly logs through loguru at import; keep our users' consoles clean
        from loguru import logger as _loguru

        _loguru.disable("spikingjelly")
    except Exception:  # pragma: no cover - loguru is optional
        pass
