"""From a config to library calls: the one place where the application's run configuration
(:class:`~ann2snn.app.config.Config`) becomes models, simulators and loaded weights.

The library (:mod:`ann2snn`) never sees a config: :func:`build_model` turns ``model``, ``dim``,
``l`` ... into :func:`ann2snn.models.create_model` and :func:`ann2snn.quantize` calls,
:func:`simulator_for` turns ``preset`` and ``spike_levels`` into :func:`ann2snn.convert` and a
:class:`~ann2snn.simulate.Simulator`, and :func:`load_trained` gives a command the trained model of
a checkpoint with its test data.
"""
from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ann2snn.app import distributed, preflight
from ann2snn.app.checkpoint import check_compatible, checkpoint_config, load_checkpoint, load_state, read_state_dict
from ann2snn.app.config import Config, ConfigError
from ann2snn.app.data import DataInfo
from ann2snn.convert import convert
from ann2snn.graph import ConversionError
from ann2snn.models import create_model, model_kind
from ann2snn.models.direct import DirectNetwork
from ann2snn.quant import QCFS, quantize
from ann2snn.simulate import Simulator

log = logging.getLogger("ann2snn")


def build_model(cfg: Config, info: DataInfo) -> nn.Module:
    """The registered model, with QCFS activations when it is meant for conversion (and
    ``quantize`` is on), with its initial weights (``pretrained`` is loaded by training, see
    :func:`load_pretrained`).

    Before anything is allocated the model is described on the meta device, and one that cannot
    fit in memory (≈ 4× its parameters for training) or does not run on the data's input size is
    refused with a ConfigError (:mod:`ann2snn.app.preflight`)."""
    check_data_fits(cfg, info)
    direct = {"T": cfg.t, "ssa_form": cfg.ssa_form} if model_kind(cfg.model) == "direct" else {}
    if cfg.width is not None:
        direct["width"] = cfg.width
    if cfg.model == "vit" or cfg.model.startswith("timm:"):
        direct["patch_size"] = cfg.patch_size
    if cfg.model == "vit":  # its own sites (qkv, norm); synapses adds the rest in quantize
        direct["placement"] = "qkv" if cfg.placement == "synapses" else cfg.placement
        direct["norm"], direct["mlp_act"] = cfg.norm, cfg.mlp_act
    if takes_tokens(cfg.model):  # language models: the vocabulary is num_classes, the window their context
        direct["context"] = info.context
    if cfg.model.startswith("hf:") and cfg.pretrained:  # a local transformers checkpoint folder is the model
        direct["pretrained"] = cfg.pretrained
    if cfg.model == "gpt":
        direct.update(norm=cfg.norm, mlp=cfg.mlp_act, pos=cfg.pos)

    def build_at(img_size: int) -> nn.Module:
        try:
            return create_model(cfg.model, dim=cfg.dim, num_heads=cfg.num_heads, depth=cfg.depth,
                                mlp_ratio=cfg.mlp_ratio, in_channels=info.in_channels, img_size=img_size,
                                num_classes=info.num_classes, use_maxpool=cfg.use_maxpool, attn=cfg.attn, **direct)
        except ValueError as err:  # a factory's refusal of its arguments (e.g. an hf: checkpoint folder)
            raise ConfigError(str(err)) from None

    meta = preflight.meta_model(lambda: build_at(info.img_size))
    if meta is not None:
        preflight.check_memory(meta, cfg.model, distributed.select_device(cfg))
    model = preflight.built(lambda: build_at(info.img_size), cfg.model)
    if model_kind(cfg.model) == "convertible" and cfg.quantize:
        # the data's input size, for a model whose code branches on shapes (traced with an example)
        example = info.example_input()
        if cfg.placement == "synapses":
            _explicit_attention(model)
        model = quantize(model, cfg.l, cfg.lambda_init, example_input=example,
                         placement="synapses" if cfg.placement == "synapses" else "activations")
    preflight.check_input(model, meta, cfg.model, info, build_at)
    return model


TEXT_MODELS = ("gpt",)  # and every hf:NAME


def takes_tokens(name: str) -> bool:
    """Whether the model ``name`` reads token ids (a language model) rather than images."""
    return name in TEXT_MODELS or name.startswith("hf:")


def check_data_fits(cfg: Config, info: DataInfo) -> None:
    """Refuse a language model on images, or an image model on text, naming both and the fix."""
    if takes_tokens(cfg.model) and not info.is_text:
        raise ConfigError(f"The model {cfg.model} is a language model: it reads token ids, but {info.name} holds images. "
                          "Use a text set: `--data python_docs` (embedded) or `--data text --data_dir FILE`.")
    if info.is_text and cfg.mixup:
        raise ConfigError("mixup blends inputs, which token ids cannot be; set `mixup: 0` for text data.")
    if info.is_text and not takes_tokens(cfg.model):
        raise ConfigError(f"The data {info.name} is text (token windows), but {cfg.model} reads images. Use a language "
                          "model: `--model gpt` (or hf:gpt2, hf:llama, hf:qwen2 with the hf extra).")


def _explicit_attention(model: nn.Module) -> None:
    """timm's attention modules compute softmax(q kᵀ) v inside ``F.scaled_dot_product_attention``
    when ``fused_attn`` is set; written out (timm's own non-fused path, the same values) the
    softmax output is a tensor of the graph, so placement ``synapses`` gives it a site and the
    product with v reads spikes."""
    for m in model.modules():
        if isinstance(getattr(m, "fused_attn", None), bool):
            m.fused_attn = False


def load_pretrained(model: nn.Module, path: str) -> None:
    """Load a local state dict of the ReLU model into ``model`` (ReLU or already quantized: the
    QCFS thresholds ``*.lam`` are the only weights it may lack).  The file is a plain state dict,
    ``{"state_dict": ...}``, or an ann2snn checkpoint of a ``quantize: false`` run.  No downloads
    (the field's pretrained → calibrate → QCFS fine-tune workflow)."""
    state = dict(read_state_dict(path))
    lams = {f"{n}.lam" for n, m in model.named_modules() if isinstance(m, QCFS)}
    own = model.state_dict()
    for key in lams - set(state):
        state[key] = own[key]  # keeps lambda_init (or the calibration that follows)
    load_state(model, state, path)


def simulator_for(model: nn.Module, cfg: Config, info: DataInfo | None = None) -> Simulator:
    """The :class:`~ann2snn.simulate.Simulator` for a trained model: converted with ``cfg.preset``
    when it is a QCFS ANN (traced with ``info``'s example input when given: a language model's
    code slices by its sequence length), stepped as trained (no conversion; ``preset`` does not
    apply) when it is a directly trained SNN."""
    m = cfg.spike_levels
    if model_kind(cfg.model) == "convertible":
        example = None if info is None else info.example_input(device=next(model.parameters()).device)
        return Simulator(convert(model, cfg.preset, example_input=example), spike_levels=m)
    if m != 1:
        raise ConversionError(f"spike_levels: {m} applies to converted networks; {cfg.model} is a directly trained "
                              "SNN whose neurons send one spike per step. Leave spike_levels at 1 for it.")
    log.info("%s is a directly trained SNN: evaluated step by step as trained, no conversion "
             "(preset %r does not apply)", cfg.model, cfg.preset)
    return Simulator(DirectNetwork(model))


def load_trained(cfg: Config, ckpt_path: Path):
    """Data loaders and the trained model of ``ckpt_path`` (checked against ``cfg``)."""
    ckpt = load_checkpoint(ckpt_path)
    check_compatible(checkpoint_config(ckpt, ckpt_path), cfg, ckpt_path)
    ctx = distributed.setup(cfg)  # under torchrun: rank r evaluates test batches r, r+W, ...
    _, test_loader, info = distributed.build_loaders(cfg, ctx)
    model = build_model(cfg, info)
    load_state(model, ckpt["model"], ckpt_path)
    return model.to(ctx.device).eval(), test_loader, info


__all__ = ["build_model", "check_data_fits", "load_pretrained", "load_trained", "simulator_for", "takes_tokens"]
