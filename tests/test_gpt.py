"""The causal decoder family (issue 21): token ids in, exact conversion, causal masks kept."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn.graph import ConversionError
from ann2snn.models import create_model
from ann2snn.neurons import DriveEmbedding
from ann2snn.quant import QCFS
from ann2snn.simulate import Simulator

def _sites(q):
    return [m for m in q.modules() if isinstance(m, QCFS)]


def _active_sites(q, ids) -> int:
    active = []
    hooks = [m.register_forward_hook(lambda mod, a, out: active.append(bool(out.abs().sum() > 0)))
             for m in _sites(q)]
    q(ids)
    for h in hooks:
        h.remove()
    return sum(active)


VARIANTS = [dict(), dict(norm="rms", mlp="swiglu", pos="rotary"), dict(fused_attn=True)]


def _qgpt(placement="synapses", seed=0, **kw):
    torch.manual_seed(seed)
    model = create_model("gpt", dim=32, num_heads=2, depth=2, context=12, **kw)
    ids = torch.randint(0, 256, (4, 12))
    calib = [torch.randint(0, 256, (8, 12)) for _ in range(2)]
    return ann2snn.quantize(model, levels=4, placement=placement, example_input=ids, calibrate=calib), ids


@pytest.mark.parametrize("kw", VARIANTS, ids=["gelu-layer-learned", "swiglu-rms-rotary", "sdpa"])
@pytest.mark.parametrize("placement", ["activations", "synapses"])
def test_gpt_settles_on_its_qann(kw, placement):
    q, ids = _qgpt(placement, **kw)
    snn = ann2snn.convert(q, example_input=ids)
    res = ann2snn.verify(q, snn, ids)
    assert res.ok and res.quiescent, res
    assert res.scale > 0.1
    assert _active_sites(q, ids) >= len(_sites(q)) // 2  # not a network of silent neurons
    assert any(isinstance(m, DriveEmbedding) for m in snn.modules())


def test_token_embedding_is_read_on_drive_steps_only():
    q, ids = _qgpt()
    snn = ann2snn.convert(q, example_input=ids)
    emb = next(m for m in snn.modules() if isinstance(m, DriveEmbedding))
    seen = []
    emb.register_forward_hook(lambda mod, args, out: seen.append(float(out.abs().sum())))
    Simulator(snn).run(ids, 3, 2)
    assert all(s > 0 for s in seen[:3]) and seen[3:] == [0.0, 0.0]


def test_converted_decoder_stays_causal():
    """Changing the last token changes no earlier position's output, at any step of the SNN."""
    q, ids = _qgpt(mlp="swiglu", pos="rotary")
    snn = ann2snn.convert(q, example_input=ids)
    sim = Simulator(snn)
    other = ids.clone()
    other[:, -1] = (other[:, -1] + 1) % 256
    a, b = sim.run(ids, 4, 4), sim.run(other, 4, 4)
    assert torch.equal(a[:, :, :-1], b[:, :, :-1])
    assert not torch.equal(a[:, :, -1], b[:, :, -1])


def test_functional_embedding_converts():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(50, 8))
            self.fc = nn.Linear(8, 50)
            self.act = nn.ReLU()

        def forward(self, ids):
            return self.fc(self.act(F.embedding(ids, self.table, padding_idx=0)))

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (5, 7))
    q = ann2snn.quantize(Tiny(), levels=4, calibrate=[ids])
    snn = ann2snn.convert(q)
    assert ann2snn.verify(q, snn, ids).ok


def test_embedding_of_spikes_is_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act, self.emb = nn.Linear(4, 4), nn.ReLU(), nn.Embedding(10, 4)

        def forward(self, x):
            return self.emb(self.act(self.fc(x)).long())

    q = ann2snn.quantize(Bad(), levels=4)
    with pytest.raises(ConversionError):
        ann2snn.convert(q)


def test_gpt_rejects_bad_options():
    with pytest.raises(ValueError, match="norm"):
        create_model("gpt", norm="batch")
    with pytest.raises(ValueError, match="divisible"):
        create_model("gpt", dim=30, num_heads=4)
