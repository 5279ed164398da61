"""Issue 17, the Python API's arguments and the models the CLI builds:

- D9: a model whose forward returns a tuple, dict, namedtuple or ModelOutput-like mapping converts,
  simulates (each tensor summed over steps), verifies (each tensor compared, the worst named) and
  is scored on its logits; an output that cannot be summed is a TypeError naming the leaf;
- D4: a model too large for the machine is refused before it is built, with the estimate and the
  memory (run under an address-space limit, so the suite can never exhaust the machine);
- D5: a model that does not run on the data's input size is refused before training, naming the
  smallest size it accepts;
- each API argument that is out of range or of the wrong type gets a ValueError / TypeError naming
  the argument.
"""
from __future__ import annotations

import collections
import math
import re
import subprocess
import sys

import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

import ann2snn
from ann2snn.app.config import ConfigError, load_config
from ann2snn.app.data import DataInfo

from helpers import ROOT, assert_user_error, run_cli

pytestmark = pytest.mark.usefixtures("offline")
DIGITS = ["train", "-c", str(ROOT / "configs" / "digits.yml"), "--epochs", "1", "--train_subset", "32",
          "--test_subset", "16", "--device", "cpu"]


# --------------------------------------------------------------------------------------------
# small QCFS models with structured outputs
Pair = collections.namedtuple("Pair", "logits aux")


class Output(collections.OrderedDict):
    """A stand-in for transformers' ModelOutput: an OrderedDict subclass that the library
    registers with torch's pytree (without key paths)."""


pytree.register_pytree_node(Output, lambda o: (list(o.values()), list(o.keys())),
                            lambda values, keys: Output(zip(keys, values)))


class Net(nn.Module):
    """Linear → ReLU → two heads; ``kind`` picks how the heads are returned."""

    def __init__(self, kind: str = "tensor"):
        super().__init__()
        self.kind = kind
        self.f, self.act, self.g, self.h = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(8, 2)
        self.register_buffer("const", torch.ones(2))

    def forward(self, x):
        z = self.act(self.f(x))
        logits, aux = self.g(z), self.h(z)
        if self.kind == "tensor":
            return logits
        if self.kind == "tuple":
            return logits, aux
        if self.kind == "dict":
            return {"logits": logits, "aux": aux}
        if self.kind == "namedtuple":
            return Pair(logits, aux)
        if self.kind == "modeloutput":
            return Output(logits=logits, aux=aux)
        if self.kind == "const_leaf":  # a constant output: summed over every step, it cannot settle
            return logits, self.const
        if self.kind == "int_leaf":
            return logits, 3
        if self.kind == "no_logits":
            return {"scores": logits}
        raise AssertionError(self.kind)


def qnet(kind: str = "tensor", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ann2snn.quantize(Net(kind), 4).eval()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)


STRUCTURED = ["tuple", "dict", "namedtuple", "modeloutput"]


@pytest.mark.parametrize("kind", STRUCTURED)
def test_structured_output_is_simulated_tensor_by_tensor(kind, data):
    x, _ = data
    model, plain = qnet(kind), qnet("tensor")
    run = ann2snn.Simulator(ann2snn.convert(model)).run(x, 4, 2)  # main: TypeError from torch.stack / dict + dict
    from ann2snn.simulate import logits_of

    assert type(run) is (dict if kind == "modeloutput" else type(model(x)))  # fx rebuilds mappings as dicts
    leaves = pytree.tree_leaves(run)
    assert [v.shape for v in leaves] == [torch.Size([6, 6, 3]), torch.Size([6, 6, 2])]
    # the logits are those of the same network returning them alone
    torch.testing.assert_close(logits_of(run), ann2snn.Simulator(ann2snn.convert(plain)).run(x, 4, 2))
    rows = ann2snn.Simulator(ann2snn.convert(model)).run_rows(x, [1, 2, 4], 2)
    assert all(type(v) is type(run) and logits_of(v).shape == (3, 6, 3) for v in rows.values())
    torch.testing.assert_close(pytree.tree_leaves(rows[4]), [v[3:] for v in leaves])


@pytest.mark.parametrize("kind", STRUCTURED)
def test_verify_compares_every_tensor(kind, data):
    x, _ = data
    model = qnet(kind)
    res = ann2snn.verify(model, ann2snn.convert(model), x)
    assert res.ok and res.quiescent and res.max_abs_diff < 1e-9, res
    assert res.leaf in ("[0]", "[1]", "['logits']", "['aux']", ".logits", ".aux")
    assert ann2snn.verify(qnet("tensor"), ann2snn.convert(qnet("tensor")), x).leaf is None


def test_verify_names_the_tensor_that_does_not_settle(data):
    x, _ = data
    model = qnet("const_leaf")
    res = ann2snn.verify(model, ann2snn.convert(model), x)
    assert not res.ok and res.leaf == "[1]" and res.max_abs_diff >= 0.25, res  # (t + 1)/t - 1 at t = 4


@pytest.mark.parametrize("kind", STRUCTURED)
def test_metrics_and_energy_score_the_logits(kind, data):
    x, y = data
    loader = [(x, y)]
    model, plain = qnet(kind), qnet("tensor")
    sim, ref = ann2snn.Simulator(ann2snn.convert(model)), ann2snn.Simulator(ann2snn.convert(plain))
    got, want = (ann2snn.evaluate(s, loader, t=4, extra_t=1, ann=m) for s, m in ((sim, model), (ref, plain)))
    assert got.k_step == want.k_step and got.ann == want.ann
    assert got.within_run == want.within_run
    assert ann2snn.evaluate_table(sim, loader, [1, 2, 4], 2) == ann2snn.evaluate_table(ref, loader, [1, 2, 4], 2)
    assert ann2snn.evaluate_ann(model, loader) == ann2snn.evaluate_ann(plain, loader)
    e_got, e_want = (ann2snn.measure_energy(m, s, loader, t=4) for s, m in ((sim, model), (ref, plain)))
    assert e_got.accuracy == e_want.accuracy
    assert e_got.totals.sops >= e_want.totals.sops > 0  # the aux head's synapses add to the count


def test_an_output_that_cannot_be_summed_names_its_leaf(data):
    x, y = data
    sim = ann2snn.Simulator(ann2snn.convert(qnet("int_leaf")))
    with pytest.raises(TypeError, match=r"holds 3 at \[1\].*only tensors can be summed.*model\(x\)\[0\]"):
        sim.run(x, 2)
    nolog = ann2snn.Simulator(ann2snn.convert(qnet("no_logits")))
    with pytest.raises(TypeError, match=r"no classifier logits.*'logits' entry.*first element"):
        ann2snn.evaluate(nolog, [(x, y)], t=2)


def test_logits_rule():
    from ann2snn.simulate import logits_of

    t = torch.ones(2, 3)
    assert logits_of(t) is t
    assert logits_of({"logits": t, "aux": 0}) is t and logits_of(Output(logits=t)) is t
    assert logits_of((t, None)) is t and logits_of(Pair(t, None)) is t and logits_of([({"logits": t},)]) is t
    for bad in ((), {"x": t}, "logits", 3):
        with pytest.raises(TypeError, match="no classifier logits"):
            logits_of(bad)


# --------------------------------------------------------------------------------------------
# D4: a model too large for the machine
MEMORY_LIMIT_GB = 8
LIMITED = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT_GB} << 30, {MEMORY_LIMIT_GB} << 30))
from ann2snn.app import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("size", [["--dim", "65536"], ["--dim", "1048576", "--mlp_ratio", "1"]])
def test_a_model_too_large_for_memory_is_refused_before_it_is_built(size, tmp_path):
    """Under an 8 GB address-space limit (the suite can never exhaust the machine); before the fix
    the first allocation failed with a traceback."""
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ANN2SNN_NO_TQDM": "1", "PYTHONWARNINGS": "ignore",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", LIMITED, *DIGITS, *size, "--out_root", str(tmp_path / "runs")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    line = assert_user_error(res.returncode, res.stderr, "train", "The model transformer has",
                             "training needs", "this machine has", "--dim")
    assert re.search(r"has [\d.]+ [GT] parameters \(≈ [\d.]+ [GT]B as float32; training needs ≈ [\d.]+ TB",
                     line), line
    assert re.search(r"this machine has [\d.]+ [MG]B left under this process's address-space limit", line), line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_memory_estimate_rule(monkeypatch):
    """4 × the parameter bytes + the buffers, against the host's memory (CPU training)."""
    from ann2snn.app import preflight

    model = nn.Sequential(nn.Linear(1000, 1000), nn.BatchNorm1d(1000))  # 1 003 000 parameters, 2 001 buffers
    need = 4 * (1000 * 1000 + 1000 + 2000) * 4 + (2000 + 1) * 4 + 4  # num_batches_tracked is an int64
    monkeypatch.setattr(preflight, "host_memory", lambda: (need, "test memory"))
    preflight.check_memory(model, "m", torch.device("cpu"))  # fits exactly
    monkeypatch.setattr(preflight, "host_memory", lambda: (need - 1, "test memory"))
    with pytest.raises(ConfigError, match=r"has 1 M parameters \(≈ 4.02 MB as float32; training needs ≈ 16.1 MB"
                                          r".*has 16.1 MB test memory"):
        preflight.check_memory(model, "m", torch.device("cpu"))


def test_memory_on_cuda_is_the_gpus_free_memory(monkeypatch):
    """On CUDA the GPU holds the 4× footprint and the host the weights once (built there first).
    The GPU's figure is faked here, so the rule is checked on machines without one."""
    from ann2snn.app import preflight

    model = nn.Linear(1000, 1000)  # 1 001 000 parameters: 4.004 MB, 16.016 MB for training
    monkeypatch.setattr(preflight, "host_memory", lambda: (5_000_000, "test memory"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (17_000_000, 80_000_000_000))
    preflight.check_memory(model, "m", torch.device("cuda"))  # the host holds the weights, the GPU the rest
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (15_000_000, 80_000_000_000))
    with pytest.raises(ConfigError, match=r"training needs ≈ 16 MB.*but cuda has 15 MB free\. Use a smaller"):
        preflight.check_memory(model, "m", torch.device("cuda"))
    monkeypatch.setattr(preflight, "host_memory", lambda: (3_000_000, "test memory"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (17_000_000, 80_000_000_000))
    with pytest.raises(ConfigError, match=r"this machine has 3 MB test memory"):
        preflight.check_memory(model, "m", torch.device("cuda"))


@pytest.mark.slow
def test_host_memory_sees_the_address_space_limit():
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)); "
            "from ann2snn.app import preflight; print(*preflight.host_memory(), sep='|')")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=120).stdout
    have, where = out.strip().splitlines()[-1].split("|")
    assert 0 < int(have) < 6 << 30 and "address-space limit" in where


def test_building_moves_no_random_stream():
    """A seeded run draws the same weights as without the meta build and dry forward pass."""
    from ann2snn.app.train import build_model, seed_all

    cfg = load_config(ROOT / "configs" / "digits.yml", {"dim": 16, "num_heads": 2, "device": "cpu"})
    info = DataInfo("digits", 10, 1, 8, (0.0,), (1.0,))
    seed_all(5)
    built = build_model(cfg, info).state_dict()
    after = torch.rand(3)
    seed_all(5)
    direct = ann2snn.quantize(ann2snn.create_model("transformer", dim=16, num_heads=2, depth=1, mlp_ratio=2.0,
                                                   in_channels=1, img_size=8, num_classes=10,
                                                   use_maxpool=True, attn=cfg.attn), 4, 4.0).state_dict()
    assert built.keys() == direct.keys()
    assert all(torch.equal(built[k], direct[k]) for k in built)
    assert torch.equal(after, torch.rand(3))


# --------------------------------------------------------------------------------------------
# D5: a model that does not run on the data's input size
@pytest.mark.slow
@pytest.mark.parametrize("name, least", [("googlenet", None), ("inception_v3", 75)])
def test_a_model_too_deep_for_small_images_is_refused_before_training(name, least, capsys, tmp_path):
    rc, err = run_cli(capsys, [*DIGITS, "--model", f"torchvision:{name}", "--out_root", tmp_path / "runs"])
    line = assert_user_error(rc, err, "train", f"torchvision:{name} does not run on the 1×8×8 images of digits",
                             "Output size is too small", "or larger", "Use a dataset with larger images")
    if least:
        assert f"{least}×{least} or larger" in line
    assert not any((tmp_path / "runs").rglob("*.pt"))


def test_input_check_confirms_a_meta_failure_on_the_real_model():
    """A model the meta device cannot run (``.item()``) is checked on a copy of the real model:
    accepted when it runs, refused when it does not; the model's mode is kept."""
    from ann2snn.app import preflight

    class Reads(nn.Module):
        def __init__(self, least: int):
            super().__init__()
            self.least, self.lin = least, nn.Linear(1, 1)

        def forward(self, x):
            if float(x.sum().item()) != 0.0 or x.shape[-1] < self.least:
                raise RuntimeError("input too small for this model")
            return self.lin(x.mean((1, 2, 3))[:, None])

    info = DataInfo("digits", 10, 1, 8, (0.0,), (1.0,))
    ok = Reads(4).train()
    preflight.check_input(ok, preflight.meta_model(lambda: Reads(4)), "reads", info, lambda s: Reads(4))
    assert ok.training
    with pytest.raises(ConfigError, match=r"reads does not run on the 1×8×8 images of digits.*input too small"):
        preflight.check_input(Reads(12), preflight.meta_model(lambda: Reads(12)), "reads", info, lambda s: Reads(12))


# --------------------------------------------------------------------------------------------
# API arguments
@pytest.fixture
def sim():
    return ann2snn.Simulator(ann2snn.convert(qnet()))


@pytest.mark.parametrize("call, exc, words", [
    (lambda: ann2snn.convert(None), TypeError, "convert: ann must be a torch.nn.Module"),
    (lambda: ann2snn.convert("model"), TypeError, "convert: ann must be a torch.nn.Module"),
    (lambda: ann2snn.Simulator(None), TypeError, "Simulator: snn must be a torch.nn.Module"),
    (lambda: ann2snn.Simulator(nn.Linear(2, 2)), TypeError, "Simulator: snn must be a converted network"),
    (lambda: ann2snn.quantize(None, 4), TypeError, "quantize: model must be a torch.nn.Module"),
    (lambda: ann2snn.quantize(Net(), levels=2.5), TypeError, "quantize: levels must be an integer >= 1"),
    (lambda: ann2snn.quantize(Net(), levels=True), TypeError, "quantize: levels must be an integer >= 1"),
    (lambda: ann2snn.quantize(Net(), levels=0), ValueError, "quantize: levels must be an integer >= 1"),
    (lambda: ann2snn.quantize(Net(), 4, lambda_init=0), ValueError,
     "quantize: lambda_init must be a finite number > 0"),
    (lambda: ann2snn.quantize(Net(), 4, lambda_init=-1.0), ValueError, "quantize: lambda_init must be"),
    (lambda: ann2snn.quantize(Net(), 4, lambda_init=math.nan), ValueError, "quantize: lambda_init must be"),
    (lambda: ann2snn.quantize(Net(), 4, lambda_init="8"), TypeError, "quantize: lambda_init must be"),
    (lambda: ann2snn.QCFS(levels=2.5), TypeError, "QCFS: levels must be an integer >= 1"),
])
def test_api_arguments(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value), str(info.value)
    assert type(info.value) is exc


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"t": 0}, ValueError, "Simulator.run: t must be an integer >= 1"),
    ({"t": True}, TypeError, "Simulator.run: t must be an integer >= 1"),
    ({"t": 2.0}, TypeError, "Simulator.run: t must be an integer >= 1"),
    ({"t": "2"}, TypeError, "Simulator.run: t must be an integer >= 1"),
    ({"t": 2, "extra_t": -1}, ValueError, "Simulator.run: extra_t must be an integer >= 0"),
])
def test_simulator_run_arguments(sim, data, kwargs, exc, words):
    with pytest.raises(exc, match=re.escape(words)):
        sim.run(data[0], **kwargs)


def test_run_steps_are_exactly_t_plus_extra(sim, data):
    assert sim.run(data[0], 3, 0).shape[0] == 3 and sim.run(data[0], 3, 2).shape[0] == 5


def test_verify_arguments(data):
    model = qnet()
    snn = ann2snn.convert(model)
    with pytest.raises(ValueError, match=r"verify: batch holds no sample \(input of shape \[0, 4\]\)"):
        ann2snn.verify(model, snn, torch.zeros(0, 4))
    with pytest.raises(ValueError, match="verify: batch holds no sample"):
        ann2snn.verify(model, snn, (torch.zeros(0, 4), torch.zeros(0)))
    with pytest.raises(TypeError, match="verify: batch must be an input tensor"):
        ann2snn.verify(model, snn, None)
    with pytest.raises(ValueError, match="verify: t must be an integer >= 1"):
        ann2snn.verify(model, snn, data[0], t=0)
    with pytest.raises(TypeError, match="verify: ann must be a torch.nn.Module"):
        ann2snn.verify(None, snn, data[0])


@pytest.mark.parametrize("rows, extra, exc, words", [
    ([], 2, ValueError, "evaluate_table: rows is empty"),
    ([0], 2, ValueError, "evaluate_table: rows[0] must be an integer >= 1"),
    ([1, -2], 2, ValueError, "evaluate_table: rows[1] must be an integer >= 1"),
    ([1, 2.5], 2, TypeError, "evaluate_table: rows[1] must be an integer >= 1"),
    (4, 2, TypeError, "evaluate_table: rows must be a list of integers"),
    ([1, 2], -1, ValueError, "evaluate_table: extra must be an integer >= 0"),
])
def test_evaluate_table_arguments(sim, data, rows, extra, exc, words):
    with pytest.raises(exc, match=re.escape(words)):
        ann2snn.evaluate_table(sim, [data], rows=rows, extra=extra)


def test_evaluate_table_takes_extra_t_and_its_old_name(sim, data):
    """One name per concept: ``extra_t``; ``extra`` (the old keyword) gives the same table and is
    named in its own messages; both at once is refused."""
    table = ann2snn.evaluate_table(sim, [data], [1, 2], extra_t=1)
    assert ann2snn.evaluate_table(sim, [data], [1, 2], extra=1) == table
    assert isinstance(table, ann2snn.Table) and sorted(table) == [1, 2] and table[2].cols == [2, 3]
    with pytest.raises(ValueError, match=re.escape("evaluate_table: extra_t must be an integer >= 0")):
        ann2snn.evaluate_table(sim, [data], [1], extra_t=-1)
    with pytest.raises(TypeError, match="extra_t and extra"):
        ann2snn.evaluate_table(sim, [data], [1], extra_t=1, extra=1)


def test_results_are_typed_and_their_dicts_are_the_old_ones(sim, data):
    """Read by attribute; ``to_dict()`` is the dict the files are written from (its keys in their
    old order), ``from_dict`` reads it back, and reading by key still works."""
    res = ann2snn.evaluate(sim, [data], t=2, extra_t=1, ann=qnet())
    d = res.to_dict()
    assert list(d) == ["n", "ann", "k_step", "k_step_is_prefix", "spike_levels", "bits_per_step", "within_run",
                       "effective_latency"]
    assert list(d["ann"]) == ["top1", "top5", "loss"] and list(d["k_step"]) == [
        "k", "total_steps", "bit_steps", "top1", "top1_no_extra", "top5", "top5_no_extra", "loss", "loss_no_extra"]
    assert res["k_step"] == d["k_step"] and res.k_step.top1 == d["k_step"]["top1"]
    assert ann2snn.Evaluation.from_dict(d) == res
    with pytest.raises(AttributeError):
        res.k_steps  # noqa: B018  (a mistyped name fails loudly)
    table = ann2snn.evaluate_table(sim, [data], [1, 2], 1)
    assert ann2snn.Table.from_dict({str(t): row for t, row in table.to_dict().items()}) == table
    check = ann2snn.verify(qnet(), ann2snn.convert(qnet()), data[0])
    assert list(check.to_dict())[:4] == ["max_abs_diff", "scale", "tolerance", "ok"]


@pytest.mark.parametrize("fn", ["evaluate", "measure_energy"])
@pytest.mark.parametrize("kwargs, exc, words", [
    ({"t": 0}, ValueError, "t must be an integer >= 1"),
    ({"t": True}, TypeError, "t must be an integer >= 1"),
    ({"t": 2, "extra_t": -1}, ValueError, "extra_t must be an integer >= 0"),
    ({"t": 2, "latency_extra": -3}, ValueError, "latency_extra must be an integer >= 0"),
    ({"t": 2, "max_batches": 0}, ValueError, "max_batches must be an integer >= 1"),
])
def test_evaluate_and_energy_arguments(sim, data, fn, kwargs, exc, words):
    with pytest.raises(exc, match=re.escape(f"{fn}: {words}")):
        if fn == "evaluate":
            ann2snn.evaluate(sim, [data], **kwargs)
        else:
            ann2snn.measure_energy(None, sim, [data], **kwargs)


def test_a_network_instead_of_a_simulator_is_named(data):
    snn = ann2snn.convert(qnet())
    with pytest.raises(TypeError, match="evaluate: sim must be an ann2snn.Simulator, got a SpikingNetwork"):
        ann2snn.evaluate(snn, [data], t=2)


def test_messages_never_format_an_unbounded_value(sim, data):
    huge = list(range(10**6))
    with pytest.raises(TypeError) as info:
        sim.run(data[0], huge)
    assert len(str(info.value)) < 300 and "..." in str(info.value)
    with pytest.raises(TypeError) as info:
        ann2snn.quantize(Net(), "x" * 10**6)
    assert len(str(info.value)) < 300
