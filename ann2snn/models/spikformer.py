"""Spikformer (Zhou et al., ICLR 2023), trained directly as a spiking network.

Zhou et al., "Spikformer: When Spiking Neural Network Meets Transformer", ICLR 2023.  Built on
spikingjelly 2.x (Fang et al., "SpikingJelly", Science Advances 2023): multi-step LIF neurons
(τ = 2, θ = 1, hard reset to 0, detached reset, sigmoid surrogate), ``functional.reset_net`` and
``layer.SeqToANNContainer``.  Tensors over time are [T, B, ...]; the image is repeated T times.

- SPS: four 3×3 conv-BN-LIF stages (D/8 → D/4 → D/2 → D), max-pool (3, 2, 1) after the third
  and fourth, then the relative-position conv-BN-LIF added to its own input.
- SSA: q, k, v = LIF(BN(Linear(x))) are binary; ``x = q·kᵀ·v·0.125`` with no softmax, an
  attention LIF with θ = 0.5, then proj Linear-BN-LIF.  MLP: Linear-BN-LIF twice.
- SEW-style residuals on spikes (``x + f(x)``), head: mean over tokens, Linear, mean over time.

Two layouts of SSA, chosen by ``ssa_form`` (config key ``ssa_form``):
- ``token_first`` [T, B, N, C] with three Linear layers, as in the paper;
- ``token_last`` [T, B, C, N] with one fused 1×1 Conv1d producing q, k and v, computed as
  ``v·kᵀ·q`` (the original Spikformer code; spikingjelly's ``SpikingSelfAttention``): (q·kᵀ·v)ᵀ = vᵀ·k·qᵀ.  The d×d
  product vᵀ·k makes it linear in the number of tokens.  :func:`token_last_state_dict` maps
  token-first weights onto it; the two compute the same function.

Linear/conv layers followed by BatchNorm have no bias (BN's shift makes it redundant).

The pieces shared with the Spike-driven Transformer (:func:`~ann2snn.models.direct.lif`,
:class:`~ann2snn.models.direct.DirectSNN`, :class:`~ann2snn.models.direct.ChannelLinearBN`) live in
:mod:`ann2snn.models.direct`.
"""
from __future__ import annotations

import torch
from torch import nn

from ann2snn.layers import MatMul
from ann2snn.models._registry import register_model
from ann2snn.models.direct import SSA_FORMS, ChannelLinearBN, DirectSNN, conv_bn, lif, max_pool

SSA_SCALE = 0.125  # the paper's fixed scale; a power of two, so both SSA orders round alike


# --------------------------------------------------------------------------------------------
class SPS(nn.Module):
    """Spiking patch splitting: [T, B, C, H, W] → [T, B, D, N] (N = ⌈H/4⌉·⌈W/4⌉)."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        chans = [in_channels, dim // 8, dim // 4, dim // 2, dim]
        stages: list[nn.Module] = []
        for i in range(4):
            stages += [conv_bn(chans[i], chans[i + 1]), lif()]
            if i >= 2:
                stages.append(max_pool())
        self.proj = nn.Sequential(*stages)
        self.rpe = nn.Sequential(conv_bn(dim, dim), lif())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [T, B, D, H/4, W/4] spikes
        x = x + self.rpe(x)  # SEW add: values in {0, 1, 2}
        return x.flatten(3)


class SSA(nn.Module):
    """Spiking self-attention, token-first [T, B, N, C]: three Linear-BN-LIF, q·kᵀ·v·scale."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.q, self.k, self.v = (ChannelLinearBN(dim, dim) for _ in range(3))
        self.q_lif, self.k_lif, self.v_lif = lif(), lif(), lif()
        self.qk, self.attn_v = MatMul(), MatMul()  # modules, so energy hooks count their operations
        self.attn_lif = lif(0.5)
        self.proj, self.proj_lif = ChannelLinearBN(dim, dim), lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, C = x.shape
        H = self.num_heads

        def heads(s: torch.Tensor) -> torch.Tensor:
            return s.reshape(T, B, N, H, C // H).transpose(2, 3)  # [T, B, H, N, d]

        q = heads(self.q_lif(self.q(x)))
        k = heads(self.k_lif(self.k(x)))
        v = heads(self.v_lif(self.v(x)))
        out = self.attn_v(self.qk(q, k.transpose(-2, -1)), v) * SSA_SCALE  # [T, B, H, N, d]; counts × 1/8
        out = self.attn_lif(out.transpose(2, 3).reshape(T, B, N, C))
        return self.proj_lif(self.proj(out))


class SSATokenLast(nn.Module):
    """Spiking self-attention, token-last [T, B, C, N] (the original Spikformer code's layout): one fused 1×1 Conv1d-BN-LIF
    for q, k, v and the product in the order v·kᵀ·q."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv, self.qkv_lif = ChannelLinearBN(dim, 3 * dim, "token_last"), lif()
        self.vk, self.vk_q = MatMul(), MatMul()
        self.attn_lif = lif(0.5)
        self.proj, self.proj_lif = ChannelLinearBN(dim, dim, "token_last"), lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, N = x.shape
        H = self.num_heads
        qkv = self.qkv_lif(self.qkv(x)).reshape(T, B, 3 * H, C // H, N)
        q, k, v = qkv.chunk(3, dim=2)  # each [T, B, H, d, N]
        out = self.vk_q(self.vk(v, k.transpose(-2, -1)), q) * SSA_SCALE  # [T, B, H, d, d] @ [T, B, H, d, N]
        out = self.attn_lif(out.reshape(T, B, C, N))
        return self.proj_lif(self.proj(out))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, layout: str):
        super().__init__()
        self.fc1, self.lif1 = ChannelLinearBN(dim, hidden, layout), lif()
        self.fc2, self.lif2 = ChannelLinearBN(hidden, dim, layout), lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif2(self.fc2(self.lif1(self.fc1(x))))


class Block(nn.Module):
    """SEW-style residuals: ``x + SSA(x)``, then ``x + MLP(x)`` (sums of spikes)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, ssa_form: str):
        super().__init__()
        self.attn = SSATokenLast(dim, num_heads) if ssa_form == "token_last" else SSA(dim, num_heads)
        self.mlp = MLP(dim, int(dim * mlp_ratio), ssa_form)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class Spikformer(DirectSNN):
    def __init__(self, T: int = 4, dim: int = 384, num_heads: int = 12, depth: int = 4,
                 mlp_ratio: float = 4.0, in_channels: int = 3, img_size: int = 32, num_classes: int = 10,
                 ssa_form: str = "token_first"):
        super().__init__(T)
        assert dim % 8 == 0, f"dim must be a multiple of 8 (SPS uses dim/8 channels), got {dim}"
        assert ssa_form in SSA_FORMS, f"ssa_form must be one of {SSA_FORMS}, got {ssa_form!r}"
        self.img_size, self.in_channels, self.ssa_form = img_size, in_channels, ssa_form
        self.embed = SPS(in_channels, dim)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, ssa_form) for _ in range(depth)])
        self.head = nn.Linear(dim, num_classes)

    def forward_seq(self, x_seq: torch.Tensor) -> torch.Tensor:
        x = self.embed(x_seq)  # [T, B, D, N]
        token_last = self.ssa_form == "token_last"
        x = self.blocks(x if token_last else x.transpose(-1, -2))
        feat = x.mean(-1 if token_last else -2)  # mean over tokens: [T, B, D]
        # per-step logits [T, B, classes]; their mean over T is the paper's head (it is linear)
        return self.head(feat.flatten(0, 1)).unflatten(0, feat.shape[:2])


def token_last_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a token-first Spikformer state dict onto the token-last one (same function):
    q/k/v weights and BN statistics are concatenated into ``qkv``, Linear weights gain the
    Conv1d kernel axis."""
    out: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        head, sep, leaf = key.rpartition(".attn.")
        if sep and leaf.split(".")[0] in ("q", "k", "v"):
            name, rest = leaf.split(".", 1)
            if name != "q":
                continue  # k and v are gathered with q
            parts = [state[f"{head}.attn.{n}.{rest}"] for n in ("q", "k", "v")]
            fused = parts[0] if rest.endswith("num_batches_tracked") else torch.cat(parts)
            out[f"{head}.attn.qkv.{rest}"] = fused.unsqueeze(-1) if rest == "fc.weight" else fused
        elif key.endswith(".fc.weight") and val.dim() == 2:
            out[key] = val.unsqueeze(-1)
        else:
            out[key] = val
    return out


@register_model("spikformer", kind="direct")
def spikformer(T: int = 4, ssa_form: str = "token_first", use_maxpool: bool = True, attn: str | None = None,
               **kwargs) -> Spikformer:
    """Spikformer (defaults: CIFAR-10 4-384, 12 heads, T = 4).  ``use_maxpool`` and ``attn``
    belong to the convertible transformer and are ignored here (SPS always max-pools)."""
    return Spikformer(T=T, ssa_form=ssa_form, **kwargs)
