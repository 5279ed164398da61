"""Energy accounting against numbers computed by hand: FLOPs (torch's counter), SOPs, the counting
rules for products (events of the driving operand × fan-out), the firing rate of a constant-driven
neuron, effective latency, the ``energy`` / ``convert --energy`` commands end to end, and
directly trained models (LIF rates against spikingjelly's monitor, Spikformer's SSA products)."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from ann2snn.convert import SpikingNetwork, convert
from ann2snn.presets import PRESETS
from ann2snn.energy import (CONSTANTS, NONLINEAR_MACS, RUNNING_RULE_MACS, EnergyMeter, EnergyResult, EnergyRow,
                            count_flops, measure_energy, nonlinear_macs, resolve_constants)
from ann2snn.metrics import effective_latency, settle_steps
from ann2snn.app.report import format_energy_table, write_energy_csv, write_energy_json
from ann2snn.layers import MatMul
from ann2snn.neurons import Clock, RunningFunction, ScaledNeuron, SpikeEinsum, SpikeMatMul
from ann2snn.simulate import Simulator

from helpers import copy_run, hand_net


def spiking(net: nn.Module, clock: Clock | None = None) -> Simulator:
    """A Simulator for a hand-built net: threshold 1, cap t (the ``rate`` preset's neurons)."""
    return Simulator(SpikingNetwork(net, clock or Clock(), PRESETS["rate"], {}))


def rows_by_name(result: EnergyResult) -> dict[str, EnergyRow]:
    return {r.name: r for r in result.rows}


# ------------------------------------------------------------------------------ FLOPs
def test_count_flops_matches_hand_formulas():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(32, 3))
    flops = count_flops(net, torch.randn(5, 1, 4, 4))  # per image: only sample[:1] is run
    # conv: 2 output channels × 4×4 positions × (1 × 3×3) kernel taps = 288 MACs
    # linear: 32 inputs × 3 outputs = 96 MACs
    assert flops["0"] == 288
    assert flops["2"] == 96
    assert flops[""] == 288 + 96


# ------------------------------------------------------------------------------ SOPs
@pytest.mark.parametrize("first_layer", ["once", "per_step"])
def test_flops_sops_energy_of_hand_built_network(first_layer):
    ann, snn = hand_net()
    loader = [(torch.ones(1, 4), torch.tensor([0]))]
    res = measure_energy(ann, spiking(snn), loader, t=4, first_layer=first_layer)
    rows = rows_by_name(res)
    # FLOPs (MACs): 4·3 = 12 and 3·2 = 6.
    assert rows["0"].flops == 12 and rows["2"].flops == 6
    # Neuron inputs 0.5, 1, 0 over T = 4 steps from v = ½: spikes at steps {1, 3}, {1, 2, 3, 4}, {}
    # → 6 spikes in 3 neurons × 4 steps: rate 0.5.
    assert rows["1"].rate == pytest.approx(0.5)
    # Layer 0 reads the image: MACs, 12 once or 12 on each of the 4 steps.
    assert rows["0"].input == "image" and rows["0"].op == "MAC" and rows["0"].sops == 0
    first = 12 if first_layer == "once" else 4 * 12
    assert rows["0"].macs == pytest.approx(first)
    # Layer 2: SOP = rate 0.5 × T 4 × FLOPs 6 = 12 = 6 spikes × fan-out 2.
    assert rows["2"].rate == pytest.approx(0.5)
    assert rows["2"].sops == pytest.approx(12) and rows["2"].macs == 0
    tot = res.totals
    assert tot.flops == 18 and tot.sops == pytest.approx(12)
    assert tot.e_ann_mj == pytest.approx(4.6 * 18 * 1e-9)
    assert tot.e_snn_mj == pytest.approx((4.6 * first + 0.9 * 12) * 1e-9)
    assert tot.ann_snn_ratio == pytest.approx(tot.e_ann_mj / tot.e_snn_mj)
    assert sum(r.e_snn_mj for r in res.rows) == pytest.approx(tot.e_snn_mj)


class TwoOperands(nn.Module):
    """x = [xa0, xa1, xb0, xb1] → a = IF(xa) as [1, 1, 2], b = IF(xb) or softmax(xb) as [1, 2, 1]."""

    def __init__(self, product: nn.Module, analog_b: bool = False):
        super().__init__()
        self.na, self.nb = ScaledNeuron(1.0), (nn.Softmax(dim=-2) if analog_b else ScaledNeuron(1.0))
        self.mm = product

    def forward(self, x):
        a = self.na(x[:, :2].reshape(1, 1, 2))
        b = self.nb(x[:, 2:].reshape(1, 2, 1))
        return self.mm(a, b).flatten(1)  # [1, 1]


def run_two_operands(product_factory, analog_b=False, t=2):
    clock = Clock()
    net = TwoOperands(product_factory(clock), analog_b)
    sim = spiking(net, clock)
    x = torch.tensor([[1.0, 0.5, 1.0, 0.0]])
    with EnergyMeter.for_simulator(sim) as meter:
        sim.run(x, t)
    return rows_by_name(meter.result({"mm": 2, "": 2}, t))["mm"]


def test_spike_equivalent_product_counts_by_hand():
    # a: inputs 1, 0.5 → steps a1 = [1, 1], a2 = [1, 0]; b: inputs 1, 0 → b1 = b2 = [1, 0]ᵀ.
    # a @ b is [1×2]·[2×1]: 2 MACs, so an entry of a meets 1 entry of b and vice versa (fan-out 1).
    # Running-sum form a_k·B_{k-1} + A_k·b_k, each term driven by its step operand (events × fan-out):
    #   step 1: (no B_0) + b1's 1 event → 1 AC;  step 2: a2's 1 event + b2's 1 event → 2 ACs.
    # Rescaling by 1/n: 1 output element × 2 steps = 2 MACs.
    row = run_two_operands(SpikeMatMul)
    assert row.type == "SpikeMatMul" and row.input == "spikes×spikes"
    assert row.sops == pytest.approx(3) and row.macs == pytest.approx(2)
    assert row.rate == pytest.approx(3 / 4) and row.rate_b == pytest.approx(2 / 4)


def test_spike_einsum_is_counted_like_the_spike_matmul_it_spells():
    """``einsum("bij,bjk->bik")`` is the same product as ``@``: the same events, ACs and 1/n MACs."""
    mm = run_two_operands(SpikeMatMul)
    es = run_two_operands(lambda clock: SpikeEinsum("bij,bjk->bik", clock))
    assert es.kind == "product" and es.input == "spikes×spikes"
    for key in ("sops", "macs", "rate", "rate_b"):
        assert getattr(es, key) == pytest.approx(getattr(mm, key)), key


class NormNet(nn.Module):
    """x → IF → LayerNorm (running-sum rule) → IF: 4 entries per image, one float function."""

    def __init__(self, clock: Clock):
        super().__init__()
        self.n1, self.n2 = ScaledNeuron(1.0), ScaledNeuron(1.0)
        self.norm = RunningFunction(nn.LayerNorm(4), clock, "LayerNorm")

    def forward(self, x):
        return self.n2(self.norm(self.n1(x)))


def test_float_functions_are_counted_as_macs_on_both_sides_and_in_the_non_spike_share():
    # 2 images × 4 entries; the ANN evaluates LayerNorm once per image (4 MACs per entry: 16 MACs),
    # the SNN on each of S = 3 steps, plus the running-sum rule's 2 scalings: (4 + 2) × 4 × 3 = 72.
    clock = Clock()
    sim = spiking(NormNet(clock), clock)
    x = torch.tensor([[1.0, 0.5, 0.0, 1.0], [0.2, 1.0, 1.0, 0.0]])
    with EnergyMeter.for_simulator(sim) as meter:
        sim.run(x, 3)
    res = meter.result({"": 0}, 3)
    row = rows_by_name(res)["norm"]
    assert NONLINEAR_MACS["layernorm"] == 4 and RUNNING_RULE_MACS == 2
    assert row.kind == "nonlinear" and row.op == "MAC" and row.input == "analog"
    assert row.ann_macs == pytest.approx(16) and row.macs == pytest.approx(72)
    tot = res.totals
    assert tot.nonlinear_macs == pytest.approx(72) and tot.nonlinear_macs_ann == pytest.approx(16)
    assert tot.e_ann_mj == pytest.approx(4.6 * 16 * 1e-9)  # no FLOPs: the float function only
    assert tot.e_snn_mj == pytest.approx(4.6 * 72 * 1e-9)  # no synapse: nothing spike-driven
    assert tot.non_spike_share == pytest.approx(1.0)
    assert sum(tot.energy_breakdown_mj.to_dict().values()) == pytest.approx(tot.e_snn_mj)
    assert "not driven by spikes: 100.0% of E_SNN" in format_energy_table(res)


@pytest.mark.parametrize("fn,macs", [(nn.LayerNorm(4), 4), (nn.GELU(), 7), (nn.SiLU(), 7), (torch.tanh, 4),
                                     (torch.nn.functional.rms_norm, 3), (torch.erf, 4),
                                     (nn.Hardsigmoid(), 2)])
def test_float_function_costs_follow_the_table(fn, macs):
    name = getattr(fn, "__name__", type(fn).__name__)
    assert nonlinear_macs(RunningFunction(fn, Clock(), name)) == macs


def test_per_step_product_of_two_spike_operands_is_driven_by_the_sparser():
    # Per-step a_k·b_k, both operands spikes: a has 2 + 1 = 3 events, b 1 + 1 = 2 (fan-out 1 each);
    # the layer is driven by b, the operand with fewer events: 2 ACs = r_b 0.5 × S 2 × FLOPs 2.
    row = run_two_operands(lambda clock: MatMul())
    assert row.sops == pytest.approx(2) and row.macs == 0 and row.op == "AC"
    assert row.sops == pytest.approx(min(row.rate, row.rate_b) * 2 * 2)


def test_product_with_one_spike_operand_is_counted_as_acs():
    # b = softmax over its 2 entries: dense and real-valued on both steps; a spikes as above.
    # a drives: each spike adds one (real) entry of b: 2 + 1 = 3 ACs = r_a 0.75 × S 2 × FLOPs 2.
    row = run_two_operands(lambda clock: MatMul(), analog_b=True)
    assert row.input == "spikes×analog" and row.op == "AC"
    assert row.sops == pytest.approx(3) and row.macs == 0
    assert row.sops == pytest.approx(row.rate * 2 * 2)


class Shaped(nn.Module):
    """x = [xa (4), xb (6)] → a [1, 2, 2], b [1, 2, 3]: each IF spikes (threshold 1, v0 = ½) or softmax
    over the last axis (dense, analog)."""

    def __init__(self, product: nn.Module, analog_a: bool, analog_b: bool):
        super().__init__()
        self.na = nn.Softmax(dim=-1) if analog_a else ScaledNeuron(1.0)
        self.nb = nn.Softmax(dim=-1) if analog_b else ScaledNeuron(1.0)
        self.mm = product

    def forward(self, x):
        return self.mm(self.na(x[:, :4].reshape(1, 2, 2)), self.nb(x[:, 4:].reshape(1, 2, 3))).flatten(1)


# Inputs 1 spike on every step, 0 never: a = [[1, 0], [0, 0]] (1 of 4 entries, rate ¼),
# b = [[0, 0, 0], [1, 1, 1]] (3 of 6, rate ½).  a @ b is 2·2·3 = 12 MACs: an entry of a meets a row
# of b (fan-out 3), an entry of b a column of a (fan-out 2).  a·b = 0 (a's spike meets b's zero row):
# a coincidence count would give 0 operations; the convention reads the held operand densely.
@pytest.mark.parametrize("product, analog_a, analog_b, t, label, acs, macs", [
    # both spikes: a drives (1 event × 3 = 3 per step) rather than b (3 × 2 = 6): min(r_a, r_b)·S·FLOPs
    ("per_step", False, False, 1, "spikes×spikes", 0.25 * 1 * 12, 0),
    ("per_step", False, False, 3, "spikes×spikes", 0.25 * 3 * 12, 0),
    # one spike operand drives, however dense the analog one is: r × S × FLOPs ACs
    ("per_step", False, True, 2, "spikes×analog", 0.25 * 2 * 12, 0),
    ("per_step", True, False, 2, "analog×spikes", 0.5 * 2 * 12, 0),
    # no spike operand: MACs, driven by the operand with fewer events (both dense here: FLOPs per step)
    ("per_step", True, True, 2, "analog×analog", 0, 2 * 12),
    # running-sum form, t = 2: a_k·B_{k-1} on step 2 (1 × 3) + A_k·b_k on both steps (2 × 3 × 2)
    # = 15 ACs; rescaling 6 output entries × 2 steps = 12 MACs
    ("running", False, False, 2, "spikes×spikes", 3 + 12, 12),
    # softmax a: its increments drive a_k·B_{k-1} as MACs (4 × 3 on step 2), b's spikes A_k·b_k as ACs
    ("running", True, False, 2, "analog×spikes", 12, 12 + 12),
], ids=["per_step-spikes-spikes-t1", "per_step-spikes-spikes-t3", "per_step-spikes-analog",
        "per_step-analog-spikes", "per_step-analog-analog", "running-spikes-spikes", "running-analog-spikes"])
def test_products_count_events_of_the_driving_operand_times_fan_out(product, analog_a, analog_b, t, label,
                                                                     acs, macs):
    clock = Clock()
    net = Shaped(SpikeMatMul(clock) if product == "running" else MatMul(), analog_a, analog_b)
    sim = spiking(net, clock)
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
    with EnergyMeter.for_simulator(sim) as meter:
        sim.run(x, t)
    row = rows_by_name(meter.result(count_flops(net, x), t))["mm"]
    assert row.flops == 12 and row.input == label
    if not analog_a:
        assert row.rate == pytest.approx(0.25)
    if not analog_b:
        assert row.rate_b == pytest.approx(0.5)
    assert row.sops == pytest.approx(acs) and row.macs == pytest.approx(macs)
    assert row.op == "+".join(k for k, v in (("AC", acs), ("MAC", macs)) if v)


# ------------------------------------------------------------------------------ firing rate
@pytest.mark.parametrize("t", [4, 8])
@pytest.mark.parametrize("z", [-0.3, 0.0, 0.1, 0.3, 0.5, 0.74, 1.0, 1.5])
def test_firing_rate_of_constant_input_follows_spec_2(t, z):
    """The neuron's definition: constant input z (units of λ), v_neg = 0, cap ≥ T ⇒ count clamp(floor(T·z + ½), 0, T)."""
    lam = 2.0
    sim = spiking(nn.Sequential(ScaledNeuron(lam)))
    with EnergyMeter.for_simulator(sim) as meter:
        sim.run(torch.full((1, 1), z * lam), t)
    rate = rows_by_name(meter.result({}, t))["0"].rate
    assert rate == pytest.approx(min(max(math.floor(t * z + 0.5), 0), t) / t)


# ------------------------------------------------------------------------------ latency
def test_settle_steps_and_effective_latency_by_hand():
    preds = torch.tensor([[0, 1, 2, 3],
                          [0, 1, 5, 3],
                          [0, 4, 5, 3],
                          [0, 4, 2, 3]])  # [S = 4 steps, B = 4 samples]
    settle = settle_steps(preds)
    assert settle.tolist() == [1, 3, 4, 1]
    # 99.9% of 4 samples = all of them; sample 2 still changed at the last step: censored, not "4"
    lat = effective_latency(settle, 4)
    assert (lat.settled, lat.steps, lat.unsettled_fraction) == (False, None, 0.25)
    assert effective_latency(settle, 4, fraction=0.5).steps == 1
    assert effective_latency(settle, 4, fraction=0.75).to_dict() == {"steps": 3, "settled": True, "observed_steps": 4,
                                                          "fraction": 0.75, "unsettled_fraction": 0.25}
    # the same predictions followed by one more unchanged step: sample 2 is now seen to settle at 4
    lat5 = effective_latency(settle_steps(torch.cat([preds, preds[-1:]])), 5)
    assert (lat5.settled, lat5.steps, lat5.unsettled_fraction) == (True, 4, 0.0)
    # a single step cannot change: every prediction is final at step 1
    assert effective_latency(settle_steps(preds[:1]), 1).steps == 1


def test_measured_firing_rates_and_latency_match_an_independent_count(qcfs_transformer):
    """The meter's per-neuron firing rate (non-zeros over entries × steps of the t + extra_t run)
    and the effective latency, against hooks and per-sample loops written here.  The latency is
    observed over 2 more zero steps (``latency_extra``) that the rates must not include."""
    from ann2snn.neurons import MaxPoolNeuron

    t, extra_t, more = 3, 1, 2
    sim = Simulator(convert(qcfs_transformer, "exact"))
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(7, 1, 8, 8, generator=g) * 2, torch.randint(0, 10, (7,), generator=g)
    seen: dict[str, list[float]] = {}

    def hook(name):
        def count(module, args, out):
            if sim.snn.clock.step <= t + extra_t and out.shape[0] == x.shape[0]:  # not the FLOP probe
                c = seen.setdefault(name, [0.0, 0.0])
                c[0] += float((out != 0).sum())
                c[1] += out.numel()
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in sim.snn.net.named_modules()
               if isinstance(m, (ScaledNeuron, MaxPoolNeuron))]
    try:
        res = measure_energy(qcfs_transformer, sim, [(x, y)], t=t, extra_t=extra_t, latency_extra=more)
    finally:
        for h in handles:
            h.remove()
    rows = rows_by_name(res)
    assert seen and {n: rows[n].rate for n in seen} == pytest.approx({n: a / b for n, (a, b) in seen.items()}, abs=1e-12)
    assert any(0 < a / b < 1 for a, b in seen.values())  # the check is not about all-zero layers
    preds = sim.run(x, t, extra_t + more).argmax(-1)  # [S, B]
    S = t + extra_t + more
    settle = []
    for b in range(x.shape[0]):
        s = S
        while s > 1 and preds[s - 2, b] == preds[S - 1, b]:
            s -= 1
        settle.append(s)
    lat = res.effective_latency
    assert lat.observed_steps == S
    if max(settle) < S:
        assert lat.to_dict() == {"steps": max(settle), "settled": True, "observed_steps": S, "fraction": 0.999,
                                 "unsettled_fraction": 0.0}
    else:
        assert lat.settled is False and lat.steps is None


# ------------------------------------------------------------------------------ transformer
def test_transformer_rows_totals_and_flops_from_either_side(qcfs_transformer, tmp_path):
    snn = convert(qcfs_transformer, "exact")
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    res = measure_energy(qcfs_transformer, Simulator(snn), [(x, y)], t=3, extra_t=1)
    by_snn = measure_energy(None, Simulator(snn), [(x, y)], t=3, extra_t=1)
    assert by_snn.totals.flops == res.totals.flops > 0  # one SNN step = the ANN's layers
    rows = rows_by_name(res)
    assert rows["embed.proj.0.0"].input == "image"
    assert rows["blocks.0.attn.qk"].input == "spikes×spikes"
    av = rows["blocks.0.attn.av"]  # softmax increments drive MACs, v's spikes ACs, + 1/n rescaling
    assert av.input == "analog×spikes" and av.op == "AC+MAC"
    proj = rows["blocks.0.attn.proj.linear"]  # reads attention's real-valued output: MACs
    assert proj.input == "analog" and proj.op == "MAC" and proj.sops == 0
    assert rows["blocks.0.attn.q.linear"].type == "Linear"  # bias-gated layer reported by its type
    tot = res.totals
    assert tot.flops_layers == tot.flops  # every counted op belongs to a reported layer
    soft = rows_by_name(res)["blocks.0.attn.softmax"]  # ECSoftmax: a float function on every step
    assert soft.macs > soft.ann_macs > 0 and tot.nonlinear_macs >= soft.macs
    assert sum(tot.energy_breakdown_mj.to_dict().values()) == pytest.approx(tot.e_snn_mj)
    assert 0 < tot.non_spike_share < 1
    assert tot.energy_breakdown_mj.mac_products > 0 and tot.energy_breakdown_mj.mac_analog_inputs > 0
    assert len(res.accuracy.snn_top1_within_run) == 4
    text = format_energy_table(res)
    for word in ("layer", "FLOPs", "SOPs", "E_ANN", "E_SNN", "effective latency"):
        assert word in text
    with open(write_energy_csv(tmp_path / "e.csv", res)) as f:
        table = list(csv.DictReader(f))
    assert table[-1]["name"] == "TOTAL" and len(table) == len(res.rows) + 1
    assert json.loads(write_energy_json(tmp_path / "e.json", res).read_text())["totals"]["flops"] == tot.flops



# ------------------------------------------------------------------------------ typed results
ROW_KEYS = {
    "neuron": ["name", "type", "kind", "rate", "neg_rate", "input", "op", "flops", "sops", "macs", "e_ann_mj",
               "e_snn_mj"],
    "nonlinear": ["name", "type", "kind", "rate", "neg_rate", "input", "op", "flops", "sops", "macs", "ann_macs",
                  "e_ann_mj", "e_snn_mj"],
    "synapse": ["name", "type", "kind", "rate", "input", "op", "flops", "sops", "macs", "e_ann_mj", "e_snn_mj"],
    "product": ["name", "type", "kind", "rate", "rate_b", "input", "op", "flops", "sops", "macs", "e_ann_mj",
                "e_snn_mj"],
}
TOTAL_KEYS = ["images", "t", "extra_t", "steps", "spike_levels", "bits_per_step", "bit_steps", "constants",
              "first_layer", "flops", "flops_layers", "first_layer_flops", "first_layer_macs", "other_macs",
              "nonlinear_macs", "nonlinear_macs_ann", "sops", "e_ann_mj", "e_snn_mj", "energy_breakdown_mj",
              "non_spike_share", "ann_snn_ratio", "mean_rate"]


def test_result_dicts_keep_the_file_keys_in_order(qcfs_transformer):
    """``to_dict()`` is the JSON / CSV form: every kind of row, the totals and the result keep the keys
    (and their order) that the files had when the result was a dict."""
    x, y = torch.randn(2, 1, 8, 8), torch.randint(0, 10, (2,))
    res = measure_energy(qcfs_transformer, Simulator(convert(qcfs_transformer, "exact")), [(x, y)], t=2)
    d = json.loads(json.dumps(res.to_dict()))
    assert list(d) == ["rows", "totals", "hardware", "accuracy", "effective_latency"]
    assert {r["kind"] for r in d["rows"]} == set(ROW_KEYS)
    for row in d["rows"]:
        assert list(row) == ROW_KEYS[row["kind"]], row["name"]
    assert list(d["totals"]) == TOTAL_KEYS
    assert list(d["totals"]["constants"]) == ["name", "e_mac_pj", "e_ac_pj"]
    assert list(d["totals"]["energy_breakdown_mj"]) == ["ac_spikes", "mac_image_layer", "mac_analog_inputs",
                                                        "mac_products", "mac_float_functions"]
    assert list(d["accuracy"]) == ["snn_top1_within_run", "ann_top1"]
    assert d["effective_latency"] == res.effective_latency.to_dict()


def test_a_misspelt_record_field_is_an_error_not_a_zero():
    from ann2snn.energy import LayerRecord
    from ann2snn.rules import Role

    rec = LayerRecord("fc", Role.SYNAPSE, "Linear")
    rec.nnz += 2
    with pytest.raises(AttributeError):
        rec.nzz += 1
    with pytest.raises(AttributeError):
        rec.nzz = 1


def test_energy_of_a_metered_evaluation_equals_measure_energy(qcfs_transformer):
    """``convert --energy`` meters its evaluation (k-step runs left out) and prices it with
    ``energy_of``; ``energy`` calls ``measure_energy``: the same figures."""
    from ann2snn.energy import energy_of
    from ann2snn.metrics import evaluate

    sim = Simulator(convert(qcfs_transformer, "exact"))
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    with EnergyMeter.for_simulator(sim) as meter:
        run = evaluate(sim, [(x, y)], 3, 1, ann=qcfs_transformer, meter=meter)
    got = energy_of(meter, sim, x, 3, 1, "fp16", "per_step", effective_latency=run["effective_latency"])
    want = measure_energy(qcfs_transformer, sim, [(x, y)], 3, 1, "fp16", first_layer="per_step")
    assert got.accuracy is None and want.accuracy is not None
    assert list(meter.result({}, 3, 1).to_dict()) == ["rows", "totals", "hardware"]  # the meter alone: no run figures
    assert got.to_dict() == {k: v for k, v in want.to_dict().items() if k != "accuracy"}


# ------------------------------------------------------------------------------ roles from the rules
def test_conv3d_is_a_synapse_by_the_rules_table():
    """Roles come from ``RULES.role_of``: ``nn.Conv3d`` is a synapse (the meter's own type lists
    had left it out).  Input 1 → the neuron spikes on each of its 8 entries; the 1×1×1 conv to 2
    channels is 16 MACs, fan-out 2: 16 ACs in one step."""
    net = nn.Sequential(ScaledNeuron(1.0), nn.Conv3d(1, 2, 1, bias=False))
    sim = spiking(net)
    x = torch.ones(1, 1, 2, 2, 2)
    with EnergyMeter.for_simulator(sim) as meter:
        sim.run(x, 1)
    row = rows_by_name(meter.result(count_flops(net, x), 1))["1"]
    assert (row.kind, row.type, row.input, row.op, row.flops) == ("synapse", "Conv3d", "spikes", "AC", 16)
    assert row.sops == pytest.approx(16)


class Sign(nn.Module):
    """A spiking layer of the user's own: 1 where the input is positive."""

    def forward(self, x):
        return (x > 0).float()


def test_a_module_given_a_role_is_counted(monkeypatch):
    from ann2snn.rules import RULES, Role

    monkeypatch.setattr(RULES, "roles", dict(RULES.roles))  # the table as it was, after the test
    net = nn.Sequential(Sign(), nn.Linear(4, 2, bias=False))
    x = torch.tensor([[1.0, -1.0, 2.0, 0.0]])

    def rows():
        sim = spiking(net)
        with EnergyMeter.for_simulator(sim) as meter:
            sim.run(x, 2)
        return rows_by_name(meter.result(count_flops(net, x), 2))

    assert "0" not in rows()  # no role: not counted
    RULES.add_role(Sign, Role.NEURON)
    sign = rows()["0"]
    assert (sign.kind, sign.type, sign.rate) == ("neuron", "Sign", pytest.approx(0.5))


def test_constants_presets_and_custom():
    assert (CONSTANTS["fp32"].e_mac_pj, CONSTANTS["fp32"].e_ac_pj) == (4.6, 0.9)
    assert (CONSTANTS["fp16"].e_mac_pj, CONSTANTS["fp16"].e_ac_pj) == (1.5, 0.4)
    assert (CONSTANTS["int8"].e_mac_pj, CONSTANTS["int8"].e_ac_pj) == (0.23, 0.03)
    custom = resolve_constants("2,0.5")
    assert (custom.e_mac_pj, custom.e_ac_pj) == (2.0, 0.5)
    for bad in ("fp64", "1", "-1,2"):
        with pytest.raises(ValueError):
            resolve_constants(bad)


# ------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def energy_root(tiny_run, tmp_path_factory):
    """An out_root whose latest run ("tiny") is a copy of the shared tiny run: the commands here
    write their results into the run's folder."""
    root = tmp_path_factory.mktemp("energy")
    copy_run(tiny_run["run"], root, "tiny", latest=True)
    return root


@pytest.mark.slow
def test_energy_command_prints_table_and_writes_files(energy_root, capsys):
    from ann2snn.app.cli import main

    rc = main(["energy", "--out_root", str(energy_root), "--t", "4", "--json", str(energy_root / "e.json"),
               "--csv", str(energy_root / "e.csv"), "--constants", "int8", "--weight-bits", "4",
               "--weight-reads", "dense"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "E_SNN" in out and "effective latency" in out and "int8" in out
    assert "second model (memory: equal-bit QNN" in out and "E_QNN = " in out and "verdict: the SNN" in out
    res = json.loads((energy_root / "e.json").read_text())
    assert res["totals"]["constants"]["e_ac_pj"] == 0.03 and res["totals"]["t"] == 4
    hw = res["hardware"]
    assert hw["model"]["weight_bits"] == 4 and hw["model"]["weight_reads"] == "dense"
    assert hw["e_qnn_mj"] > 0 and hw["e_snn_mj"] == pytest.approx(sum(hw["snn_breakdown_mj"].values()))
    assert (energy_root / "e.csv").stat().st_size > 0


@pytest.mark.slow
def test_convert_and_table_leave_the_four_plots(energy_root, capsys):
    from ann2snn.app.cli import main

    assert main(["convert", "--out_root", str(energy_root), "--t", "4", "--energy"]) == 0
    assert main(["table", "--out_root", str(energy_root), "--t", "1-2", "--extra-t", "0-1"]) == 0
    out = capsys.readouterr().out
    assert "effective latency" in out and "E_ANN / E_SNN" in out
    run = energy_root / "tiny"
    ev = run / "eval-best_model-exact"
    conv = json.loads((ev / "convert_t4_e0.json").read_text())
    assert "energy" in conv and conv["effective_latency"]["observed_steps"] == 4
    for png in (ev / "accuracy.png", ev / "firing_rates.png", ev / "energy.png",
                run / "table-best_model-exact" / "table_heatmap.png"):
        assert png.is_file() and png.stat().st_size > 1000, png


# ------------------------------------------------------------------------------ directly trained SNNs
def firing_direct_model(name: str, **kwargs) -> nn.Module:
    """A tiny untrained direct model whose every LIF fires: with eval-mode BatchNorm at rest
    (mean 0, variance 1), γ = 4 amplifies each conv/linear output and β = 0.5 adds a steady drive
    (untouched, the network falls silent after its first LIF)."""
    from ann2snn.models import create_model

    torch.manual_seed(0)
    model = create_model(name, T=4, dim=32, num_heads=2, depth=1, in_channels=1, img_size=8,
                         num_classes=10, **kwargs).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.fill_(4.0)
                m.bias.fill_(0.5)
    return model


def lif_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every LIF's output [T, B, ...] in the model's own multi-step forward (spikingjelly's
    monitor): independent of the energy meter, which hooks the stepped copy one step at a time."""
    from spikingjelly.activation_based import monitor, neuron

    with monitor.OutputMonitor(model, neuron.LIFNode, lambda s: s.detach().clone()) as mon:
        model(x)
    return {name: mon[name][0] for name in mon.monitored_layers}


def rate_of(s: torch.Tensor) -> float:
    return float(torch.count_nonzero(s)) / s.numel()


@pytest.mark.parametrize("name", ["spikformer", "sdt"])
def test_direct_models_get_per_step_flops_and_lif_rates(name):
    from ann2snn.models.direct import DirectNetwork

    model = firing_direct_model(name)
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,))
    res = measure_energy(model, Simulator(DirectNetwork(model)), [(x, y)], t=4)
    rows = rows_by_name(res)
    # First conv, one step: 32/8 = 4 output channels × 8×8 positions × 1×3×3 taps = 2304 MACs
    # (the model's own forward would run all T = 4 steps).
    assert rows["embed.proj.0.0"].flops == 2304 and rows["embed.proj.0.0"].input == "image"
    assert res.accuracy.ann_top1 is None  # no ANN to compare with
    ref = lif_outputs(model, x)
    lifs = {r.name: r for r in res.rows if r.type == "LIFNode"}
    assert sorted(lifs) == sorted(ref) and len(lifs) >= 10
    for lif_name, row in lifs.items():
        assert row.kind == "neuron" and 0.0 < row.rate <= 1.0, (lif_name, row.rate)
        assert ref[lif_name].shape[0] == 4  # T steps
        assert row.rate == pytest.approx(rate_of(ref[lif_name]), abs=1e-12), lif_name
    # every synapse reads spikes (binary LIF outputs, or SEW sums of them) except the image-fed conv
    for r in res.rows:
        if r.kind == "synapse" and r.name != "embed.proj.0.0":
            assert r.input == "spikes" and r.macs == 0, r.name


@pytest.mark.parametrize("ssa_form", ["token_first", "token_last"])
def test_spikformer_attention_products_are_acs_at_the_spike_operands_rate(ssa_form):
    """SSA's q, k, v are binary spikes: q·kᵀ (both spikes) is driven by the sparser of q and k, and
    (q·kᵀ)·v — integer counts times spikes — by v; token-last computes v·kᵀ then (v·kᵀ)·q alike.
    SOPs = rate × S × FLOPs, with rates from the model's own forward (monitor) and FLOPs by hand."""
    from ann2snn.models.direct import DirectNetwork

    model = firing_direct_model("spikformer", ssa_form=ssa_form)
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,))
    T = S = 4
    res = measure_energy(model, Simulator(DirectNetwork(model)), [(x, y)], t=T)
    rows = rows_by_name(res)
    ref = lif_outputs(model, x)
    H, d, N = 2, 16, 4  # 2 heads of 32/2 channels; 8×8 image → 2×2 = 4 tokens
    if ssa_form == "token_first":
        r = {k: rate_of(ref[f"blocks.0.attn.{k}_lif"]) for k in "qkv"}
        first, second = rows["blocks.0.attn.qk"], rows["blocks.0.attn.attn_v"]
        flops = H * N * d * N  # q·kᵀ: [N×d]·[d×N] per head; (q·kᵀ)·v: [N×N]·[N×d] per head — both 512
        first_rate, second_rate = min(r["q"], r["k"]), r["v"]
    else:
        qkv = ref["blocks.0.attn.qkv_lif"]  # [T, B, 3C, N] → q, k, v chunks [T, B, H, d, N]
        q, k, v = qkv.reshape(T, qkv.shape[1], 3 * H, d, N).chunk(3, dim=2)
        r = {"q": rate_of(q), "k": rate_of(k), "v": rate_of(v)}
        first, second = rows["blocks.0.attn.vk"], rows["blocks.0.attn.vk_q"]
        flops = H * d * N * d  # v·kᵀ: [d×N]·[N×d]; (v·kᵀ)·q: [d×d]·[d×N] — both 2048
        first_rate, second_rate = min(r["v"], r["k"]), r["q"]
    assert all(0.0 < rate < 1.0 for rate in r.values()), r
    assert first.flops == second.flops == flops
    assert first.input == "spikes×spikes" and second.input == "analog×spikes"
    for row, rate in ((first, first_rate), (second, second_rate)):
        assert row.op == "AC" and row.macs == 0, row
        assert row.sops == pytest.approx(rate * S * flops, rel=1e-9), row.name
    # the spike operand's rate as the table reports it
    assert second.rate_b == pytest.approx(second_rate)
    # Spikformer is multiplication-free beyond the image-fed conv
    assert res.totals.first_layer_macs == 2304 and res.totals.other_macs == 0


@pytest.mark.parametrize("m,events", [(1, 3), (4, 4 + 2 + 0 + 1)])
def test_multi_level_spikes_cost_one_ac_per_event_and_fan_out(m, events):
    # λ = 1, L = 4, t = 1 under exact: θ = 1/4, cap 4, membrane from θ/2.  Inputs 1, 0.5, 0, 0.26
    # give counts ⌊(0.125 + x) / 0.25⌋ = 4, 2, 0, 1 with m = 4 (7 events), one spike each with
    # m = 1 (3 events).  The Linear 4 → 2 has 8 MACs, fan-out 2: SOPs = 2 × events.
    clock = Clock()
    net = nn.Sequential(ScaledNeuron(1.0, levels=4), nn.Linear(4, 2))
    sim = Simulator(SpikingNetwork(net, clock, PRESETS["exact"], {}), spike_levels=m)
    x = torch.tensor([[1.0, 0.5, 0.0, 0.26]])
    with EnergyMeter.for_simulator(sim) as meter:
        sim.run(x, 1)
    res = meter.result({"1": 8, "": 8}, 1)
    assert rows_by_name(res)["1"].sops == pytest.approx(2 * events)
    tot = res.totals
    assert tot.spike_levels == m and tot.bits_per_step == pytest.approx(math.log2(2 * m + 1))
    assert tot.bit_steps == pytest.approx(tot.bits_per_step)  # S = 1
    if m > 1:
        assert rows_by_name(res)["0"].event_rate == pytest.approx(events / 4)
