"""Request decoding for ``edh serve``: JSON (base64 files, sentences) and multipart bodies -> items.

An item is ``("file", bytes, name)`` for image and audio runs or ``("text", str, name)`` for text runs
(``name``: the entry's ``"name"``, or None); `edh.serve.engine.Engine.decode` reads it with the run's own
reader, so the preprocessing equals ``edh predict``'s. Every problem is a `RequestError` with an HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


class RequestError(Exception):
    """A bad request: ``status`` (4xx) and one clear sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


FILE_KEYS = ("image", "audio")


def items_from_json(body: bytes, texts: bool) -> tuple[list[tuple[str, Any, str | None]], dict[str, Any]]:
    """``{"inputs": [ITEM...], "top_k", "picture"}`` (or one ITEM) -> items and options."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError(400, f"the body is not JSON ({error}); send {{\"inputs\": [{{\"image\": \"<base64>\"}}]}}")
    if not isinstance(data, dict):
        raise RequestError(400, "the JSON body must be an object {\"inputs\": [...]}")
    entries = data.get("inputs", [data] if any(k in data for k in (*FILE_KEYS, "text")) else None)
    if not entries:
        raise RequestError(422, "no inputs: send {\"inputs\": [{\"image\": \"<base64>\"} or {\"text\": \"...\"}]}")
    if not isinstance(entries, list):
        entries = [entries]
    items = [_item_of(entry, index, texts) for index, entry in enumerate(entries)]
    return items, {key: data[key] for key in ("top_k", "picture") if key in data}


def _item_of(entry: Any, index: int, texts: bool) -> tuple[str, Any, str | None]:
    if not isinstance(entry, dict):
        raise RequestError(400, f"input {index} is not an object like {{\"image\": \"<base64>\"}}")
    name = entry.get("name")
    name = str(name) if name is not None else None
    if "text" in entry:
        if not texts:
            raise RequestError(415, f"input {index} is text, but this run takes files: send {{\"image\": ...}}")
        if not isinstance(entry["text"], str):
            raise RequestError(400, f"input {index}: \"text\" must be a string")
        return ("text", entry["text"], name)
    for key in FILE_KEYS:
        if key in entry:
            if texts:
                raise RequestError(415, f"input {index} is a file, but this run takes text: send {{\"text\": ...}}")
            if not isinstance(entry[key], str):
                raise RequestError(400, f"input {index}: {key!r} must be a base64 string")
            try:
                return ("file", base64.b64decode(entry[key], validate=True), name)
            except (binascii.Error, ValueError):
                raise RequestError(400, f"input {index}: {key!r} is not valid base64") from None
    raise RequestError(400, f"input {index} has none of \"image\", \"audio\", \"text\"")


def flag(value: Any) -> bool:
    """A picture flag from JSON or a form/query string ("1", "true")."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def top_k_of(value: Any) -> int | None:
    """A positive top_k, or None; anything else is a 400."""
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"top_k must be a positive whole number, got {value!r}") from None
    if number < 1:
        raise RequestError(400, f"top_k must be a positive whole number, got {number}")
    return number
