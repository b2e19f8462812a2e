"""Speech for CTC transcription: ``audio-folder`` (a user's ``.wav`` files + a transcript TSV) and
``spoken-numbers`` (English number words synthesised at run time by ``espeak-ng``).

Items are ``(waveform (samples,) float in [-1, 1] at 16 kHz, {"text": character ids (S,)})``; `collate_speech`
right-pads a batch into ``(waves (B, N), {"text": (B, S)})`` with zeros (the audio encoder reads the
padding from the zeros; the CTC head's id 0 is the blank, which no transcript holds). The characters
(``alphabet``: id ``i + 1`` is ``alphabet[i]``) and the CTC head's ``vocab_size`` come with the data
(``DataInfo.extra``, ``head_defaults``).

WAV files are read by `edh.data.wav.read_wav`; ``spoken-numbers`` lives in `edh.data.spoken_numbers`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from edh.core.errors import DataError
from edh.core.registry import register_dataset
from edh.data.base import DataBundle, DataFilesMissingError, DataInfo, item_error, split_indices

log = logging.getLogger("edh")

from edh.data.wav import SAMPLE_RATE, check_wav_header, pad_waves, read_wav

TARGET = "text"


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

    Args:
        path: the folder of ``.wav`` files.
        transcripts: the TSV of ``file.wav<TAB>transcript[<TAB>split]`` lines.
        val_fraction, test_fraction: shares of the clips without a split column held out (by ``seed``).
        targets: ``characters`` (CTC targets) or ``tokens`` (``<bos> ... <eos>`` for a sequence decoder).
        tokenizer_file: a saved character tokenizer to use (``targets: tokens``).
        seed: the split's shuffle.
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
