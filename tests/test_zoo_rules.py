"""Conversion rules added for the model zoos (issue 19): each operator converts exactly, checked
against the quantized ANN in float64 (``verify``'s tolerance, 1e-4 × max(1, |logit|)), or is
refused naming the node."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn._compat import import_torchvision
from ann2snn.graph import ConversionError
from ann2snn.neurons import GatedBatchNorm, SpikeMul
from helpers import randomize_bn, randomize_lambdas


def _qann(model: nn.Module, levels: int = 4, seed: int = 0) -> nn.Module:
    randomize_bn(model, torch.Generator().manual_seed(seed))
    q = ann2snn.quantize(model.eval(), levels).eval()
    return randomize_lambdas(q, gen=torch.Generator().manual_seed(seed + 1))


def _exact(q: nn.Module, x: torch.Tensor, t: int = 4) -> dict:
    snn = ann2snn.convert(q)
    res = ann2snn.verify(q, snn, x, t=t)
    assert res.ok, res
    return snn.report


class SqueezeExcite(nn.Module):
    """x · sigmoid(W2 relu(W1 mean(x))): a product of two input-dependent tensors."""

    def __init__(self, c: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class GatedMLP(nn.Module):
    """A GLU-style MLP: relu(W1 x) * (W2 x), then W3 (the SwiGLU pattern with a QCFS site)."""

    def __init__(self, d: int):
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(d, 8), nn.Linear(d, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.w1(x)).mul(F.relu(self.w2(x)))
        return self.w3(h)


@pytest.mark.parametrize("t", [1, 2, 4, 8])
def test_a_squeeze_excitation_gate_converts_exactly(t):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), SqueezeExcite(4),
                          nn.Flatten(), nn.LazyLinear(5))
    model(torch.zeros(1, 3, 6, 6))
    report = _exact(_qann(model), torch.randn(8, 3, 6, 6), t=t)
    assert len(report["replace_products"]) == 1 and report["replace_functions"] == ["sigmoid"]


def test_a_gated_mlp_product_is_a_spike_mul_and_exact():
    torch.manual_seed(1)
    q = _qann(GatedMLP(6))
    snn = ann2snn.convert(q)
    assert sum(isinstance(m, SpikeMul) for m in snn.modules()) == 1
    assert ann2snn.verify(q, snn, torch.randn(16, 6)).ok


def test_a_square_of_spikes_is_a_product_with_itself():
    """``h * h`` (refused before issue 19) is the bilinear product of one operand with itself."""
    class Square(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = F.relu(self.lin(x))
            return self.out(h * h)

    torch.manual_seed(3)
    q = _qann(Square())
    for t in (1, 3):
        _exact(q, torch.randn(6, 4), t=t)


def test_division_by_an_input_dependent_tensor_is_still_refused():
    class Div(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return F.relu(self.a(x)) / (F.relu(self.b(x)) + 1)

    with pytest.raises(ConversionError, match="division by a spiking tensor"):
        ann2snn.convert(_qann(Div()))


def test_functional_batchnorm_folds_after_a_convolution_and_is_gated_elsewhere():
    """timm's BatchNormAct2d calls F.batch_norm: after a convolution that it alone reads it folds,
    after an add it is gated (its shift on drive steps only); both exact."""
    import_torchvision()
    from timm.layers import BatchNormAct2d

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn1 = nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=nn.ReLU)
            self.c2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), BatchNormAct2d(4, act_layer=nn.ReLU)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            x = self.bn1(self.c1(x))
            return self.head(self.bn2(self.c2(x) + x).mean((2, 3)))

    torch.manual_seed(2)
    q = _qann(Net())
    report = _exact(q, torch.randn(8, 3, 8, 8))
    assert len(report["fold_bn"]) == 1 and len(report["gate_batchnorm"]) == 1
    snn = ann2snn.convert(q)
    assert sum(isinstance(m, GatedBatchNorm) for m in snn.modules()) == 1


def test_functional_batchnorm_in_training_mode_is_not_folded():
    """F.batch_norm with batch statistics depends on the batch, not only the input: refused."""
    class TrainBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.register_buffer("m", torch.zeros(4))
            self.register_buffer("v", torch.ones(4))

        def forward(self, x):
            return F.relu(F.batch_norm(self.c(x), self.m, self.v, training=True)).mean((2, 3))

    with pytest.raises(ConversionError, match="batch_norm"):
        ann2snn.convert(_qann(TrainBN()))


def test_an_elementwise_product_is_counted_by_hand():
    """``h * h`` under the running-sum rule (energy module docstring): step k's a_k drives
    a_k·B_{k−1} from step 2 on and b_k drives A_k·b_k on every step, one AC per event (fan-out 1
    elementwise), plus one MAC per output entry and step for the 1/n rescaling; the ANN pays one
    MAC per output entry, once."""
    class Square(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.out = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = F.relu(self.lin(x))
            return self.out(h * h)

    torch.manual_seed(4)
    q = _qann(Square())
    sim = ann2snn.Simulator(ann2snn.convert(q))
    x = torch.randn(5, 4)
    events: list[float] = []
    mul = next(m for m in sim.snn.modules() if isinstance(m, SpikeMul))
    handle = mul.register_forward_pre_hook(lambda m, args: events.append(float(torch.count_nonzero(args[0]))))
    t, extra_t = 3, 2
    try:
        res = ann2snn.measure_energy(q, sim, [(x, torch.zeros(5, dtype=torch.long))], t, extra_t)
    finally:
        handle.remove()
    row = next(r for r in res.rows if r.kind == "product")
    assert len(events) == t + extra_t + 1  # the run, then one step from rest that counts the FLOPs
    events = events[:t + extra_t]
    assert row.sops == pytest.approx((sum(events[1:]) + sum(events)) / 5)
    assert row.macs == pytest.approx((t + extra_t) * 6)  # 1/n on each of the 6 entries, every step
    assert row.flops == 6
    assert res.totals.flops == 4 * 6 + 6 + 6 * 2  # lin, the product, out


class SDPA(nn.Module):
    """q, k, v after QCFS sites, then ``F.scaled_dot_product_attention`` as timm and torchvision call it."""

    def __init__(self, d: int = 8, heads: int = 2, **sdpa):
        super().__init__()
        self.qkv, self.proj, self.heads, self.sdpa = nn.Linear(d, 3 * d), nn.Linear(d, 3), heads, sdpa
        self.register_buffer("mask", None)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = F.relu(self.qkv(x)).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, **self.sdpa)
        return self.proj(o.transpose(1, 2).reshape(B, N, D).mean(1))


@pytest.mark.parametrize("case", ["plain", "scale", "causal", "float-mask", "bool-mask"])
def test_scaled_dot_product_attention_converts_exactly(case):
    torch.manual_seed(5)
    sdpa = {"scale": {"scale": 0.3}, "causal": {"is_causal": True}}.get(case, {})
    model = SDPA(**sdpa)
    if case == "float-mask":
        model.mask = torch.randn(5, 5)
    if case == "bool-mask":
        model.mask = torch.rand(5, 5) > 0.3
        model.mask.fill_diagonal_(True)  # every query keeps a key
    q = _qann(model)
    for t in (1, 4):
        report = _exact(q, torch.randn(6, 5, 8), t=t)
    assert len(report["replace_attention"]) == 1


def test_the_energy_of_a_converted_sdpa_counts_its_products_and_softmax():
    torch.manual_seed(6)
    q = _qann(SDPA(is_causal=True))
    sim = ann2snn.Simulator(ann2snn.convert(q))
    x = torch.randn(4, 5, 8)
    res = ann2snn.measure_energy(q, sim, [(x, torch.zeros(4, dtype=torch.long))], 2, 1)
    kinds = {r.name.rsplit(".", 1)[-1]: r.kind for r in res.rows if "attention" in r.name}
    assert kinds == {"qk": "product", "av": "product", "softmax": "nonlinear"}
    # per image: q·kᵀ and p·v, each heads · N · N · (D / heads) = 2 · 5 · 5 · 4 MACs
    assert sum(r.flops for r in res.rows if r.kind == "product") == 2 * (2 * 5 * 5 * 4)


class _Op(nn.Module):
    """conv → ReLU (a QCFS site) → ``op`` → conv → mean → head: one operator between two layers."""

    def __init__(self, op, c: int = 4):
        super().__init__()
        self.c1, self.c2, self.head, self.op = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 1), nn.Linear(c, 3), op
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        h = self.op(self, F.relu(self.c1(x)))
        return self.head(self.c2(h).mean((2, 3)))


_MASK = torch.rand(6, 6, generator=torch.Generator().manual_seed(7)) > 0.5
_SOFTMAX_MASK = _MASK & ~torch.eye(6, dtype=torch.bool)  # every row keeps a position
LINEAR_OPS = {
    "functional-conv-bias": lambda s, h: F.conv2d(h, s.c2.weight, s.c2.bias),  # timm's ScaledStdConv2d
    "functional-linear-bias": lambda s, h: F.linear(h.transpose(1, 3), s.c2.weight[:, :, 0, 0],
                                                    s.c2.bias).transpose(1, 3),
    "pad-value": lambda s, h: F.pad(h, (1, 1, 1, 1), value=0.5)[..., 1:-1, 1:-1] + F.pad(h, (0, 0, 0, 0)),
    "pad-reflect": lambda s, h: F.pad(h, (1, 1, 1, 1), mode="reflect")[..., 1:-1, 1:-1],
    "masked-fill": lambda s, h: h.masked_fill(_MASK, 2.0),
    "where-constant": lambda s, h: torch.where(_MASK, h, torch.full_like(_MASK, -1.0, dtype=h.dtype)),
    "where-two-inputs": lambda s, h: torch.where(_MASK, h, 2 * h),
    "nearest-upsample": lambda s, h: F.interpolate(h, scale_factor=2, mode="nearest")[..., ::2, ::2],
    "bilinear-upsample": lambda s, h: F.avg_pool2d(F.interpolate(h, scale_factor=2, mode="bilinear"), 2),
    "upsample-module": lambda s, h: F.avg_pool2d(s.up(h), 2),
    "pixel-shuffle": lambda s, h: F.pixel_unshuffle(F.pixel_shuffle(h, 2), 2),
    "normalize": lambda s, h: F.normalize(h, dim=1),
    "index-select": lambda s, h: torch.index_select(h, 1, torch.tensor([3, 2, 1, 0])),
    "masked-softmax": lambda s, h: torch.softmax(h.masked_fill(_SOFTMAX_MASK, float("-inf")), -1),
}


@pytest.mark.parametrize("case", sorted(LINEAR_OPS))
def test_zoo_operators_convert_exactly(case):
    torch.manual_seed(8)
    q = _qann(_Op(LINEAR_OPS[case]))
    x = torch.randn(4, 3, 6, 6)
    for t in (1, 3):
        _exact(q, x, t=t)


def test_refusals_cite_torchvisions_lines_not_an_unknown_line():
    """torchvision lives beside torch (``site-packages/torchvision`` starts with
    ``site-packages/torch``): its frames are the model's own code and must not be skipped."""
    from ann2snn import graph

    tv_file = graph._TORCH_DIR.rstrip("/") + "vision/models/resnet.py"
    torch_file = graph._TORCH_DIR + "nn/modules/module.py"
    assert graph._user_frame([(tv_file, 92, "forward", "out = self.relu(out)"),
                              (torch_file, 1775, "_call_impl", "return forward_call(*args)")]) == \
        f"{tv_file}:92 (out = self.relu(out))"


def test_a_refusal_after_quantize_cites_the_models_line_not_generated_code():
    """A functional relu makes quantize return a GraphModule; converting it must not cite the
    GraphModule's generated forward (``<eval_with_key>``) but this file."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return F.relu(self.lin(x)).abs()  # the refused line

    q = ann2snn.quantize(M(), 4)
    assert isinstance(q, torch.fx.GraphModule)
    with pytest.raises(ConversionError) as err:
        ann2snn.convert(q)
    assert "eval_with_key" not in str(err.value) and "test_zoo_rules.py" in str(err.value)
    assert "the refused line" in str(err.value)


def test_verify_compares_like_with_like_on_a_rounding_boundary():
    """A pre-activation 8.9e-9 above a QCFS boundary in float64 (0.375 at λ = 1, L = 4) is, once
    its BatchNorm is folded in float32 (torch's fuse_linear_bn_eval), 3e-8 below it: the float32
    network's site sends one level less.  verify folds and converts a float64 copy, so it does not
    report that float32 rounding as a wrong conversion (the check before issue 19 did)."""
    lin, bn, head = nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1), nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0057376623153687)
        bn.running_mean.fill_(-0.3232004642486572)
        bn.running_var.fill_(0.8552667498588562)
        bn.weight.fill_(1.1219052076339722)
        bn.bias.fill_(0.28184840083122253)
        head.weight.fill_(1.0)
        head.bias.fill_(0.0)
    q = ann2snn.quantize(nn.Sequential(lin, bn, nn.ReLU(), head), 4, lambda_init=1.0).eval()
    x = torch.tensor([[-0.24500772356987]])
    snn = ann2snn.convert(q)
    assert ann2snn.verify(q, snn, x, t=1)["ok"]
    # the float32 network (t = 1: one input step, then the settling steps): one level (0.25) lower
    float32 = float(ann2snn.Simulator(snn).run(x, 1, 4)[-1])
    with torch.no_grad():
        assert float(copy.deepcopy(q).double()(x.double())) == 0.5 and float32 == 0.25
    assert not ann2snn.verify(q, snn, x, t=1, dtype=None)["ok"]  # float32 as it is: the level is off


# ---------------------------------------------------------------- sites for any activation (issue 19)
class ConvAct(nn.Module):
    """conv-BN-act twice, mean, head: the EfficientNet / ConvNeXt shape with a non-ReLU activation."""

    def __init__(self, act: nn.Module, functional=None):
        super().__init__()
        self.c1, self.b1, self.c2, self.b2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
        self.act, self.functional, self.head = act, functional, nn.Linear(4, 3)

    def forward(self, x):
        x = self.act(self.b1(self.c1(x)))
        x = self.b2(self.c2(x))
        x = self.functional(x) if self.functional is not None else self.act(x)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("act,signed", [(nn.GELU(), True), (nn.SiLU(), True), (nn.Hardswish(), True),
                                        (nn.Tanh(), True), (nn.PReLU(), True), (nn.Sigmoid(), False)])
def test_a_site_follows_any_activation_signed_where_it_can_be_negative(act, signed):
    torch.manual_seed(9)
    model = ConvAct(act)
    q = _qann(model)
    sites = [m for m in q.modules() if isinstance(m, ann2snn.QCFS)]
    assert len(sites) == 2 and all(s.signed == signed for s in sites)  # one per call of the shared activation
    for t in (1, 4):
        report = _exact(q, torch.randn(4, 3, 8, 8), t=t)
    assert len(report["replace_functions"]) == 2 and len(report["replace_activations"]) == 2


def test_functional_activations_get_their_site_too():
    torch.manual_seed(10)
    q = _qann(ConvAct(nn.GELU(), functional=F.silu))
    assert isinstance(q, torch.fx.GraphModule) and sum(isinstance(m, ann2snn.QCFS) for m in q.modules()) == 2
    _exact(q, torch.randn(4, 3, 8, 8))


def test_a_model_with_a_site_after_its_activation_keeps_one_site_and_the_relu_placement_keeps_the_old_rule():
    """ann2snn's ViT puts a ReLU after GELU: no second site there, so its checkpoints still load."""
    vit = ann2snn.create_model("vit", dim=16, num_heads=2, depth=2, in_channels=1, img_size=8, num_classes=10,
                               patch_size=4)
    relu_only = sum(isinstance(m, nn.ReLU) for m in vit.modules())
    q = ann2snn.quantize(vit, 4)
    assert sum(isinstance(m, ann2snn.QCFS) for m in q.modules()) == relu_only == 2 * 2
    with pytest.raises(ConversionError, match="no activation to quantize"):
        ann2snn.quantize(ConvAct(nn.GELU()), 4, placement="relu")
    with pytest.raises(ValueError, match="placement must be one of"):
        ann2snn.quantize(ConvAct(nn.GELU()), 4, placement="everywhere")


def test_calibration_covers_signed_sites():
    torch.manual_seed(11)
    q = ann2snn.quantize(ConvAct(nn.GELU()).eval(), 4, lambda_init=8.0)
    lams = ann2snn.quant.calibrate_lambdas(q, [torch.randn(8, 3, 8, 8)], percentile=100.0, batches=1)
    assert all(0 < v < 8.0 for v in lams.values())


class MHA(nn.Module):
    """ReLU sites around torch's nn.MultiheadAttention, as torchvision's ViT calls it."""

    def __init__(self, batch_first: bool, **call):
        super().__init__()
        self.inp, self.head = nn.Linear(6, 8), nn.Linear(8, 3)
        self.mha, self.batch_first, self.call = nn.MultiheadAttention(8, 2, batch_first=batch_first), batch_first, call

    def forward(self, x):  # x: [B, L, 6]
        h = F.relu(self.inp(x))
        h = h if self.batch_first else h.transpose(0, 1)
        out = self.mha(h, h, h, need_weights=False, **self.call)[0]
        out = out if self.batch_first else out.transpose(0, 1)
        return self.head(F.relu(out).mean(1))


@pytest.mark.parametrize("batch_first,call", [(True, {}), (False, {}),
                                              (True, {"attn_mask": torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)}),
                                              (True, {"is_causal": True,
                                                      "attn_mask": torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)})])
def test_torch_multihead_attention_converts_exactly(batch_first, call):
    torch.manual_seed(12)
    q = _qann(MHA(batch_first, **call))
    for t in (1, 3):
        report = _exact(q, torch.randn(4, 5, 6), t=t)
    assert report["replace_attention"] == ["mha"]


def test_reading_multihead_attention_weights_is_refused():
    class Weights(MHA):
        def forward(self, x):
            h = F.relu(self.inp(x))
            out, w = self.mha(h, h, h)
            return self.head(out.mean(1)) + w.sum()

    with pytest.raises(ConversionError, match="attention weights are read"):
        ann2snn.convert(_qann(Weights(True)))


def test_torchvisions_vit_unpacks_weights_it_never_reads_and_converts_exactly():
    """torchvision's encoder block writes ``x, _ = self.self_attention(x, x, x, need_weights=False)``:
    the weights are unpacked (a getitem node) but never read."""
    tv = import_torchvision()
    torch.manual_seed(17)
    model = tv.models.VisionTransformer(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8,
                                        mlp_dim=16, num_classes=3)
    report = _exact(_qann(model), torch.rand(3, 3, 8, 8))
    assert len(report["replace_attention"]) == 2


def test_torchvisions_stochastic_depth_is_removed_in_eval_mode():
    tv = import_torchvision()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.sd, self.head = nn.Conv2d(3, 4, 3), tv.ops.StochasticDepth(0.5, "row"), nn.Linear(4, 3)

        def forward(self, x):
            h = F.relu(self.c(x))
            return self.head((h + self.sd(h)).mean((2, 3)))

    torch.manual_seed(13)
    report = _exact(_qann(Block()), torch.randn(4, 3, 6, 6))
    assert len(report["remove_dropout"]) == 1


def test_a_users_own_import_of_torchvision_and_timm_works_after_import_ann2snn():
    """On the pinned CPU install a bare ``import torchvision`` fails ("operator torchvision::nms does
    not exist"); after ``import ann2snn`` it goes through the repair, and so does timm's."""
    import subprocess
    import sys

    code = ("import sys, ann2snn\nassert 'torch' not in sys.modules\nimport torchvision, timm\n"
            "print(type(torchvision.models.resnet18(num_classes=3)).__name__, timm.create_model('resnet10t').num_classes)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["ResNet", "1000"]


# ---------------------------------------------------------------- tracing with shapes (issue 19)
class ShapeBranch(nn.Module):
    """Branches on shapes as timm's VGG head and MobileViT do, and reshapes by the batch size."""

    def __init__(self):
        super().__init__()
        self.c, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.c(x))
        B, C, H, W = h.shape
        if H % 4 != 0 or W % 4 != 0:  # pad to a multiple of the patch size, as MobileViT
            h = F.interpolate(h, size=(H + 4 - H % 4, W + 4 - W % 4), mode="bilinear", align_corners=False)
        if h.shape[-1] > 4:
            h = F.adaptive_avg_pool2d(h, 4)
        return self.head(h.reshape(B, -1))


def test_a_model_that_branches_on_shapes_traces_with_an_example_input():
    torch.manual_seed(14)
    with pytest.raises(ConversionError, match="pass example_input="):
        ann2snn.quantize(ShapeBranch(), 4)
    example = torch.zeros(1, 3, 6, 6)
    q = ann2snn.quantize(ShapeBranch(), 4, example_input=example)
    assert isinstance(q, torch.fx.GraphModule) and q.meta["traced_with_shapes"] == (3, 6, 6)
    q = randomize_lambdas(q.eval(), gen=torch.Generator().manual_seed(1))
    snn = ann2snn.convert(q)  # the quantized GraphModule is not traced again
    assert snn.report["traced_with_shapes"] == ["[3, 6, 6]"]
    for batch in (1, 3, 7):  # specialised to 6×6, not to the example's batch size
        assert ann2snn.verify(q, snn, torch.randn(batch, 3, 6, 6)).ok


def test_a_branch_on_values_still_fails_with_an_example_input():
    class ValueBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            h = F.relu(self.lin(x))
            return h if h.sum() > 0 else -h

    with pytest.raises(ConversionError, match="tracing again with the example input's shapes failed too"):
        ann2snn.quantize(ValueBranch(), 4, example_input=torch.zeros(1, 4))


@pytest.mark.parametrize("version", [1, 2])
def test_torchvisions_swin_converts_exactly_through_its_wrapped_attention(version):
    """torchvision hides ``shifted_window_attention`` (window partition, cyclic shift, the shifted-
    window mask built by item assignment, relative position bias; v2's cosine attention and its
    continuous position bias MLP) from torch.fx with ``torch.fx.wrap``.  Without an example input
    the call is refused whole, naming the way out; with one, the shape tracer traces through it
    and the network converts exactly."""
    swin = import_torchvision().models.swin_transformer
    extra = {} if version == 1 else {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
    torch.manual_seed(15)
    model = swin.SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[2, 2], num_heads=[2, 2],
                                 window_size=[2, 2], num_classes=3, **extra).eval()
    x = torch.rand(3, 3, 8, 8)  # 4×4 tokens in 2×2 windows: the shifted blocks use the mask
    with pytest.raises(ConversionError, match=r"shifted_window_attention.*torch.fx.wrap.*Pass example_input="):
        ann2snn.convert(ann2snn.quantize(copy.deepcopy(model), 4))
    q = ann2snn.quantize(model, 4, example_input=x[:1])
    q = randomize_lambdas(q.eval(), gen=torch.Generator().manual_seed(16))
    snn = ann2snn.convert(q, example_input=x[:1])
    assert snn.report["traced_with_shapes"] == ["[3, 8, 8]"]
    assert not any(n.target is swin.shifted_window_attention for n in snn.net.graph.nodes)
    res = ann2snn.verify(q, snn, x, t=4)
    assert res.ok, res


class RMSNormWrittenOut(nn.Module):
    """timm's fast_norm RMSNorm: x · rsqrt(mean(x²) + eps) · w, then StarReLU's s·relu(x)² + b."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(4, 6), nn.Linear(6, 3)
        self.w = nn.Parameter(torch.rand(6) + 0.5)

    def forward(self, x):
        h = self.lin(x)
        v = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(v + 1e-5) * self.w
        return self.head(0.8 * F.relu(h) ** 2 - 0.1 + torch.sqrt(torch.square(h) + 1.0))


def test_powers_roots_and_reciprocals_follow_the_running_sum_rule():
    torch.manual_seed(18)
    q = _qann(RMSNormWrittenOut())
    report = _exact(q, torch.randn(5, 4))
    assert len(report["replace_functions"]) >= 4  # pow, rsqrt, square, sqrt (and relu's site feeds ** 2)


def test_a_power_with_a_spiking_exponent_is_refused():
    class Exp2(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return 2 ** F.relu(self.lin(x))

    with pytest.raises(ConversionError, match="spiking exponent"):
        ann2snn.convert(_qann(Exp2()))


def test_a_transposed_convolution_is_a_synapse_with_a_gated_bias():
    """timm's LowFormer upsamples by ConvTranspose2d: linear, its bias injected on drive steps."""
    torch.manual_seed(19)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2), nn.ReLU(), nn.ConvTranspose2d(4, 3, 3, stride=2, output_padding=1),
                          nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 2, 9, 9))
    q = _qann(model)
    report = _exact(q, torch.randn(4, 2, 9, 9))
    assert "2" in report["gate_biases"]
    energy = ann2snn.measure_energy(q, ann2snn.Simulator(ann2snn.convert(q)), [(torch.randn(2, 2, 9, 9), torch.zeros(2, dtype=torch.long))], t=4)
    row = next(r for r in energy.rows if r.name.startswith("2"))
    assert row.kind == "synapse" and row.flops == 4 * 3 * 9 * 4 * 4  # every input entry meets 3·3·3 weights


def test_a_maximum_over_an_axis_follows_the_running_sum_rule():
    """Hiera pools its mask units with ``amax``: n·max(X/n) = max(X), like the max-pool neuron."""
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = F.relu(self.lin(x))  # [B, N, 6]
            return self.head(h.amax(dim=1) - torch.amin(h, dim=1))

    torch.manual_seed(20)
    report = _exact(_qann(Pool()), torch.randn(5, 7, 4))
    assert len(report["replace_functions"]) == 2


def test_in_place_affine_methods_are_linear():
    """CSATv2 un-normalises with ``x.mul(std).add_(mean)``: in-place methods, a constant added on drive steps."""
    class Affine(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.head = nn.Linear(4, 6), nn.Linear(6, 3)
            self.register_buffer("mean", torch.rand(6))

        def forward(self, x):
            h = F.relu(self.lin(x)).mul(2.0).add_(self.mean)
            return self.head(h.sub_(0.25).div_(3.0))

    torch.manual_seed(21)
    report = _exact(_qann(Affine()), torch.randn(5, 4))
    assert report["gate_constants"]


class AddMM(nn.Module):
    """GPT-2's ``Conv1D``: ``torch.addmm(bias, x, W)`` on a flattened input, a QCFS site after it."""

    def __init__(self, d: int = 6, out: int = 5):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(d, out)), nn.Parameter(torch.randn(out))
        self.head = nn.Linear(out, 3)

    def forward(self, x):
        h = torch.addmm(self.b, F.relu(x).view(-1, x.size(-1)), self.w)
        return self.head(F.relu(h))


@pytest.mark.parametrize("t", [1, 3])
def test_addmm_is_a_synapse_with_its_bias_on_drive_steps(t):
    torch.manual_seed(6)
    q = _qann(AddMM())
    report = _exact(q, torch.randn(7, 6), t=t)
    assert len(report["gate_constants"]) >= 1  # the bias, added on drive steps only
    snn = ann2snn.convert(q)
    gm = snn.net
    assert not any(n.target is torch.addmm for n in gm.graph.nodes) and any(n.target is torch.mm for n in gm.graph.nodes)


def test_addmm_of_two_spiking_operands_is_a_running_sum_product():
    class Gram(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.bias = nn.Linear(4, 4), nn.Linear(4, 4), nn.Parameter(torch.randn(1))

        def forward(self, x):
            return torch.addmm(self.bias, F.relu(self.a(x)), F.relu(self.b(x)).t())

    torch.manual_seed(8)
    q = _qann(Gram())
    report = _exact(q, torch.randn(5, 4))
    assert report["replace_products"] == ["addmm"]


def test_addmm_with_a_scaled_bias_is_refused():
    class Scaled(AddMM):
        def forward(self, x):
            return self.head(F.relu(torch.addmm(self.b, F.relu(x), self.w, beta=0.5)))

    with pytest.raises(ConversionError, match="addmm"):
        ann2snn.convert(_qann(Scaled()))


def test_a_type_cast_is_linear_and_a_type_query_is_refused():
    """``x.type(dtype)`` (GPT-2's attention) converts as a cast; ``x.type(torch.long)`` rounds: refused."""
    class Cast(nn.Module):
        def __init__(self, integer: bool):
            super().__init__()
            self.a, self.b, self.integer = nn.Linear(4, 4), nn.Linear(4, 2), integer

        def forward(self, x):
            h = F.relu(self.a(x))
            return self.b(h.type(torch.long).to(x.dtype) if self.integer else h.type(x.dtype))

    torch.manual_seed(7)
    _exact(_qann(Cast(False)), torch.randn(6, 4))
    with pytest.raises(ConversionError, match="Tensor.type"):
        ann2snn.convert(_qann(Cast(True)))
