"""PDF: text per page with pypdf; each page is a section carrying its 1-based page number."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from indexer.loaders import LoadError
from indexer.schema import Document, Section


def load_pdf(data: bytes, name: str) -> Document:
    """Pages are joined by blank lines; chunks never cross a page, so each has one page number."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception:  # noqa: BLE001 - pypdf raises several types here
                raise LoadError("encrypted PDF (needs a password)") from None
        pages = [page.extract_text() or "" for page in reader.pages]
        title = ""
        if reader.metadata and reader.metadata.title:
            title = str(reader.metadata.title).strip()
    except LoadError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as err:
        raise LoadError(f"unreadable PDF: {type(err).__name__}: {str(err)[:120]}") from None
    parts, sections, pos = [], [], 0
    for number, page_text in enumerate(pages, 1):
        page_text = page_text.strip()
        if not page_text:
            continue
        if parts:
            parts.append("\n\n")
            pos += 2
        sections.append(Section(pos, pos + len(page_text), "", number))
        parts.append(page_text)
        pos += len(page_text)
    return Document(text="".join(parts), title=title or Path(name).stem, file_type="pdf", sections=sections)
