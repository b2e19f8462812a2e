"""The Decoder contract: encoder features in, features at the output's resolution / length out."""

from __future__ import annotations

from typing import Any

from torch import nn

from edh.features import FeatureSpec


class Decoder(nn.Module):
    """Restores resolution or generates structure from the encoder's features.

    A decoder is built from the encoder's ``out_spec`` (passed as ``in_spec``) and states its own
    ``out_spec``. ``forward(features, **context)`` receives the encoder's features plus whatever
    the task supplies (for example the target prefix of a seq2seq decoder).

    A seq2seq decoder also implements ``init_cache`` / ``step`` for incremental generation.

    Attributes:
        accepts: the `FeatureSpec` kinds this decoder can be built on.
    """

    out_spec: FeatureSpec
    accepts: tuple[str, ...] = ("pyramid",)

    def __init__(self, in_spec: FeatureSpec) -> None:
        super().__init__()
        self.in_spec = in_spec

    def forward(self, features: Any, **context: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError
