"""ann2snn: convert QCFS-quantized ANNs into spiking neural networks and measure the result.

The public API (documented in README.md, section "Python API")::

    import ann2snn
    model = ann2snn.create_model("transformer", dim=64, num_heads=4, depth=1, in_channels=1,
                                 img_size=8, num_classes=10)
    model = ann2snn.quantize(model, levels=4)    # every ReLU call site -> QCFS, then train
    snn = ann2snn.convert(model, "exact")        # a SpikingNetwork (the ANN is left untouched)
    sim = ann2snn.Simulator(snn)
    res = ann2snn.evaluate(sim, loader, t=8)     # an Evaluation: res.k_step.top1, res.effective_latency
    table = ann2snn.evaluate_table(sim, loader, rows=[1, 2, 4, 8], extra_t=4)   # table[4].top1
    energy = ann2snn.measure_energy(model, sim, loader, t=8)

This package is the library: quantization, the spiking operators, graph tracing, the conversion
rules, passes and presets, the simulator, metrics, energy, the frontier and the model zoo.  The
measuring functions return typed results (:mod:`ann2snn.results`: ``Evaluation``, ``Table``,
``VerifyResult``, ``Frontier`` …), each with a ``to_dict()`` giving the plain data the files hold.  It
imports nothing from the application built on top of it (:mod:`ann2snn.app`: the command line,
config files, run folders, checkpoints, training, DDP, data loading, reports and plots).

The names below are imported on first use (PEP 562), so ``import ann2snn`` is cheap and loads
no torch until a name is used: the command line installs its Ctrl-C handling before the heavy
imports, and ``ann2snn --help`` answers at once.  Papers this package builds on are cited in the
docstrings of the modules that implement them.  Note: ``ann2snn.convert`` is the function; the
module of the same name is imported as ``from ann2snn.convert import ...``.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> the library module that defines it
_API = {
    "quantize": "quant", "QCFS": "quant",
    "convert": "convert", "SpikingNetwork": "convert",
    "Preset": "presets", "PRESETS": "presets", "get_preset": "presets",
    "ConversionError": "graph", "RULES": "rules", "Role": "rules",
    "verify": "verify",
    "Simulator": "simulate",
    "evaluate": "metrics", "evaluate_ann": "metrics", "evaluate_snn": "metrics", "evaluate_table": "metrics",
    "effective_latency": "metrics",
    "EnergyMeter": "energy", "EnergyResult": "energy", "measure_energy": "energy", "HardwareModel": "energy",
    "HardwareEnergy": "energy",
    "frontier": "frontier",
    "generate": "generate", "Generation": "results",
    "Accuracy": "results", "Evaluation": "results", "Frontier": "results", "FrontierPoint": "results",
    "KStep": "results", "Latency": "results", "SnnSteps": "results", "Table": "results", "TableRow": "results",
    "VerifyResult": "results", "WithinRun": "results",
    "bits_per_step": "neurons",
    "create_model": "models", "list_models": "models", "register_model": "models",
}
# names of earlier versions that live in the application now: still reachable, loaded on use
_APPLICATION = {"Config": "ann2snn.app.config", "ConfigError": "ann2snn.app.config",
                "load_config": "ann2snn.app.config", "simulator_for": "ann2snn.app.pipeline"}

__all__ = sorted(_API)

from ann2snn._compat import install_torchvision_repair as _repair  # noqa: E402

_repair()  # a user's own `import torchvision` / `import timm` works on a CPU-only torch (see _compat)


def __getattr__(name: str) -> Any:
    if name in _API:
        from ann2snn._compat import silence_noise

        silence_noise()
        module = importlib.import_module(f"ann2snn.{_API[name]}")
        value = getattr(module, name)
    elif name in _APPLICATION:
        value = getattr(importlib.import_module(_APPLICATION[name]), name)
    else:
        raise AttributeError(f"module 'ann2snn' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API) | set(_APPLICATION))


# Three functions share their name with the module that defines them (convert, verify, frontier).
# Importing such a module binds the package attribute to the module; here that binding is
# skipped, so ``ann2snn.convert`` stays the function whatever was imported before (the modules
# are in sys.modules: ``from ann2snn.convert import SpikingNetwork`` works as usual).
_SHADOWED = {name for name, module in _API.items() if name == module}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
