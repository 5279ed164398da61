"""Directly trained SNNs (spikformer, sdt): shapes, training, reset, the two SSA layouts, SDSA's
mask-and-add construction, per-step evaluation through the simulator and the CLI, and the
training-recipe additions (warmup, label smoothing, mixup).  Tiny models: the file runs in seconds."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import base, functional
from torch.utils._python_dispatch import TorchDispatchMode

from ann2snn.app.config import Config, ConfigError
from ann2snn.models import create_model, list_models, model_kind
from ann2snn.models.sdt import SDSA, spike_mask
from ann2snn.models.spikformer import token_last_state_dict
from ann2snn.models.direct import DirectNetwork
from ann2snn.app.pipeline import simulator_for
from ann2snn.simulate import Simulator
from ann2snn.app.train import _train_one_epoch, build_scheduler, mixup_batch

SMALL = dict(dim=16, num_heads=2, depth=1, mlp_ratio=2, in_channels=1, img_size=8, num_classes=5)
VARIANTS = [("spikformer", {}), ("spikformer", {"ssa_form": "token_last"}), ("sdt", {})]
IDS = ["spikformer", "spikformer-token_last", "sdt"]


def batch(b: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(b, 1, 8, 8, generator=g), torch.randint(0, 5, (b,), generator=g)


def make(name: str, T: int = 2, **kw) -> torch.nn.Module:
    """A tiny model in which every neuron layer fires (at init, with 4 tokens, attention LIFs stay
    silent): random BN scales/shifts, larger shifts before q/k/v, and BN statistics set from one
    batch so that eval mode is as lively."""
    torch.manual_seed(0)
    model = create_model(name, T=T, **{**SMALL, **kw})
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    with torch.no_grad():
        for n, bn in bns.items():
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(1.0, 3.0) if re.search(r"attn\.(q|k|v|qkv)\.", n) else bn.bias.uniform_(0.0, 1.0)
            bn.momentum = None  # cumulative average: one batch sets the running statistics
        model.train()(batch(16, seed=3)[0])
    for bn in bns.values():
        bn.momentum = 0.1
    return model


def firing(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Mean output of every LIF layer of ``model`` on ``x``."""
    rates, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, base.MemoryModule):
            hooks.append(m.register_forward_hook(lambda mod, a, out, n=name: rates.__setitem__(n, float(out.mean()))))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return rates


def test_registry_marks_both_models_direct():
    assert {"spikformer", "sdt"} <= set(list_models("direct"))
    assert model_kind("spikformer") == model_kind("sdt") == "direct"


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_shapes(name, kw):
    model = make(name, T=3, **kw).eval()
    x, _ = batch(4)
    with torch.no_grad():
        assert model(x).shape == (4, 5)  # image batch, repeated T times, averaged over time
        functional.reset_net(model)
        assert model.forward_seq(x.unsqueeze(0).repeat(3, 1, 1, 1, 1)).shape == (3, 4, 5)
        assert model(x.unsqueeze(0).repeat(2, 1, 1, 1, 1)).shape == (4, 5)  # a [T', B, ...] sequence
    assert model.T == 3 and "time_steps" in model.state_dict()  # T travels with the weights
    with pytest.raises(AssertionError, match="divisible"):
        create_model(name, T=2, **{**SMALL, "num_heads": 3}, **kw)


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_one_training_step_lowers_the_loss_and_resets(name, kw):
    model = make(name, **kw)
    x, y = batch(8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model.train()(x), y))

    before = loss()
    _train_one_epoch(model, [(x, y)], opt, torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"),
                     False, 1, label_smoothing=0.1, reset=True)
    assert loss() < before
    # reset=True: after the batch every neuron is back at rest (v = v_reset = 0, a float again)
    _train_one_epoch(model, [(x, y)], opt, torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"),
                     False, 2, reset=True)
    states = [m.v for m in model.modules() if isinstance(m, base.MemoryModule)]
    assert states and all(isinstance(v, float) and v == 0.0 for v in states)


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_reset_leaves_no_state_behind(name, kw):
    model = make(name, **kw).eval()
    x, _ = batch(4)
    other, _ = batch(4, seed=7)
    assert min(firing(model, x).values()) > 0  # every layer carries state worth resetting
    with torch.no_grad():
        first = model(x)
        model.forward_seq(other.unsqueeze(0))  # leave state behind on purpose
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)
        sim = Simulator(DirectNetwork(model))  # the simulator resets through functional.reset_net
        a = sim.run(x, 3)
        sim.snn(other)  # a stray step
        sim.reset()
        torch.testing.assert_close(sim.run(x, 3), a, rtol=0, atol=0)


@pytest.mark.parametrize("train", [True, False], ids=["train-mode", "eval-mode"])
def test_token_first_and_token_last_ssa_are_the_same_function(train):
    first = make("spikformer", depth=2)
    last = make("spikformer", depth=2, ssa_form="token_last")
    last.load_state_dict(token_last_state_dict(first.state_dict()))
    first.train(train), last.train(train)
    x, y = batch(8)
    rates = firing(first, x)
    assert min(rates.values()) > 0, rates  # attention LIFs included: the comparison is not vacuous
    assert firing(last, x)["blocks.1.attn.attn_lif"] == rates["blocks.1.attn.attn_lif"]
    out_first, out_last = first(x), last(x)
    # binary q, k, v: both products are integer counts times 1/8 (exact); only Linear vs Conv1d
    # summation order differs, far below the distance of any membrane to its threshold here
    torch.testing.assert_close(out_last, out_first, rtol=1e-5, atol=1e-5)
    F.cross_entropy(out_first, y).backward()
    F.cross_entropy(out_last, y).backward()
    a, b = first.blocks[0].attn, last.blocks[0].attn
    fused = torch.cat([a.q.fc.weight.grad, a.k.fc.weight.grad, a.v.fc.weight.grad]).unsqueeze(-1)
    torch.testing.assert_close(b.qkv.fc.weight.grad, fused, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# SDSA: masks and additions only, checked on the ATen operators it dispatches
MULTIPLICATIVE = {"mul", "div", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "dot", "mv", "prod",
                  "addcmul", "convolution", "_convolution"}


class OpRecorder(TorchDispatchMode):
    """Records every ATen op as (name, tensor operands), except while ``paused`` (inside neurons)."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[torch.Tensor]]] = []
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.paused:
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            self.ops.append((func.overloadpacket.__name__, [t.detach().clone() for t in tensors]))
        return out

    def pause_inside(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(lambda *_: setattr(self, "paused", self.paused + 1))
        module.register_forward_hook(lambda *_: setattr(self, "paused", self.paused - 1))

    def float_products(self) -> list[str]:
        """Multiplicative ops with two or more non-scalar floating operands."""
        return [name for name, ts in self.ops if name in MULTIPLICATIVE
                and sum(t.is_floating_point() and t.dim() > 0 for t in ts) >= 2]

    def products_without_binary_operand(self) -> list[str]:
        def binary(t):
            return t.dim() == 0 or bool(((t == 0) | (t == 1)).all())
        return [name for name, ts in self.ops if name in MULTIPLICATIVE
                and sum(t.dim() > 0 for t in ts) >= 2 and not any(binary(t) for t in ts)]


def spikes(*shape, p=0.4, seed=0):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).float()


def test_sdsa_uses_masks_and_additions_only():
    q, k, v = (spikes(3, 2, 8, 10, seed=s) for s in range(3))  # [T, B, C, N]
    sdsa = SDSA()
    rec = OpRecorder()
    rec.pause_inside(sdsa.kv_lif)  # the neuron's own membrane update is not part of the operator
    with rec:
        out = sdsa(q, k, v)
    names = {name for name, _ in rec.ops}
    assert names <= {"_to_copy", "scalar_tensor", "where", "sum"}, names  # select, add (sum), cast
    assert not rec.float_products()
    # with the neuron included, every product has a binary operand (the hard reset's (1 - s)·h)
    rec_all = OpRecorder()
    with rec_all:
        sdsa(q, k, v)
    assert not rec_all.products_without_binary_operand()
    # same values as the paper's formula Q ⊙ SN(Σ_N K ⊙ V) computed with products …
    ref_lif = SDSA().kv_lif
    torch.testing.assert_close(out, q * ref_lif((k * v).sum(-1, keepdim=True)), rtol=0, atol=0)
    assert set(out.unique().tolist()) <= {0.0, 1.0} and out.sum() > 0
    # … which the same check flags: it can fail
    rec_ref = OpRecorder()
    with rec_ref:
        _ = q * (k * v).sum(-1, keepdim=True)
    assert rec_ref.float_products() == ["mul", "mul"]


def test_spike_mask_has_the_gradients_of_a_product():
    x = torch.randn(2, 3, 4, requires_grad=True)
    m = spikes(2, 3, 1, seed=5).requires_grad_()  # broadcast over the last axis, like Q ⊙ mask
    g = torch.randn(2, 3, 4)
    gx, gm = torch.autograd.grad(spike_mask(x, m), (x, m), g)
    rx, rm = torch.autograd.grad(x * m, (x, m), g)
    torch.testing.assert_close(spike_mask(x, m), x * m)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gm, rm)


# --------------------------------------------------------------------------------------------
# evaluation per step, from one pass
@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_simulator_steps_the_model_as_trained(name, kw):
    model = make(name, T=2, **kw).eval()
    cfg = Config(model=name, **kw)
    x, _ = batch(4)
    sim = simulator_for(model, cfg)
    assert sim.snn.net is not model  # a stepwise copy; the model itself is untouched
    with torch.no_grad():
        cum = sim.run(x, 4)  # cumulative outputs after steps 1..4
        functional.reset_net(model)
        per_step = model.forward_seq(x.unsqueeze(0).repeat(4, 1, 1, 1, 1))
        torch.testing.assert_close(cum, per_step.cumsum(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), cum[1] / 2, rtol=1e-5, atol=1e-5)  # prediction at trained T


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["spikformer_digits.yml", "sdt_digits.yml"])
def test_cli_trains_and_convert_prints_accuracy_per_step(tmp_path, capsys, config_name):
    from ann2snn.app.cli import main

    small = ["--dim", "16", "--num_heads", "2", "--epochs", "1", "--warmup_epochs", "0", "--train_subset", "64",
             "--test_subset", "48", "--t", "2", "--out_root", str(tmp_path)]
    config = Path(__file__).resolve().parents[1] / "configs" / config_name
    assert main(["train", "-c", str(config), "--out", str(tmp_path / "run"), *small]) == 0
    capsys.readouterr()
    out_json = tmp_path / "convert.json"
    assert main(["convert", "--checkpoint", str(tmp_path / "run" / "best_model.pt"), "--t", "3",
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    # one listing: for a direct SNN a k-step run is the first k steps of the 3-step run
    assert len(re.findall(r"^\s+\d+\s+\d+\s+\d+\.\d+\s+\d+\.\d+%", printed, flags=re.M)) == 3  # k = 1, 2, 3
    assert "within the one" not in printed
    res = json.loads(out_json.read_text())
    assert res["snn"]["k_step_is_prefix"] and res["snn"]["k_step"]["top1"] == res["snn"]["within_run"]["top1"]
    # the "ANN" line is the model's own prediction at its trained T = 2, not at --t 3
    assert res["ann"]["top1"] == pytest.approx(res["snn"]["within_run"]["top1"][1])


# --------------------------------------------------------------------------------------------
# recipe additions (defaults keep the QCFS recipe)
def test_scheduler_warmup_then_cosine_and_default_unchanged():
    def lrs(**kw):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_scheduler(opt, Config(**kw))
        out = []
        for _ in range(kw["epochs"]):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert isinstance(build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), Config()),
                      torch.optim.lr_scheduler.CosineAnnealingLR)
    warm = lrs(epochs=8, warmup_epochs=3)
    assert warm[:4] == pytest.approx([1 / 4, 2 / 4, 3 / 4, 1.0])
    assert all(a > b > 0 for a, b in zip(warm[3:], warm[4:]))
    cos = lrs(epochs=8)
    assert cos[0] == 1.0 and cos[4] == pytest.approx(0.5)


def test_mixup_batch():
    torch.manual_seed(0)
    x, y = batch(16)
    xm, ym, lam = mixup_batch(x, y, 0.5)
    assert 0.0 <= lam <= 1.0 and sorted(ym.tolist()) == sorted(y.tolist())
    # each mixed image is lam · its own + (1 - lam) · the one its second label came from
    perm = [next(j for j in range(16) if torch.equal(xm[i], lam * x[i] + (1 - lam) * x[j])) for i in range(16)]
    assert [int(y[j]) for j in perm] == ym.tolist()


@pytest.mark.parametrize("key,value", [("ssa_form", "token_middle"), ("label_smoothing", 1.0), ("mixup", -0.1),
                                       ("warmup_epochs", -1)])
def test_config_rejects_bad_recipe_values(key, value):
    with pytest.raises(ConfigError, match=key):
        Config(**{key: value}).validate()
