"""Head surgery on trained models: carry weights from one model to another with other heads.

Tensors with the same name and shape are copied. A classification head whose classes changed keeps
the rows of classes that have the same name (label-name mapping); other rows start fresh.
"""

from __future__ import annotations

from typing import Any

import torch
import yaml

from edh.core.model import Model


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
            options[key.strip()] = yaml.safe_load(value)
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


def _class_rows(source_head: Any, target_head: Any) -> list[tuple[int, int]]:
    names = getattr(source_head, "class_names", None)
    if names is None or getattr(target_head, "class_names", None) is None:
        return []
    index = {name: i for i, name in enumerate(names)}
    return [(j, index[name]) for j, name in enumerate(target_head.class_names) if name in index]


def transfer_weights(source: Model, target: Model) -> list[str]:
    """Copy what fits from ``source`` into ``target``; return one report line per role."""
    src = source.state_dict()
    dst = target.state_dict()
    report: list[str] = []
    fresh: dict[str, list[str]] = {}
    with torch.no_grad():
        for key, value in dst.items():
            old = src.get(key)
            if old is not None and old.shape == value.shape and _same_classes(source, target, key):
                value.copy_(old)
                continue
            fresh.setdefault(_role_of(key), []).append(key)
        for name, head in target.heads.items():
            if name not in source.heads or not hasattr(head, "fc") or not _changed_classes(source, target, name):
                continue
            rows = _class_rows(source.heads[name], head)
            old_fc = source.heads[name].fc
            if old_fc.in_features != head.fc.in_features:
                continue
            for new_row, old_row in rows:
                head.fc.weight[new_row] = old_fc.weight[old_row]
                head.fc.bias[new_row] = old_fc.bias[old_row]
            kept = [head.class_names[j] for j, _ in rows]
            new = [c for c in head.class_names if c not in kept]
            report.append(f"heads.{name}: classes changed; kept the weights of {len(kept)} classes with the same "
                          f"name ({', '.join(kept) or 'none'}); {len(new)} start fresh ({', '.join(new) or 'none'})")
            fresh.pop(f"heads.{name}", None)
    for role in target.roles():
        if role in fresh:
            if role.startswith("heads.") and role.split(".", 1)[1] not in source.heads:
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


def _changed_classes(source: Model, target: Model, head: str) -> bool:
    old = getattr(source.heads[head], "class_names", None)
    new = getattr(target.heads[head], "class_names", None)
    return old is not None and new is not None and list(old) != list(new)


def _same_classes(source: Model, target: Model, key: str) -> bool:
    role = _role_of(key)
    if not role.startswith("heads."):
        return True
    head = role.split(".", 1)[1]
    return head not in source.heads or head not in target.heads or not _changed_classes(source, target, head)
