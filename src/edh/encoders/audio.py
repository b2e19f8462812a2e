"""The speech encoder: waveform -> log-mel frames -> conv subsampling (/4) -> Transformer or BiLSTM -> a `Sequence`.

Padding: ``Model.forward`` gives the encoder only the input tensor, so a batch of clips of several lengths
arrives as one ``(B, samples)`` waveform, each clip right-padded with zeros (exact ``0.0``, what the
speech datasets' collate and ``edh predict`` give). The encoder takes a clip to end at its last non-zero
sample: every frame after it is padding, masked out of the normalisation, the convolutions, attention (or
the backward LSTM) and the head's CTC lengths. The one limit: digital silence (exact zeros) at the end
of a clip counts as padding too, which drops nothing a recogniser needs (it is silence), and a clip's
features never depend on what it is batched with.

The STFT is ``torch.stft`` (centred frames, zero padding, Hann window); exported to ONNX it becomes a 1-D
convolution with the fixed DFT basis (a windowed cos / sin pair per frequency bin, a buffer that is not
saved), which traces into a plain ``Conv`` and gives the same numbers (checked in the tests).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edh.core.features import FeatureSpec, Sequence
from edh.core.registry import register_encoder
from edh.encoders.base import Encoder
from edh.layers.positional import make_positions
from edh.layers.transformer import EncoderLayer, init_transformer_weights
from edh.utils.weights import load_encoder_weights

STACKS = ("transformer", "lstm")
NORMALIZE = ("utterance", "fixed", "none")


# ---- features --------------------------------------------------------------------------------------
def hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    """The HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale (no area normalisation), as ``torchaudio``'s default.

    Returns: ``(n_freqs, n_mels)``: power spectrum bins -> mel bands.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)  # (F,)
    points = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                      dtype=torch.float64))  # (M + 2,)
    widths = points[1:] - points[:-1]  # (M + 1,)
    slopes = points[None, :] - freqs[:, None]  # (F, M + 2)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def dft_basis(n_fft: int) -> torch.Tensor:
    """``(2 * (n_fft // 2 + 1), 1, n_fft)`` Hann-windowed cos (real) and -sin (imaginary) kernels."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = 2 * math.pi * k * n / n_fft  # (F, n_fft)
    return torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])[:, None, :].float()


def clip_lengths(waves: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` zero-padded waveforms -> ``(B,)`` samples up to each clip's last non-zero sample."""
    positions = torch.arange(1, waves.shape[1] + 1, device=waves.device)  # (N,)
    return ((waves != 0).long() * positions).amax(dim=1)


def conv_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Valid positions after a kernel-3, stride-2, padding-1 convolution."""
    return torch.div(lengths - 1, 2, rounding_mode="floor") + 1


def time_mask(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """``(B, total)`` True at the valid positions (``t < length``)."""
    return torch.arange(total, device=lengths.device)[None, :] < lengths[:, None]


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, freq_masks: int, freq_width: int, time_masks: int,
                 time_width: int, max_time_fraction: float = 0.1) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) without time warping: zero ``freq_masks`` bands of up to
    ``freq_width`` mel bins and ``time_masks`` spans of up to ``time_width`` frames (at most
    ``max_time_fraction`` of the clip each), drawn per clip. ``x``: ``(B, M, T)`` normalised log-mels."""
    B, M, T = x.shape
    keep = torch.ones(B, M, T, dtype=torch.bool, device=x.device)
    bins = torch.arange(M, device=x.device)[None, :]
    for _ in range(freq_masks):
        width = torch.randint(0, freq_width + 1, (B, 1), device=x.device)
        start = (torch.rand(B, 1, device=x.device) * (M - width + 1)).floor()
        keep &= ~((bins >= start) & (bins < start + width))[:, :, None]
    frames = torch.arange(T, device=x.device)[None, :]
    limit = torch.clamp((lengths.float() * max_time_fraction).floor(), max=time_width)[:, None]  # (B, 1)
    for _ in range(time_masks):
        width = (torch.rand(B, 1, device=x.device) * (limit + 1)).floor()
        start = (torch.rand(B, 1, device=x.device) * (lengths[:, None].float() - width + 1)).floor()
        keep &= ~((frames >= start) & (frames < start + width))[:, None, :]
    return x * keep


class LogMel(nn.Module):
    """``(B, N)`` waveforms -> ``(B, n_mels, T)`` log-mel frames, ``T = N // hop_length + 1`` (centred)."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float,
                 f_max: float | None) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("basis", dft_basis(n_fft), persistent=False)
        filters = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max).T.contiguous()  # (M, F)
        self.register_buffer("filters", filters, persistent=False)

    def power(self, waves: torch.Tensor, fft: bool | None = None) -> torch.Tensor:
        """``(B, N)`` -> ``(B, n_fft // 2 + 1, T)`` squared magnitudes of the centred, zero-padded STFT.

        ``fft`` (default: except while exporting to ONNX): ``torch.stft``; else the same transform as a
        ``conv1d`` with the DFT basis, which every ONNX runtime runs (and costs ``n_fft / log n_fft``
        times more, which matters only in training)."""
        if fft if fft is not None else not torch.onnx.is_in_onnx_export():
            spectrum = torch.stft(waves, self.n_fft, self.hop_length, window=self.window, center=True,
                                  pad_mode="constant", return_complex=True)
            return spectrum.real ** 2 + spectrum.imag ** 2
        half = self.n_fft // 2
        x = F.pad(waves[:, None, :], (half, half))  # (B, 1, N + n_fft)
        spectrum = F.conv1d(x, self.basis, stride=self.hop_length)  # (B, 2F, T)
        real, imag = spectrum.chunk(2, dim=1)
        return real * real + imag * imag

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.filters, self.power(waves))  # (B, M, T)
        return torch.log(mel + 1e-6)


class ConvSubsampling(nn.Module):
    """Two kernel-3 stride-2 conv2d + ReLU over (time, mel): ``(B, M, T)`` -> ``(B, T / 4, d_model)``.

    Padded frames are zeroed after each convolution, so a clip's output does not depend on its batch.
    """

    def __init__(self, n_mels: int, channels: int, d_model: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        mels = (n_mels - 1) // 2 + 1
        mels = (mels - 1) // 2 + 1
        self.proj = nn.Linear(channels * mels, d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x ``(B, M, T)`` features, zero where padding; lengths ``(B,)`` valid frames."""
        x = x.transpose(1, 2)[:, None]  # (B, 1, T, M)
        for conv in (self.conv1, self.conv2):
            x = F.relu(conv(x))  # (B, C, T', M')
            lengths = conv_lengths(lengths)
            x = x * time_mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
        B, C, T, M = x.shape
        return self.proj(x.permute(0, 2, 1, 3).reshape(B, T, C * M)), lengths  # (B, T / 4, D)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each ``(T, D)`` row of ``x`` ``(B, T, D)`` within its length; padding stays in place."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)  # (B, T)
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


class BiLSTMStack(nn.Module):
    """Bidirectional LSTM layers, exact on padded batches: each layer runs a forward `nn.LSTM` over the
    frames and a backward one over each clip reversed within its length (`reverse_padded`), so the
    backward direction starts at the clip's last frame, not in its padding (no packed sequences: the
    layers trace into ONNX as they are). Shapes: ``(B, T, D)`` -> ``(B, T, 2 * hidden)``."""

    def __init__(self, in_dim: int, hidden: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        dims = [in_dim] + [2 * hidden] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims)
        self.backward_layers = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for index, (ahead, behind) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if index:
                x = self.dropout(x)
            onward, _ = ahead(x)  # (B, T, hidden)
            backward, _ = behind(reverse_padded(x, lengths))
            x = torch.cat([onward, reverse_padded(backward, lengths)], dim=-1)  # (B, T, 2 * hidden)
        return x


# ---- the encoder -----------------------------------------------------------------------------------
@register_encoder("audio")
class AudioEncoder(Encoder):
    """Speech encoder: log-mel spectrogram, per-utterance normalisation, SpecAugment (training),
    convolutional subsampling (/4 in time), then a Transformer or bidirectional LSTM stack.

    Args:
        sample_rate: of the input waveforms (the data's; 16 kHz for edh's speech datasets).
        n_fft, hop_length: STFT window (Hann) and hop in samples (400 / 160: 25 ms / 10 ms at 16 kHz).
        n_mels, f_min, f_max: mel bands and their frequency range (f_max None: sample_rate / 2).
        normalize: ``utterance`` (each clip's mean / std per mel band, over its own frames), ``fixed``
            (``feature_mean`` / ``feature_std`` for every clip) or ``none``.
        feature_mean, feature_std: the ``fixed`` normalisation of the log-mels.
        spec_augment: mask ``freq_masks`` bands of up to ``freq_width`` mels and ``time_masks`` spans of
            up to ``time_width`` frames (and 10 % of the clip) while training.
        conv_channels: channels of the two subsampling convolutions.
        stack: ``transformer`` (pre-LN self-attention layers with sinusoidal positions) or ``lstm``
            (bidirectional, ``d_model / 2`` units per direction).
        d_model, num_layers, num_heads, ffn_dim, dropout: the stack's sizes (heads / FFN: transformer).
        max_len: the longest output (frames after subsampling) the positions cover (transformer).
        weights: a local weight file saved from this encoder.

    Shapes:
        waveforms ``(B, samples)`` float in [-1, 1], right-padded with zeros -> `Sequence` of
        ``(B, T, d_model)`` with ``T = ceil(ceil((samples // hop_length + 1) / 2) / 2)`` and a ``(B, T)``
        padding mask.
    """

    input_kind = "audio"
    input_axes = {0: "batch", 1: "samples"}
    produces = "sequence"
    in_channels = 1
    default_input_size = (16000,)

    def __init__(self, sample_rate: Annotated[int, Field(ge=1000, le=192000)] = 16000,
                 n_fft: Annotated[int, Field(ge=16, le=8192)] = 400,
                 hop_length: Annotated[int, Field(ge=1, le=8192)] = 160,
                 n_mels: Annotated[int, Field(ge=4, le=512)] = 80, f_min: float = 0.0, f_max: float | None = None,
                 normalize: str = "utterance", feature_mean: float = 0.0, feature_std: float = 1.0,
                 spec_augment: bool = True, freq_masks: Annotated[int, Field(ge=0, le=16)] = 2,
                 freq_width: Annotated[int, Field(ge=0, le=512)] = 10,
                 time_masks: Annotated[int, Field(ge=0, le=64)] = 2,
                 time_width: Annotated[int, Field(ge=0, le=10000)] = 20,
                 conv_channels: Annotated[int, Field(ge=1, le=4096)] = 64, stack: str = "transformer",
                 d_model: int = 144, num_layers: int = 4, num_heads: int = 4, ffn_dim: int = 576,
                 dropout: float = 0.1, max_len: int = 4096, weights: str | None = None) -> None:
        super().__init__()
        problem = None
        if stack not in STACKS:
            problem = f"stack must be one of {', '.join(STACKS)}, got {stack!r}"
        elif normalize not in NORMALIZE:
            problem = f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}"
        elif hop_length > n_fft:
            problem = f"hop_length ({hop_length}) must not exceed n_fft ({n_fft}): samples would be skipped"
        elif f_max is not None and not f_min < f_max <= sample_rate / 2:
            problem = f"f_max must be above f_min ({f_min}) and at most sample_rate / 2, got {f_max}"
        elif stack == "lstm" and d_model % 2:
            problem = f"stack: lstm splits d_model between two directions; give an even d_model, got {d_model}"
        elif stack == "transformer" and d_model % num_heads:
            problem = f"d_model ({d_model}) must be divisible by num_heads ({num_heads})"
        elif normalize == "fixed" and feature_std <= 0:
            problem = f"feature_std must be positive, got {feature_std}"
        if problem:
            raise ValueError(f"audio encoder: {problem}")
        self.sample_rate, self.hop_length, self.n_mels, self.d_model = sample_rate, hop_length, n_mels, d_model
        self.normalize, self.feature_mean, self.feature_std = normalize, feature_mean, feature_std
        self.augment = (freq_masks, freq_width, time_masks, time_width) if spec_augment else None
        self.stack = stack
        self.features = LogMel(sample_rate, n_fft, hop_length, n_mels, f_min, f_max)
        self.subsampling = ConvSubsampling(n_mels, conv_channels, d_model)
        self.dropout = nn.Dropout(dropout)
        if stack == "transformer":
            self.positions = make_positions("sinusoidal", d_model, max_len)
            self.layers = nn.ModuleList(EncoderLayer(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers))
            self.final_norm = nn.LayerNorm(d_model)
            init_transformer_weights(self, d_model)
        else:
            self.lstm = BiLSTMStack(d_model, d_model // 2, num_layers, dropout)
        self.out_spec = FeatureSpec("sequence", (d_model,))
        if weights:
            load_encoder_weights(self, weights)

    def example_input(self, input_size: tuple[int, ...] | None = None, batch_size: int = 1,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """``(batch_size, samples)`` of quiet noise (a fixed seed; not zeros, which would all be padding)."""
        samples = tuple(input_size or self.default_input_size)[0]
        noise = torch.randn(batch_size, samples, generator=torch.Generator().manual_seed(0))
        return (0.1 * noise).to(device)

    def check_input(self, inputs: torch.Tensor) -> None:
        if not inputs.is_floating_point():
            raise ValueError(f"the audio encoder takes float waveforms in [-1, 1] shaped (B, samples), got "
                             f"{inputs.dtype} {tuple(inputs.shape)}; scale 16-bit PCM as samples / 32768")
        if inputs.ndim != 2:
            hint = (" (one channel per clip: mix stereo down to mono and drop the channel axis)"
                    if inputs.ndim == 3 else "")
            raise ValueError(f"the audio encoder takes mono waveforms shaped (B, samples), right-padded with zeros, "
                             f"got {tuple(inputs.shape)}{hint}")

    def output_length(self, samples: int) -> int:
        """Output frames of a clip of ``samples`` samples (``T`` in Shapes)."""
        frames = samples // self.hop_length + 1
        return ((frames - 1) // 2 + 1 - 1) // 2 + 1

    def _normalize(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(B, M, T)`` log-mels; ``valid`` ``(B, 1, T)`` float, 1 at a clip's frames."""
        if self.normalize == "utterance":
            count = valid.sum(-1, keepdim=True)  # (B, 1, 1)
            mean = (x * valid).sum(-1, keepdim=True) / count
            var = (((x - mean) * valid) ** 2).sum(-1, keepdim=True) / count
            x = (x - mean) / torch.sqrt(var + 1e-5)
        elif self.normalize == "fixed":
            x = (x - self.feature_mean) / self.feature_std
        return x * valid

    def forward(self, waves: torch.Tensor) -> Sequence:
        """Args: waves ``(B, samples)``, each clip right-padded with zeros."""
        frames = torch.div(clip_lengths(waves), self.hop_length, rounding_mode="floor") + 1  # (B,)
        with torch.autocast(waves.device.type, enabled=False):  # features in float32 under mixed precision too
            x = self.features(waves)  # (B, M, T)
            valid = time_mask(frames, x.shape[-1])[:, None, :].to(x.dtype)  # (B, 1, T)
            x = self._normalize(x, valid)
            if self.training and self.augment is not None:
                x = spec_augment(x, frames, *self.augment)
        x, lengths = self.subsampling(x, frames)  # (B, T', D), (B,)
        padding = ~time_mask(lengths, x.shape[1])  # (B, T')
        if self.stack == "transformer":
            x = self.dropout(x + self.positions(x.shape[1]))
            mask = ~padding[:, None, None, :]  # (B, 1, 1, T') True where attending
            for layer in self.layers:
                x = layer(x, mask)
            x = self.final_norm(x)
        else:
            x = self.lstm(self.dropout(x), lengths)
        return Sequence(x, padding)
