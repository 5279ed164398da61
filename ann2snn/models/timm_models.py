"""timm's models as the family ``timm:NAME`` (``--model timm:vit_tiny_patch16_224``).

``timm.create_model(NAME, pretrained=False, num_classes=…, in_chans=…, img_size=…)`` builds the
network with random weights (no hub downloads: ``pretrained`` reads a local state dict), then
:func:`adapt` prepares it for quantization and conversion:

- every ``timm.layers.Attention`` is rewritten into explicit operations
  (:class:`ExplicitAttention`: ``q·kᵀ·scale`` → softmax → ``·v``, the same sub-modules and so the
  same state-dict names), instead of the fused ``scaled_dot_product_attention``, which has no
  spike-equivalent form.  Attention masks are not supported (none is used by image classifiers);
- the quantization sites of a ViT are placed as in :mod:`ann2snn.models.vit`: a ReLU on q, k and
  v (after the fused qkv Linear) and after the MLP's activation.  Both are parameter-free, so a
  state dict of the original timm model loads unchanged; the network computes a different function
  than the original and is meant to be fine-tuned (or trained) with its QCFS sites.

timm is imported only when a ``timm:`` model is built (it imports torchvision, so the project's
torchvision shim runs first).
"""
from __future__ import annotations

import torch
from torch import nn

from ann2snn.models._registry import register_family


def _timm():
    from ann2snn._compat import import_torchvision

    import_torchvision()  # timm imports torchvision; repair the CPU-torch mismatch first
    import timm

    return timm


def available() -> list[str]:
    return sorted(_timm().list_models())


class ExplicitAttention(nn.Module):
    """timm's multi-head self-attention with explicit products and softmax, and a QCFS site (a
    ReLU module) on q, k and v.  Holds the original's ``qkv``, ``q_norm``, ``k_norm``, ``norm`` and
    ``proj`` modules under the same names."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise ValueError("gated timm attention (x · sigmoid(gate)) has no spike-equivalent form here")
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
        self.qkv, self.q_norm, self.k_norm = attn.qkv, attn.q_norm, attn.k_norm
        self.qkv_act = nn.ReLU()
        self.norm = getattr(attn, "norm", nn.Identity())
        self.proj = attn.proj

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv_act(self.qkv(x)).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        att = (q * self.scale) @ k.transpose(-2, -1)
        x = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj(self.norm(x))


def adapt(model: nn.Module) -> nn.Module:
    """Rewrite timm attention into explicit ops and place the ViT's quantization sites."""
    from timm.layers import Attention, Mlp

    for name, mod in list(model.named_modules()):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(mod, Attention):
            setattr(parent, attr, ExplicitAttention(mod))
        elif isinstance(mod, Mlp) and not isinstance(mod.act, nn.ReLU):
            mod.act = nn.Sequential(mod.act, nn.ReLU())  # the site after the activation, as in ann2snn's vit
    return model


def timm_model(name: str, in_channels: int = 3, img_size: int = 224, num_classes: int = 1000,
               patch_size: int | None = None, timm_kwargs: dict | None = None, **ignored) -> nn.Module:
    """``timm.create_model(name)`` with random weights, sized to the data (``in_chans``,
    ``img_size``, ``num_classes``, and ``patch_size`` for patch-based models; the config's
    ``patch_size``, default 4, suits small images), adapted by :func:`adapt`.  The model's width
    and depth are its name's (``dim``, ``depth``, ``num_heads`` of the config are the built-in
    transformers' and are ignored); ``timm_kwargs`` passes more arguments to ``create_model``."""
    timm = _timm()
    kw = dict(timm_kwargs or {})
    sized = {"img_size": img_size, **({"patch_size": patch_size} if patch_size else {})}
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **sized, **kw)
    except TypeError:  # a family without img_size / patch_size arguments (CNNs)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kw)
    return adapt(model)


register_family("timm", timm_model, available)
