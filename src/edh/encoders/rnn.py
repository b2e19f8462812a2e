"""Recurrent text encoders (``lstm``, ``gru``): token embedding -> a padding-aware RNN stack -> a `Sequence`."""

from __future__ import annotations

import torch
from torch import nn

from edh.core.features import FeatureSpec, Sequence
from edh.core.registry import register_encoder
from edh.encoders.base import Encoder
from edh.layers.rnn import RecurrentStack
from edh.layers.transformer import token_embedding
from edh.utils.weights import load_encoder_weights


class RecurrentEncoder(Encoder):
    """An LSTM or GRU encoder over token ids (Sutskever et al. 2014; bidirectional as in Bahdanau et al. 2015).

    Interchangeable with the ``transformer`` encoder wherever a sequence is read (an ``lm`` decoder,
    a classification head on a sequence...): it takes the same token ids and returns a `Sequence` of
    every position's features with the padding mask. Padding never reaches a real position's state:
    on CUDA the sequences are packed by their lengths; on the CPU (faster there) and in tracing / ONNX
    export the same weights run unpacked, each direction over each row's real positions, with the
    same values (`edh.layers.rnn.RecurrentStack`).

    The final states are not part of the output (a `Sequence` holds features and a mask only): a
    decoder that wants a start state derives it from the features (the ``lstm`` / ``gru`` decoders
    start from a learned projection of their mean over real positions), so no new contract is needed.

    ``vocab_size`` and ``pad_id`` come from the data's tokenizer when a run is trained.

    Args:
        vocab_size: tokens in the vocabulary.
        embedding_dim: token embedding width (its ``token_embedding`` can be shared with a decoder).
        hidden_size: state width per direction.
        num_layers: stacked RNN layers.
        bidirectional: read each sequence both ways (output width ``2 * hidden_size``).
        dropout: on the embeddings, between layers and on the output.
        pad_id: the padding token.
        weights: a local weight file saved from this encoder.

    Shapes:
        token ids ``(B, S)`` -> `Sequence` of ``(B, S, hidden_size * directions)`` (zeros at padding)
        with padding mask ``(B, S)``.
    """

    cell = "lstm"
    input_kind = "tokens"
    input_axes = {0: "batch", 1: "source"}
    produces = "sequence"
    default_input_size = (16,)

    def __init__(self, vocab_size: int, embedding_dim: int = 256, hidden_size: int = 256, num_layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.0, pad_id: int = 0,
                 weights: str | None = None) -> None:
        super().__init__()
        self.vocab_size, self.pad_id, self.in_channels = vocab_size, pad_id, 0
        self.token_embedding = token_embedding(vocab_size, embedding_dim, pad_id)
        self.dropout = nn.Dropout(dropout)
        self.rnn = RecurrentStack(self.cell, embedding_dim, hidden_size, num_layers, bidirectional, dropout)
        self.out_spec = FeatureSpec("sequence", (self.rnn.output_size,))
        if weights:
            load_encoder_weights(self, weights)

    def check_input(self, inputs: torch.Tensor) -> None:
        if inputs.ndim != 2 or inputs.dtype not in (torch.long, torch.int32):
            raise ValueError(f"the {self.cell} encoder takes token ids shaped (B, S) as integers, got "
                             f"{tuple(inputs.shape)} {inputs.dtype}")

    def forward(self, tokens: torch.Tensor) -> Sequence:
        """Args: tokens ``(B, S)`` right-padded with ``pad_id``."""
        padding = tokens == self.pad_id  # (B, S)
        x = self.dropout(self.token_embedding(tokens))  # (B, S, E)
        return Sequence(self.dropout(self.rnn(x, padding)), padding)


@register_encoder("lstm")
class LSTMEncoder(RecurrentEncoder):
    __doc__ = RecurrentEncoder.__doc__
    cell = "lstm"


@register_encoder("gru")
class GRUEncoder(RecurrentEncoder):
    __doc__ = RecurrentEncoder.__doc__
    cell = "gru"
