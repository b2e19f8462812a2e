"""Head surgery on trained models: carry weights from one model to another with other heads.

Tensors with the same name and shape are copied; a head that must map its weights (a classifier
whose classes changed keeps the rows of classes with the same name) does so in `Head.transfer_from`.
"""

from __future__ import annotations

from typing import Any

import torch
from edh.core.model import Model
from edh.core.spec_yaml import load_yaml_text


def parse_head_option(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:TYPE[:key=value,key=value]`` -> ``(NAME, {type: TYPE, key: value...})``.

    Values are read as YAML scalars or lists (``num_classes=5``, ``class_names=[a,b]``,
    ``source=decoder``).
    """
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"head option {text!r} must look like NAME:TYPE or NAME:TYPE:key=value,key=value")
    name, head_type = parts[0], parts[1]
    options: dict[str, Any] = {"type": head_type}
    if len(parts) == 3 and parts[2]:
        for item in _split_top_level(parts[2]):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"in head option {text!r}: {item!r} must be key=value")
            options[key.strip()] = load_yaml_text(value, f"head option {text!r}")
    return name, options


def _split_top_level(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return items + ([current] if current else [])


def transfer_weights(source: Model, target: Model) -> list[str]:
    """Copy what fits from ``source`` into ``target``; return one report line per role.

    A head of ``target`` whose `Head.transfer_from` takes care of its own weights (a classifier
    whose classes changed) reports its line; every other tensor is copied when a tensor of the same
    name and shape exists in ``source``.
    """
    handled = {name: line for name, head in target.heads.items() if name in source.heads
               for line in [head.transfer_from(source.heads[name])] if line is not None}
    src = source.state_dict()
    fresh: dict[str, list[str]] = {}
    with torch.no_grad():
        for key, value in target.state_dict().items():
            role = _role_of(key)
            if role.startswith("heads.") and role.split(".", 1)[1] in handled:
                continue
            old = src.get(key)
            if old is not None and old.shape == value.shape:
                value.copy_(old)
            else:
                fresh.setdefault(role, []).append(key)
    report: list[str] = []
    for role in target.roles():
        head = role.split(".", 1)[1] if role.startswith("heads.") else None
        if head in handled:
            report.append(f"{role}: {handled[head]}")
        elif role in fresh:
            if head is not None and head not in source.heads:
                report.append(f"{role}: new head, initialised fresh")
            else:
                report.append(f"{role}: {len(fresh[role])} tensors did not fit and start fresh: "
                              + ", ".join(fresh[role][:6]) + ("..." if len(fresh[role]) > 6 else ""))
        else:
            report.append(f"{role}: weights kept")
    return report


def _role_of(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "heads" else parts[0]
