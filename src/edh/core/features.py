"""What flows between roles: the `FeatureSpec` contract.

Every encoder and decoder states its output as a `FeatureSpec`; every decoder and head is built
from the `FeatureSpec` of its source. Three kinds cover the families edh builds:

- ``pyramid``: a list of maps ``[(B, C_i, H/s_i, W/s_i)]``, highest resolution first
  (``channels[i]``, ``strides[i]``; strides never decrease).
- ``sequence``: a `Sequence` of ``(B, T, C)`` features with a ``(B, T)`` padding mask
  (``channels == (C,)``).
- ``vector``: one ``(B, C)`` tensor per sample (``channels == (C,)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch

Kind = Literal["pyramid", "sequence", "vector"]


class Sequence(NamedTuple):
    """Token features and their padding mask.

    Attributes:
        features: ``(B, T, C)``.
        padding_mask: ``(B, T)``, True where the position is padding (ignored by attention).
    """

    features: torch.Tensor
    padding_mask: torch.Tensor | None = None


@dataclass(frozen=True)
class FeatureSpec:
    """Shape contract of a role's output.

    Attributes:
        kind: ``pyramid``, ``sequence`` or ``vector``.
        channels: channels per level (pyramid) or the single feature width (sequence, vector).
        strides: reduction per pyramid level relative to the input, highest resolution first.
        names: optional level names (shown by ``describe``).
    """

    kind: Kind
    channels: tuple[int, ...]
    strides: tuple[int, ...] = ()
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if self.kind not in ("pyramid", "sequence", "vector"):
            raise ValueError(f"FeatureSpec kind must be pyramid, sequence or vector, not {self.kind!r}")
        if not self.channels:
            raise ValueError("FeatureSpec needs at least one channel count")
        if self.kind == "pyramid":
            if len(self.strides) != len(self.channels):
                raise ValueError(
                    f"pyramid FeatureSpec has {len(self.channels)} channel counts but "
                    f"{len(self.strides)} strides; give one stride per level"
                )
            if any(b < a for a, b in zip(self.strides, self.strides[1:])):
                raise ValueError(
                    f"pyramid strides must not decrease (highest resolution first), got {self.strides}"
                )
        elif len(self.channels) != 1:
            raise ValueError(f"a {self.kind} FeatureSpec has one width, got channels={self.channels}")

    @property
    def width(self) -> int:
        """Channels of the last (deepest) level, or the sequence / vector width."""
        return self.channels[-1]

    @property
    def num_levels(self) -> int:
        return len(self.channels)

    def level(self, index: int) -> "FeatureSpec":
        """The spec of one pyramid level, as a one-level pyramid."""
        if self.kind != "pyramid":
            raise ValueError(f"only a pyramid has levels; this is a {self.kind}")
        n = len(self.channels)
        if not -n <= index < n:
            raise IndexError(f"level {index} does not exist; this pyramid has levels 0..{n - 1}")
        names = (self.names[index],) if self.names else ()
        return FeatureSpec("pyramid", (self.channels[index],), (self.strides[index],), names)

    def describe(self) -> str:
        if self.kind == "pyramid":
            return "pyramid " + ", ".join(f"{c}@/{s}" for c, s in zip(self.channels, self.strides))
        return f"{self.kind} width {self.width}"
