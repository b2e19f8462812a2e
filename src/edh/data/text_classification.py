"""Text classification: ``text-labels`` (a user's ``text<TAB>label`` file) and ``language-id``
(is a sentence German or English? Debian's trans-de-en).

Every dataset trains one `TextTokenizer` on its training texts, unless ``tokenizer_file`` names a
saved one, and hands it to the run folder as ``tokenizer.json`` (as the translation datasets do), so
``edh predict RUN --text "..."`` encodes sentences exactly as training did. Items are ``(token ids
(S,), {"label": class id})``: the text's tokens, truncated to ``max_tokens - 2``, then ``<eos>`` (the
encoding of `edh.workflows.inputs.encode_texts`). `collate_labelled_text` pads a batch into
``(tokens (B, S), {"label": (B,)})``.

Splits never share a text: duplicate lines are kept once, and ``language-id`` keeps both sides of a
dictionary entry (and every entry sharing a side with it) in one split.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edh.core.errors import DataError, SpecError
from edh.core.registry import register_dataset
from edh.data.base import DataBundle, DataInfo, split_indices
from edh.data.text import DE_EN_FILE, TOKENIZER_FILE, pad_batch, read_ding_pairs
from edh.data.textfiles import _EDGES, TextFileMissingError, read_lines
from edh.data.tokenizer import TextTokenizer

log = logging.getLogger("edh")

TARGET = "label"
SPLITS = ("train", "val", "test")
SHOWN = 20  # bad lines named in an error; the rest are counted

Row = tuple[int, str, str]  # (line number, text, label)


class LabelledText(Dataset):
    """Texts and their class ids, tokenised once.

    Attributes:
        texts: the raw sentences; labels: their class ids.
    """

    def __init__(self, texts: list[str], labels: list[int], tokenizer: TextTokenizer, max_tokens: int,
                 name: str = "") -> None:
        self.texts, self.labels = list(texts), [int(label) for label in labels]
        rows = tokenizer.encode_batch(self.texts) if self.texts else []
        keep = max_tokens - 2  # as `encode_texts` (predict) truncates
        cut = sum(len(row) > keep for row in rows)
        if cut:
            log.warning("%s: %d of %d texts are longer than max_tokens=%d and were truncated; raise data.max_tokens "
                        "to keep them whole", name or "text", cut, len(rows), max_tokens)
        self.tokens = [torch.tensor(row[:keep] + [tokenizer.eos_id]) for row in rows]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.tokens[index], {TARGET: torch.tensor(self.labels[index])}

    def content_digest(self) -> str:
        """sha256 of the texts and labels in order (the data fingerprint's ``content_sha256``)."""
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels):
            digest.update(f"{label}\t{text}\n".encode())
        return digest.hexdigest()


def collate_labelled_text(items: list[tuple[torch.Tensor, dict[str, torch.Tensor]]], pad_id: int = 0):
    """``[(tokens, {"label": id})]`` -> ``(tokens (B, S), {"label": (B,)})``."""
    tokens = pad_batch([tokens for tokens, _ in items], pad_id)
    return tokens, {TARGET: torch.stack([target[TARGET] for _, target in items]).long()}


def classification_bundle(splits: dict[str, list[tuple[str, str]]], class_names: list[str], name: str,
                          tokenizer: str = "bpe", vocab_size: int = 8000, tokenizer_file: str | None = None,
                          max_tokens: int = 128, extra: dict[str, Any] | None = None) -> DataBundle:
    """Train (or load) the tokenizer on the training texts; build the ``(text, label)`` splits and their `DataInfo`."""
    if not splits["train"]:
        raise DataError(f"{name}: the training split is empty; nothing to train a classifier on")
    if tokenizer_file:
        text_tokenizer = TextTokenizer.from_file(tokenizer_file)
    else:
        text_tokenizer = TextTokenizer.train([text for text, _ in splits["train"]], tokenizer, vocab_size)
    index = {label: i for i, label in enumerate(class_names)}
    parts = {split: LabelledText([t for t, _ in rows], [index[label] for _, label in rows], text_tokenizer,
                                 max_tokens, f"{name} {split}")
             for split, rows in splits.items()}
    V, pad = text_tokenizer.vocab_size, text_tokenizer.pad_id
    info = DataInfo(
        input_kind="tokens", in_channels=0, class_names=list(class_names), targets={TARGET: "classification"},
        extra={
            "dataset": name, "tokenizer": tokenizer, "tokenizer_file": TOKENIZER_FILE, "vocab_size": V,
            "special_tokens": text_tokenizer.special_tokens(), "max_tokens": max_tokens,
            "sizes": {split: len(part) for split, part in parts.items()},
            "encoder_defaults": {"vocab_size": V, "pad_id": pad},
            **(extra or {}),
        })
    return DataBundle(parts["train"], parts["val"], parts["test"], info, partial(collate_labelled_text, pad_id=pad),
                      {TOKENIZER_FILE: text_tokenizer.to_str()})


# ---- text-labels ------------------------------------------------------------------------------------
def _column(column: int | str, header: list[str] | None, what: str, path: Path) -> int:
    """The index of ``column``: a number from 0, or (with a header line) a column name."""
    if isinstance(column, bool) or not isinstance(column, (int, str)):
        raise SpecError(f"data.{what}_column must be a column number from 0 or a header name, got {column!r}")
    if isinstance(column, int):
        if column < 0:
            raise SpecError(f"data.{what}_column must be a column number from 0, got {column}")
        return column
    if header is None:
        raise SpecError(f"data.{what}_column is the name {column!r}, but data.has_header is false: give a column "
                        "number from 0, or set has_header: true when the first line names the columns")
    names = [_EDGES.sub("", name) for name in header]
    if column not in names:
        raise DataError(f"{path}: the header line has no column {column!r} (data.{what}_column); its columns are "
                        f"{', '.join(repr(n) for n in names)}")
    return names.index(column)


def read_labelled_tsv(path: str | Path, text_column: int | str = 0, label_column: int | str = 1,
                      has_header: bool = False, skip_bad_lines: bool = False) -> list[Row]:
    """``[(line number, text, label)]`` of a ``text<TAB>label`` file.

    The file is read by `read_lines` (UTF-8, a byte-order mark removed, or UTF-16 / UTF-32 with one;
    CRLF, CR and LF all end a line; other bytes are a `TextEncodingError` naming the line). Columns
    are numbers from 0 or, with ``has_header``, names from the first line. A blank line, a line with
    too few columns, an empty text or an empty label is bad: every bad line is listed with its line
    number in a `DataError` or, with ``skip_bad_lines``, in a warning.
    """
    path = Path(path)
    lines = read_lines(path, "text classification file")
    start = 1
    header = None
    if has_header:
        if not lines:
            raise DataError(f"{path} is empty, but data.has_header is true: expected a header line, then "
                            "text<TAB>label lines")
        header, start = lines[0].lstrip("\ufeff").split("\t"), 2
    text_at = _column(text_column, header, "text", path)
    label_at = _column(label_column, header, "label", path)
    if text_at == label_at:
        raise SpecError(f"data.text_column and data.label_column are the same column ({text_at}); give two columns")
    need = max(text_at, label_at) + 1
    rows: list[Row] = []
    bad: list[str] = []
    for number, line in enumerate(lines[start - 1:], start=start):
        line = line.lstrip("\ufeff")  # the byte-order mark of a file pasted into this one
        if not _EDGES.sub("", line):
            bad.append(f"line {number}: blank")
            continue
        columns = line.split("\t")
        if len(columns) < need:
            bad.append(f"line {number}: {len(columns)} column{'s' * (len(columns) != 1)}, need {need} "
                       f"(tab-separated; the label is column {label_at}, the text column {text_at})")
            continue
        text, label = _EDGES.sub("", columns[text_at]), _EDGES.sub("", columns[label_at])
        if not text or not label:
            bad.append(f"line {number}: empty {'text' if not text else 'label'}")
            continue
        rows.append((number, text, label))
    if bad:
        shown = "; ".join(bad[:SHOWN]) + (f"; ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
        message = f"{path}: {len(bad)} bad line{'s' * (len(bad) != 1)} of {len(rows) + len(bad)}: {shown}"
        if not skip_bad_lines:
            raise DataError(f"{message}. Fix or delete them, or set data.skip_bad_lines: true to leave them out "
                            "(they are then listed in a warning)")
        log.warning("%s. Left out (data.skip_bad_lines is true).", message)
    return rows


def _unique(rows: list[Row], path: str | Path) -> list[Row]:
    """``rows`` with each text once: a repeated ``(text, label)`` keeps its first line; a text given two
    different labels is a `DataError` naming the lines (the model cannot learn both)."""
    first: dict[str, Row] = {}
    conflicts: list[str] = []
    repeated = 0
    for row in rows:
        number, text, label = row
        seen = first.setdefault(text, row)
        if seen is row:
            continue
        if seen[2] == label:
            repeated += 1
        else:
            conflicts.append(f"line {number} ({label!r}) repeats the text of line {seen[0]} ({seen[2]!r})")
    if conflicts:
        shown = "; ".join(conflicts[:SHOWN]) + (f"; ... and {len(conflicts) - SHOWN} more"
                                                if len(conflicts) > SHOWN else "")
        raise DataError(f"{path}: {len(conflicts)} text{'s have' if len(conflicts) != 1 else ' has'} two different "
                        f"labels: {shown}. Keep one label per text")
    if repeated:
        log.info("%s: %d repeated line%s (same text and label) kept once, so no text is in two splits", path,
                 repeated, "s" * (repeated != 1))
    return list(first.values())


def stratified_split(labels: list[str], val_fraction: float, test_fraction: float,
                     seed: int) -> tuple[list[int], list[int], list[int]]:
    """Train / val / test indices holding the fractions of each class (shuffled by ``seed``); every
    class keeps at least one sample in train. Each list is in the original order."""
    split_indices(len(labels), val_fraction, test_fraction, seed)  # checks the fractions
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for number, (label, members) in enumerate(sorted(by_class.items())):
        train, val, test = split_indices(len(members), val_fraction, test_fraction, seed + number)
        train, val, test = list(train), list(val), list(test)
        if not train:  # a rare class: one sample goes back to train (from the larger held-out part)
            train.append((val if len(val) >= len(test) else test).pop())
        for part, chosen in zip(parts, (train, val, test)):
            part.extend(members[j] for j in chosen)
    return tuple(sorted(part) for part in parts)  # type: ignore[return-value]


def _unseen_labels(rows: list[Row], known: set[str], path: str | Path, split: str) -> None:
    unseen: dict[str, list[int]] = {}
    for number, _, label in rows:
        if label not in known:
            unseen.setdefault(label, []).append(number)
    if unseen:
        shown = "; ".join(f"{label!r} (line{'s' * (len(numbers) != 1)} {', '.join(map(str, numbers[:5]))}"
                          f"{' ...' if len(numbers) > 5 else ''})" for label, numbers in sorted(unseen.items()))
        raise DataError(f"{path}: the {split} file has {len(unseen)} label{'s' * (len(unseen) != 1)} that no "
                        f"training line has: {shown}. The model learns only the classes it trains on: add training "
                        "lines for them, or remove those lines")


@register_dataset("text-labels")
def text_labels(path: str, val_path: str | None = None, test_path: str | None = None, val_fraction: float = 0.1,
                test_fraction: float = 0.1, text_column: int | str = 0, label_column: int | str = 1,
                has_header: bool = False, skip_bad_lines: bool = False, tokenizer: str = "bpe",
                vocab_size: int = 8000, tokenizer_file: str | None = None, max_tokens: int = 128,
                seed: int = 0) -> DataBundle:
    """A user's labelled text: ``text<TAB>label`` per line, UTF-8 (see `read_labelled_tsv`).

    The classes are the labels of the training lines, sorted by name. With ``val_path`` /
    ``test_path`` those files are the splits (a label they have and the training file lacks is an
    error naming the lines); otherwise ``val_fraction`` / ``test_fraction`` of each class of ``path``
    are held out (shuffled by ``seed``; every class keeps a training line). A text is kept once (a
    repeated line would otherwise sit in two splits); one text with two labels is an error.

    Args:
        text_column, label_column: column numbers from 0, or names from the header line (``has_header``).
        has_header: the first line names the columns (it is not a sample).
        skip_bad_lines: leave bad lines out with a warning that lists them, instead of an error.
        tokenizer: ``bpe`` (subwords) or ``char``; vocab_size: the BPE vocabulary size.
        tokenizer_file: a saved ``tokenizer.json`` to use instead of training one.
        max_tokens: longer texts are truncated (with a warning that counts them).
    """
    read = partial(read_labelled_tsv, text_column=text_column, label_column=label_column, has_header=has_header,
                   skip_bad_lines=skip_bad_lines)
    rows = _unique(read(path), path)
    if not rows:
        raise DataError(f"{path} holds no labelled texts (expected text<TAB>label lines); nothing to train on")
    held = {split: (_unique(read(held_path), held_path), held_path)
            for split, held_path in (("val", val_path), ("test", test_path)) if held_path}
    for split, (held_rows, held_path) in held.items():
        if not held_rows:
            raise DataError(f"{held_path} holds no labelled texts (expected text<TAB>label lines)")
    train, val, test = stratified_split([label for _, _, label in rows], 0.0 if "val" in held else val_fraction,
                                        0.0 if "test" in held else test_fraction, seed)
    splits = {name: [rows[i] for i in indices] for name, indices in zip(SPLITS, (train, val, test))}
    known = {label for _, _, label in splits["train"]}
    for split, (held_rows, held_path) in held.items():
        _unseen_labels(held_rows, known, held_path, split)
        splits[split] = held_rows
    texts = {split: [(text, label) for _, text, label in part] for split, part in splits.items()}
    return classification_bundle(texts, sorted(known), "text-labels", tokenizer, vocab_size, tokenizer_file,
                                 max_tokens, {"path": str(path)})


# ---- language-id ------------------------------------------------------------------------------------
def _entry_groups(pairs: list[tuple[str, str]]) -> list[int]:
    """A group id per pair: pairs that share a sentence (on either side) share a group."""
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for german, english in pairs:
        a, b = root(german), root(english)
        if a != b:
            parent[a] = b
    ids: dict[str, int] = {}
    return [ids.setdefault(root(german), len(ids)) for german, _ in pairs]


def language_id_splits(pairs: list[tuple[str, str]], val_fraction: float, test_fraction: float,
                       seed: int) -> dict[str, list[tuple[str, str]]]:
    """``(sentence, de | en)`` splits of German-English pairs without leakage.

    Both sides of a pair, and every pair sharing a sentence with it, go to one split (a test
    sentence's translation is never trained on); each sentence is kept once; a sentence that is
    both German and English (a name, a Latin phrase) is left out.
    """
    languages: dict[str, set[str]] = {}
    for german, english in pairs:
        languages.setdefault(german, set()).add("de")
        languages.setdefault(english, set()).add("en")
    groups = _entry_groups(pairs)
    train, val, test = split_indices(max(groups, default=-1) + 1, val_fraction, test_fraction, seed)
    where = np.empty(len(train) + len(val) + len(test), dtype=np.int64)
    for number, part in enumerate((train, val, test)):
        where[part] = number
    splits: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    for (german, english), group in zip(pairs, groups):
        for text in (german, english):
            if text not in seen and len(languages[text]) == 1:
                seen.add(text)
                splits[SPLITS[where[group]]].append((text, next(iter(languages[text]))))
    both = sum(len(found) > 1 for found in languages.values())
    if both:
        log.debug("language-id: %d sentences are both German and English entries; left out", both)
    return splits


@register_dataset("language-id")
def language_id(path: str = DE_EN_FILE, min_words: int = 4, max_words: int = 20, val_fraction: float = 0.05,
                test_fraction: float = 0.1, limit: int | None = None, tokenizer: str = "bpe", vocab_size: int = 4000,
                tokenizer_file: str | None = None, max_tokens: int = 64, seed: int = 0) -> DataBundle:
    """Language identification: is a sentence German (``de``) or English (``en``)?

    The sentences are both sides of the German-English pairs of Debian's ``trans-de-en`` (the
    ``de-en`` dataset's `read_ding_pairs`, read at run time from ``path``, never copied into edh):
    about 77,000 sentences of 4-20 words, half of each language. The splits keep the two sides of
    an entry together (see `language_id_splits`).

    Args:
        min_words, max_words: the length filter (words on each side of a pair).
        limit: keep only N pairs, chosen by ``seed`` (quick runs).
        tokenizer: ``bpe`` or ``char``; vocab_size: the BPE vocabulary size.
        tokenizer_file: a saved ``tokenizer.json`` to use instead of training one.
        max_tokens: longer sentences are truncated.
    """
    try:
        pairs = read_ding_pairs(path, min_words, max_words)
    except TextFileMissingError as error:  # de-en's message (apt-get install trans-de-en), naming this dataset
        raise TextFileMissingError(str(error).replace("{name: de-en,", "{name: language-id,")) from None
    if not pairs:
        raise DataError(f"{path} holds no German-English pairs of {min_words}-{max_words} words on each side "
                        "(expected 'German :: English' lines); check the file or data.min_words / max_words")
    if limit:
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
        pairs = [pairs[i] for i in sorted(order)]
    splits = language_id_splits(pairs, val_fraction, test_fraction, seed)
    return classification_bundle(splits, ["de", "en"], "language-id", tokenizer, vocab_size, tokenizer_file,
                                 max_tokens, {"path": str(path)})

