"""Plain text, Markdown and reStructuredText: decoded as is; headings give sections."""

from __future__ import annotations

from pathlib import Path

from indexer.loaders.decode import decode_text
from indexer.loaders.structure import markdown_headings, rst_headings, sections_from_headings, title_from
from indexer.schema import Document, Section


def _stem(name: str) -> str:
    return Path(name).stem


def load_text(data: bytes, name: str) -> Document:
    """A .txt file: one section; the title is the first line when it is short, else the file name."""
    text, warnings = decode_text(data)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    title = first if 0 < len(first) <= 80 and len(text) > len(first) + 1 else _stem(name)
    sections = [Section(0, len(text))] if text.strip() else []
    return Document(text=text, title=title, file_type="txt", sections=sections, warnings=warnings)


def load_markdown(data: bytes, name: str) -> Document:
    """A Markdown file split at its headings; the title is its first `#` heading."""
    text, warnings = decode_text(data)
    markers = markdown_headings(text)
    return Document(text=text, title=title_from(markers, _stem(name)), file_type="md",
                    sections=sections_from_headings(text, markers), warnings=warnings)


def load_rst(data: bytes, name: str) -> Document:
    """A reStructuredText file split at its section titles."""
    text, warnings = decode_text(data)
    markers = rst_headings(text)
    return Document(text=text, title=title_from(markers, _stem(name)), file_type="rst",
                    sections=sections_from_headings(text, markers), warnings=warnings)
