"""The Encoder contract: raw input in, features (`FeatureSpec`) out."""

from __future__ import annotations


import torch
from torch import nn

from edh.core.features import FeatureSpec


class Encoder(nn.Module):
    """Compresses the input and extracts features.

    Subclasses set ``out_spec`` in ``__init__`` and implement ``forward``. Image encoders take
    ``(B, in_channels, H, W)`` and return a pyramid, highest resolution first; text encoders take
    token ids ``(B, S)`` and return a `Sequence`.

    Attributes:
        out_spec: what ``forward`` returns.
        input_kind: ``image`` or ``tokens``.
        in_channels: image channels (image encoders).
        default_input_size: ``(H, W)`` used by ``describe`` when none is given (images),
            or ``(S,)`` for tokens.
        produces: the kind of ``out_spec`` (``pyramid`` or ``sequence``), for ``edh list``.
        input_axes: the dynamic axes of the input in an exported graph, ``{axis: name}``. Images:
            the batch, height and width (convolutional encoders trace shape-generically; an encoder
            that takes one size only, such as a ViT with fixed position embeddings, keeps
            ``{0: "batch"}``; `edh.export.runs` also checks the graph at another size and falls
            back to the traced size where it does not follow); token ids and audio: batch and length.
    """

    out_spec: FeatureSpec
    produces: str = "pyramid"
    input_kind: str = "image"
    in_channels: int = 3
    default_input_size: tuple[int, ...] = (224, 224)
    input_axes: dict[int, str] = {0: "batch", 2: "height", 3: "width"}

    def example_input(self, input_size: tuple[int, ...] | None = None, batch_size: int = 1,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """A dummy input of the right kind, used to trace shapes."""
        size = tuple(input_size or self.default_input_size)
        if self.input_kind == "tokens":
            return torch.ones(batch_size, *size, dtype=torch.long, device=device)
        return torch.zeros(batch_size, self.in_channels, *size, device=device)

    def check_input(self, inputs: torch.Tensor) -> None:
        """Raise a clear error when an image batch does not fit this encoder."""
        if self.input_kind != "image":
            return
        if inputs.ndim != 4:
            raise ValueError(
                f"encoder {type(self).__name__} expects images shaped (B, C, H, W), got {tuple(inputs.shape)}"
            )
        if inputs.shape[1] != self.in_channels:
            raise ValueError(
                f"encoder {type(self).__name__} was built for {self.in_channels}-channel images but got "
                f"{inputs.shape[1]} channels (input shape {tuple(inputs.shape)}). Convert the images "
                f"(e.g. to {'grayscale' if self.in_channels == 1 else 'RGB'}) or build the encoder with "
                f"in_channels={inputs.shape[1]}."
            )
