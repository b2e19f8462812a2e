"""Decoders. Importing this package registers every one of them."""

from edh.decoders import conv, unet  # noqa: F401
from edh.decoders import fpn  # noqa: F401
from edh.decoders import transformer  # noqa: F401
from edh.decoders import rnn  # noqa: F401
from edh.decoders import unetplusplus, linknet, manet, pan, pspnet  # noqa: F401
from edh.decoders import deeplab, upernet, segformer, dpt  # noqa: F401
from edh.decoders import pafpn  # noqa: F401
from edh.decoders.base import Decoder

__all__ = ["Decoder"]
