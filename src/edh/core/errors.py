"""edh's own error types: what a user did wrong, with where and how to fix it in the message."""

from __future__ import annotations


class SpecError(ValueError):
    """A spec that cannot be used, with the key path, the file and the fix in the message."""
