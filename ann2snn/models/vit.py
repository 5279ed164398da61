"""A pre-norm vision transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021)
built to be quantized and converted (issue: standard vision transformers).

Patch embedding (a patch_size × patch_size convolution), a class token and learned position
embeddings, ``depth`` pre-norm blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))``, a final LayerNorm and
a Linear head on the class token.  Where the activations are quantized (each an ``nn.ReLU``
module, so :func:`ann2snn.quant.quantize` gives each its QCFS site):

- on q, k and v (``qkv_act``, after the fused qkv Linear): attention's products then multiply
  spikes, which the spike-equivalent product counts as accumulates, as Spikformer's SSA does;
- after GELU in the MLP (``mlp_act``): fc2 reads spikes.

``placement="norm"`` also quantizes after every LayerNorm (``norm1_act``, ``norm2_act``,
``norm_act``: :class:`~ann2snn.layers.SignedSite`, a *signed* QCFS site, since LayerNorm's output
is signed), SpikeZIP-TF's placement (You et al., ICML 2024): q/k/v, fc1 and the head then read
spikes and pay accumulates instead of MACs, at the price of quantizing the normalised stream.

The spike-driven variants (issue 20) remove the float operations that every step would pay for:
``attn="ssa"`` drops the softmax (Spikformer's spiking self-attention, Zhou et al., ICLR 2023),
``norm="batch"`` replaces the pre-norm LayerNorms by a BatchNorm after every Linear (and after the
patch embedding), which conversion folds into the Linear -- the Spike-driven Transformer's
normalisation (Yao et al., NeurIPS 2023) -- and ``mlp_act="relu"`` drops the GELU, leaving the
MLP's site alone.  With ``quantize(..., placement="synapses")`` every Linear and product then
reads spikes and the SNN has no float function left.

LayerNorm, GELU and softmax (where kept) stay float operations, converted by the running-sum rule
(:class:`~ann2snn.neurons.RunningFunction`, :class:`~ann2snn.neurons.ECSoftmax`): they read the
residual stream or the attention scores, which are sums of spike trains times weights, not
spikes, so the layers after them (q/k/v, fc1, the attention projection) pay MACs.  The GELU's
small negative lobe is cut by the QCFS site after it; the ANN is trained that way.
"""
from __future__ import annotations

import torch
from torch import nn

from ann2snn.layers import LinearBN, SignedSite
from ann2snn.models._registry import register_model

PLACEMENTS = ("qkv", "norm")
ATTN_VARIANTS = ("softmax", "ssa")
NORMS = ("layer", "batch")
MLP_ACTS = ("gelu", "relu")


class Attention(nn.Module):
    """Multi-head self-attention; ``attn="ssa"`` drops the softmax (Spikformer's spiking
    self-attention, Zhou et al., ICLR 2023): (q·kᵀ)·v × 1/(N·sqrt(head_dim)), the seed
    transformer's scaling, which keeps the product in the range of one site."""

    def __init__(self, dim: int, num_heads: int, attn: str = "softmax", norm: str = "layer"):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        self.num_heads, self.head_dim, self.attn_kind = num_heads, dim // num_heads, attn
        self.qkv = _linear(dim, 3 * dim, norm)
        self.qkv_act = nn.ReLU()
        self.proj = _linear(dim, dim, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv_act(self.qkv(x)).reshape(B, N, 3, self.num_heads, self.head_dim)
        # [B, H, N, hd] each, by ops that keep the batch axis first (timm's permute(2, 0, 3, 1, 4) moves
        # it, which SpikingJelly's step-mode adapter refuses; the values are the same)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        if self.attn_kind == "ssa":
            out = (q @ k.transpose(-2, -1)) @ v * (self.head_dim ** -0.5 / N)
        else:
            out = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


def _linear(cin: int, cout: int, norm: str) -> nn.Module:
    """A Linear; under ``norm="batch"`` followed by a BatchNorm over channels, which conversion
    folds into it (:class:`~ann2snn.layers.LinearBN`)."""
    return LinearBN(cin, cout) if norm == "batch" else nn.Linear(cin, cout)


def _site(placement: str) -> nn.Module:
    return SignedSite() if placement == "norm" else nn.Identity()


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, placement: str = "qkv", attn: str = "softmax",
                 norm: str = "layer", mlp_act: str = "gelu"):
        super().__init__()
        # pre-norm LayerNorms, or none: under norm="batch" the BatchNorms follow each Linear
        self.norm1 = nn.LayerNorm(dim) if norm == "layer" else nn.Identity()
        self.norm2 = nn.LayerNorm(dim) if norm == "layer" else nn.Identity()
        self.attn = Attention(dim, num_heads, attn, norm)
        self.norm1_act, self.norm2_act = _site(placement), _site(placement)
        hidden = int(dim * mlp_ratio)
        self.fc1, self.fc2 = _linear(dim, hidden, norm), _linear(hidden, dim, norm)
        self.gelu = nn.GELU() if mlp_act == "gelu" else nn.Identity()
        self.mlp_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1_act(self.norm1(x)))
        return x + self.fc2(self.mlp_act(self.gelu(self.fc1(self.norm2_act(self.norm2(x))))))


class ViT(nn.Module):
    def __init__(self, dim: int = 192, num_heads: int = 3, depth: int = 12, mlp_ratio: float = 4.0,
                 in_channels: int = 3, img_size: int = 32, num_classes: int = 10, patch_size: int = 4,
                 placement: str = "qkv", attn: str = "softmax", norm: str = "layer", mlp_act: str = "gelu"):
        super().__init__()
        for name, value, choices in (("placement", placement, PLACEMENTS), ("attn", attn, ATTN_VARIANTS),
                                     ("norm", norm, NORMS), ("mlp_act", mlp_act, MLP_ACTS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        tokens = (img_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.patch_bn = nn.BatchNorm2d(dim) if norm == "batch" else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, placement, attn, norm, mlp_act)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim) if norm == "layer" else nn.Identity()
        self.norm_act = _site(placement)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_bn(self.patch(x)).flatten(2).transpose(1, 2)  # [B, N, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm_act(self.norm(self.blocks(x)))[:, 0])


@register_model("vit")
def vit(dim: int = 192, num_heads: int = 3, depth: int = 12, mlp_ratio: float = 4.0, in_channels: int = 3,
        img_size: int = 32, num_classes: int = 10, patch_size: int = 4, placement: str = "qkv",
        attn: str = "softmax", norm: str = "layer", mlp_act: str = "gelu", **ignored) -> ViT:
    """A pre-norm ViT (defaults: ViT-Tiny's width and depth, patch 4 for 32×32 images); ``placement``:
    ``qkv`` (sites on q, k, v and after GELU) or ``norm`` (also a signed site after each LayerNorm);
    ``attn``: ``softmax`` or ``ssa`` (softmax-free); ``norm``: ``layer`` (pre-norm LayerNorms) or
    ``batch`` (none on the stream, a BatchNorm after every Linear, folded at conversion);
    ``mlp_act``: ``gelu`` (GELU then a site) or ``relu`` (the site alone)."""
    return ViT(dim, num_heads, depth, mlp_ratio, in_channels, img_size, num_classes, patch_size, placement,
               attn, norm, mlp_act)
