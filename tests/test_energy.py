"""Energy accounting against numbers computed by hand: FLOPs (torch's counter), SOPs, the counting
rules for products, the firing rate of a constant-driven neuron (SPEC §2), effective latency, and
the ``energy`` / ``convert --energy`` commands end to end."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ann2snn.convert import PRESETS, SpikingNetwork, convert
from ann2snn.energy import (CONSTANTS, EnergyMeter, count_flops, effective_latency, format_energy_table,
                            measure_energy, resolve_constants, settle_steps, write_energy_csv,
                            write_energy_json)
from ann2snn.models.transformer import MatMul
from ann2snn.neurons import Clock, ScaledNeuron, SpikeMatMul
from ann2snn.simulate import Simulator

REPO = Path(__file__).resolve().parents[1]


def spiking(net: nn.Module, clock: Clock | None = None) -> Simulator:
    """A Simulator for a hand-built net: threshold 1, cap t (the ``rate`` preset's neurons)."""
    return Simulator(SpikingNetwork(net, clock or Clock(), PRESETS["rate"], {}))


def rows_by_name(result: dict) -> dict[str, dict]:
    return {r["name"]: r for r in result["rows"]}


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
def hand_net():
    """Linear(4→3) → signed IF (λ = 1) → Linear(3→2); with x = 1 the neurons see 0.5, 1, 0."""
    l1, l2 = nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[0.125] * 4, [0.25] * 4, [0.0] * 4]))
        l2.weight.fill_(1.0)
    return nn.Sequential(l1, nn.ReLU(), l2), nn.Sequential(l1, ScaledNeuron(1.0), l2)


@pytest.mark.parametrize("first_layer", ["once", "per_step"])
def test_flops_sops_energy_of_hand_built_network(first_layer):
    ann, snn = hand_net()
    loader = [(torch.ones(1, 4), torch.tensor([0]))]
    res = measure_energy(ann, spiking(snn), loader, t=4, first_layer=first_layer)
    rows = rows_by_name(res)
    # FLOPs (MACs): 4·3 = 12 and 3·2 = 6.
    assert rows["0"]["flops"] == 12 and rows["2"]["flops"] == 6
    # Neuron inputs 0.5, 1, 0 over T = 4 steps from v = ½: spikes at steps {1, 3}, {1, 2, 3, 4}, {}
    # → 6 spikes in 3 neurons × 4 steps: rate 0.5.
    assert rows["1"]["rate"] == pytest.approx(0.5)
    # Layer 0 reads the image: MACs, 12 once or 12 on each of the 4 steps.
    assert rows["0"]["input"] == "image" and rows["0"]["op"] == "MAC" and rows["0"]["sops"] == 0
    first = 12 if first_layer == "once" else 4 * 12
    assert rows["0"]["macs"] == pytest.approx(first)
    # Layer 2: SOP = rate 0.5 × T 4 × FLOPs 6 = 12 = 6 spikes × fan-out 2.
    assert rows["2"]["rate"] == pytest.approx(0.5)
    assert rows["2"]["sops"] == pytest.approx(12) and rows["2"]["macs"] == 0
    tot = res["totals"]
    assert tot["flops"] == 18 and tot["sops"] == pytest.approx(12)
    assert tot["e_ann_mj"] == pytest.approx(4.6 * 18 * 1e-9)
    assert tot["e_snn_mj"] == pytest.approx((4.6 * first + 0.9 * 12) * 1e-9)
    assert tot["ann_snn_ratio"] == pytest.approx(tot["e_ann_mj"] / tot["e_snn_mj"])
    assert sum(r["e_snn_mj"] for r in res["rows"]) == pytest.approx(tot["e_snn_mj"])


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
    # Running-sum form a_k·B_{k-1} + A_k·b_k, one AC per (i, j, l) with both factors non-zero:
    #   step 1: (no B_0) + A1=[1,1]·b1=[1,0]ᵀ → 1 ;  step 2: a2=[1,0]·B1=[1,0]ᵀ → 1, A2=[2,1]·b2 → 1.
    # Rescaling by 1/n: 1 output element × 2 steps = 2 MACs.
    row = run_two_operands(SpikeMatMul)
    assert row["type"] == "SpikeMatMul" and row["input"] == "spikes×spikes"
    assert row["sops"] == pytest.approx(3) and row["macs"] == pytest.approx(2)
    assert row["rate"] == pytest.approx(3 / 4) and row["rate_b"] == pytest.approx(2 / 4)


def test_per_step_product_counts_coincidences():
    # Per-step a_k·b_k: step 1 [1,1]·[1,0]ᵀ → 1 AC; step 2 [1,0]·[1,0]ᵀ → 1 AC; nothing to rescale.
    row = run_two_operands(lambda clock: MatMul())
    assert row["sops"] == pytest.approx(2) and row["macs"] == 0 and row["op"] == "AC"


def test_product_with_an_analog_operand_is_counted_as_macs():
    # b = softmax over its 2 entries: dense and real-valued on both steps; a as above.
    # Per-step (a_k ≠ 0)·(b ≠ 0): step 1 2 ops, step 2 1 op, all MACs.
    row = run_two_operands(lambda clock: MatMul(), analog_b=True)
    assert row["input"] == "spikes×analog" and row["op"] == "MAC"
    assert row["macs"] == pytest.approx(3) and row["sops"] == 0


# ------------------------------------------------------------------------------ firing rate
@pytest.mark.parametrize("t", [4, 8])
@pytest.mark.parametrize("z", [-0.3, 0.0, 0.1, 0.3, 0.5, 0.74, 1.0, 1.5])
def test_firing_rate_of_constant_input_follows_spec_2(t, z):
    """SPEC §2: constant input z (units of λ), v_neg = 0, cap ≥ T ⇒ count clamp(floor(T·z + ½), 0, T)."""
    lam = 2.0
    sim = spiking(nn.Sequential(ScaledNeuron(lam)))
    with EnergyMeter.for_simulator(sim) as meter:
        sim.run(torch.full((1, 1), z * lam), t)
    rate = rows_by_name(meter.result({}, t))["0"]["rate"]
    assert rate == pytest.approx(min(max(math.floor(t * z + 0.5), 0), t) / t)


# ------------------------------------------------------------------------------ latency
def test_settle_steps_and_effective_latency_by_hand():
    preds = torch.tensor([[0, 1, 2, 3],
                          [0, 1, 5, 3],
                          [0, 4, 5, 3],
                          [0, 4, 2, 3]])  # [S = 4 steps, B = 4 samples]
    settle = settle_steps(preds)
    assert settle.tolist() == [1, 3, 4, 1]
    assert effective_latency(settle) == 4  # 99.9% of 4 samples = all of them
    assert effective_latency(settle, fraction=0.5) == 1
    assert effective_latency(settle, fraction=0.75) == 3


# ------------------------------------------------------------------------------ transformer
def test_transformer_rows_totals_and_flops_from_either_side(qcfs_transformer, tmp_path):
    snn = convert(qcfs_transformer, "exact")
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    res = measure_energy(qcfs_transformer, Simulator(snn), [(x, y)], t=3, extra_t=1)
    by_snn = measure_energy(None, Simulator(snn), [(x, y)], t=3, extra_t=1)
    assert by_snn["totals"]["flops"] == res["totals"]["flops"] > 0  # one SNN step = the ANN's layers
    rows = rows_by_name(res)
    assert rows["embed.proj.0.0"]["input"] == "image"
    assert rows["blocks.0.attn.qk"]["input"] == "spikes×spikes"
    assert rows["blocks.0.attn.av"]["input"] == "spikes×analog"  # softmax output × v spikes
    proj = rows["blocks.0.attn.proj.linear"]  # reads attention's real-valued output: MACs
    assert proj["input"] == "analog" and proj["op"] == "MAC" and proj["sops"] == 0
    assert rows["blocks.0.attn.q.linear"]["type"] == "Linear"  # bias-gated layer reported by its type
    tot = res["totals"]
    assert tot["flops_layers"] == tot["flops"]  # every counted op belongs to a reported layer
    assert all(0.0 <= r["rate"] <= 1.0 for r in res["rows"])
    assert len(res["accuracy"]["snn_top1"]) == 4 and 1 <= res["effective_latency"] <= 4
    text = format_energy_table(res)
    for word in ("layer", "FLOPs", "SOPs", "E_ANN", "E_SNN", "effective latency"):
        assert word in text
    with open(write_energy_csv(tmp_path / "e.csv", res)) as f:
        table = list(csv.DictReader(f))
    assert table[-1]["name"] == "TOTAL" and len(table) == len(res["rows"]) + 1
    assert json.loads(write_energy_json(tmp_path / "e.json", res).read_text())["totals"]["flops"] == tot["flops"]


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
def tiny_run(tmp_path_factory):
    from ann2snn.cli import main

    root = tmp_path_factory.mktemp("energy")
    rc = main(["train", "-c", str(REPO / "configs" / "digits.yml"), "--out_root", str(root), "--id", "tiny",
               "--dim", "16", "--num_heads", "2", "--epochs", "1", "--train_subset", "256",
               "--test_subset", "64"])
    assert rc == 0
    return root


def test_energy_command_prints_table_and_writes_files(tiny_run, capsys):
    from ann2snn.cli import main

    rc = main(["energy", "--out_root", str(tiny_run), "--t", "4", "--json", str(tiny_run / "e.json"),
               "--csv", str(tiny_run / "e.csv"), "--constants", "int8"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "E_SNN" in out and "effective latency" in out and "int8" in out
    res = json.loads((tiny_run / "e.json").read_text())
    assert res["totals"]["constants"]["e_ac_pj"] == 0.03 and res["totals"]["t"] == 4
    assert (tiny_run / "e.csv").stat().st_size > 0


def test_convert_and_table_leave_the_four_plots(tiny_run, capsys):
    from ann2snn.cli import main

    assert main(["convert", "--out_root", str(tiny_run), "--t", "4", "--energy"]) == 0
    assert main(["table", "--out_root", str(tiny_run), "--t", "1-2", "--extra-t", "0-1"]) == 0
    out = capsys.readouterr().out
    assert "effective latency" in out and "E_ANN / E_SNN" in out
    run = tiny_run / "tiny"
    conv = json.loads((run / "eval-exact" / "convert_t4_e0.json").read_text())
    assert 1 <= conv["effective_latency"] <= 4 and "energy" in conv
    for png in (run / "eval-exact" / "accuracy.png", run / "eval-exact" / "firing_rates.png",
                run / "eval-exact" / "energy.png", run / "table-exact" / "table_heatmap.png"):
        assert png.is_file() and png.stat().st_size > 1000, png


@pytest.mark.parametrize("name", ["spikformer", "sdt"])
def test_direct_models_get_per_step_flops_and_lif_rates(name):
    from ann2snn.models import create_model, list_models

    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    DirectNetwork = getattr(pytest.importorskip("ann2snn.simulate"), "DirectNetwork", None)
    if DirectNetwork is None:
        pytest.skip("the simulator has no DirectNetwork yet")

    torch.manual_seed(0)
    model = create_model(name, T=4, dim=32, num_heads=2, depth=1, in_channels=1, img_size=8,
                         num_classes=10).eval()
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,))
    res = measure_energy(model, Simulator(DirectNetwork(model)), [(x, y)], t=4)
    rows = rows_by_name(res)
    # First conv, one step: 32/8 = 4 output channels × 8×8 positions × 1×3×3 taps = 2304 MACs
    # (the model's own forward would run all T = 4 steps).
    assert rows["embed.proj.0.0"]["flops"] == 2304 and rows["embed.proj.0.0"]["input"] == "image"
    assert any(r["type"] == "LIFNode" for r in res["rows"])
    assert res["accuracy"]["ann_top1"] is None  # no ANN to compare with
