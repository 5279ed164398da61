"""Where SpikingJelly 2.0 (our dependency) ships an operator that computes what one of ours
computes, this file says how the two relate, with numbers.

- ``ScaledNeuron`` and SpikeZIP's signed neuron ``neuron.spikezip.STBIFNode`` are the same
  dynamics: residual started at half a threshold, a positive spike at ≥ 1 threshold while the count
  is below its cap, a negative one below 0 while the count is positive, reset by subtraction.
  ``ScaledNeuron`` with threshold t/L (units of λ) and cap L equals ``STBIFNode(q_threshold=λ·t/L,
  level=L+1)``, step for step.  We keep ours because the simulator retunes threshold and cap per
  table row (t/L and L under ``exact``, 1 and t under ``rate``) on the same module, and because
  the ``seed`` preset needs the original's lazy negative rule (v ≤ −θ), which STBIF does not have.
- ``ECSoftmax`` and ``ann2snn.operators.TDSoftmax`` differ by design: TD emits
  softmax(X_k) − softmax(X_{k−1}) for the running input sum X_k (sum coding: its outputs add up to
  softmax of the *sum*), ours n_k·softmax(X_k / n_k) − … (mean coding: they add up to n times the
  softmax of the *mean*).  They agree after one step and nowhere else for a constant input.
"""
from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.ann2snn.operators import TDSoftmax
from spikingjelly.activation_based.neuron.spikezip import STBIFNode

from ann2snn.neurons import Clock, ECSoftmax, ScaledNeuron


@pytest.mark.parametrize("t,levels", [(1, 4), (2, 4), (4, 4), (8, 4), (3, 8)])
def test_scaled_neuron_is_stbif_with_a_threshold_of_lambda_t_over_l(t, levels):
    lam = 1.7
    g = torch.Generator().manual_seed(t * 10 + levels)
    x = (torch.rand(2000, generator=g) * 2.4 - 0.5) * lam  # inside, below and above [0, λ]
    ours = ScaledNeuron(lam, levels, "exact", theta=t / levels, cap=levels)
    theirs = STBIFNode(q_threshold=lam * t / levels, level=levels + 1)  # counts 0..L
    steps = t + 2 * levels  # t input steps, then zeros until both settle
    for k in range(steps):
        u = x if k < t else torch.zeros_like(x)
        torch.testing.assert_close(ours(u), theirs(u), rtol=0, atol=1e-6)
    functional.reset_net(ours)
    functional.reset_net(theirs)


def test_the_seed_rule_is_not_stbif():
    """The original's lazy negative spike (v ≤ −θ) differs from STBIF's (v < 0)."""
    lam, levels = 1.0, 4
    seed = ScaledNeuron(lam, levels, "lazy", theta=1.0, cap=levels)
    stbif = STBIFNode(q_threshold=lam, level=levels + 1)
    x = torch.tensor([0.8])
    outs = [(seed(u), stbif(u)) for u in (x, torch.tensor([-0.9]))]
    assert outs[0][0] == outs[0][1] == 1.0  # both fire on the first step
    assert outs[1][1] == -1.0 and outs[1][0] == 0.0  # v = -0.6: STBIF takes it back, seed waits for -θ


def test_ec_softmax_is_mean_coded_where_td_softmax_is_sum_coded():
    x = torch.tensor([[1.0, 0.0, -1.0]])
    n = 4
    clock = Clock()
    ec = ECSoftmax(-1, clock)
    ec_sum = torch.zeros_like(x)
    for _ in range(n):
        clock.tick(True)
        ec_sum = ec_sum + ec(x)
    td = TDSoftmax(dim=-1, step_mode="m")
    td_sum = td(x.unsqueeze(0).repeat(n, 1, 1)).sum(0)
    torch.testing.assert_close(ec_sum, n * torch.softmax(x, -1))  # n · softmax(mean input)
    torch.testing.assert_close(td_sum, torch.softmax(n * x, -1))  # softmax(sum of inputs)
    assert not torch.allclose(ec_sum / n, td_sum / n, atol=1e-2)
    # after one step the two are the same
    clock.reset()
    functional.reset_net(ec)
    functional.reset_net(td)
    clock.tick(True)
    torch.testing.assert_close(ec(x), td(x.unsqueeze(0))[0])


def test_spikingjelly_synop_counter_does_not_see_converted_spikes():
    """``op_counter.SynOpCounter`` counts synaptic operations where an operand is binary {0, 1}.
    A converted network's spikes are signed and scaled (±λθ), so it counts none of them; our meter
    counts every non-zero event × fan-out (``ann2snn.energy``).  On binary spikes the two agree."""
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter
    from torch import nn

    from ann2snn.convert import SpikingNetwork
    from ann2snn.presets import PRESETS
    from ann2snn.energy import EnergyMeter
    from ann2snn.simulate import Simulator

    lin = nn.Linear(8, 4, bias=False)
    binary = torch.tensor([[1.0, 0, 0, 1, 0, 0, 0, 1]])
    for spikes, expected in ((binary, 3 * 4), (binary * 0.7, 0), (binary * torch.tensor([1.0] * 3 + [-1.0] + [1.0] * 4), 0)):
        counter = SynOpCounter()
        with DispatchCounterMode([counter]):
            lin(spikes)
        assert counter.get_total() == expected
    # the same spikes as a converted neuron emits them (λ = 0.7), read by the same layer
    sim = Simulator(SpikingNetwork(nn.Sequential(ScaledNeuron(0.7, 1), lin), Clock(), PRESETS["rate"], {}))
    with EnergyMeter.for_simulator(sim) as meter:
        out = sim.run(binary * 0.7, 1)
    torch.testing.assert_close(out[0], lin(binary * 0.7))
    row = meter.result({"1": 8 * 4}, 1).rows[1]
    assert row.input == "spikes" and row.sops == 3 * 4  # three events, each reaching 4 outputs
