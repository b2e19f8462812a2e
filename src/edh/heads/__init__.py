"""Heads. Importing this package registers every one of them."""

from edh.heads import classification  # noqa: F401
from edh.heads.base import Head

__all__ = ["Head"]
