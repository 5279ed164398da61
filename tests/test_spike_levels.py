"""Multi-level spikes (``spike_levels`` m): the neuron against m binary sub-steps, the first step
at t = 1 with m = L against the quantized ANN, settling against binary spikes, and the option's
front doors (config, CLI, API)."""
from __future__ import annotations

import math

import pytest
import torch

import ann2snn
from ann2snn.app.config import ConfigError, load_config
from ann2snn.models import create_model
from ann2snn.neurons import ScaledNeuron, bits_per_step, signed_if_step
from helpers import randomize_lambdas, small_transformer


@pytest.mark.parametrize("neg_rule", ["exact", "lazy"])
@pytest.mark.parametrize("m", [2, 3, 8])
@pytest.mark.parametrize("cap", [math.inf, 5.0])
def test_a_multi_level_step_is_m_binary_steps_without_further_input(neg_rule, m, cap):
    """One m-level step emits what the binary neuron emits over m steps: the input, then m − 1
    zero-input steps (values on a grid of 1/8 and θ = 1/2, so the arithmetic is exact)."""
    g = torch.Generator().manual_seed(0)
    shape = (4000,)
    v = torch.randint(-16, 16, shape, generator=g).double() / 8
    n = torch.randint(0, 6, shape, generator=g).double()
    u = torch.randint(-40, 40, shape, generator=g).double() / 8
    spike, v_m, n_m = signed_if_step(v, n, u, 0.5, cap, neg_rule, m)
    total, vb, nb = torch.zeros(shape, dtype=torch.float64), v, n
    for k in range(m):
        s, vb, nb = signed_if_step(vb, nb, u if k == 0 else torch.zeros_like(u), 0.5, cap, neg_rule)
        total += s
    assert torch.equal(spike, total) and torch.equal(v_m, vb) and torch.equal(n_m, nb)
    assert spike.abs().max() <= m and bool((spike.abs() > 1).any())  # graded counts occur


def test_bits_per_step_of_a_signed_m_level_spike():
    assert bits_per_step(1) == pytest.approx(math.log2(3))
    assert bits_per_step(4) == pytest.approx(math.log2(9))
    with pytest.raises(ValueError, match="spike_levels"):
        ann2snn.Simulator(ann2snn.convert(small_transformer(), "exact"), spike_levels=0)


def _vit():
    torch.manual_seed(0)
    model = create_model("vit", dim=16, num_heads=2, depth=2, mlp_ratio=2, in_channels=1, img_size=8,
                         num_classes=10, patch_size=4).eval()
    q = ann2snn.quantize(model, 4)
    return randomize_lambdas(q, 0.5, 2.0).eval()


@pytest.mark.parametrize("make", [small_transformer, _vit], ids=["transformer", "vit"])
def test_at_t1_with_m_equal_L_the_first_step_is_the_quantized_ann(make):
    """t = 1, m = L = 4: each neuron sends its whole count on the first step, so the first step's
    output equals the quantized ANN's logits (within 1e-4 · max(1, max |logit|), float64), and the
    run is quiescent from step 2 on."""
    q = make().double()
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sim = ann2snn.Simulator(ann2snn.convert(q, "exact"), spike_levels=4)
    with torch.no_grad():
        ref = q(x)
    first = sim.run(x, 1)[0]
    assert float((first - ref).abs().max()) <= 1e-4 * max(1.0, float(ref.abs().max()))
    r = ann2snn.verify(q, sim, x, t=1)
    assert r.ok and r.settle_steps == 1 and r.spike_levels == 4, r
    binary = ann2snn.verify(q, ann2snn.convert(q, "exact"), x, t=1)  # m = 1: the pipeline lags
    assert binary.ok and binary.settle_steps > 1, binary


@pytest.mark.parametrize("t", [2, 3])
def test_enough_levels_settle_no_later_than_binary_spikes(t):
    """m ≥ ⌈L/t⌉ lets every neuron deliver its count within the t input steps: the run settles on the
    quantized ANN no later than with binary spikes, and both are exact."""
    q = small_transformer()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    snn = ann2snn.convert(q, "exact")
    fast = ann2snn.verify(q, snn, x, t=t, spike_levels=math.ceil(4 / t))
    slow = ann2snn.verify(q, snn, x, t=t)
    assert fast.ok and slow.ok
    assert fast.settle_steps <= slow.settle_steps


def test_spike_levels_reach_the_neurons_from_convert_and_the_simulator():
    snn = ann2snn.convert(small_transformer(), "exact", spike_levels=3)
    sim = ann2snn.Simulator(snn)
    assert sim.spike_levels == 3 and sim.bits_per_step == pytest.approx(math.log2(7))
    sim.run(torch.randn(2, 1, 8, 8), 2)
    assert {n.m for n in snn.neurons()} == {3}
    sim.spike_levels = 1
    sim.run(torch.randn(2, 1, 8, 8), 2)
    assert {n.m for n in snn.neurons()} == {1}
    n = ScaledNeuron(1.0)
    n.m = 3
    assert "m=3" in repr(n)  # shown only when m != 1 and "m=" not in repr(ScaledNeuron(1.0))


def test_the_config_key_and_its_bad_values():
    assert load_config(None, {"spike_levels": 4}).spike_levels == 4
    for bad in (0, -2, 10**6):
        with pytest.raises(ConfigError, match="spike_levels"):
            load_config(None, {"spike_levels": bad})


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from ann2snn.app.cli import main

    root = tmp_path_factory.mktemp("levels")
    rc = main(["train", "-c", "configs/digits.yml", "--out_root", str(root), "--id", "lv", "--dim", "16",
               "--num_heads", "2", "--epochs", "1", "--train_subset", "256", "--test_subset", "64"])
    assert rc == 0
    return root


@pytest.mark.slow
def test_convert_and_table_state_bits_per_step_and_the_budget(digits_run, capsys):
    import csv
    import json

    from ann2snn.app.cli import main

    rc = main(["convert", "--out_root", str(digits_run), "--t", "2", "--spike_levels", "2",
               "--json", str(digits_run / "c.json")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "spike_levels m = 2 (2.32 bits per step" in out and "T×bits" in out
    res = json.loads((digits_run / "c.json").read_text())
    assert res["snn"]["spike_levels"] == 2 and res["snn"]["bits_per_step"] == pytest.approx(math.log2(5))
    assert res["snn"]["within_run"]["bit_steps"] == pytest.approx([math.log2(5), 2 * math.log2(5)])
    assert res["energy_totals"]["spike_levels"] == 2 and res["energy_totals"]["bit_steps"] == pytest.approx(2 * math.log2(5))
    assert (digits_run / "lv" / "eval-best_model-exact-m2").is_dir()  # m = 1 results are not overwritten
    rc = main(["table", "--out_root", str(digits_run), "--t", "1-2", "--extra-t", "0-1", "--spike_levels", "4"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    folder = digits_run / "lv" / "table-best_model-exact-m4"
    assert "3.17 bits per step" in (folder / "table.md").read_text() and "| T × bits |" in (folder / "table.md").read_text()
    rows = list(csv.DictReader(open(folder / "table.csv")))
    assert {r["spike_levels"] for r in rows} == {"4"} and float(rows[-1]["bit_steps"]) == pytest.approx(3 * math.log2(9), abs=1e-3)
    assert json.loads((folder / "table.json").read_text())["bits_per_step"] == pytest.approx(math.log2(9))


@pytest.mark.slow
def test_the_frontier_command_writes_table_and_pareto_plot(digits_run, capsys):
    import csv
    import json

    from ann2snn.app.cli import main

    out_dir = digits_run / "frontier"
    rc = main(["frontier", "--out_root", str(digits_run), "--levels", "1,L", "--t", "1-2", "--extra-t", "0-2",
               "--energy-batches", "1", "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads((out_dir / "frontier.json").read_text())
    assert res["L"] == 4 and res["levels"] == [1, 4]
    pts = res["points"]
    assert {(p["spike_levels"], p["t"]) for p in pts} == {(1, 1), (1, 2), (4, 1), (4, 2)}
    for p in pts:
        assert p["steps"] == p["t"] + p["extra_t"] and p["bit_steps"] == pytest.approx(p["steps"] * p["bits_per_step"])
        assert p["e_snn_mj"] > 0 and 0 <= p["non_spike_share"] <= 1
        assert p["e_snn_memory_mj"] > 0 and p["e_qnn_mj"] > 0 and p["spikes_per_synapse"] >= 0  # the second model
    # t = 1 with m = L: the first step is the quantized ANN, so its top-1 is the ANN's
    one = next(p for p in pts if p["spike_levels"] == 4 and p["t"] == 1 and p["extra_t"] == 0)
    assert one["top1"] == pytest.approx(res["ann"]["top1"])
    front = [p for p in pts if p["pareto"]]
    assert front and all(not (q["top1"] >= p["top1"] and q["e_snn_mj"] < p["e_snn_mj"]) for p in front for q in pts)
    assert len(list(csv.DictReader(open(out_dir / "frontier.csv")))) == len(pts)
    assert (out_dir / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Fewest total steps" in (out_dir / "frontier.md").read_text()
    assert "memory: E_SNN (mJ)" in (out_dir / "frontier.md").read_text()
    assert "break_even_rate" in next(csv.reader(open(out_dir / "frontier.csv")))


@pytest.mark.slow
def test_bad_frontier_levels_are_a_one_line_error(digits_run, capsys):
    from ann2snn.app.cli import main

    rc = main(["frontier", "--out_root", str(digits_run), "--levels", "1,two", "--out", str(digits_run / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "spike levels must be whole numbers" in err and "Traceback" not in err


def test_spike_levels_refused_for_a_directly_trained_snn():
    from ann2snn.app.config import load_config
    from ann2snn.app.pipeline import simulator_for
    from ann2snn.graph import ConversionError

    cfg = load_config(None, {"model": "spikformer", "spike_levels": 2})
    with pytest.raises(ConversionError, match="directly trained"):
        simulator_for(create_model("spikformer", dim=16, num_heads=2, depth=1, in_channels=1, img_size=8), cfg)


@pytest.mark.parametrize("preset", ["exact", "rate"])
def test_table_rows_with_multi_level_spikes_equal_independent_runs(preset):
    """The table's shared trunk runs without caps, which only binary spikes cannot exceed: with
    m > 1 every row must still equal its own run (regression: row t = L once overshot its cap)."""
    q = small_transformer()
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 3
    sim = ann2snn.Simulator(ann2snn.convert(q, preset), spike_levels=4)
    rows = sim.run_rows(x, [1, 2, 3, 4, 5], 2)
    for t, cols in rows.items():
        assert torch.equal(cols, sim.run(x, t, 2)[t - 1:]), t
