"""indexer: read a docs folder, chunk, embed and store it in FAISS + SQLite, incrementally and atomically.

    from indexer import IndexConfig, build_index, open_index
    summary = build_index("docs/", "index/", IndexConfig(chunk_size=256))
    reader = open_index("index/")

Heavy libraries (torch, faiss, langchain) are imported inside the functions that use them.
"""

from __future__ import annotations

from indexer.build import BuildSummary, IncompatibleIndex, build_index, check_compatible
from indexer.config import IndexConfig
from indexer.reader import IndexNotFound, IndexReader, open_index
from indexer.schema import Chunk, Document, IndexMeta, Section
from indexer.store import IndexLockedError


def load_embedder(*args, **kwargs):
    """See `indexer.embed.load_embedder` (imported lazily: it pulls in torch)."""
    from indexer.embed import load_embedder as _load

    return _load(*args, **kwargs)


def encode(*args, **kwargs):
    """See `indexer.embed.encode`."""
    from indexer.embed import encode as _encode

    return _encode(*args, **kwargs)


__all__ = ["BuildSummary", "Chunk", "Document", "IncompatibleIndex", "IndexConfig", "IndexLockedError",
           "IndexMeta", "IndexNotFound", "IndexReader", "Section", "build_index", "check_compatible", "encode",
           "load_embedder", "open_index"]
