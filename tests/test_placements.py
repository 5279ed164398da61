"""placement="synapses" (issue 19, item 1): every operand of a Linear, convolution or product of
two input-dependent tensors reads a site, signed where it can be negative, and the network still
converts exactly (float64 verify, tolerance 1e-4 × max(1, |logit|))."""
from __future__ import annotations

import copy
import json
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import ann2snn
from ann2snn._compat import import_torchvision
from ann2snn.graph import DYNAMIC, classify, trace
from ann2snn.models import create_model
from ann2snn.quant import QCFS, trace_leaves
from helpers import TINY, assert_user_error, randomize_bn, randomize_lambdas, run_cli, write_yaml

SYNAPSE_MODULES = (nn.Linear, nn.Conv2d)
PRODUCTS = {torch.matmul, F.scaled_dot_product_attention, "matmul", "mul"}


def _sites(q: nn.Module) -> dict[str, bool]:
    return {name: m.signed for name, m in q.named_modules() if isinstance(m, QCFS)}


def _unspiked_operands(q: nn.Module) -> list[str]:
    """The synapse operands of the QANN that do not come from a QCFS site (looking through
    reshapes, transposes and selections); the network input is allowed (the encoding layer)."""
    gm = trace(q, trace_leaves())
    kinds = classify(gm)
    views = {"reshape", "view", "transpose", "permute", "flatten", "contiguous", "unbind", "chunk", "squeeze",
             "unsqueeze", "expand"}

    def identity(n):
        return n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Identity, nn.Dropout, nn.MaxPool2d))

    def origin(n):
        while (n.op == "call_method" and n.target in views) or (n.op == "call_function" and n.target in (
                operator.getitem, torch.flatten, torch.unbind, torch.transpose)) or identity(n):
            n = n.args[0]
        return n

    def spiking(n):
        n = origin(n)
        return n.op == "placeholder" or (n.op == "call_module" and isinstance(gm.get_submodule(n.target), QCFS))

    bad = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), SYNAPSE_MODULES):
            ops = node.args[:1]
        elif node.op in ("call_function", "call_method") and (node.target in PRODUCTS or node.target is
                                                               operator.matmul):
            ops = node.args[:3] if node.target is F.scaled_dot_product_attention else node.args[:2]
            if sum(kinds.get(a) == DYNAMIC for a in ops if isinstance(a, fx.Node)) < 2:
                continue  # a scaling by a constant
        else:
            continue
        bad += [f"{node.name}<-{a.name}" for a in ops if isinstance(a, fx.Node) and kinds.get(a) == DYNAMIC
                and not spiking(a)]
    return bad


def _check_exact(q: nn.Module, x: torch.Tensor, t: int = 4, **kw):
    snn = ann2snn.convert(q, **kw)
    res = ann2snn.verify(q, snn, x, t=t)
    assert res.ok, res
    return snn


def test_the_registered_vit_gets_a_site_on_every_synapse_operand_and_converts_exactly():
    torch.manual_seed(0)
    vit = create_model("vit", dim=16, num_heads=2, depth=2, mlp_ratio=2, in_channels=1, img_size=8,
                       num_classes=3, patch_size=4).eval()
    x = torch.rand(5, 1, 8, 8)
    before = ann2snn.quantize(copy.deepcopy(vit), 4)
    assert _unspiked_operands(before)  # the default placement leaves the LayerNorm outputs real-valued
    q = randomize_lambdas(ann2snn.quantize(vit, 4, placement="synapses").eval(), gen=torch.Generator().manual_seed(1))
    sites = _sites(q)
    assert _unspiked_operands(q) == []
    # after each LayerNorm: signed; the softmax and the attention output (softmax @ ReLU-v): unsigned
    assert [s for n, s in sites.items() if "norm" in n] == [True] * 4
    assert [s for n, s in sites.items() if "softmax" in n] == [False, False]
    assert len(sites) == 4 + 2 + 2 + 2 + 2 + 1  # norms, softmax, attention output, qkv, mlp, head input
    _check_exact(q, x)


def test_timm_vit_with_sites_on_every_synapse_converts_exactly():
    import timm  # after import ann2snn, which repairs the pinned torchvision that timm imports

    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                              num_classes=3, in_chans=1).eval()
    x = torch.rand(4, 1, 8, 8)
    fused = ann2snn.quantize(copy.deepcopy(model), 4, placement="synapses", example_input=x[:1])
    # F.scaled_dot_product_attention: q, k, v read sites; its softmax is inside the call
    assert _unspiked_operands(fused) == [] and all(_sites(fused).values())
    for m in model.modules():  # timm's explicit attention (timm.layers.set_fused_attn(False))
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    q = ann2snn.quantize(model, 4, placement="synapses", example_input=x[:1])
    q = randomize_lambdas(q.eval(), gen=torch.Generator().manual_seed(2))
    assert _unspiked_operands(q) == []
    signed = _sites(q)
    assert len(signed) == len(_sites(fused)) + 2  # + the softmax of each block, unsigned
    assert sorted(n for n, s in signed.items() if not s) == ["blocks.0.attn.attn_drop_site", "blocks.1.attn.attn_drop_site"]
    _check_exact(q, x, example_input=x[:1])
    _check_exact(randomize_lambdas(fused.eval(), gen=torch.Generator().manual_seed(3)), x, example_input=x[:1])


def test_a_resnet_gets_one_more_site_only_before_its_classifier():
    """In a ReLU CNN every convolution already reads a ReLU; the classifier reads an average pool
    of spikes (a mean, not spikes): it gets an unsigned site, since the mean of non-negative
    spikes cannot be negative."""
    tv = import_torchvision()
    torch.manual_seed(2)
    model = randomize_bn(tv.models.resnet18(num_classes=3).eval(), torch.Generator().manual_seed(3))
    x = torch.rand(2, 3, 32, 32)
    act = _sites(ann2snn.quantize(copy.deepcopy(model), 4))
    syn = ann2snn.quantize(model, 4, placement="synapses")
    added = {n: s for n, s in _sites(syn).items() if n not in act}
    assert list(added.values()) == [False] and len(_sites(syn)) == len(act) + 1
    assert _unspiked_operands(syn) == []
    _check_exact(randomize_lambdas(syn.eval(), gen=torch.Generator().manual_seed(4)), x)


class Gated(nn.Module):
    """A SiLU-gated MLP with a squeeze-excitation gate: products of two input-dependent tensors."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3)
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.c(x)
        h = h * torch.sigmoid(h.mean((2, 3), keepdim=True))
        t = h.mean((2, 3))
        return self.head(F.silu(self.fc1(t)) * self.fc2(t))


def test_products_read_spikes_on_both_sides_and_stay_exact():
    torch.manual_seed(3)
    x = torch.randn(4, 2, 6, 6)
    q = ann2snn.quantize(Gated().eval(), 4, placement="synapses")
    q = randomize_lambdas(q.eval(), gen=torch.Generator().manual_seed(5))
    assert _unspiked_operands(q) == []
    sites = _sites(q)
    assert sum(not s for s in sites.values()) == 1  # the sigmoid gate; the rest can be negative
    _check_exact(q, x)


def test_an_unknown_placement_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="activations.*relu.*synapses"):
        ann2snn.quantize(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), 4, placement="everywhere")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vit", "resnet20"])
def test_the_cli_trains_and_converts_with_placement_synapses(capsys, tmp_path, model):
    cfg = write_yaml(tmp_path / "tiny.yml", {**TINY, "model": model, "placement": "synapses"}
                     | ({"width": 0.25} if model == "resnet20" else {}))
    rc, err = run_cli(capsys, ["train", "-c", cfg, "--out", tmp_path / "run", "--out_root", tmp_path])
    assert rc == 0, err
    rc, err = run_cli(capsys, ["convert", "--checkpoint", tmp_path / "run" / "best_model.pt", "--t", "2", "--verify",
                               "--json", tmp_path / "c.json"])
    assert rc == 0, err
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["verify"]["ok"] is True


def test_the_cli_refuses_placement_norm_outside_the_vit(capsys, tmp_path):
    cfg = write_yaml(tmp_path / "tiny.yml", {**TINY, "model": "resnet20", "placement": "norm"})
    rc, err = run_cli(capsys, ["train", "-c", cfg, "--out", tmp_path / "run", "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "placement norm applies to the `vit` model only", "synapses")
