"""Speech for CTC transcription: ``audio-folder`` (a user's ``.wav`` files + a transcript TSV) and
``spoken-numbers`` (English number words synthesised at run time by ``espeak-ng``).

Items are ``(waveform (samples,) float in [-1, 1] at 16 kHz, {"text": character ids (S,)})``; `collate_speech`
right-pads a batch into ``(waves (B, N), {"text": (B, S)})`` with zeros (the audio encoder reads the
padding from the zeros; the CTC head's id 0 is the blank, which no transcript holds). The characters
(``alphabet``: id ``i + 1`` is ``alphabet[i]``) and the CTC head's ``vocab_size`` come with the data
(``DataInfo.extra``, ``head_defaults``).

WAV files are read by `read_wav` with the standard library's ``wave`` module: integer PCM (8-bit
unsigned, 16-, 24- or 32-bit signed), any number of channels (mixed down to mono by their mean), any
sample rate (resampled to 16 kHz by `resample`, a Hann-windowed sinc filter, the algorithm of
torchaudio's ``resample``). Anything else (not RIFF/WAVE, float samples, compressed or
WAVE_FORMAT_EXTENSIBLE files, a truncated file) is an `AudioFormatError` naming the file and the fix
(``ffmpeg -i IN -ac 1 -ar 16000 -c:a pcm_s16le OUT.wav``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from edh.core.errors import DataError, DataItemError, SpecError
from edh.core.registry import register_dataset
from edh.data.base import DataBundle, DataFilesMissingError, DataInfo, item_error, split_indices

log = logging.getLogger("edh")

SAMPLE_RATE = 16000
TARGET = "text"
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


def collate_speech(items: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """``[(wave, {"text": ids})]`` -> ``(waves (B, N), {"text": (B, S)})``, both zero-padded."""
    waves = pad_waves([w for w, _ in items])
    texts = torch.nn.utils.rnn.pad_sequence([t[TARGET] for _, t in items], batch_first=True, padding_value=0)
    return waves, {TARGET: texts}


# ---- text ----------------------------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """Whitespace runs -> one space, no leading / trailing space."""
    return " ".join(text.split())


def encode_text(text: str, alphabet: list[str]) -> torch.Tensor:
    """Characters -> ids ``alphabet.index(c) + 1`` (0 is the CTC blank)."""
    index = {c: i + 1 for i, c in enumerate(alphabet)}
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def speech_info(name: str, alphabet: list[str], sizes: dict[str, int], extra: dict[str, Any] | None = None) -> DataInfo:
    return DataInfo(
        input_kind="audio", in_channels=1, targets={TARGET: "transcription"},
        extra={"dataset": name, "sample_rate": SAMPLE_RATE, "alphabet": list(alphabet), "sizes": sizes,
               "encoder_defaults": {"sample_rate": SAMPLE_RATE},
               "head_defaults": {TARGET: {"vocab_size": len(alphabet) + 1, "alphabet": list(alphabet)}},
               **(extra or {})})


def with_targets(bundle: DataBundle, targets: str, tokenizer_file: str | None) -> DataBundle:
    """``targets: characters`` (CTC: character ids, the ``ctc`` head) or ``tokens`` (``<bos> ... <eos>``
    token ids for a step decoder + ``lm`` head: `edh.data.speech_tokens`)."""
    if targets == "characters":
        return bundle
    if targets != "tokens":
        raise ValueError(f"data.targets must be 'characters' (a ctc head) or 'tokens' (a step decoder + lm head), "
                         f"got {targets!r}")
    from edh.data.speech_tokens import token_targets

    return token_targets(bundle, tokenizer_file=tokenizer_file)


# ---- audio-folder --------------------------------------------------------------------------------------
class AudioFiles(Dataset):
    """WAV files and their transcripts, read (and resampled) when an item is asked for.

    ``sample_ids()`` are the file names relative to the folder (the data fingerprint)."""

    def __init__(self, root: Path, rows: list[tuple[str, str]], alphabet: list[str]) -> None:
        self.root, self.rows, self.alphabet = root, rows, alphabet
        self.targets = [encode_text(text, alphabet) for _, text in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def sample_ids(self) -> list[str]:
        return [file for file, _ in self.rows]

    def texts(self) -> list[str]:
        return [text for _, text in self.rows]

    def __getitem__(self, index: int):
        file = self.rows[index][0]
        try:
            wave_ = read_wav(self.root / file)
        except Exception as error:  # noqa: BLE001 - named, and kept across DataLoader workers
            raise item_error(str(self.root / file), error) from error
        return torch.from_numpy(wave_), {TARGET: self.targets[index]}


def read_transcripts(path: Path, root: Path) -> list[tuple[int, str, str, str | None]]:
    """``(line number, file, transcript, split or None)`` of each ``file<TAB>transcript[<TAB>split]`` line.

    Blank lines and lines starting with ``#`` are skipped. A line without a tab, a file that is not in
    ``root``, an empty transcript or an unknown split is a `DataError` naming the line.
    """
    from edh.data.textfiles import read_lines

    if not path.is_file():
        raise DataFilesMissingError(f"transcript file {path} does not exist; write one line per clip: "
                                    "file.wav<TAB>transcript (an optional third column: train, val or test)")
    rows, problems = [], []
    for number, line in enumerate(read_lines(path, "transcript file"), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        where = f"{path}, line {number}"
        if len(parts) < 2:
            problems.append(f"{where}: no tab; expected file.wav<TAB>transcript, got {line[:60]!r}")
            continue
        file, text = parts[0].strip(), normalize_text(parts[1])
        split = parts[2].strip() if len(parts) > 2 and parts[2].strip() else None
        if not text:
            problems.append(f"{where}: the transcript of {file} is empty; give its words, or drop the line")
        elif not (root / file).is_file():
            problems.append(f"{where}: {file} is not in {root} (missing file)")
        elif split is not None and split not in ("train", "val", "test"):
            problems.append(f"{where}: the third column must be train, val or test, got {split!r}")
        else:
            rows.append((number, file, text, split))
    if problems:
        shown = "\n  - ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DataError(f"{len(problems)} bad line(s) in transcript file {path}:\n  - {shown}")
    if not rows:
        raise DataError(f"transcript file {path} lists no clips (expected file.wav<TAB>transcript lines)")
    return rows


@register_dataset("audio-folder")
def audio_folder(path: str, transcripts: str = "transcripts.tsv", val_fraction: float = 0.1,
                 test_fraction: float = 0.1, targets: str = "characters", tokenizer_file: str | None = None,
                 seed: int = 0) -> DataBundle:
    """A folder of ``.wav`` files and a TSV of their transcripts, for CTC transcription.

    ``transcripts`` (relative to ``path``, or absolute) holds ``file.wav<TAB>transcript`` lines, the file
    relative to ``path``; an optional third column (``train`` / ``val`` / ``test``) puts the clip in that
    split (e.g. held-out speakers), and the clips without one are split at random by ``seed``. Every
    file's header is checked when the data is built. The alphabet is every character of every
    transcript (all splits, so each target can be spelled), sorted.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataFilesMissingError(f"audio folder {root} does not exist (data.path)")
    table = Path(transcripts) if Path(transcripts).is_absolute() else root / transcripts
    rows = read_transcripts(table, root)
    for _, file, _, _ in rows:
        check_wav_header(root / file)
    fixed = {s: [(f, t) for _, f, t, split in rows if split == s] for s in ("train", "val", "test")}
    free = [(f, t) for _, f, t, split in rows if split is None]
    if free:
        train, val, test = split_indices(len(free), val_fraction, test_fraction, seed)
        for split, picked in (("train", train), ("val", val), ("test", test)):
            fixed[split] += [free[i] for i in picked]
    if not fixed["train"]:
        raise DataError(f"{table}: no clip is in the training split")
    alphabet = sorted({c for _, _, text, _ in rows for c in text})
    parts = {split: AudioFiles(root, items, alphabet) for split, items in fixed.items()}
    info = speech_info("audio-folder", alphabet, {s: len(p) for s, p in parts.items()})
    return with_targets(DataBundle(parts["train"], parts["val"], parts["test"], info, collate_speech), targets,
                        tokenizer_file)


# ---- spoken-numbers ------------------------------------------------------------------------------------
BASES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
TRAIN_VARIANTS = ("", "m1", "m2", "m4", "m5", "m6", "m7", "f1", "f2", "f4", "klatt", "klatt2", "klatt4")
TEST_VARIANTS = ("m3", "f3", "f5", "klatt3")
TRAIN_VOICES = tuple(b + (f"+{v}" if v else "") for b in BASES[:6] for v in TRAIN_VARIANTS)
TEST_VOICES = tuple(f"{b}+{v}" for b in BASES for v in TEST_VARIANTS) + BASES[6:]
ALPHABET = list(" abcdefghijklmnopqrstuvwxyz")
ESPEAK_RATE = 22050
CACHE_FORMAT = 1


class ClipStore:
    """Every clip of one spoken-numbers build (all splits, in order), read from its cache file, or
    synthesised into it, the first time a clip is asked for: building the data (``edh describe``, the
    fingerprint) needs only the plan. A lock file beside the cache makes concurrent builds (DataLoader
    workers, two runs) synthesise once; the others wait and read the cache."""

    def __init__(self, path: Path, rows: list[dict[str, Any]], workers: int) -> None:
        self.path, self.rows, self.workers = path, rows, workers
        self._clips: list[np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:  # a spawned DataLoader worker reads the cache itself
        return {**self.__dict__, "_clips": None}

    def clip(self, index: int) -> np.ndarray:
        if self._clips is None:
            self._clips = load_or_synthesize(self.path, self.rows, self.workers)
        return self._clips[index]


class SpokenClips(Dataset):
    """One split of synthesised clips (int16 at 16 kHz, in a `ClipStore` from ``offset`` on), with white
    noise at each clip's SNR added on reading (the same noise every time: it is drawn from the clip's
    seed). ``content_digest`` (the fingerprint) hashes the plan: what was said, by which voice, speed,
    pitch, gain and noise; the clips are a function of it (and of the espeak-ng version, not hashed)."""

    def __init__(self, store: ClipStore, offset: int, rows: list[dict[str, Any]], seed: int) -> None:
        self.store, self.offset, self.rows, self.seed = store, offset, rows, seed
        self.targets = [encode_text(row["text"], ALPHABET) for row in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def texts(self) -> list[str]:
        return [row["text"] for row in self.rows]

    def content_digest(self) -> str:
        return hashlib.sha256(json.dumps([CACHE_FORMAT, self.rows, self.seed], sort_keys=True).encode()).hexdigest()

    def __getitem__(self, index: int):
        row = self.rows[index]
        clean = self.store.clip(self.offset + index).astype(np.float32) / 32768.0 * row["gain"]
        rng = np.random.default_rng([self.seed, row["noise_seed"]])
        rms = float(np.sqrt(np.mean(clean ** 2))) or 1e-3
        noisy = clean + rng.standard_normal(len(clean)).astype(np.float32) * rms / 10 ** (row["snr_db"] / 20)
        return torch.from_numpy(np.clip(noisy, -1.0, 1.0)), {TARGET: self.targets[index]}


def spoken_text(number: int, style: str) -> str:
    """``402`` -> ``four hundred and two`` (words; hyphens and commas dropped) or ``four zero two`` (digits)."""
    from num2words import num2words

    if style == "digits":
        return " ".join(num2words(int(d)) for d in str(number))
    text = num2words(number, lang="en").replace("-", " ").replace(",", " ")
    return normalize_text(text.lower())


def cache_root(cache_dir: str | None) -> Path:
    """``cache_dir``, else ``$EDH_CACHE_DIR``, else ``$XDG_CACHE_HOME/edh`` (``~/.cache/edh``), + ``spoken-numbers``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    base = os.environ.get("EDH_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edh"
    return Path(base) / "spoken-numbers"


def espeak_program() -> str:
    program = shutil.which("espeak-ng")
    if program is None:
        raise DataFilesMissingError(
            "spoken-numbers synthesises its clips with espeak-ng, which is not installed. Install it with "
            "`apt-get install espeak-ng` (Debian / Ubuntu; `brew install espeak-ng` on macOS), or give the "
            "data.cache_dir of clips synthesised before")
    return program


def trim_silence(samples: np.ndarray, threshold: float = 1e-3, margin: int = 800) -> np.ndarray:
    """The samples from ``margin`` before the first to ``margin`` after the last one above ``threshold``."""
    loud = np.nonzero(np.abs(samples) > threshold)[0]
    if not len(loud):
        return samples
    return samples[max(0, loud[0] - margin):loud[-1] + 1 + margin]


def synthesize(program: str, text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One clip by espeak-ng: int16 at 16 kHz, leading and trailing silence trimmed."""
    command = [program, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    if result.returncode != 0 or len(result.stdout) <= 44:
        message = result.stderr.decode(errors="replace").strip() or f"exit code {result.returncode}, no audio"
        raise DataItemError(f"espeak-ng could not speak {text!r} with voice {voice!r}: {message}. "
                        "`espeak-ng --voices=en` lists the voices; a variant is added as VOICE+VARIANT (en-us+f3)")
    samples = decode_wav(result.stdout, SAMPLE_RATE, f"espeak-ng output ({voice})")
    return np.round(np.clip(trim_silence(samples), -1, 1) * 32767).astype(np.int16)


def _plan(count: int, voices: list[str], max_number: int, style: str, speeds: list[int],
          pitches: list[int], snr_db: list[float], rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    for _ in range(count):
        number = int(rng.integers(0, max_number + 1))
        rows.append({"number": number, "text": spoken_text(number, style), "voice": str(rng.choice(voices)),
                     "speed": int(rng.integers(speeds[0], speeds[1] + 1)),
                     "pitch": int(rng.integers(pitches[0], pitches[1] + 1)),
                     "snr_db": round(float(rng.uniform(*snr_db)), 2), "gain": round(float(rng.uniform(0.3, 1.0)), 3),
                     "noise_seed": int(rng.integers(0, 2**31))})
    return rows


def _synthesize_all(rows: list[dict[str, Any]], workers: int) -> list[np.ndarray]:
    program = espeak_program()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda r: synthesize(program, r["text"], r["voice"], r["speed"], r["pitch"]), rows))


def _read_cache(path: Path, count: int) -> list[np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            samples, offsets = stored["samples"], stored["offsets"]
    except (OSError, ValueError, KeyError) as error:
        log.warning("spoken-numbers: cache file %s cannot be read (%s); synthesising again", path, error)
        return None
    if len(offsets) != count + 1:
        log.warning("spoken-numbers: cache file %s holds %d clips, not %d; synthesising again", path,
                    len(offsets) - 1, count)
        return None
    return [samples[offsets[i]:offsets[i + 1]] for i in range(count)]


@contextlib.contextmanager
def _waiting_lock(path: Path):
    """An exclusive ``flock`` on ``path`` that waits for its holder (none where the folder is read-only)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_or_synthesize(path: Path, rows: list[dict[str, Any]], workers: int) -> list[np.ndarray]:
    """The clips of ``rows`` from the cache file ``path``, or synthesised and written there (atomically)."""
    clips = _read_cache(path, len(rows))
    if clips is not None:
        return clips
    with _waiting_lock(path.with_suffix(".lock")):
        clips = _read_cache(path, len(rows))  # written by whoever held the lock before
        if clips is not None:
            return clips
        log.info("spoken-numbers: synthesising %d clips with espeak-ng (cached in %s)", len(rows), path)
        clips = _synthesize_all(rows, workers)
        offsets = np.cumsum([0] + [len(c) for c in clips]).astype(np.int64)
        samples = np.concatenate(clips) if clips else np.zeros(0, np.int16)
        try:
            from edh.utils.io import atomic_write

            atomic_write(path, lambda f: np.savez(f, samples=samples, offsets=offsets))
        except OSError as error:
            log.warning("spoken-numbers: cannot write the cache %s (%s); the clips are synthesised again next time",
                        path, error)
    return clips


@register_dataset("spoken-numbers")
def spoken_numbers(max_number: int = 999, style: str = "words",
                   train_size: Annotated[int, Field(ge=1, le=1_000_000)] = 3000,
                   val_size: Annotated[int, Field(ge=0, le=1_000_000)] = 200,
                   test_size: Annotated[int, Field(ge=0, le=1_000_000)] = 400,
                   voices: list[str] | None = None, test_voices: list[str] | None = None,
                   speeds: list[int] = (130, 210), pitches: list[int] = (25, 75), snr_db: list[float] = (15.0, 40.0),
                   cache_dir: str | None = None, workers: Annotated[int, Field(ge=1, le=256)] = 4,
                   targets: str = "characters", tokenizer_file: str | None = None, seed: int = 0) -> DataBundle:
    """English numbers spoken by espeak-ng (synthetic speech), for CTC transcription.

    Each clip is a random number in ``0..max_number`` said as words (``four hundred and two``) or
    digit by digit (``style: digits``: ``four zero two``), by a voice, speed (words per minute) and
    pitch (0-99) drawn at random, then resampled from espeak's 22,050 Hz to 16 kHz, trimmed of
    silence, scaled by a random gain and given white noise at a random SNR (``snr_db``, in dB). The
    test split is spoken only by ``test_voices``, which training never hears (other accents and
    voice variants); val by the training ``voices``. Clips are synthesised once per setting, when the
    first clip is read (building the data draws only the plan), and cached in ``cache_dir`` (default
    ``~/.cache/edh/spoken-numbers``, or ``$EDH_CACHE_DIR``); a cached build needs no espeak-ng.

    Args:
        voices, test_voices: espeak-ng voices (``en-us``, ``en-gb-scotland+f3``...; see
            ``espeak-ng --voices=en`` and ``--voices=variant``); they must not overlap.
        speeds, pitches, snr_db: ``[low, high]`` ranges drawn from uniformly.
        workers: espeak-ng processes run at once while synthesising.
        targets: ``characters`` (a ``ctc`` head) or ``tokens`` (a step decoder + ``lm`` head; `with_targets`).
        tokenizer_file: with ``targets: tokens``, a saved tokenizer to use (``edh eval`` passes the run's).
    """
    if style not in ("words", "digits"):
        raise SpecError(f"data.style must be 'words' or 'digits', got {style!r}")
    if not 1 <= max_number <= 10**9:
        raise SpecError(f"data.max_number must be 1 to 1,000,000,000, got {max_number}")
    voices, test_voices = list(voices or TRAIN_VOICES), list(test_voices or TEST_VOICES)
    shared = sorted(set(voices) & set(test_voices))
    if shared:
        raise SpecError(f"data.voices and data.test_voices share {', '.join(shared)}: the test split would not be "
                        "held-out voices")
    ranges = (("speeds", speeds, 80, 450), ("pitches", pitches, 0, 99), ("snr_db", snr_db, -20, 100))
    for key, pair, low, high in ranges:
        if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
            raise SpecError(f"data.{key} must be [low, high] within {low}..{high}, got {list(pair)}")
    rng = np.random.default_rng(seed)
    plan = {"train": _plan(train_size, voices, max_number, style, list(speeds), list(pitches),
                           list(snr_db), rng),
            "val": _plan(val_size, voices, max_number, style, list(speeds), list(pitches), list(snr_db), rng),
            "test": _plan(test_size, test_voices, max_number, style, list(speeds), list(pitches),
                          list(snr_db), rng)}
    rows = [row for split in ("train", "val", "test") for row in plan[split]]
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, [(r["text"], r["voice"], r["speed"], r["pitch"]) for r in rows]])
                         .encode()).hexdigest()[:24]
    path = cache_root(cache_dir) / f"{key}.npz"
    if not path.is_file():
        espeak_program()  # no cache and no espeak-ng: say so now, not at the first batch
    store = ClipStore(path, rows, workers)
    parts, start = {}, 0
    for split in ("train", "val", "test"):
        parts[split] = SpokenClips(store, start, plan[split], seed)
        start += len(plan[split])
    info = speech_info("spoken-numbers", ALPHABET, {s: len(p) for s, p in parts.items()},
                       {"voices": voices, "test_voices": test_voices, "style": style, "max_number": max_number})
    return with_targets(DataBundle(parts["train"], parts["val"], parts["test"], info, collate_speech), targets,
                        tokenizer_file)
