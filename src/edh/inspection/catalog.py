"""What is registered, what each component accepts, and what fits what (``edh list``)."""

from __future__ import annotations

import inspect
import re
from typing import Any

from edh.core import registry
from edh.core.builder import accepted_options
from edh.core.registry import declared


_ROLE = re.compile(r":[\w:]+:`")  # a Sphinx role before a name: :func:`x`
_PARENTHESES_TO_DROP = re.compile(r"\s*\((?:see )?(?:the )?(?:module docstring|`[^`]+`)[^()]*\)")


def plain_text(text: str) -> str:
    """``text`` without reStructuredText markup: ````x```` and ```x``` read as ``x``."""
    text = _ROLE.sub("`", text)
    text = re.sub(r"``(.+?)``", r"\1", text)
    return re.sub(r"`([^`\n]+)`", r"\1", text)


def _first_doc_line(builder: Any) -> str:
    """The docstring's first line in plain text, without pointers a command line user cannot follow
    ("see the module docstring", "see `read_tsv`"): the options and their meaning are listed instead."""
    doc = inspect.getdoc(builder) or ""
    line = doc.splitlines()[0] if doc else ""
    return plain_text(_PARENTHESES_TO_DROP.sub("", line))


def option_help(builder: Any) -> dict[str, str]:
    """Option name -> its meaning in plain text, from the ``Args:`` section of the builder's docstring
    (a class's, else its ``__init__``'s); ``a, b: text`` gives both names the text. Options the
    docstring does not describe are left out."""
    docs = [inspect.getdoc(builder) or ""]
    if inspect.isclass(builder):
        docs.append(inspect.getdoc(builder.__init__) or "")
    out: dict[str, str] = {}
    for doc in docs:
        for names, text in _args_section(doc):
            for name in names:
                out.setdefault(name, plain_text(_PARENTHESES_TO_DROP.sub("", text)))
    return out


def _args_section(doc: str) -> list[tuple[list[str], str]]:
    """``[(names, text)]`` of a Google-style ``Args:`` section (continuation lines joined)."""
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() in ("Args:", "Arguments:"))
    except StopIteration:
        return []
    entries: list[tuple[list[str], list[str]]] = []
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent or depth == 0:
            break  # the section ended (a dedent: "Returns:", "Shapes:", prose)
        match = re.match(r"\*{0,2}([\w, *]+?)(?:\s*\([^()]*\))?:\s*(.*)$", line.strip()) if depth == indent else None
        if match:
            names = [name.strip(" *") for name in match[1].split(",") if name.strip(" *")]
            entries.append((names, [match[2]]))
        elif entries:
            entries[-1][1].append(line.strip())
    return [(names, " ".join(part for part in text if part)) for names, text in entries]


def _shown(builder: Any, name: str) -> str:
    """``timm:<model>`` for a builder that takes model names after its own (``model_option``)."""
    return f"{name}:<model>" if declared(builder, "model_option") else name


def list_components(role: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{role: [{name, summary, options, option_help, produces, accepts, fits}]}`` for encoders, decoders,
    heads, datasets: ``options`` maps each option to ``type = default``, ``option_help`` to its meaning
    (`option_help`); the texts are plain (no reStructuredText backticks)."""
    roles = [role] if role else ["encoder", "decoder", "head", "dataset"]
    encoders = {n: declared(registry.lookup("encoder", n), "produces") for n in registry.names("encoder")}
    out: dict[str, list[dict[str, Any]]] = {}
    for current in roles:
        rows = []
        for name in registry.names(current):
            builder = registry.lookup(current, name)
            row: dict[str, Any] = {"name": _shown(builder, name),
                                   "summary": _first_doc_line(builder), "options": accepted_options(builder),
                                   "option_help": option_help(builder)}
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
