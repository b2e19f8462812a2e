"""Heads. Importing this package registers every one of them."""

from edh.heads import classification, regression  # noqa: F401
from edh.heads import segmentation  # noqa: F401
from edh.heads import reconstruction  # noqa: F401
from edh.heads import lm  # noqa: F401
from edh.heads import ctc  # noqa: F401
from edh.heads import detection  # noqa: F401
from edh.heads.base import Head

__all__ = ["Head"]
