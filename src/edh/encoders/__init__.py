"""Encoders. Importing this package registers every one of them."""

from edh.encoders import conv, resnet, timm  # noqa: F401
from edh.encoders import unet_encoder  # noqa: F401
from edh.encoders import transformer  # noqa: F401
from edh.encoders import audio  # noqa: F401
from edh.encoders import rnn  # noqa: F401
from edh.encoders import csp_darknet  # noqa: F401
from edh.encoders.base import Encoder

__all__ = ["Encoder"]
