"""What is registered, what each component accepts, and what fits what (``edh list``)."""

from __future__ import annotations

import inspect
from typing import Any

from edh.core import registry
from edh.core.builder import accepted_options
from edh.core.registry import declared


def _first_doc_line(builder: Any) -> str:
    doc = inspect.getdoc(builder) or ""
    return doc.splitlines()[0] if doc else ""


def _shown(builder: Any, name: str) -> str:
    """``timm:<model>`` for a builder that takes model names after its own (``model_option``)."""
    return f"{name}:<model>" if declared(builder, "model_option") else name


def list_components(role: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{role: [{name, summary, options, produces, accepts, fits}]}`` for encoders, decoders, heads, datasets."""
    roles = [role] if role else ["encoder", "decoder", "head", "dataset"]
    encoders = {n: declared(registry.lookup("encoder", n), "produces") for n in registry.names("encoder")}
    out: dict[str, list[dict[str, Any]]] = {}
    for current in roles:
        rows = []
        for name in registry.names(current):
            builder = registry.lookup(current, name)
            row: dict[str, Any] = {"name": _shown(builder, name),
                                   "summary": _first_doc_line(builder), "options": accepted_options(builder)}
            if current == "encoder":
                row["produces"] = encoders[name]
            elif current in ("decoder", "head"):
                accepts = tuple(declared(builder, "accepts"))
                row["accepts"] = list(accepts)
                if current == "decoder":
                    row["produces"] = declared(builder, "produces")
                    row["requires"] = declared(builder, "requires") or ""
                row["fits"] = [_shown(registry.lookup("encoder", e), e) for e, kind in encoders.items() if kind in accepts]
            rows.append(row)
        out[current + "s"] = rows
    return out
