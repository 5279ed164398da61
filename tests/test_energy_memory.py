"""The second energy model (issue 20): the SNN against its equal-bit quantized ANN on integer
hardware, with memory traffic, the neurons' own work, spikes per synapse and the break-even rate.
Numbers are computed by hand from Horowitz's 45 nm figures (ISSCC 2014) as the module states them."""
from __future__ import annotations

import json
import math

import pytest
import torch

from ann2snn.convert import SpikingNetwork
from ann2snn.energy import HardwareModel, LayerRecord, hardware_energy, measure_energy
from ann2snn.energy.hardware import add_pj, mult_pj, sram_bit_pj
from ann2snn.energy.result import EnergyRow
from ann2snn.neurons import Clock
from ann2snn.presets import PRESETS
from ann2snn.rules import Role
from ann2snn.simulate import Simulator
from helpers import hand_net


def test_the_operation_and_memory_costs_are_horowitzs_45nm_points():
    assert add_pj(8) == pytest.approx(0.03) and add_pj(16) == pytest.approx(0.05) and add_pj(32) == pytest.approx(0.1)
    assert add_pj(24) == pytest.approx(0.075) and add_pj(4) == pytest.approx(0.015)
    assert mult_pj(8, 8) == pytest.approx(0.2)
    assert mult_pj(32, 32) == pytest.approx(3.1, rel=0.035)  # 3.2 by the a·b rule against Horowitz's 3.1
    # 64-bit SRAM accesses: 10 pJ at 8 KB, 20 pJ at 32 KB, ~100 pJ at 1 MB (the √size fit gives 113)
    assert 64 * sram_bit_pj(8 * 1024) == pytest.approx(10.0)
    assert 64 * sram_bit_pj(32 * 1024) == pytest.approx(20.0)
    assert 64 * sram_bit_pj(1024 * 1024) == pytest.approx(100.0, rel=0.14)
    with pytest.raises(ValueError, match="weight_reads"):
        HardwareModel(weight_reads="sometimes")


def test_a_hand_built_network_is_priced_term_by_term():
    ann, snn = hand_net()
    sim = Simulator(SpikingNetwork(snn, Clock(), PRESETS["rate"], {}))
    res = measure_energy(ann, sim, [(torch.ones(1, 4), torch.tensor([0]))], t=4)
    hw = res.hardware
    bit = 10.0 * math.sqrt(64 / 8192) / 64  # every buffer here is below 64 bytes: the floor
    mac_img, mac_3b = 0.2 + 0.075, 0.2 * 3 * 8 / 64 + 0.075  # 8×8 and 3×8-bit multiplies, 24-bit adds
    # the QNN: L = t = 4 (the neuron has no trained L) → 3-bit activations, 8-bit weights
    assert hw.activation_bits == 3
    qnn = {"macs": 12 * mac_img + 6 * mac_3b, "weight_reads": (12 + 6) * 8 * bit,
           "activation_traffic": 2 * 3 * 3 * bit, "quantizers": 3 * 2 * 0.075}
    for k, v in qnn.items():
        assert hw.qnn_breakdown_mj[k] * 1e9 == pytest.approx(v), k
    # the SNN: 12 SOPs of the second layer (6 spikes × fan-out 2); the image layer's 12 MACs once;
    # one weight read per operation; 3 neurons × 4 steps of 28-bit state (24 + ⌈log2 9⌉) read and
    # written, 2 compares each, and a 2-bit spike map written and read
    snn = {"acs": 12 * 0.075, "mac_image_layer": 12 * mac_img, "weight_reads": (12 + 12) * 8 * bit,
           "state_traffic": 2 * 12 * 28 * bit, "neuron_updates": 12 * 2 * 0.075, "spike_traffic": 2 * 12 * 2 * bit}
    for k, v in snn.items():
        assert hw.snn_breakdown_mj[k] * 1e9 == pytest.approx(v), k
    assert hw.e_snn_mj * 1e9 == pytest.approx(sum(snn.values()))
    assert hw.e_qnn_mj * 1e9 == pytest.approx(sum(qnn.values()))
    assert hw.spikes_per_synapse == pytest.approx(12 / 6)
    # spike-independent costs alone exceed the QNN: no break-even, and the verdict says so
    assert hw.break_even_spikes_per_synapse is None and "no spike rate breaks even" in hw.verdict
    d = json.loads(json.dumps(res.to_dict()))
    assert d["hardware"]["model"]["weight_bits"] == 8 and d["hardware"]["e_qnn_mj"] == pytest.approx(hw.e_qnn_mj)


def _parts(sops: float, flops: float = 1e6, neurons: float = 100.0, steps: int = 4) -> tuple:
    """A wide spike-driven layer behind few neurons: the spikes dominate, so a break-even exists."""
    neuron = LayerRecord("n", Role.NEURON, "ScaledNeuron", numel=neurons * steps, levels=4)
    syn = LayerRecord("fc", Role.SYNAPSE, "Linear", weights=int(flops))
    rows = [EnergyRow("n", "ScaledNeuron", "neuron", 0.1), EnergyRow("fc", "Linear", "synapse", 0.1, flops=int(flops),
                                                                      sops=sops)]
    return [neuron, syn], rows, 1, steps, 0, 1, 0.0, 0.0


def _synthetic(sops: float, **kw):
    return hardware_energy(*_parts(sops, **kw))


def test_the_break_even_rate_is_where_the_snn_costs_what_the_qnn_costs():
    hw = _synthetic(sops=2e6)
    assert hw.spikes_per_synapse == pytest.approx(2.0)
    be = hw.break_even_spikes_per_synapse
    assert be is not None and hw.break_even_rate == pytest.approx(be / 4)
    at_be = _synthetic(sops=be * 1e6)  # the same network with the break-even spike count
    assert at_be.e_snn_mj == pytest.approx(at_be.e_qnn_mj, rel=1e-9)
    fewer, more = _synthetic(sops=0.5 * be * 1e6), _synthetic(sops=2 * be * 1e6)
    assert fewer.qnn_snn_ratio > 1 > more.qnn_snn_ratio
    assert "wins" in fewer.verdict and "loses" in more.verdict


def test_dense_weight_reads_read_every_weight_on_every_step():
    event = hardware_energy(*_parts(1e5), HardwareModel(weight_reads="event"))
    neuron = LayerRecord("n", Role.NEURON, "ScaledNeuron", numel=400.0, levels=4)
    syn = LayerRecord("fc", Role.SYNAPSE, "Linear", weights=10**6)
    rows = [EnergyRow("n", "ScaledNeuron", "neuron", 0.1), EnergyRow("fc", "Linear", "synapse", 0.1, flops=10**6,
                                                                      sops=1e5)]
    dense = hardware_energy([neuron, syn], rows, 1, 4, 0, 1, 0.0, 0.0, HardwareModel(weight_reads="dense"))
    bit = sram_bit_pj(10**6)
    assert event.snn_breakdown_mj["weight_reads"] * 1e9 == pytest.approx(1e5 * 8 * bit)
    assert dense.snn_breakdown_mj["weight_reads"] * 1e9 == pytest.approx(4 * 10**6 * 8 * bit)
    for sops in (1e5, 1e7):  # the default reads each layer the cheaper way: per event when sparse, per step when busy
        best = _synthetic(sops=sops).snn_breakdown_mj["weight_reads"] * 1e9
        assert best == pytest.approx(min(sops, 4 * 10**6) * 8 * bit)
