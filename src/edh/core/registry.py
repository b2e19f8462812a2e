"""Registries of components by role: ``@register_encoder("resnet50")`` and friends.

Discovery is plain package import: importing ``edh.encoders`` registers every encoder.
A duplicate name is an error; an unknown name is an error that lists close matches.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

ROLES = ("encoder", "decoder", "head", "dataset")
_PACKAGES = {"encoder": "edh.encoders", "decoder": "edh.decoders", "head": "edh.heads", "dataset": "edh.data"}
_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {role: {} for role in ROLES}


class UnknownComponentError(KeyError):
    """A name that no component of that role is registered under."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def _register(role: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        table = _REGISTRY[role]
        if name in table:
            raise ValueError(
                f"{role} {name!r} is registered twice ({table[name].__module__} and {builder.__module__}); "
                "pick another name"
            )
        table[name] = builder
        return builder

    return decorator


def register_encoder(name: str):
    return _register("encoder", name)


def register_decoder(name: str):
    return _register("decoder", name)


def register_head(name: str):
    return _register("head", name)


def register_dataset(name: str):
    return _register("dataset", name)


def _ensure_loaded(role: str) -> None:
    importlib.import_module(_PACKAGES[role])


def names(role: str) -> list[str]:
    """Registered names of one role, sorted."""
    _ensure_loaded(role)
    return sorted(_REGISTRY[role])


def lookup(role: str, name: str, where: str = "") -> Callable[..., Any]:
    """The builder registered as ``name``; an `UnknownComponentError` listing close matches if none.

    ``timm:<model>`` encoders are resolved by the timm encoder builder.
    """
    _ensure_loaded(role)
    table = _REGISTRY[role]
    if role == "encoder" and name.startswith("timm:"):
        return table["timm"]
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, table, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    place = f" (at {where})" if where else ""
    raise UnknownComponentError(
        f"unknown {role} {name!r}{place}. {hint}Registered {role}s: {', '.join(sorted(table))}. "
        f"Run `edh list {role}s` to see them with what they accept."
    )
