"""Generation for encoder-decoder models: batched greedy and beam search over a cached decoder step.

A generating model here is an encoder giving a `Sequence`, a `StepDecoder` (``init_cache`` /
``step``, a `StepCache` with ``select``, ``bos_id`` / ``eos_id`` / ``pad_id``, ``max_length``) and
a head with ``generates`` (``logits(hidden)``, ``generation_defaults()``). Nothing else is read, so
any decoder that implements the contract generates here. Each step runs the decoder on one
position per row, so the cost per token does not grow with the prefix beyond attention itself.
`greedy_uncached` re-decodes the whole prefix every step; tests use it to prove that the cache
changes nothing.

Example:
    >>> result = generate(model, source_ids, beam_size=4)
    >>> result.tokens  # (B, T) new tokens, eos included, pad after it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from edh.core.features import Sequence
from edh.decoders.base import StepDecoder
from edh.layers import dispatch

Logits = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Generation:
    """Generated tokens.

    Attributes:
        tokens: ``(B, T)`` new tokens (no ``bos``), ``eos`` included where produced, ``pad_id`` after it.
        lengths: ``(B,)`` tokens up to and including ``eos`` (``T`` where no ``eos`` came).
        scores: ``(B,)`` length-normalised log-probabilities (beam search), or None (greedy).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor | None = None


def generates(model: Any) -> bool:
    """True when ``model``'s decoder is a `StepDecoder` (it decodes step by step: ``model`` generates)."""
    return isinstance(getattr(model, "decoder", None), StepDecoder)




def generation_head(model: Any) -> tuple[str, Any]:
    """The name and module of the first head that reads the decoder and ``generates`` (has ``logits``)."""
    for name, head in model.heads.items():
        if model.head_specs[name].source == "decoder" and head.generates:
            return name, head
    raise ValueError("this model has no head that turns decoder features into token logits; add "
                     "`heads: {tokens: {type: lm, source: decoder}}`")


def default_max_new_tokens(source_length: int | None, decoder: StepDecoder) -> int:
    """1.5 x the source length + 10 (a source of tokens), else 128 (images, audio), within the decoder's
    ``max_length``."""
    return min(int(source_length * 1.5) + 10 if source_length is not None else 128, decoder.max_length)


def _lengths(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    is_eos = tokens == eos_id
    first = is_eos.int().argmax(dim=1) + 1
    return torch.where(is_eos.any(dim=1), first, torch.full_like(first, tokens.shape[1]))


def best_tokens(scores: torch.Tensor) -> torch.Tensor:
    """``(N, V)`` -> ``(N,)`` the most likely token of each row (the first on ties, as ``argmax``).
    ``max(dim=-1).indices``: on the CPU ``argmax`` over an ``(8, 8000)`` row block takes 50-80 us, ``max``
    about 20 us, 3 % of a greedy step of the bench's translator."""
    return scores.max(dim=-1).indices


def summed_log_probs(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``(N, V)`` logits and ``(N,)`` running scores -> ``(N, V)`` ``scores + log_softmax(logits)``, beam search's
    candidates, by whichever of two ways measured faster for this shape on this machine (`edh.layers.dispatch`,
    ``$EDH_BEAM_SCORES``): ``logsumexp`` (``logits - logsumexp + score``, one pass over the logits after the
    reduction: 7x faster than the other on an Intel Xeon with AMX at (32, 8000)) or ``log_softmax`` (then
    adding the scores: faster on an AVX2-only AMD EPYC, where ``logsumexp`` is the slower kernel)."""
    choice = dispatch.choose("beam_scores", (str(logits.dtype), dispatch.rows_bucket(logits.shape[0]), logits.shape[1]),
                             {"logsumexp": lambda: _by_logsumexp(logits, scores),
                              "log_softmax": lambda: _by_log_softmax(logits, scores)})
    return _by_logsumexp(logits, scores) if choice == "logsumexp" else _by_log_softmax(logits, scores)


def _by_logsumexp(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return logits + (scores - torch.logsumexp(logits, dim=-1))[:, None]


def _by_log_softmax(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).add_(scores[:, None])


def greedy_search(decoder: StepDecoder, logits: Logits, memory: Sequence, max_new_tokens: int,
                  min_new_tokens: int = 0) -> Generation:
    """Pick the most likely token at every step, for every row at once, until all rows end in ``eos``.

    Args:
        decoder: a `StepDecoder`.
        logits: ``(N, D)`` decoder features -> ``(N, V)`` logits.
        memory: the encoder's `Sequence` ``(N, S, C)``.
        max_new_tokens: stop after this many tokens.
        min_new_tokens: ``eos`` is not allowed before this many tokens.
    """
    rows = memory.features.shape[0]
    device = memory.features.device
    eos, pad = decoder.eos_id, decoder.pad_id
    cache = decoder.init_cache(memory, max_new_tokens)
    tokens = torch.full((rows,), decoder.bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    any_finished = False
    out = []
    for position in range(max_new_tokens):
        scores = logits(decoder.step(tokens, cache))  # (N, V)
        if position < min_new_tokens:  # eos not allowed yet: no row can finish
            scores[:, eos] = float("-inf")
            tokens = best_tokens(scores)
            out.append(tokens)
            continue
        tokens = best_tokens(scores)  # (N,)
        if any_finished:
            tokens.masked_fill_(finished, pad)
        out.append(tokens)
        ended = tokens == eos
        if any_finished or bool(ended.any()):
            finished |= ended
            any_finished = True
            if bool(finished.all()):
                break
    tokens = torch.stack(out, dim=1)  # (N, T)
    return Generation(tokens, _lengths(tokens, eos))


def greedy_uncached(decoder: StepDecoder, logits: Logits, memory: Sequence, max_new_tokens: int) -> Generation:
    """Greedy decoding that re-runs the decoder's full ``forward`` on the whole prefix at every step.

    Quadratic in the output length; the reference that the cached `greedy_search` must match.
    """
    rows = memory.features.shape[0]
    eos, pad = decoder.eos_id, decoder.pad_id
    prefix = torch.full((rows, 1), decoder.bos_id, dtype=torch.long, device=memory.features.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=prefix.device)
    for _ in range(max_new_tokens):
        hidden = decoder(memory, decoder_input=prefix).features[:, -1]  # (N, D)
        tokens = logits(hidden).argmax(dim=-1).masked_fill_(finished, pad)
        prefix = torch.cat([prefix, tokens[:, None]], dim=1)
        finished |= tokens == eos
        if bool(finished.all()):
            break
    out = prefix[:, 1:]
    return Generation(out, _lengths(out, eos))


def beam_search(decoder: StepDecoder, logits: Logits, memory: Sequence, beam_size: int, max_new_tokens: int,
                length_penalty: float = 1.0, min_new_tokens: int = 0) -> Generation:
    """Keep the ``beam_size`` best prefixes per source; return each source's best finished one.

    Candidates are ranked by ``log p / length ** length_penalty``. A beam that produced ``eos``
    keeps its slot and score (it continues with padding at no cost) until every beam of every
    source has finished or ``max_new_tokens`` is reached. The decoder's cache is reordered after
    each step (``cache.select``).

    Args:
        decoder, logits, memory, max_new_tokens, min_new_tokens: as in `greedy_search`.
        beam_size: beams per source ``K``.
        length_penalty: 0 ranks by the raw sum of log-probabilities; 1 by the mean per token.
    """
    batch = memory.features.shape[0]
    device = memory.features.device
    eos, pad = decoder.eos_id, decoder.pad_id
    K = beam_size
    N = batch * K
    cache = decoder.init_cache(memory, max_new_tokens, beam_size=K)
    tokens = torch.full((N,), decoder.bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch, K, device=device)
    scores[:, 1:] = float("-inf")  # all beams start equal: expand only the first at step 0
    scores = scores.view(N)
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    lengths = torch.zeros(N, device=device)
    base = (torch.arange(batch, device=device) * K)[:, None]  # (B, 1) first row of each source
    chosen, parents = [], []  # per step: the token of each row, and the row it continued
    for position in range(max_new_tokens):
        step_logits = logits(decoder.step(tokens, cache)).float()  # (N, V)
        V = step_logits.shape[1]
        candidates = summed_log_probs(step_logits, scores)  # (N, V)
        if position < min_new_tokens:
            candidates[:, eos] = float("-inf")
        any_finished = position > 0 and bool(finished.any())
        if any_finished:  # a finished beam continues only with pad, at no cost
            candidates[finished] = float("-inf")
            candidates[finished, pad] = scores[finished]
        ranked = candidates
        if any_finished and length_penalty:  # else every length is equal: raw sums rank the same way
            ranked = candidates / torch.where(finished, lengths, float(position + 1))[:, None] ** length_penalty
        _, best = ranked.view(batch, K * V).topk(K, dim=1)  # (B, K)
        source_rows = (base + best // V).view(N)
        tokens = (best % V).view(N)
        scores = candidates.view(batch, K * V).gather(1, best).view(N)
        finished = finished[source_rows]
        lengths = torch.where(finished, lengths[source_rows], float(position + 1))  # finished rows keep theirs
        cache.select(source_rows)
        chosen.append(tokens)
        parents.append(source_rows)
        finished = finished | (tokens == eos)
        if bool(finished.all()):
            break
    normalised = scores / lengths ** length_penalty if length_penalty else scores
    rows = base.view(batch) + normalised.view(batch, K).argmax(dim=1)  # (B,) each source's best row
    best_scores = normalised[rows]
    out = []
    for step_tokens, step_parents in zip(reversed(chosen), reversed(parents)):  # follow the rows back
        out.append(step_tokens[rows])
        rows = step_parents[rows]
    tokens = torch.stack(out[::-1], dim=1)  # (B, T)
    return Generation(tokens, _lengths(tokens, eos), best_scores)


def generate(model: Any, source: torch.Tensor, beam_size: int | None = None, max_new_tokens: int | None = None,
             min_new_tokens: int = 0, length_penalty: float | None = None, head: str | None = None) -> Generation:
    """Encode ``source`` and decode it with greedy (``beam_size`` 1) or beam search.

    Defaults for ``beam_size``, ``length_penalty`` and ``max_new_tokens`` come from the model's
    generation head (``generation_defaults()``, its spec options).

    Args:
        model: an edh `Model` with a `StepDecoder` and a head on it that ``generates`` (``lm``).
        source: the encoder's input: ``(B, S)`` token ids, right-padded (or images, audio...).
        head: the head to use (default: the first that reads the decoder).
    """
    if not generates(model):
        raise ValueError("generate needs a model whose decoder decodes step by step (e.g. decoder: transformer)")
    if head is None:
        _, lm = generation_head(model)
    else:
        lm = model.heads[head]
    defaults = lm.generation_defaults()
    beam_size = beam_size if beam_size is not None else defaults.get("beam_size", 1)
    length_penalty = length_penalty if length_penalty is not None else defaults.get("length_penalty", 1.0)
    max_new_tokens = max_new_tokens or defaults.get("max_new_tokens") or \
        default_max_new_tokens(source.shape[1] if source.ndim == 2 and not source.is_floating_point() else None,
                               model.decoder)
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    with torch.inference_mode():
        memory = model.decoder.memory(model.encoder(source))  # a Sequence (an image pyramid: its cells)
        if beam_size == 1:
            return greedy_search(model.decoder, lm.logits, memory, max_new_tokens, min_new_tokens)
        return beam_search(model.decoder, lm.logits, memory, beam_size, max_new_tokens, length_penalty,
                           min_new_tokens)
