"""Speech for sequence decoders: the same clips with ``<bos> transcript <eos>`` token targets.

A speech dataset built with ``targets: tokens`` (``spoken-numbers``, ``audio-folder``) gives items
``(waveform, caption ids)`` and batches ``(waves (B, N), {"tokens": next tokens}, {"decoder_input":
prefix})``, as the translation and captioning datasets do, so an ``audio`` encoder trains with any
step decoder (``transformer``, ``lstm``, ``gru``) and an ``lm`` head, and ``edh eval`` / ``predict``
generate transcripts. The tokenizer (characters by default) is trained on the training transcripts
and kept in the run folder (``tokenizer.json``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch.utils.data import Dataset

from edh.data.base import DataBundle, DataInfo
from edh.data.text import TOKENIZER_FILE, pad_batch
from edh.data.tokenizer import TextTokenizer

TARGET = "tokens"


class TranscribedClips(Dataset):
    """A speech split whose targets are ``<bos> ... <eos>`` token ids of its transcripts."""

    def __init__(self, clips: Dataset, tokenizer: TextTokenizer, split: str) -> None:
        self.clips, self.references = clips, list(clips.texts())
        ids = tokenizer.encode_batch(self.references) if self.references else []
        self.targets = [torch.tensor([tokenizer.bos_id, *row, tokenizer.eos_id]) for row in ids]
        self.source_texts = [f"{split} clip {index}" for index in range(len(self.references))]
        for name in ("sample_ids", "content_digest"):  # the data fingerprint is the clips'
            if hasattr(clips, name):
                setattr(self, name, getattr(clips, name))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clips[index][0], self.targets[index]


def collate_transcribed(items: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int = 0):
    """``[(wave, ids)]`` -> ``(waves (B, N), {"tokens": (B, T)}, {"decoder_input": (B, T)})``, the waves
    right-padded with zeros (as `edh.data.wav.pad_waves`; the audio encoder reads trailing zeros as padding)."""
    waves = torch.nn.utils.rnn.pad_sequence([wave.float() for wave, _ in items], batch_first=True, padding_value=0.0)
    targets = pad_batch([t for _, t in items], pad_id)
    return waves, {TARGET: targets[:, 1:]}, {"decoder_input": targets[:, :-1]}


def token_targets(bundle: DataBundle, tokenizer: str = "char", vocab_size: int = 256,
                  tokenizer_file: str | None = None) -> DataBundle:
    """``bundle`` (a speech dataset with character targets for CTC) with token targets instead."""
    text_tokenizer = (TextTokenizer.from_file(tokenizer_file) if tokenizer_file
                      else TextTokenizer.train(list(bundle.train.texts()), tokenizer, vocab_size))
    parts = {split: TranscribedClips(getattr(bundle, split), text_tokenizer, split) for split in ("train", "val", "test")}
    V, pad, specials = text_tokenizer.vocab_size, text_tokenizer.pad_id, text_tokenizer.special_tokens()
    longest = max((len(t) for part in parts.values() for t in part.targets), default=2)
    old = bundle.info.extra
    extra: dict[str, Any] = {
        key: value for key, value in old.items() if key not in ("alphabet", "head_defaults")}
    extra.update({"tokenizer": tokenizer, "tokenizer_file": TOKENIZER_FILE, "vocab_size": V, "special_tokens": specials,
                  "max_tokens": longest,
                  "decoder_defaults": {"vocab_size": V, "pad_id": pad, "bos_id": specials["bos_id"],
                                       "eos_id": specials["eos_id"]},
                  "head_defaults": {TARGET: {"vocab_size": V, "pad_id": pad, "max_new_tokens": longest + 2}}})
    info = DataInfo(input_kind="audio", in_channels=1, targets={TARGET: "generation"}, extra=extra)
    return DataBundle(parts["train"], parts["val"], parts["test"], info, partial(collate_transcribed, pad_id=pad),
                      {TOKENIZER_FILE: text_tokenizer.to_str()})
