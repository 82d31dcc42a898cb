"""Plain records shared by the indexer's stages: loaded documents, chunks, index metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class Section:
    """A span of a document's extracted text with one heading path (and PDF page)."""

    start: int
    end: int
    heading: str = ""
    """Heading path, outermost first: `"Install > From source"`; empty when none."""
    page: int | None = None
    """1-based PDF page, None for other formats."""


@dataclass
class Document:
    """One file's extracted text, split into sections by its structure (headings or pages)."""

    text: str
    title: str
    file_type: str
    sections: list[Section]
    warnings: list[str] = field(default_factory=list)
    """Non-fatal problems (e.g. not valid UTF-8, decoded as cp1252)."""


@dataclass
class Chunk:
    """One indexed piece of text; `id` is its FAISS id."""

    id: int
    chunk_id: str
    """Stable string id: hash of source, position and content."""
    source: str
    """Path relative to the docs root (posix)."""
    file_type: str
    title: str
    heading: str
    page: int | None
    start: int
    end: int
    """Character offsets into the document's extracted text: `text == doc.text[start:end]`."""
    text: str
    content_hash: str
    """sha256 of the chunk text: identical texts share one embedding."""
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IndexMeta:
    """What an index generation holds and how it was built (meta.json)."""

    embedding_model: str
    embedding_dim: int
    chunk_size: int
    chunk_overlap: int
    index_type: str
    docs_root: str
    built_at: str
    n_files: int
    n_chunks: int
    generation: int
    next_id: int = 0
    """First FAISS id not used yet (ids are never reused within an index)."""
    chunker: str = "v1"
    """Version of the chunking code: a different version cannot be updated incrementally."""
    ann_recall_at_10: float | None = None
    """Recall@10 of an approximate index against exact search, measured when it was built."""
    index_params: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "IndexMeta":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)
