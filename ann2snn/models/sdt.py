"""Spike-driven Transformer (SDT; Yao et al., NeurIPS 2023), trained directly as a spiking network.

Yao et al., "Spike-driven Transformer", NeurIPS 2023.  Same neurons and time protocol as
:mod:`ann2snn.models.direct` (multi-step LIF τ = 2, θ = 1, hard reset, detached reset,
sigmoid surrogate; the image repeated T times; :class:`DirectSNN`).  Layout [T, B, C, N]
throughout the encoder, with 1×1 Conv1d as per-token linear maps (the paper's CIFAR setting).

- MS-SPS: conv-BN-LIF ×3 (D/8 → D/4 → D/2), max-pool, conv-BN (D), max-pool; then the
  relative-position branch LIF → conv-BN added to its input.  The output is real-valued: it is
  a membrane potential, not spikes.
- Membrane shortcut (MS): every block branch starts with a LIF and ends with BN, and its output is
  added to the real-valued stream (``x + f(x)``), so residuals are sums of membrane potentials and
  every synaptic layer still receives binary spikes.
- SDSA: ``Q ⊙ LIF_{θ=0.5}(Σ_tokens K ⊙ V)``.  With binary Q, K, V this is an AND, a column sum
  over tokens (additions) and a mask: linear in tokens and in channels.  It is computed here with
  :func:`spike_mask` (``torch.where`` on the spike) and ``sum``, never a product of two float
  tensors (tests/test_direct_models.py checks the recorded ATen operators).  The paper's heads
  do not change SDSA: the sum runs over tokens and the LIF per channel, so ``num_heads`` is
  accepted and has no effect.
- MLP with MS: LIF → Conv1d-BN → LIF → Conv1d-BN.  Head: mean over tokens → LIF → Linear, per
  step; the prediction is the mean over time.
"""
from __future__ import annotations

import torch
from torch import nn

from ann2snn.models._registry import register_model
from ann2snn.models.direct import ChannelLinearBN, DirectSNN, conv_bn, lif, max_pool


class _SpikeMask(torch.autograd.Function):
    """``x`` where the spike ``m`` is 1, else 0; broadcasts like ``x * m``.

    Forward is a select (``torch.where``), not a multiplication.  Backward is that of ``x * m``
    (so training matches the paper's ``q.mul(kv)``): the surrogate gradient reaches ``m``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, m)
        return torch.where(m.bool(), x, 0.0)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, m = ctx.saved_tensors
        gx = torch.where(m.bool(), g, 0.0).sum_to_size(x.shape) if ctx.needs_input_grad[0] else None
        gm = (g * x).sum_to_size(m.shape) if ctx.needs_input_grad[1] else None  # training only
        return gx, gm


def spike_mask(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mask ``x`` by the binary spike tensor ``m`` (equal to ``x * m`` for m ∈ {0, 1})."""
    return _SpikeMask.apply(x, m)


class SDSA(nn.Module):
    """Spike-driven self-attention on binary q, k, v [T, B, C, N] → binary [T, B, C, N]."""

    def __init__(self):
        super().__init__()
        self.kv_lif = lif(0.5)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kv = spike_mask(v, k).sum(dim=-1, keepdim=True)  # AND, then column sum over tokens: [T, B, C, 1]
        return spike_mask(q, self.kv_lif(kv))  # keep the channels of Q whose column fired


class Attention(nn.Module):
    """MS branch around SDSA: LIF → q, k, v Conv1d-BN-LIF → SDSA → proj Conv1d-BN (membrane)."""

    def __init__(self, dim: int):
        super().__init__()
        self.shortcut_lif = lif()
        self.q, self.k, self.v = (ChannelLinearBN(dim, dim, "token_last") for _ in range(3))
        self.q_lif, self.k_lif, self.v_lif = lif(), lif(), lif()
        self.sdsa = SDSA()
        self.proj = ChannelLinearBN(dim, dim, "token_last")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_lif(x)
        q, k, v = self.q_lif(self.q(s)), self.k_lif(self.k(s)), self.v_lif(self.v(s))
        return self.proj(self.sdsa(q, k, v))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lif1, self.fc1 = lif(), ChannelLinearBN(dim, hidden, "token_last")
        self.lif2, self.fc2 = lif(), ChannelLinearBN(hidden, dim, "token_last")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.lif2(self.fc1(self.lif1(x))))


class Block(nn.Module):
    """Membrane shortcut: the branches' BN outputs are added to the membrane-level stream."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.attn = Attention(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class MSSPS(nn.Module):
    """Membrane-shortcut SPS: [T, B, C, H, W] → real-valued [T, B, D, N] (N = ⌈H/4⌉·⌈W/4⌉)."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        chans = [in_channels, dim // 8, dim // 4, dim // 2, dim]
        stages: list[nn.Module] = []
        for i in range(3):
            stages += [conv_bn(chans[i], chans[i + 1]), lif()]
        stages += [max_pool(), conv_bn(chans[3], chans[4]), max_pool()]  # the 4th stage ends in BN
        self.proj = nn.Sequential(*stages)
        self.rpe = nn.Sequential(lif(), conv_bn(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [T, B, D, H/4, W/4], real-valued
        x = x + self.rpe(x)
        return x.flatten(3)


class SpikeDrivenTransformer(DirectSNN):
    def __init__(self, T: int = 4, dim: int = 512, num_heads: int = 8, depth: int = 2, mlp_ratio: float = 4.0,
                 in_channels: int = 3, img_size: int = 32, num_classes: int = 10):
        super().__init__(T)
        assert dim % 8 == 0, f"dim must be a multiple of 8 (MS-SPS uses dim/8 channels), got {dim}"
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        self.img_size, self.in_channels, self.num_heads = img_size, in_channels, num_heads
        self.embed = MSSPS(in_channels, dim)
        self.blocks = nn.Sequential(*[Block(dim, mlp_ratio) for _ in range(depth)])
        self.head_lif = lif()
        self.head = nn.Linear(dim, num_classes)

    def forward_seq(self, x_seq: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(x_seq))  # [T, B, D, N] membrane-level
        s = self.head_lif(x.mean(-1))  # mean over tokens, then spikes: [T, B, D]
        return self.head(s.flatten(0, 1)).unflatten(0, s.shape[:2])  # per-step logits [T, B, classes]


@register_model("sdt", kind="direct")
def sdt(T: int = 4, use_maxpool: bool = True, attn: str | None = None, ssa_form: str | None = None,
        **kwargs) -> SpikeDrivenTransformer:
    """Spike-driven Transformer (defaults: CIFAR-10 2-512, 8 heads, T = 4).  ``use_maxpool``,
    ``attn`` and ``ssa_form`` belong to other models and are ignored here."""
    return SpikeDrivenTransformer(T=T, **kwargs)
