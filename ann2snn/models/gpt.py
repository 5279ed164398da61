"""A causal decoder (a GPT: Radford et al., "Language Models are Unsupervised Multitask
Learners", 2019) built to be quantized and converted: the language-model family (issue 21).

Token embeddings (and learned position embeddings, or rotary position embeddings: Su et al.,
"RoFormer", 2021), ``depth`` pre-norm blocks ``x + Attn(Norm(x))``, ``x + MLP(Norm(x))``, a final
norm and a Linear head that scores the next token at every position: the output is
``[B, L, vocab]`` for ``[B, L]`` token ids.

- ``norm``: ``layer`` (LayerNorm) or ``rms`` (RMSNorm: Zhang & Sennrich, NeurIPS 2019);
- ``mlp``: ``gelu`` (Linear, GELU, Linear) or ``swiglu`` (Shazeer, "GLU Variants Improve
  Transformer", 2020: ``down(silu(gate(x)) · up(x))``, an elementwise product of two
  input-dependent tensors, which conversion makes a spike product);
- ``pos``: ``learned`` or ``rotary``;
- attention is causal softmax attention, written out (scores, a constant causal mask filled with
  −inf, softmax, the product with v) so that a QCFS site can sit on the softmax output; with
  ``fused_attn=True`` it is one ``scaled_dot_product_attention(..., is_causal=True)`` call instead.

The model has no activation sites of its own: :func:`ann2snn.quant.quantize` places them
(``placement="synapses"``: every Linear and product reads spikes, as for the ViT; ``"activations"``:
after GELU / SiLU only).  The input ids are the network's analog input: conversion reads the
token embedding on drive steps only (:class:`~ann2snn.neurons.DriveEmbedding`), and the causal
mask, a constant, stays exact.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ann2snn.models._registry import register_model

NORMS = ("layer", "rms")
MLPS = ("gelu", "swiglu")
POSITIONS = ("learned", "rotary")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] → [−x2, x1] over the last axis (RoFormer's rotation in the half-split layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention over ``[B, L, D]``; ``rotary``: rotary position embeddings
    on q and k (constant cos / sin tables of ``context`` positions)."""

    def __init__(self, dim: int, num_heads: int, context: int, rotary: bool = False, fused_attn: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.fused_attn = num_heads, dim // num_heads, fused_attn
        if rotary and self.head_dim % 2:
            raise ValueError(f"rotary position embeddings need an even head dimension (dim / num_heads), got "
                             f"{dim} / {num_heads} = {self.head_dim}; choose num_heads so that it is even")
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("causal", torch.ones(context, context, dtype=torch.bool).triu(1), persistent=False)
        self.rotary = rotary
        if rotary:
            inv = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
            angles = torch.outer(torch.arange(context).float(), inv).repeat(1, 2)  # [context, head_dim]
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, H, L, hd]
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        if self.rotary:
            cos, sin = self.cos[:L], self.sin[:L]
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            out = scores.masked_fill(self.causal[:L, :L], float("-inf")).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    """``fc2(gelu(fc1(x)))``, or SwiGLU's ``down(silu(gate(x)) · up(x))``."""

    def __init__(self, dim: int, hidden: int, kind: str = "gelu"):
        super().__init__()
        self.kind = kind
        if kind == "swiglu":
            self.gate, self.up, self.down = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)
            self.act = nn.SiLU()
        else:
            self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.fc2(self.act(self.fc1(x)))


def _norm(kind: str, dim: int) -> nn.Module:
    return nn.RMSNorm(dim, eps=1e-6) if kind == "rms" else nn.LayerNorm(dim)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, context: int, norm: str, mlp: str,
                 rotary: bool, fused_attn: bool):
        super().__init__()
        self.norm1, self.norm2 = _norm(norm, dim), _norm(norm, dim)
        self.attn = CausalSelfAttention(dim, num_heads, context, rotary, fused_attn)
        # SwiGLU's hidden width is 2/3 of the GELU MLP's, so that both have about the same weights
        hidden = max(1, int(dim * mlp_ratio * (2 / 3 if mlp == "swiglu" else 1)))
        self.mlp = MLP(dim, hidden, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """A causal decoder: ``[B, L]`` token ids (L ≤ ``context``) → ``[B, L, vocab_size]`` next-token
    scores."""

    def __init__(self, vocab_size: int = 256, dim: int = 128, num_heads: int = 4, depth: int = 4,
                 mlp_ratio: float = 4.0, context: int = 128, norm: str = "layer", mlp: str = "gelu",
                 pos: str = "learned", fused_attn: bool = False):
        super().__init__()
        for name, value, choices in (("norm", norm, NORMS), ("mlp", mlp, MLPS), ("pos", pos, POSITIONS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.vocab_size, self.context = vocab_size, context
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, context, dim) * 0.02) if pos == "learned" else None
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, context, norm, mlp, pos == "rotary",
                                            fused_attn) for _ in range(depth)])
        self.norm = _norm(norm, dim)
        self.head = nn.Linear(dim, vocab_size)
        self.apply(_init)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_embed(ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed[:, : ids.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def _init(m: nn.Module) -> None:
    """GPT-2's initialisation: normal(0, 0.02) weights, zero biases."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


@register_model("gpt")
def gpt(vocab_size: int = 256, dim: int = 128, num_heads: int = 4, depth: int = 4, mlp_ratio: float = 4.0,
        context: int = 128, norm: str = "layer", mlp: str = "gelu", pos: str = "learned", fused_attn: bool = False,
        num_classes: int | None = None, **ignored) -> GPT:
    """A causal decoder over byte tokens (``vocab_size`` 256) by default; ``norm``: ``layer`` or
    ``rms``; ``mlp``: ``gelu`` or ``swiglu``; ``pos``: ``learned`` or ``rotary``; ``context``: the
    longest sequence.  ``num_classes``, where a config gives it, is the vocabulary size."""
    return GPT(num_classes or vocab_size, dim, num_heads, depth, mlp_ratio, context, norm, mlp, pos, fused_attn)
