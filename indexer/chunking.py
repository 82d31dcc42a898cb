"""Token-aware chunking with overlap (langchain-text-splitters), within document sections.

Sections come from the loaders (Markdown/reST/HTML headings, PDF pages), so a chunk
never spans two headings or two pages and carries one heading path and page number.
Each chunk keeps exact character offsets into the document's extracted text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from indexer.schema import Document

CHUNKER_VERSION = "v1"
"""Bump when chunking changes the chunks it produces: old indexes then need --rebuild."""


@dataclass(frozen=True)
class ChunkSpan:
    """A chunk before it gets a FAISS id: `text == doc.text[start:end]`."""

    start: int
    end: int
    text: str
    heading: str
    page: int | None


def make_splitter(tokenizer, chunk_size: int, chunk_overlap: int):
    """A recursive splitter (paragraphs, lines, sentences, words) measuring length in `tokenizer` tokens."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    # lengths of whole sections are measured before splitting: the "longer than the model
    # maximum" warning is expected here, not a problem
    if hasattr(tokenizer, "deprecation_warnings"):
        tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    return RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        tokenizer, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
        separators=["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""], keep_separator="end",
        strip_whitespace=True)


def chunk_document(doc: Document, splitter) -> list[ChunkSpan]:
    """Split each section of `doc`; offsets are recovered by searching forward in the section."""
    spans: list[ChunkSpan] = []
    for section in doc.sections:
        body = doc.text[section.start:section.end]
        if not body.strip():
            continue
        if len(body) <= 16 * splitter._chunk_size and splitter._length_function(body) <= splitter._chunk_size:
            # fits as a whole: one chunk (what merging its pieces would give), at a tenth of the cost
            lead = len(body) - len(body.lstrip())
            piece = body.strip()
            start = section.start + lead
            spans.append(ChunkSpan(start, start + len(piece), piece, section.heading, section.page))
            continue
        cursor = 0
        for piece in splitter.split_text(body):
            if not piece.strip():
                continue
            at = body.find(piece, cursor)
            if at < 0:
                at = body.find(piece)
            if at < 0:  # the splitter normalised something: keep the text, best-effort offset
                at = cursor
            start = section.start + at
            spans.append(ChunkSpan(start, start + len(piece), piece, section.heading, section.page))
            cursor = at + 1
    return spans


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_chunk_id(source: str, start: int, text_hash: str) -> str:
    """Same source, position and content -> same id across rebuilds."""
    return hashlib.sha1(f"{source}\0{start}\0{text_hash}".encode()).hexdigest()[:20]
