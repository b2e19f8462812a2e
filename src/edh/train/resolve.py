"""`resolve_spec`: a run spec with what its data decides filled in (input channels, class counts and
names, a tokenizer's vocabulary and special ids), before the model is built."""

from __future__ import annotations

from typing import Any

from edh.core.builder import option_names
from edh.core.errors import SpecError
from edh.core.registry import lookup
from edh.core.spec import RunSpec, to_dict
from edh.data.base import DataInfo


def resolve_spec(spec: RunSpec, info: DataInfo) -> RunSpec:
    """Fill what the data decides and the spec left out: the encoder's ``in_channels`` and, for each
    head whose target the data describes, options such as ``num_classes`` and ``class_names``."""
    data = to_dict(spec)
    encoder = data["model"]["encoder"]
    if "in_channels" in option_names(lookup("encoder", encoder["name"])):
        given = encoder.setdefault("in_channels", info.in_channels)
        if given != info.in_channels:
            raise SpecError(
                f"model.encoder.in_channels is {given} but the data {spec.data.name!r} has {info.in_channels}-channel "
                f"inputs; set in_channels: {info.in_channels} (or remove it to take the data's)"
            )
    for role in ("encoder", "decoder"):
        _fill_role_defaults(spec, data["model"][role], role, info.extra.get(f"{role}_defaults", {}))
    defaults = dict(info.extra.get("head_defaults", {}))
    if info.class_names:
        defaults.setdefault("label", {"num_classes": len(info.class_names), "class_names": list(info.class_names)})
    for name, head in data["model"]["heads"].items():
        key = head.get("target") or name
        if info.targets and key not in info.targets:
            raise SpecError(
                f"model.heads.{name} learns from target {key!r}, but the data {spec.data.name!r} gives targets "
                f"{', '.join(sorted(info.targets))}; set heads.{name}.target to one of them"
            )
        options = defaults.get(key, {})
        accepted = option_names(lookup("head", head["type"]))
        for key, value in options.items():
            if key in accepted and key not in head:
                if key == "class_names" and head.get("num_classes", len(value)) != len(value):
                    continue  # the spec chose another number of classes: keep default names
                head[key] = value
    return RunSpec.model_validate(data)


def _fill_role_defaults(spec: RunSpec, component: dict[str, Any] | None, role: str, defaults: dict[str, Any]) -> None:
    """Options the data decides for an encoder / decoder (``DataInfo.extra["<role>_defaults"]``: a text
    dataset's vocabulary size and special token ids): filled in when the builder takes them and the
    spec left them out; a different value in the spec is an error."""
    if component is None or not defaults:
        return
    accepted = option_names(lookup(role, component["name"]))
    for key, value in defaults.items():
        if key not in accepted:
            continue
        given = component.setdefault(key, value)
        if given != value:
            raise SpecError(
                f"model.{role}.{key} is {given} but the data {spec.data.name!r} gives {value} (its tokenizer); "
                f"remove model.{role}.{key} to take the data's value"
            )
