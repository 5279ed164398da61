"""Signed activation sites (``SignedSite``, symmetric ``Hardtanh``): a signed QCFS in the ANN, a
neuron whose count runs from −L to L in the SNN, and the ViT's ``placement: norm`` that puts them
after every LayerNorm.  Exactness is checked against the quantized ANN in float64, within
1e-4 · max(1, max |logit|) (``verify``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.app.config import ConfigError, load_config
from ann2snn.energy import measure_energy
from ann2snn.layers import SignedSite
from ann2snn.models import create_model
from ann2snn.quant import QCFS, qcfs
from helpers import randomize_lambdas


def test_signed_qcfs_is_the_symmetric_staircase_and_trains():
    q = QCFS(4, 2.0, signed=True)
    x = torch.linspace(-3, 3, 241, requires_grad=True)
    y = q(x)
    assert torch.equal(y, qcfs(x, q.lam, 4, signed=True))
    v = y.detach()
    assert float(v.min()) == -2.0 and float(v.max()) == 2.0 and len(torch.unique(v)) == 9  # 2L + 1 levels
    y.sum().backward()
    inside = ((x >= -2.25) & (x < 2.25)).float()  # floor(x·L/λ + ½)/L within [−1, 1]: −2.25 ≤ x < 2.25
    assert torch.allclose(x.grad, inside, atol=0)
    assert q.lam.grad is not None and torch.isfinite(q.lam.grad)


class SignedNet(nn.Module):
    def __init__(self, site: nn.Module):
        super().__init__()
        self.fc1, self.site, self.fc2 = nn.Linear(6, 16), site, nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.site(self.fc1(x)))


@pytest.mark.parametrize("site", [SignedSite(), nn.Hardtanh(-1.5, 1.5)], ids=["SignedSite", "Hardtanh"])
@pytest.mark.parametrize("m", [1, 4])
def test_a_signed_site_converts_exactly_with_negative_counts(site, m):
    torch.manual_seed(0)
    q = ann2snn.quantize(SignedNet(site), 4)
    (s,) = [mod for mod in q.modules() if isinstance(mod, QCFS)]
    assert s.signed and (s.clip == 1.5 if isinstance(site, nn.Hardtanh) else s.clip is None)
    randomize_lambdas(q, 0.3, 0.6)
    q.eval()
    snn = ann2snn.convert(q, "exact")
    (neuron,) = snn.neurons()
    assert neuron.signed
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1)) * 2
    for t in (1, 2, 4, 8):
        r = ann2snn.verify(q, ann2snn.Simulator(snn, spike_levels=m), x, t=t)
        assert r.ok, (t, m, r)
    counts = []
    neuron.register_forward_hook(lambda mod, a, o: counts.append(mod.n.clone()))
    ann2snn.Simulator(snn).run(x, 4, 8)
    assert float(counts[-1].min()) < 0  # some sites settle on negative levels


def test_vit_with_signed_sites_after_every_layernorm_settles_and_its_linears_read_spikes():
    torch.manual_seed(0)
    model = create_model("vit", dim=16, num_heads=2, depth=2, mlp_ratio=2, in_channels=1, img_size=8,
                         num_classes=10, patch_size=4, placement="norm").eval()
    q = ann2snn.quantize(model, 4)
    sites = [m for m in q.modules() if isinstance(m, QCFS)]
    assert len(sites) == 9 and sum(m.signed for m in sites) == 5  # qkv + MLP per block; 2 norms per block + final
    randomize_lambdas(q, 0.5, 2.0)
    snn = ann2snn.convert(q.eval(), "exact")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for t in (1, 4, 8):
        assert ann2snn.verify(q, snn, x, t=t).ok, t
    res = measure_energy(q, ann2snn.Simulator(snn), [(x, torch.zeros(4, dtype=torch.long))], t=4)
    rows = {r.name: r for r in res.rows}
    for name in ("blocks.0.attn.qkv", "blocks.0.fc1", "head"):
        assert rows[name].input == "spikes" and rows[name].op == "AC", rows[name]
    kw = dict(dim=16, num_heads=2, depth=2, mlp_ratio=2, in_channels=1, img_size=8, num_classes=10, patch_size=4)
    # the sites hold no weights until quantized: a ReLU-pretrained ViT loads into either placement
    assert set(create_model("vit", **kw).state_dict()) == set(create_model("vit", placement="norm", **kw).state_dict())


def test_placement_is_checked():
    assert load_config(None, {"model": "vit", "placement": "norm"}).placement == "norm"
    with pytest.raises(ConfigError, match="placement"):
        load_config(None, {"model": "vit", "placement": "everywhere"})
    with pytest.raises(ConfigError, match="vit"):
        load_config(None, {"model": "transformer", "placement": "norm"})
