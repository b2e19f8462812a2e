"""Parallel text for translation: ``numbers`` (num2words), ``de-en`` (Debian's trans-de-en) and ``tsv`` files.

Every dataset trains one `TextTokenizer` on its training split (source and target text: a shared
vocabulary), unless ``tokenizer_file`` names a saved one, and hands it to the run folder as
``tokenizer.json``. Items are ``(source ids (S,), target ids (T,))``: the source ends with
``<eos>``, the target is ``<bos> ... <eos>``. `collate_translation` pads a batch into
``(source (B, S), {"tokens": next tokens (B, T)}, {"decoder_input": prefix (B, T)})``.

Text files are read by `decode_text` / `read_text_file`: UTF-8 (a leading byte-order mark is removed),
UTF-16 or UTF-32 with a byte-order mark; CRLF and CR line endings become LF. Anything else is refused
with a `TextEncodingError` naming the file, the line and byte offset and the fix (re-save as UTF-8):
bytes that are not UTF-8 (Latin-1, Windows-1252...), NUL bytes (UTF-16 without a byte-order mark, a
binary file). A file is never half-read and no byte is replaced silently.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from edh.data.base import DataBundle, DataInfo, split_indices
from edh.data.textfiles import (_EDGES, _LINE_BREAK, _RESAVE, TextFileMissingError, _line_endings, decode_text, detect_bom,
                                read_lines)
from edh.data.tokenizer import TextTokenizer
from edh.core.errors import DataError, SpecError
from edh.core.registry import register_dataset

log = logging.getLogger("edh")

DE_EN_FILE = "/usr/share/trans/de-en"
TOKENIZER_FILE = "tokenizer.json"
TARGET = "tokens"

Pairs = list[tuple[str, str]]


class ParallelText(Dataset):
    """Sentence pairs, tokenised once.

    Attributes:
        pairs: the raw ``(source, target)`` text (references for BLEU / chrF).
    """

    def __init__(self, pairs: Pairs, tokenizer: TextTokenizer, max_tokens: int, name: str = "") -> None:
        self.pairs = list(pairs)
        sources = tokenizer.encode_batch([s for s, _ in self.pairs]) if self.pairs else []
        targets = tokenizer.encode_batch([t for _, t in self.pairs]) if self.pairs else []
        keep = max_tokens - 2  # room for <bos> / <eos>
        cut = sum(len(s) > keep or len(t) > keep for s, t in zip(sources, targets))
        if cut:
            log.warning("%s: %d of %d pairs are longer than max_tokens=%d and were truncated; raise data.max_tokens "
                        "to keep them whole", name or "text", cut, len(self.pairs), max_tokens)
        bos, eos = tokenizer.bos_id, tokenizer.eos_id
        self.sources = [torch.tensor(s[:keep] + [eos]) for s in sources]
        self.targets = [torch.tensor([bos] + t[:keep] + [eos]) for t in targets]

    @property
    def source_texts(self) -> list[str]:
        return [source for source, _ in self.pairs]

    @property
    def references(self) -> list[str]:
        return [target for _, target in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sources[index], self.targets[index]


def pad_batch(rows: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    """Right-pad 1-D token tensors into ``(B, longest)``."""
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)


def collate_translation(items: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int = 0):
    """``[(source, target)]`` -> ``(source (B, S), {"tokens": (B, T)}, {"decoder_input": (B, T)})``."""
    sources = pad_batch([s for s, _ in items], pad_id)
    targets = pad_batch([t for _, t in items], pad_id)
    return sources, {TARGET: targets[:, 1:]}, {"decoder_input": targets[:, :-1]}


def translation_bundle(splits: dict[str, Pairs], name: str, source_language: str, target_language: str,
                       tokenizer: str = "bpe", vocab_size: int = 8000, tokenizer_file: str | None = None,
                       max_tokens: int = 256, extra: dict[str, Any] | None = None) -> DataBundle:
    """Train (or load) the tokenizer on the training pairs and build the splits and their `DataInfo`."""
    if not splits["train"]:
        raise DataError(f"{name}: the training split is empty; nothing to train a translator on")
    if tokenizer_file:
        text_tokenizer = TextTokenizer.from_file(tokenizer_file)
    else:
        texts = [side for pair in splits["train"] for side in pair]
        text_tokenizer = TextTokenizer.train(texts, tokenizer, vocab_size)
    parts = {split: ParallelText(pairs, text_tokenizer, max_tokens, f"{name} {split}") for split, pairs in splits.items()}
    V, pad = text_tokenizer.vocab_size, text_tokenizer.pad_id
    specials = text_tokenizer.special_tokens()
    info = DataInfo(
        input_kind="tokens", in_channels=0, targets={TARGET: "generation"},
        extra={
            "dataset": name, "source_language": source_language, "target_language": target_language,
            "tokenizer": tokenizer, "tokenizer_file": TOKENIZER_FILE, "vocab_size": V, "special_tokens": specials,
            "max_tokens": max_tokens, "sizes": {split: len(part) for split, part in parts.items()},
            "encoder_defaults": {"vocab_size": V, "pad_id": pad},
            "decoder_defaults": {"vocab_size": V, "pad_id": pad, "bos_id": specials["bos_id"],
                                 "eos_id": specials["eos_id"]},
            "head_defaults": {TARGET: {"vocab_size": V, "pad_id": pad}},
            **(extra or {}),
        })
    return DataBundle(parts["train"], parts["val"], parts["test"], info, partial(collate_translation, pad_id=pad),
                      {TOKENIZER_FILE: text_tokenizer.to_str()})


def _split(pairs: Pairs, val_fraction: float, test_fraction: float, seed: int) -> dict[str, Pairs]:
    train, val, test = split_indices(len(pairs), val_fraction, test_fraction, seed)
    return {"train": [pairs[i] for i in train], "val": [pairs[i] for i in val], "test": [pairs[i] for i in test]}


# ---- numbers ----------------------------------------------------------------------------------------
def number_words(number: int, language: str) -> str:
    """``number`` written out in ``language`` by num2words (``en``, ``fr``, ``de``, ``es``...)."""
    from num2words import CONVERTER_CLASSES, num2words

    if language not in CONVERTER_CLASSES:
        raise SpecError(f"num2words has no language {language!r}; choose one of {', '.join(sorted(CONVERTER_CLASSES))}")
    return num2words(number, lang=language)


@register_dataset("numbers")
def numbers(source_language: str = "en", target_language: str = "fr", max_number: int = 9999,
            val_fraction: float = 0.05, test_fraction: float = 0.1, tokenizer: str = "bpe", vocab_size: int = 400,
            tokenizer_file: str | None = None, max_tokens: int = 64, seed: int = 0) -> DataBundle:
    """Number words from one language to another, e.g. ``four hundred and two`` -> ``quatre cent deux``.

    The numbers ``0..max_number`` are split by ``seed``: the test split holds numbers never seen in
    training. Text comes from num2words, so the dataset needs no files.

    Args:
        source_language, target_language: num2words language codes.
        max_number: the largest number.
        tokenizer: ``bpe`` or ``char``; vocab_size: BPE vocabulary size.
        tokenizer_file: a saved ``tokenizer.json`` to use instead of training one.
        max_tokens: longer token sequences are truncated.
    """
    if max_number < 10:
        raise SpecError(f"data.max_number must be at least 10 to leave numbers for every split, got {max_number}")
    pairs = [(number_words(n, source_language), number_words(n, target_language)) for n in range(max_number + 1)]
    return translation_bundle(_split(pairs, val_fraction, test_fraction, seed), "numbers", source_language,
                              target_language, tokenizer, vocab_size, tokenizer_file, max_tokens,
                              {"max_number": max_number})


# ---- de-en ------------------------------------------------------------------------------------------
_ANNOTATION = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\]|\([^)]*\))")


def _clean(entry: str) -> str:
    """First synonym of a dictionary entry, without ``{m}``, ``[ugs.]`` or ``(...)`` annotations."""
    return " ".join(_ANNOTATION.sub("", entry.split(";")[0]).split())


def read_ding_pairs(path: str | Path, min_words: int = 4, max_words: int = 20) -> Pairs:
    """German-English pairs from a Ding dictionary file (``DE | DE ... :: EN | EN ...`` per line).

    Each line's ``|``-separated entries are aligned; an entry pair is kept when both sides have
    ``min_words..max_words`` words (a length filter that keeps phrases and sentences, not single
    words). Duplicates are dropped; the order of the file is kept. The file is read by `read_lines`
    (UTF-8, or UTF-16 / UTF-32 with a byte-order mark; any line ending); bytes that are not UTF-8 are
    a `TextEncodingError` naming the line, never replaced.
    """
    path = Path(path)
    if not path.is_file():
        raise TextFileMissingError(
            f"German-English pairs not found at {path}. Install them with `apt-get install trans-de-en` "
            "(Debian / Ubuntu; the file is /usr/share/trans/de-en), or give `data: {name: de-en, path: FILE}` "
            "with a file in the same 'German :: English' format"
        )
    pairs, seen = [], set()
    unaligned = 0
    for line in read_lines(path, "German-English dictionary file"):
        if line.startswith("#") or "::" not in line:
            continue
        german, english = line.split("::", 1)
        german_entries, english_entries = german.split(" | "), english.split(" | ")
        if len(german_entries) != len(english_entries):
            unaligned += 1
            continue
        for de, en in zip(german_entries, english_entries):
            de, en = _clean(de), _clean(en)
            if min_words <= len(de.split()) <= max_words and min_words <= len(en.split()) <= max_words \
                    and (de, en) not in seen:
                seen.add((de, en))
                pairs.append((de, en))
    log.debug("%s: %d pairs of %d-%d words; %d lines left out (unequal numbers of ' | ' entries per side)",
              path, len(pairs), min_words, max_words, unaligned)
    return pairs


@register_dataset("de-en")
def de_en(path: str = DE_EN_FILE, source_language: str = "de", min_words: int = 4, max_words: int = 20,
          val_fraction: float = 0.02, test_fraction: float = 0.05, limit: int | None = None, tokenizer: str = "bpe",
          vocab_size: int = 8000, tokenizer_file: str | None = None, max_tokens: int = 64, seed: int = 0) -> DataBundle:
    """Real human German-English phrase and sentence pairs from Debian's ``trans-de-en`` (Ding dictionary).

    Read at run time from ``path`` (GPL data, never copied into edh). About 38,600 pairs of 4-20 words
    each side; a deterministic shuffle by ``seed`` splits them.

    Args:
        source_language: ``de`` (German -> English) or ``en`` (English -> German).
        min_words, max_words: the length filter (words on each side).
        limit: keep only the first N pairs after shuffling (quick runs).
    """
    if source_language not in ("de", "en"):
        raise SpecError(f"data.source_language must be 'de' or 'en', got {source_language!r}")
    pairs = read_ding_pairs(path, min_words, max_words)
    if not pairs:
        raise DataError(f"{path} holds no German-English pairs of {min_words}-{max_words} words on each side "
                        "(expected 'German :: English' lines); check the file or data.min_words / max_words")
    if source_language == "en":
        pairs = [(en, de) for de, en in pairs]
    if limit:
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
        pairs = [pairs[i] for i in sorted(order)]
    target_language = "en" if source_language == "de" else "de"
    return translation_bundle(_split(pairs, val_fraction, test_fraction, seed), "de-en", source_language,
                              target_language, tokenizer, vocab_size, tokenizer_file, max_tokens)


# ---- tsv --------------------------------------------------------------------------------------------
def _tsv_lines(path: Path) -> tuple[list[tuple[int, str | None, str]], str, str]:
    """``[(line number, text or None when not UTF-8, why)]`` of a TSV file, its encoding and line endings.

    UTF-8 files are decoded line by line, so every line that is not UTF-8 is found (and, with
    ``skip_bad_lines``, only those are left out); UTF-16 / UTF-32 (byte-order mark) as a whole.
    """
    data = path.read_bytes()
    codec, name, skip = detect_bom(data)
    if codec != "utf-8" or b"\0" in data:
        decoded = decode_text(data, path)  # a whole-file error, or the text
        lines = decoded.text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [(number, line, "") for number, line in enumerate(lines, start=1)], decoded.encoding, \
            decoded.line_endings
    body = data[skip:]
    rows: list[tuple[int, str | None, str]] = []
    start = 0
    for number, match in enumerate([*_LINE_BREAK.finditer(body), None], start=1):
        if match is None and start == len(body):
            break  # the file ends with a line break (or is empty): no last, empty line
        stop = match.start() if match else len(body)
        raw = body[start:stop]
        try:
            rows.append((number, raw.decode("utf-8"), ""))
        except UnicodeDecodeError as error:
            rows.append((number, None, f"not UTF-8 (0x{raw[error.start:error.start + 1].hex()}: {error.reason} at byte "
                                       f"{error.start} of the line, byte {skip + start + error.start} of the file)"))
        start = match.end() if match else stop
    return rows, name, _line_endings(body)


def read_tsv(path: str | Path, source_column: int = 0, target_column: int = 1,
             skip_bad_lines: bool = False) -> Pairs:
    """``source<TAB>target`` lines of a text file (UTF-8; UTF-16 / UTF-32 with a byte-order mark).

    A leading byte-order mark is removed; CRLF, CR and LF all end a line. A line with too few
    columns, an empty side, or bytes that are not UTF-8 is bad: every bad line is reported with its
    line number (and, for bytes that are not UTF-8, the byte offset and the fix) in a
    `DataError` or, with ``skip_bad_lines``, in a warning. NUL bytes (UTF-16 without a byte-order
    mark, a binary file) and undecodable UTF-16 / UTF-32 refuse the whole file (`TextEncodingError`).
    Lines with more columns than most lines are counted in a warning (a tab inside a sentence?).
    """
    path = Path(path)
    if path.is_dir():
        raise TextFileMissingError(f"parallel text file {path} is a folder, not a file (expected source<TAB>target "
                                   "lines)")
    if not path.is_file():
        raise TextFileMissingError(f"parallel text file {path} does not exist (expected source<TAB>target lines)")
    if min(source_column, target_column) < 0 or source_column == target_column:
        raise SpecError(f"data.source_column ({source_column}) and data.target_column ({target_column}) must be "
                        "different column numbers from 0")
    need = max(source_column, target_column) + 1
    rows, encoding, endings = _tsv_lines(path)
    pairs: Pairs = []
    bad: list[str] = []
    not_utf8 = 0
    widths: dict[int, list[int]] = {}
    for number, line, why in rows:
        if line is None:
            bad.append(f"line {number}: {why}")
            not_utf8 += 1
            continue
        line = line.lstrip("\ufeff")  # a byte-order mark of a file pasted into this one
        if not _EDGES.sub("", line):
            bad.append(f"line {number}: blank")
            continue
        columns = line.split("\t")
        if len(columns) < need:
            bad.append(f"line {number}: {len(columns)} column{'s' * (len(columns) != 1)}, need {need} "
                       f"(tab-separated)")
            continue
        source, target = _EDGES.sub("", columns[source_column]), _EDGES.sub("", columns[target_column])
        if not source or not target:
            bad.append(f"line {number}: empty {'source' if not source else 'target'}")
            continue
        widths.setdefault(len(columns), []).append(number)
        pairs.append((source, target))
    if encoding != "UTF-8" or endings not in ("LF", "none"):
        log.info("%s: read as %s with %s line endings", path, encoding, endings)
    if len(widths) > 1:
        usual = max(widths, key=lambda width: len(widths[width]))
        wide = sorted(n for width, numbers in widths.items() if width > usual for n in numbers)
        if wide:
            log.warning("%s: %d line%s more than the %d tab-separated columns of most lines (a tab inside a "
                        "sentence?); only columns %d and %d are read: line%s %s%s", path, len(wide),
                        "s have" if len(wide) != 1 else " has", usual, source_column, target_column,
                        "s" * (len(wide) != 1), ", ".join(map(str, wide[:20])), " ..." * (len(wide) > 20))
    if bad:
        shown = "; ".join(bad[:20]) + (f"; ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        message = f"{path}: {len(bad)} bad line{'s' * (len(bad) != 1)} of {len(pairs) + len(bad)}: {shown}"
        if not_utf8:
            message += (f". {not_utf8} line{'s are' if not_utf8 != 1 else ' is'} not UTF-8: the file may be "
                        f"Latin-1 / Windows-1252 or another legacy encoding; {_RESAVE[0].lower()}{_RESAVE[1:]}")
        if not skip_bad_lines:
            raise DataError(f"{message}. Fix or delete them, or set data.skip_bad_lines: true to leave them out "
                            "(they are then listed in a warning)")
        log.warning("%s. Left out (data.skip_bad_lines is true).", message)
    return pairs


@register_dataset("tsv")
def tsv(path: str, val_path: str | None = None, test_path: str | None = None, val_fraction: float = 0.1,
        test_fraction: float = 0.1, source_column: int = 0, target_column: int = 1, skip_bad_lines: bool = False,
        source_language: str = "source", target_language: str = "target", tokenizer: str = "bpe",
        vocab_size: int = 8000, tokenizer_file: str | None = None, max_tokens: int = 256, seed: int = 0) -> DataBundle:
    """A user's parallel text: ``source<TAB>target`` per line, UTF-8 (see `read_tsv`).

    With ``val_path`` / ``test_path`` those files are the splits; otherwise ``val_fraction`` /
    ``test_fraction`` of ``path`` are held out (shuffled by ``seed``). Bad lines are errors that
    list their line numbers (``skip_bad_lines`` turns them into a warning that lists them).

    Args:
        path: the training TSV (or the only one, split by ``val_fraction`` / ``test_fraction``).
        val_path, test_path: separate validation / test TSVs.
        val_fraction, test_fraction: shares of ``path`` held out when there are no such files.
        source_column, target_column: the 0-based columns of the source and the target sentence.
        skip_bad_lines: warn about bad lines (listed) and skip them instead of refusing the file.
        source_language, target_language: names of the two sides (shown in reports).
        tokenizer: ``bpe`` or ``char``; vocab_size: BPE vocabulary size.
        tokenizer_file: a saved ``tokenizer.json`` to use instead of training one.
        max_tokens: longer token sequences are truncated.
        seed: the split's shuffle.
    """
    pairs = read_tsv(path, source_column, target_column, skip_bad_lines)
    if not pairs:
        raise DataError(f"{path} holds no sentence pairs (expected source<TAB>target lines); nothing to train on")
    held_val = read_tsv(val_path, source_column, target_column, skip_bad_lines) if val_path else None
    held_test = read_tsv(test_path, source_column, target_column, skip_bad_lines) if test_path else None
    for held, held_path in ((held_val, val_path), (held_test, test_path)):
        if held is not None and not held:
            raise DataError(f"{held_path} holds no sentence pairs (expected source<TAB>target lines)")
    splits = _split(pairs, 0.0 if held_val is not None else val_fraction,
                    0.0 if held_test is not None else test_fraction, seed)
    if held_val is not None:
        splits["val"] = held_val
    if held_test is not None:
        splits["test"] = held_test
    return translation_bundle(splits, "tsv", source_language, target_language, tokenizer, vocab_size, tokenizer_file,
                              max_tokens, {"path": str(path)})
