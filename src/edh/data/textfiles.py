"""Reading text files without guessing: UTF-8 (a leading byte-order mark removed), UTF-16 or UTF-32
with a byte-order mark; CRLF and CR line endings become LF. Anything else is refused with a
`TextEncodingError` naming the file, the line and byte offset and the fix (re-save as UTF-8): bytes
that are not UTF-8 (Latin-1, Windows-1252...), NUL bytes (UTF-16 without a byte-order mark, a binary
file). A file is never half-read and no byte is replaced silently. Used by the text datasets, the
tokenizer file and ``--input`` files."""

from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from edh.core.errors import DataError, EdhError
from edh.data.base import DataFilesMissingError

log = logging.getLogger("edh")


class TextFileMissingError(DataFilesMissingError, EdhError):
    """A text file a dataset needs is not there (or is a folder); the message names it."""


class TextEncodingError(DataError):
    """A text file that is not UTF-8 (or UTF-16 / UTF-32 with a byte-order mark); the message names the
    file, the line and byte offset, and says to re-save it as UTF-8."""


# ---- reading text files -----------------------------------------------------------------------------
_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 LE (byte-order mark)"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 BE (byte-order mark)"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8 with a byte-order mark"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 LE (byte-order mark)"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 BE (byte-order mark)"),
)
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_EDGES = re.compile(r"^[\s\ufeff]+|[\s\ufeff]+$")  # whitespace and zero-width no-break spaces around a sentence
_RESAVE = ("Re-save it as UTF-8 (an editor's 'Save as... / Encoding: UTF-8', or "
           "`iconv -f LATIN1 -t UTF-8 FILE > FILE.utf8` for a Latin-1 file)")


@dataclass
class DecodedText:
    """A text file's content with LF line endings and no byte-order mark.

    Attributes:
        text: the content.
        encoding: what it was read as: ``UTF-8``, ``UTF-8 with a byte-order mark``, ``UTF-16 LE (byte-order mark)``...
        line_endings: ``LF``, ``CRLF``, ``CR``, ``none`` or ``mixed (CRLF, LF)``.
    """

    text: str
    encoding: str
    line_endings: str


def detect_bom(data: bytes) -> tuple[str, str, int]:
    """``(codec, name, length of the byte-order mark)`` of ``data``; no mark: UTF-8."""
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            return codec, name, len(bom)
    return "utf-8", "UTF-8", 0


def _where(data: bytes, offset: int) -> tuple[int, int]:
    """``(line number from 1, byte offset in that line)`` of byte ``offset`` (CRLF, CR, LF all end a line)."""
    line, start = 1, 0
    for match in _LINE_BREAK.finditer(data, 0, offset):
        line, start = line + 1, match.end()
    return line, offset - start


def _line_endings(data: bytes | str) -> str:
    if isinstance(data, str):
        crlf, cr, lf = data.count("\r\n"), data.count("\r"), data.count("\n")
    else:
        crlf, cr, lf = data.count(b"\r\n"), data.count(b"\r"), data.count(b"\n")
    kinds = [name for name, count in (("CRLF", crlf), ("CR", cr - crlf), ("LF", lf - crlf)) if count]
    return "none" if not kinds else kinds[0] if len(kinds) == 1 else f"mixed ({', '.join(kinds)})"


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def not_utf8_message(source: str | Path, data: bytes, error: UnicodeDecodeError, skip: int = 0) -> str:
    """Where in ``data`` (after a byte-order mark of ``skip`` bytes) ``error`` happened, and the fix."""
    line, column = _where(data, error.start)
    byte = data[error.start:error.start + 1]
    return (f"{source} is not UTF-8 text: line {line}, byte {column} of the line (byte {skip + error.start} of the "
            f"file) is 0x{byte.hex() or '??'} ({error.reason}); it may be Latin-1 / Windows-1252 or another legacy "
            f"encoding. {_RESAVE}.")


def decode_text(data: bytes, source: str | Path = "text") -> DecodedText:
    """``data`` as text: UTF-8 (a byte-order mark is removed), UTF-16 / UTF-32 with a byte-order mark;
    CRLF and CR become LF.

    Raises:
        TextEncodingError: bytes that are not valid in the encoding, or NUL bytes in UTF-8 text (UTF-16
            without a byte-order mark, or a binary file), naming ``source``, the line and byte offset.
    """
    codec, name, skip = detect_bom(data)
    body = data[skip:]
    if codec == "utf-8":
        nul = body.find(b"\0")
        if nul >= 0:
            line, column = _where(body, nul)
            raise TextEncodingError(
                f"{source} holds NUL bytes (the first at line {line}, byte {column} of the line, byte {skip + nul} of "
                f"the file): it looks like UTF-16 or UTF-32 text without a byte-order mark, or a binary file, not "
                f"UTF-8 text. {_RESAVE}.")
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as error:
        if codec == "utf-8":
            raise TextEncodingError(not_utf8_message(source, body, error, skip)) from None
        before = body[:error.start].decode(codec, errors="replace")
        line = _normalise(before).count("\n") + 1
        raise TextEncodingError(
            f"{source} starts with a {name} but is not valid {name.split(' (')[0]}: line {line}, byte "
            f"{skip + error.start} of the file ({error.reason}). {_RESAVE}.") from None
    return DecodedText(_normalise(text), name, _line_endings(text))


def read_text_file(path: str | Path, what: str = "text file") -> DecodedText:
    """A text file's content (see `decode_text`); a missing file or a folder is a `TextFileMissingError`."""
    path = Path(path)
    if path.is_dir():
        raise TextFileMissingError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise TextFileMissingError(f"{what} {path} does not exist")
    decoded = decode_text(path.read_bytes(), path)
    if decoded.encoding != "UTF-8" or decoded.line_endings not in ("LF", "none"):
        log.info("%s: read as %s with %s line endings", path, decoded.encoding, decoded.line_endings)
    return decoded


def read_lines(path: str | Path, what: str = "text file") -> list[str]:
    """The lines of a text file (see `decode_text`), without line endings; a final line break adds no line."""
    text = read_text_file(path, what).text
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines
