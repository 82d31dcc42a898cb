"""Bytes -> str for text formats, refusing binary files that merely carry a text extension.

Policy (documented in the README of the indexer): UTF-8 (with or without BOM) and
BOM-marked UTF-16 are decoded as is. Other bytes are decoded as cp1252 (the usual
"ANSI" encoding of Windows text) when that works, else as UTF-8 with U+FFFD
replacement characters; both cases index the file and report a warning naming the
file, so nothing is lost silently. Files with NUL bytes or mostly control characters
are binary: they are skipped with a reason.
"""

from __future__ import annotations

import codecs

from indexer.loaders import LoadError

_CONTROL_OK = {9, 10, 12, 13}


def looks_binary(data: bytes, sample: int = 8192) -> bool:
    """NUL bytes anywhere, or more than 10% control bytes in the first `sample` bytes."""
    if b"\x00" in data:
        return True
    head = data[:sample]
    if not head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in _CONTROL_OK)
    return controls / len(head) > 0.10


def decode_text(data: bytes) -> tuple[str, list[str]]:
    """Return `(text, warnings)`; raise LoadError for binary content."""
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):].decode("utf-8", errors="replace"), []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), []
        except UnicodeDecodeError:
            raise LoadError("binary content (invalid UTF-16 after a UTF-16 byte-order mark)") from None
    if looks_binary(data):
        raise LoadError("binary content (NUL or control bytes) in a text file")
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as err:
        where = f"byte {err.start}"
    try:
        return data.decode("cp1252"), [f"not valid UTF-8 ({where}); decoded as cp1252"]
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), [f"not valid UTF-8 ({where}); undecodable bytes replaced by U+FFFD"]
