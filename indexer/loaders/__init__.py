"""File loaders: one small module per format family, chosen by file extension.

Every loader takes raw bytes (already size-checked and read by the scanner) and returns
a `Document`, or raises `LoadError` with a one-line reason; the build then skips the
file, reports the reason and goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from indexer.schema import Document


class LoadError(Exception):
    """A file that cannot be indexed; the message is the reason shown to the user."""


def _text(data: bytes, name: str) -> Document:
    from indexer.loaders.text import load_text

    return load_text(data, name)


def _markdown(data: bytes, name: str) -> Document:
    from indexer.loaders.text import load_markdown

    return load_markdown(data, name)


def _rst(data: bytes, name: str) -> Document:
    from indexer.loaders.text import load_rst

    return load_rst(data, name)


def _html(data: bytes, name: str) -> Document:
    from indexer.loaders.html import load_html

    return load_html(data, name)


def _pdf(data: bytes, name: str) -> Document:
    from indexer.loaders.pdf import load_pdf

    return load_pdf(data, name)


LOADERS: dict[str, tuple[str, Callable[[bytes, str], Document]]] = {
    ".txt": ("txt", _text),
    ".md": ("md", _markdown),
    ".markdown": ("md", _markdown),
    ".rst": ("rst", _rst),
    ".html": ("html", _html),
    ".htm": ("html", _html),
    ".pdf": ("pdf", _pdf),
}
"""extension -> (file_type, loader)."""


def file_type(path: str | Path) -> str | None:
    """The file type of a supported file (`md`, `txt`, `rst`, `html`, `pdf`), else None."""
    entry = LOADERS.get(Path(path).suffix.lower())
    return entry[0] if entry else None


def load_document(data: bytes, name: str) -> Document:
    """Extract a document from a file's bytes; `name` (the file name) picks the loader."""
    entry = LOADERS.get(Path(name).suffix.lower())
    if entry is None:
        raise LoadError(f"unsupported file type {Path(name).suffix or '(no extension)'}")
    return entry[1](data, name)
