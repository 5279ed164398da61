"""ann2snn: convert QCFS-quantized ANNs into spiking neural networks and measure the result.

The public API (documented in README.md, section "Python API")::

    import ann2snn
    model = ann2snn.create_model("transformer", dim=64, num_heads=4, depth=1, in_channels=1,
                                 img_size=8, num_classes=10)
    model = ann2snn.quantize(model, levels=4)    # every ReLU call site -> QCFS, then train
    snn = ann2snn.convert(model, "exact")        # a SpikingNetwork (the ANN is left untouched)
    sim = ann2snn.Simulator(snn)
    res = ann2snn.evaluate(sim, loader, t=8)     # k-step curve, within-run steps, latency
    table = ann2snn.evaluate_table(sim, loader, rows=[1, 2, 4, 8], extra=4)
    energy = ann2snn.measure_energy(model, sim, loader, t=8)

Papers this package builds on are cited in the docstrings of the modules that implement them.
Note: ``ann2snn.convert`` is the function; the module of the same name is imported as
``from ann2snn.convert import ...``.
"""
from ann2snn._compat import silence_noise as _silence_noise

_silence_noise()

from ann2snn.config import Config, ConfigError, load_config  # noqa: E402
from ann2snn.convert import PRESETS, ConversionOptions, SpikingNetwork, simulator_for, verify  # noqa: E402
from ann2snn.convert import convert as _convert  # noqa: E402
from ann2snn.energy import EnergyMeter, measure_energy  # noqa: E402
from ann2snn.frontier import frontier  # noqa: E402
from ann2snn.metrics import effective_latency, evaluate, evaluate_ann, evaluate_snn, evaluate_table  # noqa: E402
from ann2snn.models import create_model, list_models, register_model  # noqa: E402
from ann2snn.quant import QCFS, quantize  # noqa: E402
from ann2snn.graph import ConversionError  # noqa: E402
from ann2snn.neurons import bits_per_step  # noqa: E402
from ann2snn.simulate import Simulator  # noqa: E402

convert = _convert  # the function, not the submodule of the same name

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "ConversionError", "ConversionOptions", "EnergyMeter", "PRESETS", "QCFS", "Simulator",
           "SpikingNetwork", "bits_per_step", "convert", "create_model", "effective_latency", "evaluate", "evaluate_ann",
           "evaluate_snn", "evaluate_table", "frontier", "list_models", "load_config", "measure_energy", "quantize",
           "register_model", "simulator_for", "verify"]
