"""The graph front door: any traceable model is quantized site by site and converted node by node,
exactly or not at all.

Claims, each with its tolerance:
- under ``exact``, torchvision's resnet18, vgg11_bn, mobilenet_v2 and densenet121 (random weights,
  random BatchNorm statistics and λ, 32×32 inputs) and a hand-written model (a shared ReLU,
  functional relus, attribute BatchNorms, a BatchNorm after a residual add, matmul + softmax)
  settle on the quantized ANN's logits within 1e-4 · max(1, max |logit|);
- the check is not vacuous: the ``rate`` preset off t = L, and a wrong conversion, miss it by far;
- every unsupported construct raises a ConversionError that names the node, its module path and
  the source line; an untraceable model names the line that failed.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn.verify import verify
from ann2snn.graph import ConversionError
from ann2snn.neurons import GatedBatchNorm, SpikeMatMul
from ann2snn.quant import QCFS, calibrate_lambdas
from helpers import randomize_bn, randomize_lambdas

TOL = 1e-4
HERE = "test_graph_convert.py"


def _torchvision():
    from ann2snn._compat import import_torchvision

    return import_torchvision()


def prepared(model: nn.Module, levels: int = 4, seed: int = 0) -> nn.Module:
    q = ann2snn.quantize(model.eval(), levels)
    randomize_bn(q, torch.Generator().manual_seed(seed))
    randomize_lambdas(q, 0.5, 2.0, torch.Generator().manual_seed(seed + 1))
    return q.eval()


# ------------------------------------------------------------------------------ torchvision
@pytest.mark.slow
@pytest.mark.parametrize("name,sites", [("resnet18", 17), ("vgg11_bn", 10), ("mobilenet_v2", 35),
                                        ("densenet121", 121)])
def test_torchvision_models_settle_on_the_quantized_ann(name, sites):
    torch.manual_seed(0)
    q = prepared(getattr(_torchvision().models, name)(num_classes=10))
    assert sum(isinstance(m, QCFS) for m in q.modules()) == sites  # one QCFS per call site
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    snn = ann2snn.convert(q, "exact")
    assert len(snn.neurons()) == sites
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in snn.modules())
    for t in (1, 4):
        r = verify(q, snn, x, t=t)
        assert r.quiescent and r.ok, r
        assert r.max_abs_diff <= TOL * max(1.0, r.scale)
    # not vacuous: the SNN is active, and rate coding at t = 2 != L misses the ANN by far
    assert ann2snn.Simulator(snn).run(x, 4).abs().sum() > 0
    rate = verify(q, ann2snn.convert(q, "rate"), x, t=2)
    assert not rate.ok and rate.max_abs_diff > 100 * TOL * max(1.0, rate.scale)


def test_resnet_shared_relu_gets_one_neuron_per_site_and_bns_fold():
    q = prepared(_torchvision().models.resnet18(num_classes=10))
    names = {n for n, m in q.named_modules() if isinstance(m, QCFS)}
    assert {"layer1.0.relu", "layer1.0.relu_2"} <= names  # BasicBlock calls self.relu twice
    snn = ann2snn.convert(q, "exact")
    assert len(snn.report["fold_bn"]) == 20 and not snn.report["gate_batchnorm"]


def test_mobilenet_relu6_clip_is_respected():
    q = ann2snn.quantize(_torchvision().models.mobilenet_v2(num_classes=10).eval(), 4)
    sites = [m for m in q.modules() if isinstance(m, QCFS)]
    assert sites and all(m.clip == 6.0 for m in sites)
    with torch.no_grad():
        sites[0].lam.fill_(10.0)
    assert sites[0].lambda_value() == 6.0
    with torch.no_grad():
        assert float(sites[0](torch.full((3,), 50.0)).max()) == 6.0


# ------------------------------------------------------------------------------ a hand-written model
class Hand(nn.Module):
    """Shared ReLU, functional relus (F.relu, torch.relu, Tensor.relu, in place), attribute BNs, a
    residual add with a BN after it (not foldable), max-pool, a constant added in, matmul + softmax."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.bn_add = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.pos = nn.Parameter(torch.randn(1, 16, 8) * 0.1)
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        z = self.relu(self.bn2(self.conv2(y)))  # the same ReLU module, a second site
        r = F.relu(self.bn_add(y + z))
        tok = self.pool(r).flatten(2).transpose(1, 2) + self.pos  # [B, 16, 8], plus a constant
        q = torch.relu(self.q(tok))
        k = self.k(tok)
        F.relu(k, inplace=True)  # the return value unused: later reads of k see the activation
        att = (q @ k.transpose(-2, -1) * 8 ** -0.5).softmax(dim=-1)
        out = (att @ tok).relu()
        return self.head(out.mean(1))


def test_hand_written_model_settles_on_the_quantized_ann():
    torch.manual_seed(0)
    q = prepared(Hand())
    assert isinstance(q, torch.fx.GraphModule)  # shared and functional sites: rewritten as a graph
    assert sum(isinstance(m, QCFS) for m in q.modules()) == 6
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    snn = ann2snn.convert(q, "exact")
    rep = snn.report
    assert rep["fold_bn"] == ["bn1", "bn2"] and rep["gate_batchnorm"] == ["bn_add"]
    assert len(rep["replace_products"]) == 2 and len(rep["replace_softmax"]) == 1 and rep["gate_constants"]
    assert sum(isinstance(m, SpikeMatMul) for m in snn.modules()) == 2
    assert sum(isinstance(m, GatedBatchNorm) for m in snn.modules()) == 1
    for t in (1, 2, 4, 8):
        r = verify(q, snn, x, t=t)
        assert r.ok, (t, r)


def test_inplace_functional_relu_whose_result_is_unused_still_quantizes_the_later_reads():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            y = self.a(x)
            F.relu(y, inplace=True)
            return self.b(y)

    torch.manual_seed(0)
    m = M()
    x = torch.randn(5, 4)
    q = ann2snn.quantize(m, 4, lambda_init=1.0)
    site = next(mod for mod in q.modules() if isinstance(mod, QCFS))
    torch.testing.assert_close(q(x), m.b(site(m.a(x))), rtol=0, atol=0)


def test_wrong_conversion_would_be_caught_by_verify():
    """A wrong conversion (the old module replacement gave resnet18 one neuron for two sites) is
    what verify exists to catch: scale one neuron's λ and the check fails."""
    q = prepared(_torchvision().models.resnet18(num_classes=10))
    snn = ann2snn.convert(q, "exact")
    snn.neurons()[3].lam *= 1.5
    r = verify(q, snn, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    assert not r.ok and r.max_abs_diff > 1e-3


# ------------------------------------------------------------------------------ refusals
class _One(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.lin, self.act, self.op = nn.Linear(4, 4), nn.ReLU(), op

    def forward(self, x):
        return self.op(self, self.act(self.lin(x)))


UNSUPPORTED = {
    "abs": (lambda s, h: h.abs(), "abs"),
    "sort": (lambda s, h: torch.sort(h, -1).values, "sort"),
    "divide": (lambda s, h: h / (h + 1), "truediv"),
    "select-by-input": (lambda s, h: torch.gather(h, 1, h.argmax(1, keepdim=True)), "gather"),
}
# non-linear functions of one operand: converted by the running-sum rule (RunningFunction)
RUNNING = {
    "sigmoid": lambda s, h: torch.sigmoid(h),
    "tanh": lambda s, h: h.tanh(),
    "gelu": lambda s, h: F.gelu(h, approximate="tanh"),
    "layernorm": lambda s, h: F.layer_norm(h, (4,), s.lin.weight[0], s.lin.bias),
    "silu": lambda s, h: F.silu(h),
}


@pytest.mark.parametrize("case", sorted(RUNNING))
def test_norms_and_activations_convert_by_the_running_sum_rule(case):
    torch.manual_seed(0)
    q = ann2snn.quantize(_One(RUNNING[case]), 4, lambda_init=1.0).eval()
    snn = ann2snn.convert(q, "exact")
    assert len(snn.report["replace_functions"]) == 1
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    for t in (1, 3):
        assert verify(q, snn, x, t=t).ok


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_constructs_are_refused_naming_the_node(case):
    op, word = UNSUPPORTED[case]
    q = ann2snn.quantize(_One(op), 4)
    with pytest.raises(ConversionError) as err:
        ann2snn.convert(q, "exact")
    msg = str(err.value)
    assert "Cannot convert node '" in msg and word in msg and HERE in msg, msg
    assert "allow_float_ops" in msg


def test_an_unsupported_module_names_its_module_path():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Hardshrink(), nn.Linear(4, 2))

        def forward(self, x):
            return self.block(x)

    with pytest.raises(ConversionError, match=r"node 'block_2' \(Hardshrink module\) in module 'block\.2'"):
        ann2snn.convert(ann2snn.quantize(M(), 4), "exact")


def test_opt_in_keeps_a_float_op_with_a_warning():
    """The refusal names the opt-in for exactly that node; taking it converts, with a warning."""
    import re

    q = ann2snn.quantize(_One(UNSUPPORTED["abs"][0]), 4)
    with pytest.raises(ConversionError) as err:
        ann2snn.convert(q, "exact")
    name = re.search(r"allow_float_ops=\{'([^']+)'\}", str(err.value)).group(1)
    with pytest.warns(UserWarning, match="per-step float op"):
        snn = ann2snn.convert(q, "exact", allow_float_ops={name})
    assert snn.report["kept_float_ops"] == [name]


def test_untraceable_model_names_the_failing_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return F.relu(self.lin(x))
            return self.lin(x)

    with pytest.raises(ConversionError, match=rf"cannot trace Branchy.*{HERE}:\d+ \(if x.sum\(\) > 0:"):
        ann2snn.quantize(Branchy(), 4)


def test_a_model_without_an_activation_is_refused():
    """Since issue 19 a GELU model gets a site after its GELU; a model with no activation at all,
    or one without a ReLU under placement="relu", has nothing to quantize."""
    with pytest.raises(ConversionError, match="no activation to quantize"):
        ann2snn.quantize(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)), 4)
    with pytest.raises(ConversionError, match="no activation to quantize"):
        ann2snn.quantize(nn.Sequential(nn.Linear(3, 3), nn.GELU()), 4, placement="relu")


# ------------------------------------------------------------------------------ calibration
def test_calibration_sets_lambda_to_the_activation_percentile():
    lin = nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.zero_()
    model = ann2snn.quantize(nn.Sequential(lin, nn.ReLU()), 4)
    data = [(torch.linspace(-5, 10, 3001).view(-1, 1), torch.zeros(3001))]
    lams = calibrate_lambdas(model, data, percentile=99.0, batches=1)
    expected = float(torch.quantile(torch.linspace(-5, 10, 3001).clamp(min=0), 0.99))
    assert lams == {"1": pytest.approx(expected, rel=1e-6)}
    assert not model[1].calibrating  # back to QCFS afterwards
    # quantize(..., calibrate=loader) does the same in one call
    again = ann2snn.quantize(nn.Sequential(lin, nn.ReLU()), 4, calibrate=data, percentile=99.0)
    assert again[1].lambda_value() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------ energy on graphs
def test_energy_counts_layers_after_residual_adds_and_functional_products():
    torch.manual_seed(0)
    q = prepared(Hand())
    sim = ann2snn.Simulator(ann2snn.convert(q, "exact"))
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,))
    res = ann2snn.measure_energy(q, sim, [(x, y)], t=4)
    rows = {r.name: r for r in res.rows}
    assert res.totals.flops_layers == res.totals.flops > 0  # every op belongs to a row
    products = [r for r in res.rows if r.kind == "product"]
    assert len(products) == 2 and all(r.flops > 0 for r in products)
    assert rows["conv2"].input == "spikes" and rows["conv2"].sops > 0
    assert rows["head"].flops == 8 * 10


def test_the_per_step_preset_refuses_models_it_was_not_written_for():
    """per_step (formerly seed) is the original's module replacement, defined for its transformer only: on resnet18 it
    would share one neuron between two call sites, so it refuses instead."""
    q = prepared(_torchvision().models.resnet18(num_classes=10))
    with pytest.raises(ConversionError, match="per_step preset reproduces the original toolkit"):
        ann2snn.convert(q, "per_step")


class PreNormBlock(nn.Module):
    """A pre-norm transformer: patch embedding, class token and position embedding (constants
    added into the spiking path), LayerNorm → q, k, v (QCFS sites on q, k and v) → softmax attention
    → projection, LayerNorm → fc1 → GELU → QCFS → fc2, a final LayerNorm and the class token's head."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(1, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 5, dim) * 0.1)
        self.ln1, self.ln2, self.ln_out = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_act, self.k_act, self.v_act = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.gelu, self.fc1_act, self.fc2 = nn.Linear(dim, 2 * dim), nn.GELU(), nn.ReLU(), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # [B, 4, D]
        B, N, D = x.shape
        x = torch.cat([self.cls.expand(B, -1, -1), x], 1) + self.pos
        h = self.ln1(x)

        def heads(t):
            return t.reshape(B, N + 1, self.heads, D // self.heads).transpose(1, 2)

        q, k, v = heads(self.q_act(self.q(h))), heads(self.k_act(self.k(h))), heads(self.v_act(self.v(h)))
        att = (q @ k.transpose(-2, -1) * (D // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, N + 1, D))
        x = x + self.fc2(self.fc1_act(self.gelu(self.fc1(self.ln2(x)))))
        return self.head(self.ln_out(x)[:, 0])


def test_a_pre_norm_transformer_settles_on_its_quantized_ann():
    torch.manual_seed(0)
    q = prepared(PreNormBlock())
    snn = ann2snn.convert(q, "exact")
    rep = snn.report
    assert len(rep["replace_functions"]) == 4  # three LayerNorms and the GELU
    assert len(rep["gate_constants"]) == 2  # the class token (concatenated) and the position embedding
    assert len(rep["replace_products"]) == 2 and len(rep["replace_softmax"]) == 1
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    for t in (1, 2, 4, 8):
        r = verify(q, snn, x, t=t)
        assert r.ok, (t, r)
    # not vacuous: rate coding at t = 2 != L misses the quantized ANN
    rate_like = verify(q, ann2snn.convert(q, "rate"), x, t=2)
    assert not rate_like.ok



def test_a_module_kept_outside_the_module_tree_is_traced_through():
    """Hugging Face keeps kernel wrappers (``apply_rotary_pos_emb``) as modules in plain
    attributes: no node can name them, so their code is traced as if inlined."""
    class Hidden(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
            self.__dict__["hidden"] = Hidden()  # not a sub-module

        def forward(self, x):
            return self.b(self.hidden(F.relu(self.a(x))))

    torch.manual_seed(0)
    q = ann2snn.quantize(Net(), 4)
    snn = ann2snn.convert(q)
    assert verify(q, snn, torch.randn(5, 4)).ok
    assert snn.report["replace_functions"] == ["sigmoid"]


def test_a_shape_traced_graph_casts_to_the_models_dtype_when_moved_to_float64():
    """The shape tracer answers ``x.dtype`` with the example's dtype; a cast to it must still
    follow the model to float64, as a symbolic trace does (verify compares in float64)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            if x.shape[1] != 4:  # a branch on a shape: traces with an example input only
                raise ValueError
            h = F.relu(self.a(x))
            return self.b(h.softmax(-1, dtype=h.dtype).to(torch.float32))

    torch.manual_seed(1)
    x = torch.randn(5, 4)
    q = ann2snn.quantize(Net(), 4, example_input=x)
    assert "traced_with_shapes" in q.meta
    assert q.double()(x.double()).dtype == torch.float64
    snn = ann2snn.convert(q.float(), example_input=x)
    assert verify(q.float(), snn, x).ok
