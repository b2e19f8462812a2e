"""Recurrent layers: a padding-aware LSTM / GRU stack over any sequence, Luong attention, masked means.

`RecurrentStack` runs ``nn.LSTM`` / ``nn.GRU`` over right-padded sequences, two ways that give the
same values at real positions and zeros at padded ones (``tests/test_rnn.py`` checks it):

- packed (``pack_padded_sequence``, ``enforce_sorted=False``): padding costs nothing and never
  reaches a state. The default on CUDA, where cuDNN runs packed sequences natively.
- unpacked: one layer and direction at a time over the padded tensor; the forward direction meets
  a row's real positions before its padding, the backward one reads each row reversed within its
  length (``reverse_within_length``), so padding never reaches a real position either. The default
  on the CPU, where oneDNN's fused RNN kernel takes no packed input and the packed path falls back
  to one small matmul per time step (a training step of the numbers translator: ~1.5x slower), and
  always while tracing or exporting to ONNX, which cannot export packed sequences.

Any encoder whose output is a sequence (text, audio frames) can stack it on its features.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from edh.layers import packed

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def rnn_class(cell: str) -> type[nn.RNNBase]:
    """``lstm`` -> ``nn.LSTM``, ``gru`` -> ``nn.GRU``; anything else is a ValueError naming both."""
    if cell not in CELLS:
        raise ValueError(f"unknown recurrent cell {cell!r}; pick one of {', '.join(CELLS)}")
    return CELLS[cell]


def masked_mean(features: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
    """``(B, S, C)`` features, ``(B, S)`` True-at-padding -> ``(B, C)`` mean over the real positions
    (a row with none gives zeros)."""
    if padding is None:
        return features.mean(dim=1)
    keep = (~padding).to(features.dtype)[..., None]  # (B, S, 1)
    return (features * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first ``lengths[b]`` positions, leave its padding where it is.

    ``(B, S, C)``, ``(B,)`` -> ``(B, S, C)``; applying it twice gives ``x`` back. Traceable (a gather).
    """
    S = x.shape[1]
    t = torch.arange(S, device=x.device)[None, :]  # (1, S)
    n = lengths[:, None]
    index = torch.where(t < n, n - 1 - t, t)  # (B, S)
    return x.gather(1, index[..., None].expand_as(x))


def exporting() -> bool:
    """True while tracing (``torch.jit.trace``) or exporting to ONNX: packed sequences are not traceable."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class RecurrentStack(nn.Module):
    """``num_layers`` LSTM or GRU layers (optionally bidirectional) over a right-padded sequence.

    The weights are one ``nn.LSTM`` / ``nn.GRU`` (``batch_first``), so its state dict is PyTorch's.

    Args:
        cell: ``lstm`` or ``gru``.
        input_size: features per position ``D``.
        hidden_size: state width ``H`` per direction.
        num_layers: stacked layers.
        bidirectional: a second direction reading each sequence backwards; outputs are concatenated.
        dropout: between layers (training only), as ``nn.LSTM``'s ``dropout``.
        pack: run packed sequences (True), unpacked (False), or None: packed on CUDA only (see the
            module doc); tracing and ONNX export always run unpacked.

    Shapes:
        ``(B, S, D)`` and a ``(B, S)`` padding mask (True at padding, right-padded) ->
        ``(B, S, H * directions)``, zeros at padded positions.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, pack: bool | None = None) -> None:
        super().__init__()
        self.pack = pack
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.directions = 2 if bidirectional else 1
        self.dropout = dropout if num_layers > 1 else 0.0
        self.rnn = rnn_class(cell)(input_size, hidden_size, num_layers, batch_first=True,
                                   bidirectional=bidirectional, dropout=self.dropout)

    @property
    def output_size(self) -> int:
        """``hidden_size * directions``."""
        return self.hidden_size * self.directions

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        if padding is None:
            return self.rnn(x)[0]
        lengths = (~padding).sum(dim=1).clamp(min=1)  # (B,) a row of only padding runs one position (then masked)
        pack = self.pack if self.pack is not None else x.is_cuda
        if not pack or exporting():
            out = self.unpacked(x, lengths)
        else:
            sequences = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out = pad_packed_sequence(self.rnn(sequences)[0], batch_first=True, total_length=x.shape[1])[0]
        return out.masked_fill(padding[..., None], 0.0)

    def unpacked(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The traceable path: each layer and direction over the padded tensor, exact at real positions.

        The forward direction reaches each real position before any padding. The backward one reads
        the row reversed within its length, so it too starts at the row's last real position.
        """
        weights = self.rnn._flat_weights  # per layer and direction: w_ih, w_hh, b_ih, b_hh
        run = torch.lstm if self.cell == "lstm" else torch.gru
        B = x.shape[0]
        for layer in range(self.num_layers):
            if layer and self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
            outputs = []
            for direction in range(self.directions):
                index = 4 * (layer * self.directions + direction)
                params = weights[index:index + 4]
                h0 = x.new_zeros(1, B, self.hidden_size)
                state = (h0, h0) if self.cell == "lstm" else h0
                source = x if direction == 0 else reverse_within_length(x, lengths)
                out = run(source, state, params, True, 1, 0.0, False, False, True)[0]  # (B, S, H)
                outputs.append(out if direction == 0 else reverse_within_length(out, lengths))
            x = torch.cat(outputs, dim=-1) if self.directions > 1 else outputs[0]
        return x


def _fused_weights(rnn: nn.RNNBase, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s input and hidden weights as one ``(G, E + H)`` matrix (and its bias), so a step is
    one matmul of ``[x; h]``. LSTM: gates ``i, f, g, o`` (biases summed). GRU: ``r, z``, then ``n``'s
    input and hidden parts apart (``n = tanh(n_x + r * n_h)``), so ``G = 4 H`` with two zero blocks."""
    w_ih, w_hh, b_ih, b_hh = rnn._flat_weights[4 * layer:4 * layer + 4]
    if isinstance(rnn, nn.LSTM):
        return torch.cat([w_ih, w_hh], dim=1), b_ih + b_hh
    H = rnn.hidden_size
    top = torch.cat([w_ih[:2 * H], w_hh[:2 * H]], dim=1)  # r, z: input and hidden parts summed
    n_x = torch.cat([w_ih[2 * H:], torch.zeros_like(w_hh[2 * H:])], dim=1)
    n_h = torch.cat([torch.zeros_like(w_ih[2 * H:]), w_hh[2 * H:]], dim=1)
    return torch.cat([top, n_x, n_h]), torch.cat([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:], b_hh[2 * H:]])


def step_weights(rnn: nn.RNNBase) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`_fused_weights` of every layer: kept on the module between calls while no gradient or trace
    needs them fresh, rebuilt when a weight changes (an optimizer step, ``load_state_dict``, ``.to()``)."""
    if torch.is_grad_enabled() or exporting() or torch.compiler.is_compiling():
        return [_fused_weights(rnn, layer) for layer in range(rnn.num_layers)]
    cached = rnn.__dict__.get("_edh_step_weights")  # (weak references to the weights, their versions, fused)
    if cached is not None and len(cached[0]) == len(rnn._flat_weights) and all(
            ref() is w and version == w._version for ref, version, w in zip(cached[0], cached[1], rnn._flat_weights)):
        return cached[2]
    with torch.inference_mode(False), torch.no_grad():  # plain tensors: `packed.linear` can pack them
        weights = [_fused_weights(rnn, layer) for layer in range(rnn.num_layers)]
    rnn.__dict__["_edh_step_weights"] = ([weakref.ref(w) for w in rnn._flat_weights],
                                         [w._version for w in rnn._flat_weights], weights)
    return weights


def rnn_step(rnn: nn.RNNBase, x: torch.Tensor, hidden: torch.Tensor,
             cell: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One time step through every layer of a unidirectional ``nn.LSTM`` / ``nn.GRU``, as the module computes
    it (no dropout between layers: generation runs in eval mode).

    Calling the module on a one-position sequence costs a oneDNN RNN primitive per layer and call
    (about 10x a fused step for 8 rows of 256 on this CPU); here each layer is one (packed) matmul of
    ``[x; h]`` and the gates' pointwise ops.

    Args:
        rnn: the module (``batch_first`` or not: only its weights are read).
        x: ``(N, E)`` the step's input; hidden, cell: ``(L, N, H)`` (cell: LSTM only).

    Returns:
        ``(N, H)`` the top layer's output, the new hidden ``(L, N, H)`` and cell (or None).
    """
    H = rnn.hidden_size
    hiddens, cells = [], []
    for layer, (weight, bias) in enumerate(step_weights(rnn)):
        gates = packed.linear(torch.cat([x, hidden[layer]], dim=1), weight, bias)  # (N, 4H)
        if cell is not None:
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * cell[layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c)
            cells.append(c)
        else:
            r, z = torch.sigmoid(gates[:, :2 * H]).chunk(2, dim=1)
            n = torch.tanh(gates[:, 2 * H:3 * H] + r * gates[:, 3 * H:])
            x = (1 - z) * n + z * hidden[layer]
        hiddens.append(x)
    return x, torch.stack(hiddens), (torch.stack(cells) if cell is not None else None)


class LuongAttention(nn.Module):
    """Global attention of Luong et al. 2015 (``general``: ``score(h, s) = h^T W_a s``; ``dot``: ``h^T s``).

    The memory's keys (``W_a s``) are computed once per source (`keys`); each query then costs one
    batched matmul for the scores and one for the context.

    Args:
        query_size: decoder state width ``H``.
        memory_size: memory width ``C`` (``dot`` needs ``C == H``).
        score: ``general`` or ``dot``.

    Shapes: query ``(B, T, H)``, keys ``(B, S, H)``, memory ``(B, S, C)``, mask ``(B, 1, S)`` additive
    (or None) -> context ``(B, T, C)``.
    """

    def __init__(self, query_size: int, memory_size: int, score: str = "general") -> None:
        super().__init__()
        if score not in ("general", "dot"):
            raise ValueError(f"unknown attention score {score!r}; pick general or dot")
        if score == "dot" and query_size != memory_size:
            raise ValueError(f"dot attention compares the decoder state (width {query_size}) with the memory (width "
                             f"{memory_size}) directly; make them equal or use attention: general")
        self.score = score
        self.proj = nn.Linear(memory_size, query_size, bias=False) if score == "general" else None

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """``(B, S, C)`` -> ``(B, S, H)`` what every query is compared with."""
        if self.proj is None:
            return memory
        return packed.linear(memory, self.proj.weight)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        scores = torch.bmm(query, keys.transpose(1, 2))  # (B, T, S)
        if mask is not None:
            scores = scores + mask
        return torch.bmm(scores.softmax(dim=-1), memory)  # (B, T, C)


def additive_padding(padding: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``(B, S)`` True-at-padding -> ``(B, 1, S)`` 0 / dtype-minimum float mask, or None."""
    if padding is None:
        return None
    mask = torch.zeros(padding.shape, dtype=dtype, device=padding.device)
    return mask.masked_fill(padding, torch.finfo(dtype).min)[:, None, :]
