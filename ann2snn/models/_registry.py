"""Model registry: configs name models by string; tests iterate over ``list_models()``."""
from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_KINDS: dict[str, str] = {}

KINDS = ("convertible", "direct")  # trained as a QCFS ANN and converted | trained as an SNN


def register_model(name: str | None = None, kind: str = "convertible"):
    """Decorator: register a model factory under ``name`` (default: the function's name)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is registered twice")
        _MODELS[key], _KINDS[key] = fn, kind
        return fn

    return wrap


def list_models(kind: str | None = None) -> list[str]:
    return sorted(k for k in _MODELS if kind is None or _KINDS[k] == kind)


def model_kind(name: str) -> str:
    _check(name)
    return _KINDS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; ``None`` keyword values are dropped so factory defaults apply."""
    _check(name)
    return _MODELS[name](**{k: v for k, v in kwargs.items() if v is not None})


def _check(name: str) -> None:
    if name not in _MODELS:
        raise KeyError(f"Unknown model {name!r}. Registered models: {', '.join(list_models())}.")
