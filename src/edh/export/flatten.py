"""Nested model outputs <-> a flat list of named tensors, the form an ONNX graph has.

A `Model` returns ``{head: outputs}`` where a head's outputs may be a tensor, a dict, a list, a
NamedTuple (a `Sequence`, a `VariationalOutput`) or a dataclass (a detector's point grid) nesting
more of them. `flatten` walks that tree
and returns every tensor leaf with a dotted name (``label``, ``detections.cls_logits``,
``decoder.0``) and a JSON-ready *layout* that records the containers and every non-tensor leaf
(``image_size`` tuples, ``None``). `unflatten` rebuilds the same tree from the layout and the
tensors an ONNX runtime returns, so each head's eager ``predict`` post-processes them unchanged.

Example:
    >>> names, tensors, layout = flatten({"label": logits})
    >>> names
    ['label']
    >>> unflatten(layout, tensors)["label"] is tensors[0]
    True
"""

from __future__ import annotations

import dataclasses
import importlib
from collections import namedtuple
from typing import Any

import torch

Layout = dict[str, Any]


def _named_tuple_path(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}:{cls.__qualname__}"


def flatten(tree: Any, prefix: str = "") -> tuple[list[str], list[torch.Tensor], Layout]:
    """Every tensor leaf of ``tree`` in a fixed order, its dotted name, and the tree's layout.

    Args:
        tree: tensors nested in dicts (string keys), lists, tuples, NamedTuples and dataclasses; other leaves
            (numbers, strings, ``None``, tuples of numbers) are kept in the layout as constants.
        prefix: name of the root (``""``: names start at the first key).

    Returns:
        ``(names, tensors, layout)``; ``layout`` is plain JSON data.
    """
    names: list[str] = []
    tensors: list[torch.Tensor] = []

    def walk(node: Any, name: str) -> Layout:
        if isinstance(node, torch.Tensor):
            names.append(name or "output")
            tensors.append(node)
            return {"tensor": len(tensors) - 1}
        join = lambda key: f"{name}.{key}" if name else str(key)  # noqa: E731
        if isinstance(node, dict):
            if not all(isinstance(k, str) for k in node):
                raise TypeError(f"output {name or 'root'} is a dict with non-string keys; cannot name its tensors")
            return {"dict": {k: walk(v, join(k)) for k, v in node.items()}}
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return {"namedtuple": _named_tuple_path(node),
                    "fields": {f: walk(getattr(node, f), join(f)) for f in node._fields}}
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            return {"dataclass": _named_tuple_path(node),
                    "fields": {f.name: walk(getattr(node, f.name), join(f.name)) for f in dataclasses.fields(node)}}
        if isinstance(node, (list, tuple)) and any(_has_tensor(v) for v in node):
            return {"list" if isinstance(node, list) else "tuple": [walk(v, join(i)) for i, v in enumerate(node)]}
        if node is None or isinstance(node, (bool, int, float, str)):
            return {"constant": node}
        if isinstance(node, (list, tuple)) and all(v is None or isinstance(v, (bool, int, float, str)) for v in node):
            return {"constant": list(node), "as": "list" if isinstance(node, list) else "tuple"}
        raise TypeError(f"output {name or 'root'} is a {type(node).__name__}; an exported graph can only return "
                        "tensors in dicts, lists and tuples (with plain constants beside them)")

    layout = walk(tree, prefix)
    return names, tensors, layout


def _has_tensor(node: Any) -> bool:
    if isinstance(node, torch.Tensor):
        return True
    if isinstance(node, dict):
        return any(_has_tensor(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_has_tensor(v) for v in node)
    return False


def _record_class(path: str, fields: list[str], dataclass: bool = False) -> Any:
    """The NamedTuple (or dataclass) named ``module:qualname`` when it is edh's or torch's and has these
    fields; otherwise (a file never makes edh import other modules) a namedtuple with the same name
    and fields, which reads the same by attribute."""
    module, _, qualname = path.partition(":")
    if module == "edh" or module.startswith(("edh.", "torch.")):
        try:
            target: Any = importlib.import_module(module)
            for part in qualname.split("."):
                target = getattr(target, part)
            found = ([f.name for f in dataclasses.fields(target)] if dataclass and dataclasses.is_dataclass(target)
                     else list(getattr(target, "_fields", ())))
            if found == list(fields):
                return target
        except (ImportError, AttributeError, TypeError):
            pass
    return namedtuple(qualname.split(".")[-1] or "Outputs", fields)


def unflatten(layout: Layout, tensors: list[Any]) -> Any:
    """The tree `flatten` described, with ``tensors`` (same order as its names) at the leaves."""
    if "tensor" in layout:
        return tensors[layout["tensor"]]
    if "dict" in layout:
        return {k: unflatten(v, tensors) for k, v in layout["dict"].items()}
    if "namedtuple" in layout or "dataclass" in layout:
        cls = _record_class(layout.get("namedtuple") or layout["dataclass"], list(layout["fields"]),
                            "dataclass" in layout)
        return cls(**{f: unflatten(v, tensors) for f, v in layout["fields"].items()})
    if "list" in layout:
        return [unflatten(v, tensors) for v in layout["list"]]
    if "tuple" in layout:
        return tuple(unflatten(v, tensors) for v in layout["tuple"])
    if "constant" in layout:
        value = layout["constant"]
        return tuple(value) if layout.get("as") == "tuple" else value
    raise ValueError(f"not an output layout: {layout}")
