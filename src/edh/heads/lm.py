"""The language-model head: a linear layer over the vocabulary (+ softmax), optionally tied to the embedding."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edh.core.features import FeatureSpec, Sequence
from edh.heads.base import Head
from edh.layers import packed
from edh.core.registry import register_head
from edh.core.errors import SpecError


@register_head("lm")
class LMHead(Head):
    """Linear over the vocabulary; label-smoothed cross-entropy that ignores padding.

    With ``tie_embeddings`` the output weight is the token embedding of the role the head reads
    from (the decoder's, which is the encoder's when the decoder shares it), as in Vaswani et al.
    The head then owns no weight matrix, only an optional bias.

    The head ``generates``: ``beam_size``, ``length_penalty`` and ``max_new_tokens`` are its
    ``generation_defaults()``, used by ``edh eval``, ``edh translate`` and ``edh predict`` (each
    command can override them).

    Args:
        vocab_size: output classes (the target vocabulary).
        tie_embeddings: share the weight with the source's ``token_embedding``.
        bias: add a learned bias per token.
        label_smoothing: cross-entropy label smoothing (0.1 in the paper).
        pad_id: target positions holding this id are left out of the loss and metrics.
        beam_size: 1 for greedy decoding, more for beam search.
        length_penalty: beam scores are divided by ``length ** length_penalty``.
        max_new_tokens: longest output; None: 1.5 x the source length + 10.

    Shapes: `Sequence` ``(B, T, D)`` (or ``(N, D)`` features) -> logits ``(B, T, vocab_size)`` (``(N, vocab_size)``).
    """

    accepts = ("sequence",)
    task = "generation"
    function = "linear + softmax over the vocabulary"
    generates = True

    def __init__(self, in_spec: FeatureSpec, vocab_size: int, tie_embeddings: bool = True, bias: bool = False,
                 label_smoothing: float = 0.1, pad_id: int = 0, beam_size: int = 1, length_penalty: float = 1.0,
                 max_new_tokens: int | None = None) -> None:
        super().__init__(in_spec)
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        self.vocab_size, self.pad_id, self.label_smoothing = vocab_size, pad_id, label_smoothing
        self.tie_embeddings = tie_embeddings
        self.beam_size, self.length_penalty, self.max_new_tokens = beam_size, length_penalty, max_new_tokens
        self.proj = None if tie_embeddings else nn.Linear(in_spec.width, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None
        self.__dict__["_tied"] = None  # the source's embedding, referenced (not owned); set by `bind`

    def bind(self, source: nn.Module) -> None:
        """Called by `Model` once the source role is built: with ``tie_embeddings``, read its embedding."""
        if not self.tie_embeddings:
            return
        embedding = getattr(source, "token_embedding", None)
        expected = (self.vocab_size, self.in_spec.width)
        if not isinstance(embedding, nn.Embedding) or tuple(embedding.weight.shape) != expected:
            found = "none" if not isinstance(embedding, nn.Embedding) else str(tuple(embedding.weight.shape))
            raise SpecError(
                f"head 'lm' has tie_embeddings: true, so it needs a token embedding of shape (vocab_size, width) = "
                f"{expected} in the role it reads from ({type(source).__name__} has {found}). Read from a "
                "transformer decoder with the same vocab_size, or set tie_embeddings: false"
            )
        self.__dict__["_tied"] = embedding

    @property
    def weight(self) -> torch.Tensor:
        """``(vocab_size, D)`` output weight."""
        if self.proj is not None:
            return self.proj.weight
        if self.__dict__["_tied"] is None:
            raise RuntimeError("this lm head ties its weight to an embedding but was never bound to one; build it "
                               "inside a model (edh.build) or set tie_embeddings: false")
        return self.__dict__["_tied"].weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` features -> ``(..., vocab_size)`` logits (oneDNN-packed weight when decoding, see
        `edh.layers.packed`)."""
        return packed.linear(hidden, self.weight, self.bias)

    def generation_defaults(self) -> dict[str, Any]:
        """``beam_size``, ``length_penalty`` and ``max_new_tokens`` (None: from the source length)."""
        return {"beam_size": self.beam_size, "length_penalty": self.length_penalty,
                "max_new_tokens": self.max_new_tokens}

    def forward(self, features: Sequence | torch.Tensor, **context: Any) -> torch.Tensor:
        hidden = features.features if isinstance(features, Sequence) else features
        return self.logits(hidden)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: outputs ``(B, T, V)`` logits; targets ``(B, T)`` next tokens, ``pad_id`` where there is none."""
        if outputs.shape[:2] != targets.shape:
            raise ValueError(f"lm head: logits {tuple(outputs.shape)} do not line up with targets "
                             f"{tuple(targets.shape)}; targets must be (B, T) for a decoder input of (B, T)")
        return {"ce": F.cross_entropy(outputs.flatten(0, 1).float(), targets.flatten().long(), ignore_index=self.pad_id,
                                      label_smoothing=self.label_smoothing)}

    def predict(self, outputs: torch.Tensor, **meta: Any) -> dict[str, torch.Tensor]:
        """The most likely token at each position of teacher-forced logits (generation: `edh.ops.generation`)."""
        probs = outputs.float().softmax(-1)
        scores, tokens = probs.max(-1)
        return {"tokens": tokens, "scores": scores}

    def make_metrics(self, stage: str = "val"):
        """Token accuracy of teacher-forced predictions (cheap; BLEU / chrF need generation: ``edh eval``)."""
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"token_acc": MulticlassAccuracy(self.vocab_size, average="micro",
                                                                 ignore_index=self.pad_id)})

    def update_metrics(self, metrics, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        metrics.update(outputs.argmax(-1).flatten(), targets.flatten().long())

    def format_prediction(self, prediction: dict[str, Any], index: int) -> str:
        return " ".join(str(t) for t in prediction["tokens"][index].tolist())
