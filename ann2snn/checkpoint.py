"""Checkpoints: atomic writes, weights-only loading, and clear errors for bad files.

A checkpoint is a dict of tensors and plain Python values only, so ``torch.load(...,
weights_only=True)`` can read it: ``format`` (version), ``config`` (dict), ``model`` (state dict),
and for training checkpoints ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``best``,
``rng``.  Writes go to a temporary file in the same folder, are fsync'ed, then renamed over the
target, so a killed process never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ann2snn.config import MODEL_KEYS, Config, ConfigError, config_from_dict

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, truncated, foreign, or for another model)."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist. Train first "
                              "(`ann2snn train -c configs/digits.yml`) or pass --checkpoint PATH.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with foreign objects, not a torch file …
        raise CheckpointError(
            f"Checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "It is truncated, corrupt, or not an ann2snn checkpoint. Use another checkpoint (e.g. the "
            "run's best_model.pt or last.pt) or retrain.") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is a torch file but not an ann2snn checkpoint (it lacks "
                              "'model' and 'config'). Pass a checkpoint written by `ann2snn train`.")
    if ckpt.get("format", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} was written by a newer ann2snn (format {ckpt['format']}); "
                              "upgrade ann2snn to read it.")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> Config:
    try:
        return config_from_dict(ckpt["config"])
    except ConfigError as err:
        raise CheckpointError(f"The config stored in {str(path)!r} is invalid: {err}") from None


def check_compatible(ckpt_cfg: Config, cfg: Config, path: str | os.PathLike = "checkpoint") -> None:
    """Refuse a checkpoint whose model-defining keys differ from the requested config."""
    diffs = [f"{k}: checkpoint {getattr(ckpt_cfg, k)!r} vs config {getattr(cfg, k)!r}"
             for k in MODEL_KEYS if getattr(ckpt_cfg, k) != getattr(cfg, k)]
    if diffs:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} was trained with a different model config ({'; '.join(diffs)}). "
            "Use the config the checkpoint was trained with (drop -c to use the one stored in it), or "
            "pass the matching checkpoint.")


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()
        raise CheckpointError(f"Checkpoint {str(path)!r} does not fit this model: "
                              f"{' '.join(first[:3])[:400]}. Use the config it was trained with.") from None
