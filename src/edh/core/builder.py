"""Turns spec entries into components, checking each option against the builder's signature."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic import ConfigDict, ValidationError, create_model

from edh.core import registry
from edh.core.errors import SpecError

_SKIP = {"self", "in_spec", "args", "kwargs"}


def _target(builder: Any) -> Any:
    return builder.__init__ if inspect.isclass(builder) else builder


# What a builder declares about the features it reads and gives, when it does not say: a builder may be
# a class (which inherits the role base's attributes) or a function such as ``resnet18``.
DECLARED_DEFAULTS = {"accepts": ("pyramid",), "produces": "pyramid"}


def declared(builder: Any, attribute: str) -> Any:
    """``accepts`` / ``produces`` of a registered builder (`DECLARED_DEFAULTS` when it states none)."""
    return getattr(builder, attribute, DECLARED_DEFAULTS[attribute])


def option_names(builder: Any) -> set[str]:
    """The options ``builder`` takes (its keyword parameters, ``in_spec`` and ``self`` left out)."""
    return {name for name, param in inspect.signature(_target(builder)).parameters.items()
            if name not in _SKIP and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)}


def _signature_model(builder: Any, title: str):
    target = _target(builder)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: accept anything for those options
        hints = {}
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(target).parameters.items():
        if name in _SKIP or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(title, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields)


def accepted_options(builder: Any) -> dict[str, str]:
    """Option name -> ``type = default`` text, for ``edh list`` and error messages."""
    target = _target(builder)
    out = {}
    for name, param in inspect.signature(target).parameters.items():
        if name in _SKIP or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = param.annotation if param.annotation is not inspect.Parameter.empty else ""
        default = "" if param.default is inspect.Parameter.empty else f" = {param.default!r}"
        out[name] = f"{annotation}{default}".strip()
    return out


def validate_options(builder: Any, options: dict[str, Any], where: str, component: str) -> dict[str, Any]:
    """Options checked (and coerced) against ``builder``'s signature; `SpecError` naming the key path."""
    model = _signature_model(builder, component)
    try:
        validated = model.model_validate(options)
    except ValidationError as error:
        accepted = ", ".join(accepted_options(builder)) or "none"
        lines = []
        for item in error.errors():
            key = ".".join(str(p) for p in item["loc"])
            if item["type"] == "extra_forbidden":
                lines.append(f"  {where}.{key}: {component} has no option {key!r}; it accepts: {accepted}")
            elif item["type"] == "missing":
                lines.append(f"  {where}.{key}: required by {component} but missing")
            else:
                lines.append(f"  {where}.{key}: {item['msg']} (got {item.get('input')!r})")
        raise SpecError("invalid spec:\n" + "\n".join(lines)) from None
    return {name: getattr(validated, name) for name in options}


def build_component(role: str, name: str, options: dict[str, Any], where: str, *args: Any) -> Any:
    """Look up ``name`` in ``role``'s registry, validate ``options``, call the builder."""
    builder = registry.lookup(role, name, where)
    if role == "encoder" and name.startswith("timm:"):
        options = {"model_name": name.split(":", 1)[1], **options}
    clean = validate_options(builder, options, where, f"{role} {name!r}")
    return builder(*args, **clean)
