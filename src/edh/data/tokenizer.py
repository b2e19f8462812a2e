"""`TextTokenizer`: subword BPE (or characters) trained with Hugging Face ``tokenizers``.

One tokenizer covers both languages of a translation task (a shared vocabulary, so the encoder,
decoder and LM head can share one embedding). Special tokens have fixed ids: ``<pad>`` 0,
``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3. A trained tokenizer is saved as ``tokenizer.json`` in the
run folder (Hugging Face's format) and loaded from there by eval, predict and translate.

Text is NFKC-normalised and split on spaces (kept as ``▁``, so decoding restores them) and around
punctuation before BPE; ``kind="char"`` keeps single characters (BPE with no merges).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edh.core.errors import DataError, EdhError, SpecError

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)
KINDS = ("bpe", "char")


class TokenizerFileError(DataError):
    """A tokenizer file (``tokenizer.json``) that cannot be read: not JSON, not a tokenizer, not edh's."""


class TokenizerFileMissingError(EdhError, FileNotFoundError):
    """A tokenizer file that is not there; the message says where it comes from."""


class TextTokenizer:
    """Text <-> token ids, with the special tokens a seq2seq model needs.

    Attributes:
        pad_id, bos_id, eos_id, unk_id: the special token ids.
        vocab_size: tokens in the vocabulary, special tokens included.
    """

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        for index, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != index:
                raise TokenizerFileError(f"tokenizer has {token} at id {tokenizer.token_to_id(token)}, expected "
                                         f"{index}; it was not made by edh's TextTokenizer.train")

    @classmethod
    def train(cls, texts: Iterable[str], kind: str = "bpe", vocab_size: int = 8000,
              min_frequency: int = 2) -> "TextTokenizer":
        """Learn a vocabulary from ``texts``.

        Args:
            texts: training sentences (both languages for a shared vocabulary).
            kind: ``bpe`` (subwords) or ``char`` (characters).
            vocab_size: BPE vocabulary size, special tokens included (ignored for ``char``).
            min_frequency: a BPE merge needs at least this many occurrences.
        """
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        if kind not in KINDS:
            raise SpecError(f"tokenizer kind must be one of {', '.join(KINDS)}, got {kind!r} (data.tokenizer)")
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
        tokenizer.decoder = decoders.Metaspace()
        size = 0 if kind == "char" else vocab_size  # no merges: the vocabulary is the alphabet
        trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), show_progress=False)
        tokenizer.train_from_iterator(list(texts), trainer)
        return cls(tokenizer)

    @classmethod
    def from_str(cls, text: str, source: str = "text") -> "TextTokenizer":
        """A tokenizer from its JSON text (`to_str`); anything else is a `TokenizerFileError` naming ``source``."""
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as error:  # tokenizers raises its own exception type (and panics on some inputs)
            raise TokenizerFileError(f"{source} is not a tokenizer file (Hugging Face tokenizers JSON, as edh "
                                     f"writes tokenizer.json): {error}") from None
        try:
            return cls(tokenizer)
        except TokenizerFileError as error:
            raise TokenizerFileError(f"{source}: {error}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "TextTokenizer":
        from edh.data.textfiles import TextFileMissingError, read_text_file

        path = Path(path)
        try:
            text = read_text_file(path, "tokenizer file").text
        except TextFileMissingError:
            raise TokenizerFileMissingError(
                f"tokenizer file {path} does not exist{' (it is a folder)' if path.is_dir() else ''}; a translation "
                "run folder keeps its tokenizer as tokenizer.json (train the run again if it was deleted)") from None
        return cls.from_str(text, str(path))

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first ``<eos>``, special tokens left out."""
        ids = list(ids)
        if EOS in ids:
            ids = ids[:ids.index(EOS)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def decode_batch(self, rows: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(row) for row in rows]

    def special_tokens(self) -> dict[str, int]:
        return dict(zip(("pad_id", "bos_id", "eos_id", "unk_id"), range(4)))
