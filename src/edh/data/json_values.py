"""Telling the values of a parsed JSON file apart, for messages about them (`edh.data.coco_json`,
`edh.data.coco_masks`): JSON booleans are Python ints, and JSON integers can be of any size."""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    """An integer, not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a boolean (JSON integers of any size: no float conversion)."""
    return is_int(value) or isinstance(value, float) and math.isfinite(value)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def type_name(value: Any) -> str:
    """What a JSON value is, in words (``an object``, ``a list``...)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
