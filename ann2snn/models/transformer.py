"""The convertible vision transformer of the original toolkit ann2snn grew from.

Embedding after Spikformer's SPS (Zhou et al., ICLR 2023) with an ANN activation, blocks
``x = x + Attn(x); x = x + MLP(x)`` without LayerNorm, every Linear/Conv followed by BatchNorm and an
activation site.  The activation is passed in as a type (ReLU to build, QCFS after the
``ann2snn.quantize`` pass, ScaledNeuron after conversion); the two products of attention and
its softmax are modules (:class:`~ann2snn.layers.MatMul`, ``nn.Softmax``) so that conversion passes can replace them.

Attention variants (config key ``attn``):
- ``softmax``: softmax over keys, scale 1/sqrt(head_dim) (default);
- ``query_softmax`` (formerly ``softmax_seed``): the original's softmax over the query axis with a
  fixed scale 0.125;
- ``ssa``: softmax-free, q·kᵀ·v·scale followed by an activation site (Spikformer's SSA idea on a
  quantized ANN); scale = 1/(N·sqrt(head_dim)) keeps the product in the range of one QCFS site.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ann2snn.layers import ConvBN, LinearBN, MatMul
from ann2snn.models._registry import register_model

ATTN_VARIANTS = ("softmax", "query_softmax", "ssa")
OLD_ATTN = {"softmax_seed": "query_softmax"}  # earlier spellings, still accepted


class Embedding(nn.Module):
    """SPS: four conv-BN-act stages D/8→D/4→D/2→D, pooling after the 3rd and 4th; then a
    relative-position conv-BN-act added to its own input.  [B, C, H, W] → [B, N, D]."""

    def __init__(self, in_channels: int, dim: int, act_layer: Callable[[], nn.Module], use_maxpool: bool):
        super().__init__()
        chans = [in_channels, dim // 8, dim // 4, dim // 2, dim]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [ConvBN(chans[i], chans[i + 1]), act_layer()]
            if i >= 2:
                layers.append(nn.MaxPool2d(3, 2, 1) if use_maxpool else nn.AvgPool2d(3, 2, 1))
        self.proj = nn.Sequential(*layers)
        self.rpe = nn.Sequential(ConvBN(dim, dim), act_layer())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, D, H/4, W/4]
        x = x + self.rpe(x)
        return x.flatten(2).transpose(1, 2)  # [B, N, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, act_layer: Callable[[], nn.Module], attn: str = "softmax"):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        attn = OLD_ATTN.get(attn, attn)
        assert attn in ATTN_VARIANTS, f"attn must be one of {ATTN_VARIANTS}, got {attn!r}"
        self.num_heads, self.head_dim, self.attn_kind = num_heads, dim // num_heads, attn
        self.q, self.k, self.v = LinearBN(dim, dim), LinearBN(dim, dim), LinearBN(dim, dim)
        self.q_act, self.k_act, self.v_act = act_layer(), act_layer(), act_layer()
        self.qk, self.av = MatMul(), MatMul()
        if attn == "ssa":
            self.attn_act = act_layer()
        else:  # softmax over keys (last axis) or, as in the original, over queries (axis 2)
            self.softmax = nn.Softmax(dim=-1 if attn == "softmax" else -2)
        self.proj = LinearBN(dim, dim)
        self.proj_act = act_layer()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, hd]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q = self._heads(self.q_act(self.q(x)))
        k = self._heads(self.k_act(self.k(x)))
        v = self._heads(self.v_act(self.v(x)))
        scores = self.qk(q, k.transpose(-2, -1))  # [B, H, N, N]
        if self.attn_kind == "ssa":
            out = self.attn_act(self.av(scores, v) * (self.head_dim ** -0.5 / N))
        else:
            scale = 0.125 if self.attn_kind == "query_softmax" else self.head_dim ** -0.5
            out = self.av(self.softmax(scores * scale), v)  # [B, H, N, hd]
        out = out.transpose(1, 2).reshape(B, N, D)
        return self.proj_act(self.proj(out))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act_layer: Callable[[], nn.Module]):
        super().__init__()
        self.fc1, self.act1 = LinearBN(dim, hidden), act_layer()
        self.fc2, self.act2 = LinearBN(hidden, dim), act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, act_layer, attn):
        super().__init__()
        self.attn = Attention(dim, num_heads, act_layer, attn)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class Transformer(nn.Module):
    def __init__(self, dim: int = 384, num_heads: int = 12, depth: int = 4, mlp_ratio: float = 4.0,
                 in_channels: int = 3, img_size: int = 32, num_classes: int = 10, use_maxpool: bool = True,
                 attn: str = "softmax", act_layer: Callable[[], nn.Module] = nn.ReLU):
        super().__init__()
        assert dim % 8 == 0, f"dim must be a multiple of 8, got {dim}"
        self.img_size, self.in_channels = img_size, in_channels
        self.embed = Embedding(in_channels, dim, act_layer, use_maxpool)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, act_layer, attn) for _ in range(depth)])
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(x))  # [B, N, D]
        return self.head(x.mean(dim=1))


@register_model("transformer")
def transformer(**kwargs) -> Transformer:
    """The original's transformer (defaults: dim 384, 12 heads, depth 4, CIFAR-10 shape)."""
    return Transformer(**kwargs)
