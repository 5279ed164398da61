"""Argument checks of the Python API, one function per kind of parameter, so that each parameter is
validated in one place and every refusal reads the same: ``<function>: <argument> must be …, got
<value>. <fix>``.  ``TypeError`` for a value of the wrong type (``True`` is not a step count, 2.5
is not a level count), ``ValueError`` for one of the right type out of range.  Values are named
by :func:`describe`, which never formats more than a bounded number of characters of a value.
"""
from __future__ import annotations

import math
import numbers
import reprlib
from typing import Any

import torch
from torch import nn

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxtuple, _REPR.maxlevel = 40, 40, 4, 4, 2


def describe(value: Any) -> str:
    """A value named for an error message, bounded in length: small plain values by a cut repr,
    tensors by their shape, anything else by its type (its repr could be arbitrarily long)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if value is None or isinstance(value, (bool, numbers.Number, str, bytes, list, tuple, range)):
        return _REPR.repr(value)
    return f"a {type(value).__name__}"


def check_module(fn: str, name: str, value: Any, what: str) -> nn.Module:
    """``value`` must be a torch module (``what`` says which one is meant)."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{fn}: {name} must be a torch.nn.Module ({what}), got {describe(value)}. "
                        f"Pass the model itself.")
    return value


def check_int(fn: str, name: str, value: Any, minimum: int, meaning: str = "") -> int:
    """An integer ≥ ``minimum``; a bool or a float (even 2.0) is refused rather than rounded, since
    ``int(2.5)`` silently gives 2 and ``True`` is no count."""
    about = f" ({meaning})" if meaning else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an integer >= {minimum}{about}, got {describe(value)} "
                        f"({type(value).__name__}). Pass an int.")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be an integer >= {minimum}{about}, got {describe(value)}. "
                         f"Pass {name} >= {minimum}.")
    return int(value)


def check_optional_int(fn: str, name: str, value: Any, minimum: int, meaning: str = "") -> int | None:
    """None, or an integer ≥ ``minimum`` (:func:`check_int`)."""
    return None if value is None else check_int(fn, name, value, minimum, meaning)


def check_positive(fn: str, name: str, value: Any, meaning: str = "", allow_zero: bool = False) -> float:
    """A finite real number > 0 (≥ 0 with ``allow_zero``)."""
    about = f" ({meaning})" if meaning else ""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a finite number {bound}{about}, got {describe(value)} "
                        f"({type(value).__name__}). Pass a float.")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{fn}: {name} must be a finite number {bound}{about}, got {describe(value)}. "
                         f"Pass e.g. {name}=1.0.")
    return v


def check_rows(fn: str, name: str, value: Any, meaning: str = "input steps per row") -> list[int]:
    """A non-empty list (tuple, range) of integers ≥ 1."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, range)):
        raise TypeError(f"{fn}: {name} must be a list of integers >= 1 ({meaning}), got {describe(value)}. "
                        f"Pass e.g. {name}=[1, 2, 4, 8].")
    if not len(value):
        raise ValueError(f"{fn}: {name} is empty; it must list at least one row ({meaning}). "
                         f"Pass e.g. {name}=[1, 2, 4, 8].")
    return [check_int(fn, f"{name}[{i}]", v, 1, meaning) for i, v in enumerate(value)]


def check_simulator(fn: str, sim: Any) -> Any:
    """``sim`` must be a simulator (anything with ``iter_run`` and ``snn``): a converted network
    passed without its Simulator is named as such."""
    if not hasattr(sim, "iter_run") or not hasattr(sim, "snn"):
        raise TypeError(f"{fn}: sim must be an ann2snn.Simulator, got {describe(sim)}. Pass "
                        "ann2snn.Simulator(ann2snn.convert(model)).")
    return sim


def check_run_args(fn: str, sim: Any, t: Any, extra_t: Any, latency_extra: Any = 0, max_batches: Any = None) -> tuple:
    """(t, extra_t, latency_extra, max_batches) of an evaluation run, checked, and ``sim`` a simulator
    (:func:`check_simulator`)."""
    check_simulator(fn, sim)
    return (check_int(fn, "t", t, 1, "input steps"), check_int(fn, "extra_t", extra_t, 0, "zero-input steps"),
            check_int(fn, "latency_extra", latency_extra, 0, "zero-input steps only the latency sees"),
            check_optional_int(fn, "max_batches", max_batches, 1, "None: the whole loader"))


def renamed(fn: str, name: str, value: Any, old: str, old_value: Any, default: Any) -> tuple[Any, str]:
    """(the value of argument ``name``, the name it came under, for messages): ``old`` is its
    spelling of earlier versions (``extra`` for ``extra_t``), still accepted as a keyword.  None
    means not given; ``default`` when neither is.  Both at once is a TypeError."""
    if old_value is None:
        return (default if value is None else value), name
    if value is not None:
        raise TypeError(f"{fn}: {name} and {old} (its old name) were both given. Pass {name} only.")
    return old_value, old


__all__ = ["check_int", "check_module", "check_optional_int", "check_positive", "check_rows", "check_run_args",
           "check_simulator", "describe", "renamed"]
