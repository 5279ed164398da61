"""Causal language models of Hugging Face ``transformers`` as the family ``hf:NAME``
(``--model hf:qwen2``): GPT-2 (Radford et al., 2019), Llama (Touvron et al., "LLaMA", 2023) and
Qwen2 (Yang et al., "Qwen2 Technical Report", 2024).  An optional extra: ``pip install
ann2snn[hf]``; transformers is imported only when an ``hf:`` model is built.

Each is built from a small config with random weights (no hub downloads): ``depth`` layers of
width ``dim`` with ``num_heads`` heads (``num_kv_heads`` key/value heads: grouped-query attention,
Ainslie et al., EMNLP 2023; Qwen2 uses 2 query heads per key/value head by default), a
``vocab_size`` of 256 (byte tokens) and ``context`` positions.  ``pretrained=PATH`` loads a local
directory (``save_pretrained``'s) with ``from_pretrained(PATH, local_files_only=True)`` in
float32; its config must be of the named kind.  The model is wrapped in :class:`CausalLM`, whose
forward takes ``[B, L]`` token ids and returns the logits ``[B, L, vocab]`` (no cache).

How the models are traced and converted:

- :class:`CausalLM` passes the causal mask as a prepared 4-D additive mask (0 / −inf, a buffer
  sliced to ``[L, L]``) and the positions ``0..L−1`` (a buffer), so transformers' own mask
  construction (``create_causal_mask``: packed-sequence checks, ``torch.finfo``, vmapped index
  functions) returns at its first line and the mask is a constant of the graph: it depends on
  shapes only.  The rotary tables (cos / sin of the positions) are constants too.
- The models branch on shapes (``len(mask.shape) == 4``), so they trace only with an example
  input: pass ``example_input=ids`` to :func:`ann2snn.quantize` and :func:`ann2snn.convert` (the
  CLI does).  :class:`~ann2snn.graph.ShapeTracer` then specialises the graph to that sequence
  length (any batch size); casts to the model's dtype follow the model's dtype (so a float64
  copy computes in float64 throughout, also where the model upcasts to float32 on purpose).
- Attention is ``attn_implementation="eager"``: the scores, the additive mask, the softmax and
  the product with v are written out in transformers' own code, so each operator is converted by
  its rule (running-sum products, the expectation-compensated softmax, the mask added on drive
  steps only) and ``placement="synapses"`` puts a site on q, k, v, the softmax output and the
  attention output, as for ann2snn's own decoder (:mod:`ann2snn.models.gpt`).
  ``attn_implementation="sdpa"`` converts exactly too (one
  :class:`~ann2snn.neurons.SpikeAttention` per layer: with the constant mask transformers
  repeats the key/value heads itself), but hides the softmax output from the synapses placement.
- Llama's and Qwen2's RMSNorm modules (written out: ``x.to(float32)``, ``pow``, ``mean``,
  ``rsqrt``, a product) are replaced by ``nn.RMSNorm`` with the same weight and ε (:func:`adapt`):
  one running-sum float operation instead of five, and no quantization site inside the norm
  (the synapses placement would otherwise put one on the normaliser ``rsqrt(mean(x²) + ε)``, a
  product operand).  State-dict names are unchanged.
- GPT-2's ``Conv1D`` is ``torch.addmm(bias, x, W)``, converted as a synapse with its bias on
  drive steps (rule ``addmm``); its attention casts with ``Tensor.type(dtype)`` (rule ``type``).
- The token embedding reads the input ids on drive steps only
  (:class:`~ann2snn.neurons.DriveEmbedding`), GPT-2's learned position embedding is a constant
  added on drive steps; SiLU / GELU and the norms are running-sum float operations.

Both placements convert exactly (``ann2snn.verify`` in float64): ``"activations"`` puts one
signed site after each MLP activation (GELU, SiLU), ``"synapses"`` a site on every operand of a
Linear and of a product of two input-dependent tensors.
"""
from __future__ import annotations

import torch
from torch import nn

from ann2snn.models._registry import register_family

NAMES = ("gpt2", "llama", "qwen2")
ATTENTIONS = ("eager", "sdpa")


def _transformers():
    """transformers, or an ImportError that says how to install the extra."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError("hf: models need Hugging Face transformers, an optional extra: "
                          "pip install ann2snn[hf]  (or: pip install transformers)") from err
    return transformers


def available() -> list[str]:
    return list(NAMES)


class CausalLM(nn.Module):
    """A transformers causal LM as ``ids [B, L] → logits [B, L, vocab]``, with a constant causal
    mask and positions of ``context`` tokens (see the module docstring)."""

    def __init__(self, lm: nn.Module, context: int):
        super().__init__()
        self.lm, self.context = lm, int(context)
        mask = torch.full((self.context, self.context), float("-inf")).triu(1)
        self.register_buffer("causal_mask", mask[None, None], persistent=False)
        self.register_buffer("positions", torch.arange(self.context)[None], persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        out = self.lm(input_ids=ids, attention_mask=self.causal_mask[:, :, :n, :n], position_ids=self.positions[:, :n],
                      use_cache=False)
        return out.logits


def adapt(lm: nn.Module) -> nn.Module:
    """Replace the written-out RMSNorm modules of Llama / Qwen2 (a ``weight`` and a
    ``variance_epsilon``) by ``nn.RMSNorm`` sharing the weight (the same function)."""
    for name, mod in list(lm.named_modules()):
        if type(mod).__name__.endswith("RMSNorm") and hasattr(mod, "variance_epsilon"):
            norm = nn.RMSNorm(mod.weight.shape[0], eps=mod.variance_epsilon)
            norm.weight = mod.weight
            parent_name, _, attr = name.rpartition(".")
            setattr(lm.get_submodule(parent_name) if parent_name else lm, attr, norm)
    return lm


def _config(tf, name: str, vocab: int, dim: int, depth: int, heads: int, kv_heads: int | None, context: int,
            mlp_ratio: float, attn: str, extra: dict):
    """A small config of the kind ``name`` (dropout off: tiny models, and conversion removes it)."""
    if name == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=dim, n_layer=depth, n_head=heads, n_positions=context,
                             n_inner=int(dim * mlp_ratio), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                             bos_token_id=None, eos_token_id=None, attn_implementation=attn, **extra)
    cls = tf.LlamaConfig if name == "llama" else tf.Qwen2Config
    kv = kv_heads or (heads if name == "llama" else max(1, heads // 2))
    # SwiGLU's hidden width: 2/3 of a GELU MLP's, so both have about the same weights (as in gpt.py)
    hidden = int(dim * mlp_ratio * 2 / 3)
    return cls(vocab_size=vocab, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=depth,
               num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=context,
               bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation=attn, **extra)


def _pretrained(tf, name: str, path: str, attn: str) -> nn.Module:
    """A causal LM from the local directory ``path`` (no download), in float32; it must be ``name``'s kind."""
    import os

    if not os.path.isfile(os.path.join(os.path.expanduser(str(path)), "config.json")):
        raise ValueError(f"hf:{name}: pretrained {str(path)[:200]!r} is not a folder holding a transformers checkpoint "
                         "(no config.json in it). Pass the folder that save_pretrained wrote (config.json and the "
                         "weights); nothing is downloaded.")
    path = os.path.expanduser(str(path))
    config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type != name:
        hint = f"; use hf:{config.model_type}" if config.model_type in NAMES else ""
        raise ValueError(f"hf:{name}: the model in {str(path)[:200]!r} is a {config.model_type!r}, not a {name!r}{hint}")
    return tf.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                    attn_implementation=attn)


def hf_model(name: str, vocab_size: int = 256, dim: int = 64, depth: int = 2, num_heads: int = 4,
             num_kv_heads: int | None = None, context: int = 128, mlp_ratio: float = 4.0,
             attn_implementation: str = "eager",
             pretrained: str | None = None, num_classes: int | None = None, hf_kwargs: dict | None = None,
             **ignored) -> CausalLM:
    """``hf:NAME``: a small GPT-2 / Llama / Qwen2 with random weights (``num_classes``, where a
    config gives it, is the vocabulary size), or the local checkpoint ``pretrained`` (a
    directory), wrapped as ``ids → logits``.  ``attn_implementation``: ``eager`` (default) or
    ``sdpa`` (the config key ``attn`` of ann2snn's own transformers is ignored);
    ``hf_kwargs`` passes more config fields; ``context`` bounds the sequence length (for a
    checkpoint: its own if smaller)."""
    if name not in NAMES:
        raise ValueError(f"hf: no model {str(name)[:60]!r}; choose one of {NAMES}")
    attn = attn_implementation
    if attn not in ATTENTIONS:
        raise ValueError(f"hf: attn_implementation must be one of {ATTENTIONS}, got {str(attn)[:40]!r}")
    tf = _transformers()
    if pretrained is not None:
        lm = _pretrained(tf, name, pretrained, attn)
        limit = getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)
        context = min(context, limit or context)
    else:
        if dim % num_heads:
            raise ValueError(f"hf:{name}: dim {dim} must be divisible by num_heads {num_heads}")
        config = _config(tf, name, num_classes or vocab_size, dim, depth, num_heads, num_kv_heads, context,
                         mlp_ratio, attn, dict(hf_kwargs or {}))
        lm = tf.AutoModelForCausalLM.from_config(config)
    return CausalLM(adapt(lm), context)


register_family("hf", hf_model, available)
