"""Model registry: configs name models by string; tests iterate over ``list_models()``."""
from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_KINDS: dict[str, str] = {}
# families named "PREFIX:NAME" (e.g. "torchvision:resnet18"): prefix -> (factory(name, **kw), names(), kind)
_FAMILIES: dict[str, tuple[Callable[..., nn.Module], Callable[[], list[str]], str]] = {}

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


def register_family(prefix: str, factory: Callable[..., nn.Module], names: Callable[[], list[str]],
                    kind: str = "convertible") -> None:
    """Register models named ``PREFIX:NAME``, built by ``factory(NAME, **kwargs)``; ``names()``
    lists the valid NAMEs (called only when a name is checked)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    _FAMILIES[prefix] = (factory, names, kind)


def list_models(kind: str | None = None) -> list[str]:
    """The registered model names, and each family as ``PREFIX:NAME``."""
    fams = [f"{p}:NAME" for p, (_, _, k) in _FAMILIES.items() if kind is None or k == kind]
    return sorted(k for k in _MODELS if kind is None or _KINDS[k] == kind) + sorted(fams)


def is_model(name: str) -> bool:
    """True for a registered name or a valid ``PREFIX:NAME`` of a family."""
    if name in _MODELS:
        return True
    prefix, sep, rest = name.partition(":")
    return bool(sep) and prefix in _FAMILIES and rest in _FAMILIES[prefix][1]()


def model_kind(name: str) -> str:
    _check(name)
    if name in _KINDS:
        return _KINDS[name]
    return _FAMILIES[name.partition(":")[0]][2]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; ``None`` keyword values are dropped so factory defaults apply."""
    _check(name)
    kw = {k: v for k, v in kwargs.items() if v is not None}
    if name in _MODELS:
        return _MODELS[name](**kw)
    prefix, _, rest = name.partition(":")
    return _FAMILIES[prefix][0](rest, **kw)


def _close(name: str, choices: list[str]) -> list[str]:
    """Up to 3 of ``choices`` close to ``name``, compared in lower case (`Transformer` suggests
    transformer); an exact match but for case comes first.  ``name`` is cut first: difflib's cost
    grows with its length."""
    import difflib

    lower = {c.lower(): c for c in choices}
    low = name[:100].lower()
    found = [lower[low]] if low in lower else []
    found += [lower[c] for c in difflib.get_close_matches(low, list(lower), n=3) if lower[c] not in found]
    return found[:3]


def _shown(name: str, limit: int = 80) -> str:
    """``repr(name)`` of at most ``limit`` characters of it: never a user value whole in a message
    (config.short_repr does this for any value; imported here it would close an import circle:
    config -> models -> config)."""
    name = str(name)
    return repr(name[:limit]) + ("…" if len(name) > limit else "")


def unknown_model_message(name: str) -> str:
    prefix, sep, rest = name.partition(":")
    family = {p.lower(): p for p in _FAMILIES}.get(prefix.lower()) if sep else None
    if family is not None:
        close = _close(rest, _FAMILIES[family][1]())
        hint = f" Did you mean {', '.join(f'{family}:{c}' for c in close)}?" if close else ""
        return f"Unknown model {_shown(name)}: {family} has no model {_shown(rest)}.{hint}"
    if sep:  # a misspelt family: `torchvisio:resnet18` suggests torchvision:resnet18
        close = [f"{p}:{rest[:60]}" for p in _close(prefix, list(_FAMILIES))] or _close(name, sorted(_MODELS))
    else:
        close = _close(name, sorted(_MODELS))
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"Unknown model {_shown(name)}.{hint} Registered models: {', '.join(list_models())}."


def _check(name: str) -> None:
    if not is_model(name):
        raise KeyError(unknown_model_message(name))
