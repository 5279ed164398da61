"""Hugging Face causal LMs as the hf:NAME family (issue 21): GPT-2, Llama and Qwen2 settle exactly on
their QANN under both placements; a missing extra says how to install it; local checkpoints load."""
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import ann2snn  # noqa: E402
from ann2snn.models import create_model, is_model  # noqa: E402
from ann2snn.models.hf import CausalLM  # noqa: E402
from ann2snn.neurons import DriveEmbedding, SpikeMatMul  # noqa: E402
from ann2snn.quant import QCFS  # noqa: E402

NAMES = ["gpt2", "llama", "qwen2"]
KW = dict(dim=32, num_heads=4, depth=2, context=12)


def _sites(q):
    return [m for m in q.modules() if isinstance(m, QCFS)]


def _active_sites(q, ids) -> int:
    active = []
    hooks = [m.register_forward_hook(lambda mod, a, out: active.append(bool(out.abs().sum() > 0))) for m in _sites(q)]
    q(ids)
    for h in hooks:
        h.remove()
    return sum(active)


def _qlm(name, placement, seed=0, **kw):
    torch.manual_seed(seed)
    model = create_model(f"hf:{name}", **(KW | kw)).eval()
    ids = torch.randint(0, 256, (3, 12))
    calib = [torch.randint(0, 256, (8, 12)) for _ in range(2)]
    return model, ann2snn.quantize(model, levels=4, placement=placement, example_input=ids, calibrate=calib), ids


@pytest.mark.parametrize("placement", ["activations", "synapses"])
@pytest.mark.parametrize("name", NAMES)
def test_hf_lm_settles_on_its_qann(name, placement):
    _, q, ids = _qlm(name, placement)
    snn = ann2snn.convert(q, example_input=ids)
    res = ann2snn.verify(q, snn, ids)
    assert res.ok and res.quiescent, res
    assert res.scale > 0.1
    assert _active_sites(q, ids) >= max(1, len(_sites(q)) // 2)  # not a network of silent neurons
    assert any(isinstance(m, DriveEmbedding) for m in snn.modules())
    products = sum(isinstance(m, SpikeMatMul) for m in snn.modules())
    assert products == 2 * KW["depth"]  # q·kᵀ and softmax·v of every layer run on spikes


def test_sdpa_attention_converts_exactly_too():
    _, q, ids = _qlm("qwen2", "activations", attn_implementation="sdpa")
    snn = ann2snn.convert(q, example_input=ids)
    assert ann2snn.verify(q, snn, ids).ok
    assert snn.report.get("replace_attention")


def test_wrapper_gives_the_models_own_logits():
    """The constant mask and positions are what transformers builds itself for a plain causal call."""
    model = create_model("hf:llama", **KW).eval()
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.allclose(model(ids), model.lm(input_ids=ids, use_cache=False).logits, atol=1e-6)
        assert model(ids).shape == (2, 12, 256)


def test_hf_family_is_registered_with_its_names():
    assert is_model("hf:qwen2") and not is_model("hf:bert")
    with pytest.raises(KeyError, match="hf:qwen2"):
        create_model("hf:qwen")
    assert create_model("hf:gpt2", num_classes=100, **KW).lm.config.vocab_size == 100


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(ImportError, match=r"pip install ann2snn\[hf\]"):
        create_model("hf:gpt2", **KW)


def test_pretrained_loads_a_local_checkpoint(tmp_path):
    torch.manual_seed(3)
    model = create_model("hf:qwen2", **KW).eval()
    model.lm.save_pretrained(tmp_path)
    loaded = create_model("hf:qwen2", pretrained=str(tmp_path), context=12).eval()
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    assert isinstance(loaded, CausalLM) and loaded.context == 12
    with pytest.raises(ValueError, match="not a 'gpt2'"):
        create_model("hf:gpt2", pretrained=str(tmp_path))
