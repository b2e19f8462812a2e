"""WAV files for speech: `read_wav` / `decode_wav` (the standard library's ``wave`` module), `resample`
and `pad_waves`.

Integer PCM (8-bit unsigned, 16-, 24- or 32-bit signed), any number of channels (mixed down to mono by
their mean), any sample rate (resampled to 16 kHz by `resample`, a Hann-windowed sinc filter, the
algorithm of torchaudio's ``resample``). Anything else (not RIFF/WAVE, float samples, compressed or
WAVE_FORMAT_EXTENSIBLE files, a truncated file) is an `AudioFormatError` naming the file and the fix
(``ffmpeg -i IN -ac 1 -ar 16000 -c:a pcm_s16le OUT.wav``).
"""

from __future__ import annotations

import functools
import io
import logging
import math
import wave
from pathlib import Path

import numpy as np
import torch

from edh.core.errors import DataError
from edh.data.base import DataFilesMissingError

log = logging.getLogger("edh")

SAMPLE_RATE = 16000
CONVERT = "ffmpeg -i {name} -ac 1 -ar 16000 -c:a pcm_s16le {stem}.wav"
_FORMATS = {3: "32-bit float samples (WAVE_FORMAT_IEEE_FLOAT)", 2: "compressed (Microsoft ADPCM)",
            6: "compressed (A-law)", 7: "compressed (mu-law)", 17: "compressed (IMA ADPCM)", 85: "compressed (MP3)",
            65534: "WAVE_FORMAT_EXTENSIBLE (not read by Python 3.11's wave module)"}


class AudioFormatError(DataError):
    """An audio file edh cannot read as it is; the message names the file and how to convert it."""


# ---- reading and resampling ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _sinc_kernels(orig: int, new: int, lowpass_width: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """``(new, 1, 2 * width + orig)`` polyphase kernels of `resample` and ``width``."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_width * orig / base)
    taps = torch.arange(-width, width + orig, dtype=torch.float64)[None, :] / orig  # (1, K)
    t = (taps - torch.arange(new, dtype=torch.float64)[:, None] / new) * base  # (new, K)
    t = t.clamp(-lowpass_width, lowpass_width)
    window = torch.cos(t * math.pi / lowpass_width / 2) ** 2
    t = t * math.pi
    kernels = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return kernels[:, None, :].float(), width


def resample(waves: torch.Tensor, orig_rate: int, new_rate: int, lowpass_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited resampling of ``(..., N)`` waveforms by a Hann-windowed sinc filter (torchaudio's
    ``sinc_interp_hann`` algorithm, written here: torchaudio is not a dependency).

    The rates are reduced by their gcd to ``orig / new``; ``new`` polyphase kernels of ``2 * width + orig``
    taps, one per output phase, run as a strided ``conv1d``. ``rolloff`` places the cutoff just below the
    lower Nyquist frequency; ``lowpass_width`` is the number of sinc zero crossings kept on each side.

    Returns: ``(..., ceil(N * new_rate / orig_rate))``.
    """
    if orig_rate == new_rate:
        return waves
    gcd = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // gcd, int(new_rate) // gcd
    kernels, width = _sinc_kernels(orig, new, lowpass_width, rolloff)
    shape, length = waves.shape[:-1], waves.shape[-1]
    x = torch.nn.functional.pad(waves.reshape(-1, 1, length).float(), (width, width + orig))
    y = torch.nn.functional.conv1d(x, kernels, stride=orig)  # (B, new, frames)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :math.ceil(new * length / orig)]
    return y.reshape(*shape, -1).to(waves.dtype)


def _samples(frames: bytes, width: int) -> np.ndarray:
    """Little-endian integer PCM bytes -> float32 in [-1, 1)."""
    if width == 1:  # unsigned
        return (np.frombuffer(frames, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        raw = np.frombuffer(frames, np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / float(1 << 23)
    return (np.frombuffer(frames, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)


def _format_problem(error: Exception, head: bytes) -> str:
    text = str(error)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        known = {b"ID3": "an MP3 file", b"\xff\xfb": "an MP3 file", b"fLaC": "a FLAC file", b"OggS": "an Ogg file",
                 b"RIFX": "a big-endian RIFX file", b"RF64": "an RF64 file"}
        what = next((name for magic, name in known.items() if head.startswith(magic)), None)
        return f"it is {what}, not a RIFF/WAVE file" if what else "it is not a RIFF/WAVE file"
    if text.startswith("unknown format:"):
        tag = int(text.split(":")[1])
        return f"its samples are {_FORMATS.get(tag, f'in format {tag}')}; edh reads integer PCM"
    if isinstance(error, EOFError) or "chunk" in text:
        return f"the file is truncated or damaged ({text or 'it ends early'})"
    return text


def decode_wav(source: str | Path | bytes, sample_rate: int = SAMPLE_RATE, name: str | None = None) -> np.ndarray:
    """A WAV file (a path, or its bytes) -> ``(samples,)`` float32 mono at ``sample_rate``.

    Integer PCM of 8 (unsigned), 16, 24 or 32 bits; channels are averaged; another sample rate is
    resampled (`resample`). Anything else is an `AudioFormatError` naming the file and the ffmpeg
    command that converts it.
    """
    name = name or str(source if not isinstance(source, bytes) else "audio")
    data = source if isinstance(source, bytes) else None
    if data is None:
        path = Path(source)
        if not path.is_file():
            raise DataFilesMissingError(f"audio file {path} does not exist" if not path.exists() else
                                        f"audio file {path} is not a file")
        data = path.read_bytes()
    fix = CONVERT.format(name=name, stem=Path(name).stem + "-16k")
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError, ValueError) as error:
        raise AudioFormatError(f"cannot read audio file {name}: {_format_problem(error, data[:12])}. Convert it to "
                               f"16-bit PCM WAV, e.g. `{fix}`") from None
    if width not in (1, 2, 3, 4) or channels < 1 or rate < 1:
        raise AudioFormatError(f"cannot read audio file {name}: {8 * width}-bit samples, {channels} channel(s) at "
                               f"{rate} Hz. Convert it to 16-bit PCM WAV, e.g. `{fix}`")
    usable = len(frames) - len(frames) % (width * channels)
    if usable == 0:
        raise AudioFormatError(f"audio file {name} holds no samples (an empty or truncated WAV file)")
    samples = _samples(frames[:usable], width).reshape(-1, channels).mean(axis=1)  # (N,) mono
    if rate != sample_rate:
        samples = resample(torch.from_numpy(samples), rate, sample_rate).numpy()
    return np.ascontiguousarray(samples, dtype=np.float32)


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`decode_wav` of a file."""
    return decode_wav(Path(path), sample_rate, str(path))


def check_wav_header(path: Path) -> None:
    """Raise the error `decode_wav` would for ``path``, reading only the header when it is fine."""
    try:
        with wave.open(str(path), "rb") as reader:
            if reader.getsampwidth() in (1, 2, 3, 4) and reader.getnframes() > 0:
                return
    except (wave.Error, EOFError, ValueError, OSError):
        pass
    decode_wav(path, SAMPLE_RATE, str(path))  # raises the full explanation


def pad_waves(waves: list[torch.Tensor]) -> torch.Tensor:
    """1-D waveforms -> ``(B, longest)``, right-padded with zeros."""
    return torch.nn.utils.rnn.pad_sequence([w.float() for w in waves], batch_first=True, padding_value=0.0)
