"""Decoders. Importing this package registers every one of them."""

from edh.decoders.base import Decoder

__all__ = ["Decoder"]
