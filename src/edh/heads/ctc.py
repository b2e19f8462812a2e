"""The CTC head (Graves et al. 2006): a linear layer to characters + blank over a `Sequence`, CTC loss,
greedy or prefix beam search decoding, and word / character error rates.

Ids: ``0`` is the CTC blank, ``i + 1`` is ``alphabet[i]``. Targets are ``(B, S)`` character ids
right-padded with ``0`` (the blank never occurs in a transcript, so it doubles as padding). The
alphabet comes from the data (``DataInfo.extra["alphabet"]``, filled into the head's options by
``head_defaults``), so a run rebuilds its head, and prints its transcripts, from the spec alone.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edh.core.errors import SpecError
from edh.core.features import FeatureSpec, Sequence
from edh.core.registry import register_head
from edh.heads.base import Head

log = logging.getLogger("edh")
BLANK = 0


# ---- decoding ------------------------------------------------------------------------------------------
def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
    """Best path: the most likely id per frame, repeats merged, blanks dropped.

    Args: log_probs ``(B, T, V)``; lengths ``(B,)`` valid frames.
    Returns: the ids of each clip (no blanks) and the best path's log-probability ``(B,)``.
    """
    scores, best = log_probs.max(-1)  # (B, T)
    valid = torch.arange(best.shape[1], device=best.device)[None, :] < lengths[:, None]
    previous = F.pad(best[:, :-1], (1, 0), value=BLANK)
    keep = valid & (best != BLANK) & (best != previous)
    rows = [best[i][keep[i]].tolist() for i in range(best.shape[0])]
    return rows, (scores * valid).sum(-1)


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high = max(a, b)
    return high + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(log_probs: np.ndarray, beam_size: int, prune: float | None = -12.0
                       ) -> tuple[list[int], float]:
    """CTC prefix beam search (Hannun et al. 2014, without a language model) over one clip.

    Every prefix keeps two log-probabilities: of the paths that end in a blank and of those that end
    in its last label; extending a prefix with its own last label needs a blank between the two. The
    ``beam_size`` most probable prefixes (the sum of both) survive each frame; with a beam as large as
    the number of prefixes the result is the most probable labelling (checked by brute force in the tests).

    Args:
        log_probs: ``(T, V)`` log-probabilities of the clip's valid frames, id 0 the blank.
        beam_size: prefixes kept per frame.
        prune: labels whose log-probability at a frame is below this are not tried there (None: all).

    Returns: the best prefix (ids without blanks) and its log-probability.
    """
    ninf = -math.inf
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, ninf)}  # prefix -> (ends blank, ends label)
    for frame in log_probs:
        labels = range(1, len(frame)) if prune is None else [int(v) for v in np.nonzero(frame > prune)[0] if v]
        blank = float(frame[BLANK])
        fresh: dict[tuple[int, ...], list[float]] = {}

        def add(prefix: tuple[int, ...], p_blank: float, p_label: float) -> None:
            entry = fresh.setdefault(prefix, [ninf, ninf])
            entry[0], entry[1] = _logsumexp(entry[0], p_blank), _logsumexp(entry[1], p_label)

        for prefix, (p_b, p_l) in beams.items():
            total = _logsumexp(p_b, p_l)
            add(prefix, total + blank, ninf)  # a blank: the prefix stays
            if prefix:  # the last label repeated without a blank: merged, the prefix stays
                add(prefix, ninf, p_l + float(frame[prefix[-1]]))
            for label in labels:
                p = float(frame[label])
                if prefix and label == prefix[-1]:
                    add(prefix + (label,), ninf, p_b + p)  # a new repeat needs the blank in between
                else:
                    add(prefix + (label,), ninf, total + p)
        ranked = sorted(fresh.items(), key=lambda item: _logsumexp(*item[1]), reverse=True)[:beam_size]
        beams = {prefix: (p[0], p[1]) for prefix, p in ranked}
    prefix, (p_b, p_l) = max(beams.items(), key=lambda item: _logsumexp(*item[1]))
    return list(prefix), _logsumexp(p_b, p_l)


# ---- the head ------------------------------------------------------------------------------------------
@register_head("ctc")
class CTCHead(Head):
    """Linear to ``vocab_size`` ids (blank = 0, then the characters) and CTC loss.

    The feature lengths come from the source's padding mask. ``predict`` decodes greedily
    (``beam_size`` 1) or by prefix beam search and gives texts; ``edh eval`` reports word and
    character error rates (torchmetrics), with the same decoding (validation while training: greedy).

    Args:
        vocab_size: ids the head scores: the blank plus one per character (the data's).
        alphabet: the characters of ids ``1 .. vocab_size - 1`` (the data's ``alphabet``).
        beam_size: 1 for greedy decoding, more for prefix beam search.
        dropout: on the features before the linear layer.

    Shapes: `Sequence` ``(B, T, D)`` -> ``{"log_probs": (B, T, vocab_size), "lengths": (B,)}``.
    """

    accepts = ("sequence",)
    task = "transcription"
    function = "linear to characters + blank, CTC (greedy / prefix beam search)"

    def __init__(self, in_spec: FeatureSpec, vocab_size: int, alphabet: list[str] | None = None, beam_size: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__(in_spec)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (the blank and a character), got {vocab_size}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        if alphabet is not None:
            alphabet = list(alphabet)
            if len(alphabet) != vocab_size - 1 or any(not isinstance(c, str) or len(c) != 1 for c in alphabet):
                raise ValueError(f"alphabet must list vocab_size - 1 = {vocab_size - 1} single characters (id 0 is the "
                                 f"blank), got {len(alphabet)} entries")
            if len(set(alphabet)) != len(alphabet):
                raise ValueError("alphabet lists a character twice")
        self.vocab_size, self.beam_size = vocab_size, beam_size
        self.alphabet = alphabet
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_spec.width, vocab_size)

    def bind_data(self, info: Any) -> None:
        """Take the data's alphabet (``info.extra["alphabet"]``) when the head has none; refuse another one."""
        extra = getattr(info, "extra", None) or {}
        alphabet = extra.get("alphabet")
        if not isinstance(alphabet, list) or not alphabet:
            return
        where = f"model.{getattr(self, 'spec_path', None) or 'heads'}"
        if len(alphabet) + 1 != self.vocab_size:
            raise SpecError(f"{where}.vocab_size is {self.vocab_size}, but the data's alphabet has {len(alphabet)} "
                            f"characters (+ the blank = {len(alphabet) + 1}); leave vocab_size out to take the data's")
        if self.alphabet is None:
            self.alphabet = list(alphabet)
        elif self.alphabet != list(alphabet):
            raise SpecError(f"{where}.alphabet differs from the data's ({''.join(alphabet)!r}); the head would spell "
                            "its outputs with other characters. Leave alphabet out to take the data's")

    # ---- training ---------------------------------------------------------------------------------
    def forward(self, features: Sequence, **context: Any) -> dict[str, torch.Tensor]:
        hidden, padding = features.features, features.padding_mask
        B, T, _ = hidden.shape
        lengths = (torch.full((B,), T, dtype=torch.long, device=hidden.device) if padding is None
                   else (~padding).sum(-1))
        log_probs = self.proj(self.dropout(hidden)).float().log_softmax(-1)  # (B, T, V)
        return {"log_probs": log_probs, "lengths": lengths}

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """CTC loss averaged over clips (each divided by its transcript length). A clip too short for
        its transcript adds nothing (``zero_infinity``) rather than an infinite loss."""
        targets = targets.long()
        if targets.ndim != 2 or targets.shape[0] != outputs["log_probs"].shape[0]:
            raise ValueError(f"ctc head: targets must be (B, S) character ids padded with 0, got "
                             f"{tuple(targets.shape)} for {outputs['log_probs'].shape[0]} clips")
        target_lengths = (targets != BLANK).sum(-1)
        loss = F.ctc_loss(outputs["log_probs"].transpose(0, 1), targets, outputs["lengths"], target_lengths,
                          blank=BLANK, reduction="mean", zero_infinity=True)
        return {"ctc": loss}

    # ---- text -------------------------------------------------------------------------------------
    def text(self, ids: list[int]) -> str:
        """Character ids (no blanks) -> text; ids without a character (no alphabet) as ``<id>``."""
        if self.alphabet is None:
            return "".join(f"<{i}>" for i in ids)
        return "".join(self.alphabet[i - 1] if 0 < i <= len(self.alphabet) else "" for i in ids)

    def target_texts(self, targets: torch.Tensor) -> list[str]:
        return [self.text([i for i in row if i != BLANK]) for row in targets.long().tolist()]

    def decode(self, outputs: dict[str, torch.Tensor], beam_size: int | None = None) -> tuple[list[str], torch.Tensor]:
        """Texts and their log-probabilities ``(B,)``: greedy for a beam of 1, else prefix beam search."""
        beam = beam_size or self.beam_size
        log_probs, lengths = outputs["log_probs"].float(), outputs["lengths"].long()
        if beam == 1:
            rows, scores = greedy_decode(log_probs, lengths)
            return [self.text(r) for r in rows], scores
        texts, scores = [], []
        array = log_probs.detach().cpu().numpy()
        for row, length in zip(array, lengths.tolist()):
            ids, score = prefix_beam_search(row[:length], beam)
            texts.append(self.text(ids))
            scores.append(score)
        return texts, torch.tensor(scores)

    # ---- prediction -------------------------------------------------------------------------------
    def from_postprocessed(self, result: dict[str, torch.Tensor], beam_size: int | None = None,
                           **meta: Any) -> dict[str, Any]:
        """``{"texts": [...], "scores": (B,) log-probability of each transcript}``."""
        texts, scores = self.decode(result, beam_size)
        return {"texts": texts, "scores": scores}

    def format_prediction(self, prediction: dict[str, Any], index: int) -> str:
        return prediction["texts"][index]

    def prediction_json(self, prediction: dict[str, Any], index: int, source: Any = None,
                        input_size: Any = None) -> dict[str, Any]:
        """``{"text", "score"}``: the transcript and its log-probability."""
        return {"text": prediction["texts"][index], "score": float(prediction["scores"][index])}

    # ---- metrics ----------------------------------------------------------------------------------
    def make_metrics(self, stage: str = "val"):
        """Word and character error rates; ``test`` decodes with the head's ``beam_size``, ``val`` greedily."""
        from torchmetrics import MetricCollection
        from torchmetrics.text import CharErrorRate, WordErrorRate

        metrics = MetricCollection({"wer": WordErrorRate(), "cer": CharErrorRate()}, compute_groups=False)
        metrics.beam_size = self.beam_size if stage == "test" else 1
        return metrics

    def update_metrics(self, metrics, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> None:
        texts, _ = self.decode(outputs, getattr(metrics, "beam_size", 1))
        metrics.update(texts, self.target_texts(targets))

    def transfer_from(self, trained: Head) -> str | None:
        """When the alphabet changed, keep the rows of the characters both have (and the blank)."""
        if not isinstance(trained, CTCHead) or trained.alphabet == self.alphabet or self.alphabet is None \
                or trained.alphabet is None or trained.proj.in_features != self.proj.in_features:
            return None
        old = {c: i + 1 for i, c in enumerate(trained.alphabet)}
        rows = [(0, 0)] + [(j + 1, old[c]) for j, c in enumerate(self.alphabet) if c in old]
        with torch.no_grad():
            for new_row, old_row in rows:
                self.proj.weight[new_row] = trained.proj.weight[old_row]
                self.proj.bias[new_row] = trained.proj.bias[old_row]
        return (f"alphabet changed; kept the weights of the blank and {len(rows) - 1} characters both have; "
                f"{len(self.alphabet) + 1 - len(rows)} start fresh")
