"""Run configuration: one flat dataclass, loaded from YAML, overridden from the command line.

The keys of the original toolkit's ``cifar10.yml`` are all accepted, so a user's
existing file keeps working.  Values are coerced to the declared type (YAML 1.1 reads ``1e-2``
as a string; here it is a float), unknown keys are an error that lists the valid ones, and
ranges are checked before any work starts.
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import logging
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ann2snn.app.files import atomic_write_text, read_failure

log = logging.getLogger("ann2snn")


class ConfigError(ValueError):
    """A user mistake in a config file or a command-line override (printed without traceback)."""


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, without ever building the whole repr.

    A user value must never be formatted into a message in full: a 1.3 KB YAML alias bomb (lists
    whose items are the same lists again) loads cheaply but has a repr of gigabytes.  reprlib is
    not enough here: it sorts every dict and set in full and calls repr() on types it does not
    know.  So the value is walked with a budget of characters: containers stop listing items once
    it is spent (and below _SHOW_DEPTH levels), strings are cut before their repr, huge ints are
    named by their size, and types other than YAML's plain ones by their name only."""
    out: list[str] = []
    _show_into(value, out, [limit], 0)
    text = "".join(out)
    return text if len(text) <= limit else text[:max(limit - 1, 0)] + "…"


_SHOW_DEPTH = 4
_BRACKETS = {list: "[]", tuple: "()", set: "{}", frozenset: "{}", dict: "{}"}


def _show_into(value: Any, out: list[str], left: list[int], depth: int) -> None:
    """Append a repr of ``value`` to ``out``, spending ``left[0]`` characters (see short_repr)."""
    def emit(text: str) -> None:
        out.append(text)
        left[0] -= len(text)

    kind = next((k for k in _BRACKETS if isinstance(value, k)), None)
    if kind is not None:
        if depth >= _SHOW_DEPTH:
            emit(_BRACKETS[kind][0] + "…" + _BRACKETS[kind][1])
            return
        emit(_BRACKETS[kind][0])
        for i, item in enumerate(value.items() if kind is dict else value):
            if left[0] <= 0:  # every item visited costs at least one character: the walk is bounded
                emit("…")
                break
            if i:
                emit(", ")
            if kind is dict:
                _show_into(item[0], out, left, depth + 1)
                emit(": ")
                item = item[1]
            _show_into(item, out, left, depth + 1)
        emit(_BRACKETS[kind][1])
    elif isinstance(value, (str, bytes, bytearray)):
        cut = value[:max(left[0], 1) + 1]
        emit(repr(cut) + ("…" if len(cut) < len(value) else ""))
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        emit(f"<an int of {value.bit_length()} bits>")  # str() of a huge int is slow, or refused by Python
    elif value is None or isinstance(value, (bool, int, float, complex, datetime.date, datetime.time)):
        emit(repr(value))
    else:
        emit(f"<{type(value).__name__}>")


@dataclass
class Config:
    # --- the original toolkit's cifar10.yml keys -------------------------------------------------
    action: str = "train"  # kept for old files; the CLI sub-command decides what runs
    mode: str = "ann"  # kept for old files: ann | snn
    l: int = 4  # QCFS quantization levels L
    t: int = 8  # SNN time steps fed with the input; for direct SNNs (spikformer, sdt) also their training T
    extra_t: int = 0  # extra SNN steps after the input
    bs: int = 64  # batch size
    lr: float = 1e-2
    wd: float = 1e-4
    epochs: int = 300
    id: str = "run"  # run name: the run directory is <out_root>/<id>
    seed: int = 42
    data: str = "cifar10"
    dim: int = 384
    num_heads: int = 12
    patch_size: int = 4  # the vit model's patch; the transformer's SPS embedding fixes its patch by its pools
    mlp_ratio: float = 4.0
    save: bool = True  # write checkpoints
    save_acc: bool = True  # write the per-epoch CSV log
    model_path: str | None = None  # checkpoint used by convert/table, or to start from (inherit)
    inherit: bool = False  # start training from model_path's weights
    use_maxpool: bool = True
    use_amp: bool = True  # automatic mixed precision (CUDA only; ignored on CPU)
    # --- model ----------------------------------------------------------------------------
    model: str = "transformer"  # a name from ann2snn.models.list_models()
    depth: int = 4
    attn: str = "softmax"  # softmax | query_softmax | ssa (transformer)
    lambda_init: float = 8.0  # initial QCFS threshold
    ssa_form: str = "token_first"  # spikformer's SSA layout: token_first [T,B,N,C] | token_last [T,B,C,N]
    norm: str = "layer"  # vit: layer (pre-norm LayerNorms) | batch (a BatchNorm after every Linear, folded at conversion); gpt: layer | rms (RMSNorm)
    mlp_act: str = "gelu"  # vit: gelu (GELU then a site) | relu (the site alone); gpt: gelu | swiglu
    pos: str = "learned"  # gpt: learned position embeddings | rotary (RoPE on q and k)
    context: int = 64  # text data: tokens per window, and the gpt's longest sequence
    placement: str = "qkv"  # where sites go: qkv (vit: q, k, v and after GELU; other models: after every activation) | norm (vit: also after each LayerNorm, signed) | synapses (any model: every Linear, convolution and product reads spikes)
    width: float | None = None  # channel multiplier of the CNNs (vgg16, resnet18, resnet20); null = 1
    quantize: bool = True  # QCFS sites for conversion; false trains the plain ReLU ANN (to pretrain)
    pretrained: str | None = None  # local state dict of the ReLU model, loaded before quantizing
    calibrate_batches: int = 0  # > 0: a fresh QCFS run sets each λ from this many training batches
    calibrate_percentile: float = 99.9  # the activation percentile λ is calibrated to
    # --- training recipe additions (defaults keep the original QCFS recipe) ------------------
    warmup_epochs: int = 0  # linear LR warmup over this many epochs, then cosine over the rest
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    mixup: float = 0.0  # mixup Beta(alpha, alpha) on every training batch; 0 disables
    optimizer: str = "adamw"  # adamw (the original transformer recipe) | sgd (QCFS's CNN recipe)
    momentum: float = 0.9  # SGD momentum (sgd only)
    nesterov: bool = False  # Nesterov momentum (sgd only)
    # --- data -----------------------------------------------------------------------------
    data_dir: str | None = None
    train_subset: int | None = None  # use only the first N training samples (after shuffling)
    test_subset: int | None = None
    augment: bool = True  # dataset-specific augmentation (crop/flip for CIFAR)
    autoaugment: bool = True  # AutoAugment CIFAR-10 policy (CIFAR only, with augment)
    cutout: int = 16  # Cutout hole size in px (CIFAR only, with augment); 0 disables
    workers: int = 0  # DataLoader worker processes
    # --- conversion / evaluation ----------------------------------------------------------
    preset: str = "exact"  # exact | rate | per_step (see ann2snn.presets)
    spike_levels: int = 1  # m: most spikes a converted neuron sends per step and sign (1: binary)
    eval_bs: int | None = None  # evaluation batch size (default: bs)
    # --- runtime --------------------------------------------------------------------------
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_root: str = "runs"
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over all processes' batches

    # ------------------------------------------------------------------------------------
    def validate(self) -> "Config":
        """Every value in range, each checked in one place; a ConfigError names the first bad one."""
        self._validate_steps()
        self._validate_counts()
        self._validate_model()
        self._validate_recipe()
        self._validate_run()
        return self

    def _validate_steps(self) -> None:
        """The step-like counts, by :func:`check_steps` (as every `--t` of every command)."""
        check_steps("l (QCFS levels)", self.l, 1, "Use e.g. `--l 4`.")
        check_steps("t (time steps)", self.t, 1, "Use e.g. `--t 8`.")
        check_steps("extra_t (zero-input steps after the input)", self.extra_t, 0, "Use e.g. `--extra_t 4`.")
        check_steps("spike_levels (spikes per step and sign; 1: binary)", self.spike_levels, 1,
                    "Use e.g. `--spike_levels 4` for up to 4 spikes per step and sign.")

    def _validate_model(self) -> None:
        """The model and its shape (width, heads, MLP, attention, placement), and the preset."""
        _need(self.dim >= 8 and self.dim % 8 == 0,
              f"dim must be a positive multiple of 8 (the embedding uses dim/8 channels), got {self.dim}.")
        _need(self.dim <= MAX_WIDTH, f"dim must be at most {MAX_WIDTH}, got {self.dim}. Use e.g. `--dim 384`.")
        _need(self.num_heads >= 1 and self.dim % self.num_heads == 0,
              f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads}). "
              f"Pick num_heads among {[h for h in range(1, 33) if self.dim % h == 0]}.")
        _need(self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio}.")
        hidden = self.dim * self.mlp_ratio  # every model's MLP is dim -> int(dim * mlp_ratio) -> dim
        _need(hidden >= 1, f"mlp_ratio {self.mlp_ratio:g} is too small for dim {self.dim}: the MLP hidden size "
              f"int(dim * mlp_ratio) = int({hidden:g}) is 0. Use an mlp_ratio with dim * mlp_ratio >= 1 "
              "(e.g. `--mlp_ratio 4`, the usual value).")
        _need(hidden < MAX_WIDTH + 1, f"mlp_ratio {self.mlp_ratio:g} is too large for dim {self.dim}: the MLP "
              f"hidden size int(dim * mlp_ratio) = {hidden:g} is over {MAX_WIDTH}. Use e.g. `--mlp_ratio 4`.")
        _need(self.lambda_init > 0, f"lambda_init must be > 0, got {self.lambda_init}.")
        _need(1 <= self.patch_size <= 1024, f"patch_size must be between 1 and 1024, got {self.patch_size}.")
        _need(self.width is None or 0 < self.width <= 64, f"width (channel multiplier) must be in (0, 64], got "
              f"{self.width}.")
        _need(self.width is None or self.model in WIDTH_MODELS, f"width applies to the CNNs {WIDTH_MODELS} only, not "
              f"to {short_repr(self.model)}; remove it (the transformers' size is dim).")
        _need(self.attn in ATTN_CHOICES, f"attn must be one of {ATTN_CHOICES}, got {short_repr(self.attn)}.")
        _need(self.placement in PLACEMENT_CHOICES,
              f"placement must be one of {PLACEMENT_CHOICES}, got {short_repr(self.placement)}.")
        _need(self.placement != "norm" or self.model == "vit",
              f"placement norm applies to the `vit` model only, not {short_repr(self.model)}; use qkv (after every "
              "activation) or synapses (every synapse reads spikes).")
        _need(self.attn == "softmax" or not (self.model == "gpt" or self.model.startswith("hf:")),
              f"attn applies to the `transformer` and `vit` models only; {short_repr(self.model)} has causal softmax "
              "attention. Leave attn at softmax.")
        _need(self.model != "vit" or self.attn in VIT_ATTN_CHOICES,
              f"attn for the vit must be one of {VIT_ATTN_CHOICES}, got {short_repr(self.attn)}.")
        for key, value, by_model in (("norm", self.norm, NORM_CHOICES), ("mlp_act", self.mlp_act, MLP_ACT_CHOICES),
                                     ("pos", self.pos, POS_CHOICES)):
            every = tuple(dict.fromkeys(c for cs in by_model.values() for c in cs))
            _need(value in every, f"{key} must be one of {every}, got {short_repr(value)}.")
            default, mine = every[0], by_model.get(self.model, ())
            _need(value == default or value in mine, f"{key}: {value} applies to "
                  f"{' and '.join(f'`{m}`' for m, cs in by_model.items() if value in cs)} only, not "
                  f"{short_repr(self.model)}; leave it at {default}.")
        _need(2 <= self.context <= MAX_CONTEXT, f"context (tokens per window) must be between 2 and {MAX_CONTEXT}, "
              f"got {self.context}. Use e.g. `--context 64`.")
        _need(self.ssa_form in SSA_FORM_CHOICES,
              f"ssa_form must be one of {SSA_FORM_CHOICES}, got {short_repr(self.ssa_form)}.")
        from ann2snn.presets import PRESETS  # late imports: loading a config needs no torch
        from ann2snn.models import is_model, unknown_model_message

        _need(self.preset in PRESETS, f"preset must be one of {', '.join(PRESETS)}, got {short_repr(self.preset)}.")
        _need(is_model(self.model), f"{unknown_model_message(self.model)} Set `model:` in the config or pass "
              "`--model NAME` (torchvision's classifiers are `--model torchvision:NAME`).")

    def _validate_recipe(self) -> None:
        """The training recipe: optimiser, regularisation, calibration."""
        _need(self.lr > 0, f"lr must be > 0, got {self.lr}.")
        _need(self.wd >= 0, f"wd must be >= 0, got {self.wd}.")
        _need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {short_repr(self.optimizer)}.")
        _need(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}. QCFS uses 0.9.")
        _need(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
              "nesterov: true needs `optimizer: sgd` and a momentum > 0.")
        _need(0 < self.calibrate_percentile <= 100, f"calibrate_percentile must be in (0, 100], got "
              f"{self.calibrate_percentile}. The usual choice is 99.9.")
        _need(0.0 <= self.label_smoothing < 1.0,
              f"label_smoothing must be in [0, 1), got {self.label_smoothing}. The papers use 0.1.")
        _need(self.mixup == 0.0 or self.mixup >= 1e-3,  # tinier alphas underflow Beta's float32 sampling
              f"mixup (Beta alpha) must be 0 (disabled) or >= 0.001, got {self.mixup}. The papers use 0.8.")

    def _validate_run(self) -> None:
        """Where the run reads and writes, on what, and the original's action/mode keys."""
        _need(self.data_dir is None or bool(self.data_dir.strip()), "data_dir is empty; omit it to use the default "
              "locations, or pass a folder (`--data_dir DIR`).")
        for key in ("train_subset", "test_subset"):
            v = getattr(self, key)
            _need(v is None or v >= 1, f"{key} must be a positive count or null, got {v}.")
        _need(self.mode in ("ann", "snn"), f"mode must be 'ann' or 'snn', got {short_repr(self.mode)}.")
        _need(self.action in ("train", "test"), f"action must be 'train' or 'test', got {short_repr(self.action)}.")
        _need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
              f"device must be auto, cpu, cuda or cuda:N, got {short_repr(self.device)}.")
        _need(bool(self.id) and "/" not in self.id and self.id not in (".", "..")
              and "\\" not in self.id and "\0" not in self.id and self.id.strip() == self.id,
              f"id must be a plain directory name, got {short_repr(self.id)}.")
        _need(not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029" for c in self.id),  # LATEST
              f"id must not hold control characters or line breaks, got {self.id[:60]!r}. Use e.g. `--id run2`.")
        _need(0 <= self.seed < 2**32, f"seed must be in 0 .. 2**32-1 (NumPy's range), got {self.seed}.")

    def _validate_counts(self) -> None:
        """The counts of a run (batches, epochs, blocks, processes): each at least its minimum and at
        most its bound (MAX_EPOCHS and friends, below), so that a typo such as `epochs: 1e20` is
        refused with the bound instead of running for ever or filling the memory."""
        _need(self.bs >= 1, f"bs (batch size) must be >= 1, got {self.bs}.")
        _need(self.bs <= MAX_BATCH, f"bs (batch size) must be at most {MAX_BATCH}, got {self.bs}. Use e.g. `--bs 64`.")
        _need(self.eval_bs is None or self.eval_bs >= 1, f"eval_bs must be >= 1, got {self.eval_bs}.")
        _need(self.eval_bs is None or self.eval_bs <= MAX_BATCH,
              f"eval_bs must be at most {MAX_BATCH}, got {self.eval_bs}. Use e.g. `--eval_bs 256`.")
        _need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs} (a run of 0 epochs would save no "
              "checkpoint). Use e.g. `--epochs 30`.")
        _need(self.epochs <= MAX_EPOCHS, f"epochs must be at most {MAX_EPOCHS}, got {self.epochs}. Use e.g. "
              "`--epochs 300`.")
        _need(self.depth >= 1, f"depth must be >= 1, got {self.depth}.")
        _need(self.depth <= MAX_DEPTH, f"depth must be at most {MAX_DEPTH}, got {self.depth}. Use e.g. `--depth 4`.")
        _need(self.calibrate_batches >= 0, f"calibrate_batches must be >= 0 (0: no calibration), got "
              f"{self.calibrate_batches}.")
        _need(self.calibrate_batches <= MAX_COUNT, f"calibrate_batches must be at most {MAX_COUNT}, got "
              f"{self.calibrate_batches}. A few batches suffice, e.g. `--calibrate_batches 10`.")
        _need(self.cutout >= 0, f"cutout must be >= 0 (0 disables), got {self.cutout}.")
        _need(self.cutout <= 1024, f"cutout (hole size in px) must be at most 1024, got {self.cutout}. Use e.g. "
              "`--cutout 16`.")
        _need(self.workers >= 0, f"workers must be >= 0, got {self.workers}.")
        _need(self.workers <= MAX_WORKERS, f"workers must be at most {MAX_WORKERS}, got {self.workers}. Use about "
              "one per CPU core, e.g. `--workers 4`.")
        _need(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0 (0 disables), got {self.warmup_epochs}.")
        _need(self.warmup_epochs <= self.epochs, f"warmup_epochs ({self.warmup_epochs}) must be at most epochs "
              f"({self.epochs}). Use fewer warmup epochs, e.g. `--warmup_epochs {min(5, self.epochs // 10)}`.")

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_root) / self.id


ATTN_CHOICES = ("softmax", "query_softmax", "ssa")
# Values earlier versions wrote, still accepted in config files, checkpoints and on the command
# line (with a note): they were named after the document the toolkit grew from, not after what
# they do.
OLD_VALUES = {"preset": {"seed": "per_step"}, "attn": {"softmax_seed": "query_softmax"},
              "neg_rule": {"seed": "lazy"}}
OPTIMIZERS = ("adamw", "sgd")
WIDTH_MODELS = ("vgg16", "resnet18", "resnet20")
SSA_FORM_CHOICES = ("token_first", "token_last")
PLACEMENT_CHOICES = ("qkv", "norm", "synapses")
VIT_ATTN_CHOICES = ("softmax", "ssa")
# per model, the values of the keys that shape only some models (the first value is every model's default)
NORM_CHOICES = {"vit": ("layer", "batch"), "gpt": ("layer", "rms")}
MLP_ACT_CHOICES = {"vit": ("gelu", "relu"), "gpt": ("gelu", "swiglu")}
POS_CHOICES = {"gpt": ("learned", "rotary")}
MAX_CONTEXT = 8192
# Keys that change parameter shapes or the forward function; used to reject mismatched checkpoints.
MODEL_KEYS = ("model", "dim", "num_heads", "depth", "mlp_ratio", "use_maxpool", "attn", "l", "ssa_form", "quantize",
              "width", "patch_size", "placement", "norm", "mlp_act", "pos", "context")
# Largest layer width (dim, and the MLP hidden size int(dim * mlp_ratio)) accepted: far above any
# real model (ViT-22B: 6144 / 24576), low enough that the sizes stay exact ints and never overflow
# torch's size arithmetic (a typo like `--mlp_ratio 1e300` is an error, not a crash).
MAX_WIDTH = 2**20
# Most SNN time steps (t, extra_t, and every row/column of `table`) accepted: far above the papers'
# latencies (T <= 1024 in the slowest rate-coded conversions), low enough that a typo such as
# `--extra-t 1000000` is refused at once instead of simulating for days.
MAX_STEPS = 4096
# Upper bounds of the other counts: far above any real run, so that a typo (`epochs: 1e20`, a
# batch size with three zeros too many) is refused at once with the bound, not after minutes of
# setup or by an allocator.  Largest published batch sizes are 32k-64k; 300 epochs is the QCFS
# recipe; the deepest ViTs have 48 blocks.
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536  # bs and eval_bs
MAX_DEPTH = 1024
MAX_WORKERS = 512  # DataLoader processes
MAX_COUNT = 100_000  # calibrate_batches
FIELD_NAMES = tuple(f.name for f in fields(Config))
STEP_KEYS = {"t": 1, "extra_t": 0}  # config keys that may be written with the symbol L (the config's l): their minimum


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --------------------------------------------------------------------------------------------
# step counts: one check, one parser (every `--t`, `--extra-t` and `--spike-levels` of every command)
def check_steps(name: str, value: int, minimum: int, fix: str, shown: str | None = None) -> int:
    """``value`` when ``minimum`` <= value <= MAX_STEPS, else a ConfigError naming ``name`` (what the
    user wrote it as) and the bound, showing ``shown`` (the user's text; default the value)."""
    shown = str(value) if shown is None else shown
    _need(value >= minimum, f"{name} must be >= {minimum}, got {shown}. {fix}")
    _need(value <= MAX_STEPS, f"{name} must be at most {MAX_STEPS}, got {shown}. {fix}")
    return value


_L_SYMBOL = re.compile(r"(\d*)\s*L\s*(?:/\s*(\d+))?", re.IGNORECASE)  # L, 2L, L/2


def _step_value(token: str, L: int | None, name: str, text: str) -> int:
    """One number of a step specification: a whole number, or ``L``, ``kL``, ``L/k`` (k × L, or
    L // k but at least 1) when ``L`` (a network's QCFS levels) is known."""
    token = token.strip()
    symbol = _L_SYMBOL.fullmatch(token)
    if symbol is None:
        return int(token)  # ValueError: the caller names the specification
    if L is None:
        raise ConfigError(f"{name} {short_repr(text)} uses the symbol L, the QCFS levels of a converted network, "
                          "which are not known here (a directly trained SNN has none). Give whole numbers.")
    times, over = int(symbol.group(1) or 1), int(symbol.group(2) or 1)
    _need(over >= 1, f"{name}: {short_repr(token)} divides L by 0. Use e.g. L/2.")
    return max(1, times * L // over)


def parse_steps(text: str | int, name: str, minimum: int = 1, L: int | None = None, fix: str = "") -> list[int]:
    """A step specification → its values, sorted and distinct: a whole number (``8``), a range
    (``1-12``), a list (``1,2,4``) or both (``1-8,12,16``); with ``L`` known (a network's QCFS
    levels) the symbols ``L``, ``kL`` and ``L/k`` are numbers too (``1-2L``, ``0-L``, ``1,L/2,L``).
    Used for every command's ``--t``, ``--extra-t`` and ``--spike-levels`` and for the config's
    ``t``/``extra_t``; ``name`` is what the user typed (``--t``).  Every value must lie in
    ``minimum``..MAX_STEPS (:func:`check_steps`); a range is checked before it is expanded
    (``1-1000000000`` must not build a billion-entry list)."""
    fix = fix or f"Use e.g. `{name} {'0-4' if minimum == 0 else '1-8'}`."
    shown = short_repr(str(text))
    values: set[int] = set()  # a set: `1-4096,1-4096,…` repeated cannot grow it past MAX_STEPS + 1
    for part in str(text).split(","):
        try:
            ends = part.split("-", 1) if "-" in part.strip()[1:] else [part, part]
            lo, hi = (_step_value(end, L, name, str(text)) for end in ends)
        except ConfigError:
            raise
        except ValueError:
            symbols = ", or with L (the QCFS levels): L, 2L, L/2" if L is not None else ""
            raise ConfigError(f"{name} must be whole numbers, ranges like 1-8 or lists like 1,2,4{symbols}; got "
                              f"{shown}. {fix}") from None
        _need(lo <= hi, f"{name}: the range {short_repr(part.strip(), 40)} is empty (it ends before it starts); got "
              f"{shown}. {fix}")
        check_steps(name, hi, minimum, fix, shown)
        values.update(range(lo, hi + 1))
    check_steps(name, min(values, default=minimum - 1), minimum, fix, shown)
    return sorted(values)


# Keys a `train --resume` may change: they say where things are, how fast they run, or what a
# later evaluation does, but not what the resumed epochs compute.  Every other key defines the run
# (optimiser and schedule: lr, wd, epochs, warmup_epochs, bs, seed, label_smoothing, mixup,
# sync_bn, use_amp; the model: MODEL_KEYS, lambda_init; the data: data, train_subset,
# test_subset, augment, autoaugment, cutout) and a changed value is refused, since last.pt's
# optimiser and scheduler state would only half-apply it.
RESUME_SAFE_KEYS = (
    "workers",  # DataLoader processes: the data order depends on (seed, epoch) only
    "device",  # where it computes (CPU vs CUDA differ in float rounding only)
    "eval_bs",  # test-evaluation batch size: the same metrics up to float rounding
    "data_dir",  # where the same dataset is found
    "out_root",  # where LATEST lives
    "id",  # the run folder's name: the folder resumed is the one given (--out, or out_root/id)
    "save",  # whether checkpoints are written
    "save_acc",  # whether log.csv rows are written
    "extra_t",  # conversion only (`convert`/`table` defaults)
    "preset",  # conversion only
    "spike_levels",  # conversion only
    "action",  # old files' keys: the sub-command decides what runs
    "mode",
    "model_path",  # used only when the run started (inherit); the stored value is kept
    "inherit",  # ditto: a resume loads last.pt whatever it says
    "t",  # conversion only -- except for direct SNNs, whose training T it is (checked there)
)
# Safe keys whose stored value is kept in the resumed run's config.yaml: they described how the
# run started, which a resume does not change.
RESUME_KEEP_STORED = ("model_path", "inherit")
_TYPE_HINTS = typing.get_type_hints(Config)


def _base_type(tp: Any) -> tuple[type, bool]:
    """(underlying type, optional?) for ``int``, ``int | None`` and friends."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(key: str, value: Any) -> Any:
    """Convert ``value`` to the declared type of ``key`` or raise a ConfigError saying why.  An
    old spelling of a value (:data:`OLD_VALUES`) becomes its current name, with a note."""
    if key not in _TYPE_HINTS:
        raise ConfigError(unknown_key_message(key))
    if isinstance(value, str) and value in OLD_VALUES.get(key, {}):
        log.info("%s: %r is now called %r", key, value, OLD_VALUES[key][value])
        value = OLD_VALUES[key][value]
    tp, optional = _base_type(_TYPE_HINTS[key])
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
        if optional:
            return None
        raise ConfigError(f"{key} cannot be null; it needs {_article(tp.__name__)}.")
    bad = ConfigError(f"{key} must be {_article(tp.__name__)}, got {short_repr(value)} ({type(value).__name__}).")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return _bounded_int(key, value)
        if isinstance(value, float) and value.is_integer():
            return _bounded_int(key, int(value))
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return _bounded_int(key, int(f))
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise bad from None
        else:
            raise bad
        if out != out or out in (float("inf"), float("-inf")):
            raise ConfigError(f"{key} must be a finite number, got {short_repr(value)}.")
        return out
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad  # pragma: no cover


def _bounded_int(key: str, value: int) -> int:
    """``value`` when it has at most 39 digits: every count is bounded far below that (see
    Config.validate), and a bounded int keeps every message that names it short."""
    if abs(value) >= 2**128:
        raise ConfigError(f"{key} is far too large ({short_repr(value)}); give a realistic count.")
    return value


def _article(noun: str) -> str:
    """'an int', 'a float': the indefinite article by the first letter (enough for type names)."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def unknown_key_message(key: str) -> str:
    # matched in lower case (every key is): `LR:` suggests lr; cut first, difflib is quadratic
    low = str(key)[:100].lower()
    close = [low] if low in FIELD_NAMES else []
    close += [c for c in difflib.get_close_matches(low, FIELD_NAMES, n=3) if c not in close]
    case = " (keys are lower case)" if low in FIELD_NAMES and low != key else ""
    hint = f" Did you mean {', '.join(close[:3])}{case}?" if close else ""
    return (f"Unknown config key {short_repr(key)}.{hint} Valid keys: {', '.join(FIELD_NAMES)}. "
            "See README.md, section 'Config keys'.")


def read_config_file(path: str | os.PathLike) -> dict[Any, Any]:
    """The mapping in the YAML file ``path``, read exactly once.

    Opened and read like any stream, not checked with ``is_file()`` first, so ``-c /dev/stdin``
    and ``-c <(…)`` (pipes, read once only) work.  At most MAX_CONFIG_BYTES are read (plus one
    byte, to tell a bigger stream): ``-c /dev/zero`` must not fill the memory.  Every way the file
    can be unusable -- missing, a directory, unreadable, too big, not UTF-8, invalid or too deeply
    nested YAML, a key set twice, not a mapping -- is a ConfigError naming the file and the fix."""
    p = Path(path)
    name = str(p)
    try:
        with open(p, "rb") as f:  # not files.read_bytes: at most MAX_CONFIG_BYTES + 1 of a stream
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(read_failure(err, f"Config file {name!r}", {
            "missing": "Pass an existing file with -c, e.g. `-c configs/digits.yml`.",
            "folder": "Pass a YAML file with -c, e.g. `-c configs/digits.yml`.",
            "denied": f"Make it readable (`chmod a+r {name}`) or pass another file with -c.",
            "other": "Pass a readable YAML file with -c."})) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"Config file {name!r} is larger than {MAX_CONFIG_BYTES // 1024} KiB, the most read of a "
                          "config (a config is a few hundred bytes of `key: value` lines). Pass the YAML config "
                          "with -c, e.g. `-c configs/digits.yml`.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(f"Config file {name!r} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}). "
                          "Save it as UTF-8 (it should hold YAML `key: value` lines), or pass another file "
                          "with -c.") from None
    return parse_config_text(text, name)


# The most bytes of a config file read: a real config is a few hundred bytes.  Not more, since
# PyYAML's pure-Python loader (kept for its messages and its RecursionError on deep nesting)
# takes about 6 s for 256 KiB of YAML on a busy machine (measured: 23 s for 1 MiB).
MAX_CONFIG_BYTES = 256 * 1024


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"duplicate key {short_repr(key)} on lines {first} and {second}")
        self.key, self.first, self.second = key, first, second


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load's loader (the same safe tags only: `!!python/...` is refused), except that a
    key set twice in one mapping is an error: PyYAML keeps the last one without a word, and a
    config whose `lr:` is silently not the one the user reads is a surprise."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:  # the mapping's own keys; a `<<:` merge may be overridden
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # unhashable: the base class reports it
                    pass
        return super().construct_mapping(node, deep=deep)


def parse_config_text(text: str, name: str) -> dict[Any, Any]:
    """The mapping in YAML ``text`` (from the file ``name``, for messages)."""
    try:
        raw = yaml.load(text, Loader=_ConfigLoader)  # safe: _ConfigLoader constructs yaml.safe_load's types only
    except _DuplicateKey as err:
        raise ConfigError(f"Config file {name!r} sets {short_repr(err.key)} twice (lines {err.first} and "
                          f"{err.second}); only one value can hold. Delete one of the two lines.") from None
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())  # one line
        raise ConfigError(f"Config file {name!r} is not valid YAML: {detail}") from None
    except RecursionError:
        raise ConfigError(f"Config file {name!r} is nested too deeply to be a config (YAML lists or "
                          "mappings inside each other thousands of levels deep). A config is a flat "
                          "mapping of `key: value` lines; pass one with -c.") from None
    except ValueError as err:  # an int of more than 4300 digits: Python refuses to convert it
        first = str(err).split(";")[0][:120]
        raise ConfigError(f"Config file {name!r} holds a value YAML cannot read ({first}). A config is a flat "
                          "mapping of `key: value` lines with realistic values; pass one with -c.") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {name!r} must hold a mapping of key: value, "
                          f"got a {type(raw).__name__}.")
    return raw


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                raw: dict[Any, Any] | None = None) -> Config:
    """Defaults <- YAML file <- overrides, coerced and validated.  ``raw``: the file's mapping as
    :func:`read_config_file` returned it (then ``path`` is not read again: a pipe can be read
    only once)."""
    values: dict[str, Any] = {}
    if raw is None and path is not None:
        raw = read_config_file(path)
    if raw is not None:
        if not isinstance(raw, dict):
            raise ConfigError(f"Config file {str(path)!r} must hold a mapping of key: value, "
                              f"got a {type(raw).__name__}.")
        values.update(raw)
    values.update(overrides or {})
    kwargs, symbolic = {}, {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"Config keys must be strings, got {short_repr(key)}.")
        if key in STEP_KEYS and _uses_l(value):
            symbolic[key] = value  # `--t 2L`: resolved below, once l is known
            continue
        kwargs[key] = coerce(key, value)
    for key, value in symbolic.items():
        steps = parse_steps(value, key, STEP_KEYS[key], kwargs.get("l", Config.l))
        _need(len(steps) == 1, f"{key} is one number of steps, got {short_repr(value)}. Give one, e.g. `--{key} 8` "
              f"or `--{key} 2L`; ranges and lists are for the rows of `table` and `frontier`.")
        kwargs[key] = steps[0]
    return Config(**kwargs).validate()


def _uses_l(value: Any) -> bool:
    """True for a string step count written with the symbol L (``2L``, ``L/2``), not ``null``."""
    return isinstance(value, str) and "l" in value.lower() and value.strip().lower() not in ("null", "none")


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically (never through a link planted there)."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def resume_changes(stored: Config, new: Config, direct: bool = False, extend: bool = False) -> list[str]:
    """The run-defining keys whose value in ``new`` differs from the ``stored`` config of the run
    being resumed, as "key: stored -> new" (empty: the resume may go on).  ``direct``: the model
    is a directly trained SNN, whose ``t`` is its training T and so defines the run.  ``extend``
    (``train --resume --extend``): a larger ``epochs`` is allowed (the schedule is rebuilt for it;
    a smaller or equal one is the caller's error to raise)."""
    safe = set(RESUME_SAFE_KEYS) - ({"t"} if direct else set())
    if extend and new.epochs > stored.epochs:
        safe.add("epochs")

    from ann2snn.app.data import dataset_key  # late import: loading a config needs no torch

    def same(key: str) -> bool:
        a, b = getattr(stored, key), getattr(new, key)
        if key == "data":  # "Fashion-MNIST" is "fashion_mnist"
            return dataset_key(a) == dataset_key(b)
        return a == b

    return [f"{k}: {short_repr(getattr(stored, k))} -> {short_repr(getattr(new, k))}" for k in FIELD_NAMES
            if k not in safe and not same(k)]


def resumed_config(stored: Config, new: Config) -> Config:
    """What a resume runs: ``new`` (equal to ``stored`` in every run-defining key, see
    :func:`resume_changes`) with the stored values of :data:`RESUME_KEEP_STORED`."""
    return dataclasses.replace(new, **{k: getattr(stored, k) for k in RESUME_KEEP_STORED})


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config saved in a checkpoint; keys unknown to this version are dropped."""
    return Config(**{k: coerce(k, v) for k, v in d.items() if k in FIELD_NAMES}).validate()


__all__ = ["Config", "ConfigError", "short_repr", "load_config", "read_config_file", "parse_config_text", "save_config",
           "config_from_dict", "coerce", "resume_changes", "resumed_config", "FIELD_NAMES", "MODEL_KEYS",
           "MAX_WIDTH", "MAX_STEPS", "MAX_CONFIG_BYTES", "MAX_EPOCHS", "MAX_BATCH", "MAX_DEPTH", "MAX_WORKERS",
           "MAX_COUNT", "RESUME_SAFE_KEYS", "RESUME_KEEP_STORED", "ATTN_CHOICES", "STEP_KEYS", "check_steps",
           "parse_steps", "field"]
