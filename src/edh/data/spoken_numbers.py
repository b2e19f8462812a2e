"""``spoken-numbers``: English number words synthesised at run time by ``espeak-ng`` (synthetic speech),
with held-out voices in the test split; clips cached atomically (see `spoken_numbers`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from edh.core.errors import DataItemError, SpecError
from edh.core.registry import register_dataset
from edh.data.base import DataBundle, DataFilesMissingError

log = logging.getLogger("edh")

from edh.data.speech import TARGET, collate_speech, encode_text, normalize_text, speech_info, with_targets
from edh.data.wav import SAMPLE_RATE, decode_wav


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
