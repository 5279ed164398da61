"""Checkpoints: atomic writes, weights-only loading, and clear errors for bad files.

A checkpoint is a dict of tensors and plain Python values only, so ``torch.load(...,
weights_only=True)`` can read it: ``format`` (version), ``config`` (dict), ``model`` (state dict),
and for training checkpoints ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``best``,
``rng``.  Writes go to a temporary file in the same folder, are fsync'ed, then renamed over the
target, so a killed process never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import logging
import os
import random
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ann2snn.app.config import FIELD_NAMES, MODEL_KEYS, Config, ConfigError, config_from_dict, short_repr
from ann2snn.app.data import available_memory, dataset_key
from ann2snn.app.files import atomic_open, opened

FORMAT_VERSION = 1
log = logging.getLogger("ann2snn")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, truncated, foreign, or for another model)."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (:func:`ann2snn.app.files.atomic_open`): a full disk is an
    OSError naming ``path`` (torch's own RuntimeError is unwrapped), and the old file is kept."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def rng_state() -> dict[str, Any]:
    """All RNG states in a weights-only-safe form (tensors and ints)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "python": list(map(int, _flatten(random.getstate())))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _flatten(py_state) -> list[int]:
    version, internal, gauss = py_state
    return [version, *internal, 0 if gauss is None else 1]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), 0, 0.0))
    flat = state["python"]
    random.setstate((flat[0], tuple(flat[1:-1]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")  # CSI sequences (colours, bold) and ESC+char
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_GLOBAL = re.compile(r"\bGLOBAL\s+([\w.]+)")  # the global a weights-only load refused: "GLOBAL posix.system"
_BLOCKED_MODULE = re.compile(r"whose module ([\w.]+) is blocked")


def _reason(err: BaseException, limit: int = 200) -> str:
    """One clean line saying why a file could not be read: no ANSI escapes (torch's unpickling
    error prints some in bold), no control characters, at most ``limit`` characters.

    For a weights-only refusal torch puts its explanation after a paragraph of advice to load
    with ``weights_only=False`` -- the one thing not to do with a file that may run code.  Kept
    instead: that a global was blocked and which one ("Unsupported global: GLOBAL posix.system"),
    or the unpickler's own message (e.g. "Unsupported operand 149")."""
    lines = [_CONTROL.sub(" ", _ANSI.sub("", ln)).strip() for ln in str(err).splitlines()]
    lines = [ln for ln in lines if ln] or [""]
    text = " ".join(lines)
    found = _GLOBAL.search(text)
    if found:
        name = found.group(1).rstrip(".")
        module = _BLOCKED_MODULE.search(text)
        why = (f"its module {module.group(1)} is blocked" if module else "not an allowed global")
        line = f"Unsupported global: GLOBAL {name} ({why}); the weights-only loader refused it, nothing was run"
    else:
        line = lines[0]
        for i, ln in enumerate(lines):
            if "WeightsUnpickler error:" in ln:
                rest = ln.split("WeightsUnpickler error:", 1)[1].strip()
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                line = f"weights-only loader: {rest or nxt}"
                break
    return f"{type(err).__name__}: {line[:limit]}".rstrip(": ")


def _foreign(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{str(path)!r} is a torch file but not an ann2snn checkpoint ({what}). Pass a "
                           "checkpoint written by `ann2snn train` (a run's best_model.pt or last.pt).")


# A deflated zip entry larger than this that inflates more than BOMB_RATIO-fold is a bomb: torch
# writes every entry STORED (ratio 1), and real weights compress less than 2-fold anyway.
BOMB_RATIO, BOMB_MIN_BYTES = 100, 64 * 2**20


def check_inflated_size(path: Path, what: str = "Checkpoint") -> None:
    """Refuse a zip checkpoint that would inflate into more memory than there is, before
    ``torch.load`` inflates it (issue 17, D6): torch's format is a ZIP file whose central directory
    declares each entry's uncompressed size, so the sizes are known without reading the data.
    Refused: a compressed entry inflating over ``BOMB_RATIO``-fold to over ``BOMB_MIN_BYTES``, or
    entries declaring more than half of :func:`ann2snn.app.data.available_memory` in all.  Files that
    are not ZIPs (torch's legacy format) hold their tensors raw, bounded by the file's size."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return  # unreadable as a zip: torch.load says why in its own words
    for info in infos:
        if (info.compress_type != zipfile.ZIP_STORED and info.file_size > BOMB_MIN_BYTES
                and info.file_size > BOMB_RATIO * max(info.compress_size, 1)):
            raise CheckpointError(
                f"{what} {str(path)!r} was not loaded: its entry {info.filename[:80]!r} would inflate from "
                f"{info.compress_size} to {info.file_size} bytes ({info.file_size // max(info.compress_size, 1)}"
                "-fold), a compression bomb (torch never compresses checkpoint entries). Use a checkpoint "
                "written by `ann2snn train` or `torch.save`.")
    total, avail = sum(info.file_size for info in infos), available_memory()
    if avail is not None and total > avail // 2:
        raise CheckpointError(
            f"{what} {str(path)!r} was not loaded: its entries declare {total / 2**30:.2f} GiB when unpacked, "
            f"more than half of the memory available ({avail / 2**30:.2f} GiB). Free memory or use a "
            "machine with more, or check that the file is the checkpoint you meant.")


def _load(path: Path, what: str, fix: str) -> Any:
    """``torch.load`` of ``path``, weights only, on the CPU.  A file that cannot be opened is a
    CheckpointError by :func:`ann2snn.app.files.read_failure` (``what``: how to name it, ``fix``:
    what to do); one that torch cannot read (truncated, corrupt, foreign) is re-raised as is."""
    check_inflated_size(path, what)
    with opened(path, f"{what} {str(path)!r}", fix, CheckpointError) as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist. Train first "
                              "(`ann2snn train -c configs/digits.yml`) or pass --checkpoint PATH.")
    try:
        ckpt = _load(path, "Checkpoint", "Fix its permissions, or pass another checkpoint with --checkpoint PATH.")
    except CheckpointError:
        raise
    except Exception as err:  # truncated zip, pickle with foreign objects, not a torch file …
        raise CheckpointError(
            f"Checkpoint {str(path)!r} cannot be read ({_reason(err)}). "
            "It is truncated, corrupt, or not an ann2snn checkpoint. Use another checkpoint (e.g. the "
            "run's best_model.pt or last.pt) or retrain.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise _foreign(path, "it lacks 'model' and 'config'")
    fmt = ckpt.get("format", 0)
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise _foreign(path, f"its 'format' is {_short(fmt)}, not a version number")
    if fmt > FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} was written by a newer ann2snn (format {fmt}); "
                              "upgrade ann2snn to read it.")
    if not isinstance(ckpt["config"], Mapping):
        raise _foreign(path, f"its 'config' is {_short(ckpt['config'])}, not a mapping of config keys")
    if not isinstance(ckpt["model"], Mapping):
        raise _foreign(path, f"its 'model' is {_short(ckpt['model'])}, not a state dict")
    return ckpt


def _short(value: Any) -> str:
    """A value named for an error message: its type, and a short repr of small plain values."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"{short_repr(value, 60)} ({type(value).__name__})"  # never the whole repr: it may be huge


def checkpoint_config(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> Config:
    stored = ckpt["config"]
    if not isinstance(stored, Mapping):
        raise _foreign(Path(path), f"its 'config' is {_short(stored)}, not a mapping of config keys")
    known = [k for k in stored if k in FIELD_NAMES]
    if not known:  # config_from_dict would drop every key and silently return the defaults
        keys = ", ".join(repr(k) for k in list(stored)[:5]) + (", …" if len(stored) > 5 else "")
        raise _foreign(Path(path), f"its config holds none of ann2snn's config keys: "
                       f"{'it is empty' if not stored else 'it has ' + keys}")
    try:
        return config_from_dict(dict(stored))
    except ConfigError as err:
        raise CheckpointError(f"The config stored in {str(path)!r} is invalid: {err}") from None


def dataset_mismatch(ckpt_cfg: Config, cfg: Config, path: str | os.PathLike = "checkpoint") -> str | None:
    """Why the figures of the checkpoint at ``path`` (stored config ``ckpt_cfg``) under ``cfg``
    are suspect, when ``cfg`` evaluates it on another dataset than it was trained on; else None.
    One line, for the log and for a report's JSON."""
    if dataset_key(ckpt_cfg.data) == dataset_key(cfg.data):
        return None
    return (f"checkpoint {str(path)!r} was trained on {ckpt_cfg.data!r} but is evaluated on {cfg.data!r}: its "
            f"accuracies here are not comparable to those it was trained for. Pass `--data {ckpt_cfg.data}` "
            "(or drop -c to use the config stored in the checkpoint) unless that is what you meant.")


def check_finite(state: Mapping[str, Any], path: str | os.PathLike = "checkpoint",
                 model: Mapping[str, Any] | None = None) -> None:
    """Refuse a state dict holding NaN or inf: training never saves one (it stops when the weights
    diverge), so such a file is damaged or was not written by ann2snn; its every result would be
    NaN or meaningless.  Names the first bad tensor.  ``model``: the state of the model it is
    loaded into; where that model itself holds ±inf (a causal mask's −inf, a constant of the
    architecture) the checkpoint may hold the same values at the same places."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            finite = torch.isfinite(value)
            own = None if model is None else model.get(name)
            if isinstance(own, torch.Tensor) and own.shape == value.shape and own.is_floating_point():
                finite = finite | (torch.isinf(own) & (own == value.to(own.dtype)))  # the architecture's own inf
            if not bool(finite.all()):
                bad = int((~finite).sum())
                first = value.reshape(-1)[int((~finite).reshape(-1).nonzero()[0])].item()
                raise CheckpointError(
                    f"Checkpoint {str(path)!r} holds non-finite weights: {name} has {bad} of {value.numel()} "
                    f"values NaN or inf (the first is {first}). Training never "
                    "saves such weights, so the file is damaged or not an ann2snn checkpoint: use the run's "
                    "other checkpoint (best_model.pt or last.pt) or retrain.")


def check_compatible(ckpt_cfg: Config, cfg: Config, path: str | os.PathLike = "checkpoint",
                     warn_data: bool = True) -> None:
    """Refuse a checkpoint whose model-defining keys differ from the requested config; warn
    (``warn_data``) when it is used on another dataset than its own (:func:`dataset_mismatch`)."""
    diffs = [f"{k}: checkpoint {getattr(ckpt_cfg, k)!r} vs config {getattr(cfg, k)!r}"
             for k in MODEL_KEYS if getattr(ckpt_cfg, k) != getattr(cfg, k)]
    if diffs:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} was trained with a different model config ({'; '.join(diffs)}). "
            "Use the config the checkpoint was trained with (drop -c and those overrides to use the one stored in "
            "it), or "
            "pass the matching checkpoint.")
    mismatch = dataset_mismatch(ckpt_cfg, cfg, path) if warn_data else None
    if mismatch:
        log.warning("warning: %s", mismatch)


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    if not isinstance(state, Mapping):
        raise _foreign(Path(path), f"its 'model' is {_short(state)}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise _foreign(Path(path), f"its 'model' is not a state dict: entry {bad[0]!r} is "
                       f"{_short(state[bad[0]])}, not a named tensor")
    check_finite(state, path, model.state_dict())
    try:
        model.load_state_dict(state, strict=True)
    except Exception as err:  # RuntimeError for missing/unexpected keys and shape mismatches
        first = [_CONTROL.sub(" ", _ANSI.sub("", ln)) for ln in str(err).splitlines()]
        raise CheckpointError(f"Checkpoint {str(path)!r} does not fit this model: "
                              f"{' '.join(first[:3])[:400]}. Use the config it was trained with.") from None


def read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The state dict in a local weights file: a plain ``{name: tensor}`` mapping, a dict with a
    ``"state_dict"`` entry, or an ann2snn checkpoint (its ``"model"``); read weights-only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Pretrained weights {str(path)!r} do not exist (or are not a file). Pass a local "
                              "state dict with --pretrained PATH (no downloads: this tool reads local files only).")
    try:
        obj = _load(path, "Pretrained weights file", "Make it readable, or pass another file with --pretrained PATH.")
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"Pretrained weights {str(path)!r} cannot be read ({_reason(err)}). Save them with "
                              "`torch.save(model.state_dict(), PATH)`.") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                         for k, v in obj.items()):
        raise CheckpointError(f"{str(path)!r} holds no state dict ({_short(obj)}). Save the ReLU model's weights "
                              "with `torch.save(model.state_dict(), PATH)`.")
    return obj
