"""`Hit`: one retrieved chunk, as the retriever returns it and prompt styles consume it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Hit:
    """A chunk found by search, with where it comes from and which retrievers found it."""

    chunk_id: str
    """Stable string id of the chunk."""
    id: int
    """FAISS id of the chunk (int64)."""
    source: str
    """Path of the document relative to the docs root (posix)."""
    text: str
    score: float
    """Score of the retriever that ranked it (fused score for hybrid)."""
    title: str = ""
    heading: str = ""
    """Heading path, e.g. "Intro > Setup" ("" if none)."""
    page: int | None = None
    """1-based PDF page, None otherwise."""
    file_type: str = ""
    retrievers: list[str] = field(default_factory=list)
    """Which retrievers returned this chunk in their candidate lists ("dense", "bm25")."""
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict."""
        d = asdict(self)
        d["score"] = float(self.score)
        return d

    @classmethod
    def from_text(cls, text: str, title: str = "", source: str = "", score: float = 0.0) -> "Hit":
        """A hit that did not come from an index (e.g. a gold paragraph given directly)."""
        return cls(chunk_id="", id=-1, source=source, text=text, score=score, title=title)
