"""ann2snn: convert QCFS-quantized transformer ANNs into spiking neural networks and measure the result.

Papers this package builds on are cited in the docstrings of the modules that implement them.
"""
from ann2snn._compat import silence_noise as _silence_noise

_silence_noise()

__version__ = "0.1.0"
