"""Searcher over a real FAISS index and a real BM25 index, with a tiny deterministic
embedder: dense / bm25 / hybrid, filters before ranking, MMR, batch = single."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from indexer.bm25 import BM25Index, build_bm25
from retriever import Hit, SearchConfig, Searcher
from retriever.filters import parse_filters

DIM = 64

DOCS = [
    ("guides/install.md", "md", {"lang": "en"}, "Install ragtune with pip and create a virtual environment first."),
    ("guides/install.md", "md", {"lang": "en"}, "The virtual environment keeps dependencies isolated from the system."),
    ("guides/usage.md", "md", {"lang": "en"}, "Search the index with a question and read the top chunks."),
    ("guides/usage.md", "md", {"lang": "en"}, "Search the index with a question and read the top chunks again."),
    ("papers/faiss.pdf", "pdf", {"lang": "en"}, "FAISS stores dense vectors and finds nearest neighbours quickly."),
    ("papers/bm25.pdf", "pdf", {"lang": "en"}, "BM25 ranks documents by term frequency and inverse document frequency."),
    ("notes/cooking.txt", "txt", {"lang": "fr"}, "Pour the milk slowly and stir the sauce until it thickens."),
    ("notes/garden.txt", "txt", {"lang": "fr"}, "Water the tomatoes every morning during the hot summer."),
    ("notes/travel.txt", "txt", {"lang": "de"}, "The train to Vienna leaves at nine from the central station."),
    ("notes/python.txt", "txt", {"lang": "en"}, "Python packages are installed with pip from the package index."),
]


def embed(texts):
    """Hashed bag of words: texts sharing words get similar vectors."""
    out = np.zeros((len(texts), DIM), np.float32)
    for r, t in enumerate(texts):
        for w in t.lower().replace(".", "").replace("?", "").split():
            out[r, zlib.crc32(w.encode()) % DIM] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@dataclass
class FakeChunk:
    id: int
    chunk_id: str
    source: str
    file_type: str
    title: str
    heading: str
    page: int | None
    text: str
    metadata: dict = field(default_factory=dict)


class MiniReader:
    """The IndexReader surface the Searcher uses, over a real FAISS index and a real BM25 dir."""

    def __init__(self, tmp: Path, index_type: str = "flat"):
        import faiss

        self.chunks = [FakeChunk(id=100 + i, chunk_id=f"c{i}", source=s, file_type=ft, title=Path(s).stem,
                                 heading="", page=1 if ft == "pdf" else None, text=t, metadata=md)
                       for i, (s, ft, md, t) in enumerate(DOCS)]
        ids = np.array([c.id for c in self.chunks], np.int64)
        inner = faiss.IndexFlatIP(DIM) if index_type == "flat" else faiss.IndexHNSWFlat(DIM, 8, faiss.METRIC_INNER_PRODUCT)
        self.vectors = faiss.IndexIDMap2(inner)
        self.vectors.add_with_ids(embed([c.text for c in self.chunks]), ids)
        build_bm25([c.text for c in self.chunks], ids, tmp / "bm25")
        self.bm25 = BM25Index(tmp / "bm25")
        self.generation = 1
        self.meta = type("Meta", (), {"embedding_model": "tiny", "embedding_dim": DIM})()

    def get_chunks(self, ids):
        by = {c.id: c for c in self.chunks}
        return [by[i] for i in ids]

    def all_chunks(self):
        return list(self.chunks)


@pytest.fixture
def searcher(tmp_path):
    return Searcher(MiniReader(tmp_path), embedder=embed)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_each_retriever_finds_the_obvious_chunk(searcher, mode):
    hits = searcher.search("how to install with pip in a virtual environment", k=3, retriever=mode)
    assert hits and isinstance(hits[0], Hit)
    assert hits[0].source == "guides/install.md"
    assert mode in hits[0].retrievers or (mode == "hybrid" and set(hits[0].retrievers) <= {"dense", "bm25"})
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    d = hits[0].to_dict()
    assert {"chunk_id", "source", "score", "text", "heading", "page", "retrievers"} <= set(d)


def test_hybrid_tags_both_retrievers_and_fuses(searcher):
    hits = searcher.search("FAISS nearest neighbours dense vectors", k=2, retriever="hybrid")
    assert hits[0].chunk_id == "c4" and set(hits[0].retrievers) == {"dense", "bm25"}
    rrf = searcher.search("FAISS nearest neighbours", k=4, fusion="rrf")
    cvx = searcher.search("FAISS nearest neighbours", k=4, fusion="convex", normalization="minmax")
    assert rrf[0].chunk_id == cvx[0].chunk_id == "c4"
    assert 0 < rrf[0].score < 1 and cvx[0].score == pytest.approx(1.0)  # both top in min-max


def test_filters_apply_before_ranking_so_topk_is_not_starved(searcher):
    # the query matches the guides best; a post-filter on the top-k would return nothing
    q = "install ragtune with pip in a virtual environment"
    for mode in ("dense", "bm25", "hybrid"):
        hits = searcher.search(q, k=3, filters={"source": "notes/*"}, retriever=mode)
        assert all(h.source.startswith("notes/") for h in hits)
        if mode == "bm25":
            assert hits and hits[0].source == "notes/python.txt"  # BM25 only returns chunks sharing a word
        else:
            assert len(hits) == 3
    assert {h.file_type for h in searcher.search(q, k=5, filters={"file_type": ".PDF"}, retriever="dense")} == {"pdf"}
    assert {h.metadata["lang"] for h in searcher.search(q, k=5, filters={"lang": ["fr", "de"]})} <= {"fr", "de"}
    assert {h.source for h in searcher.search(q, k=9, filters={"source": "guides"}, retriever="dense")} == {
        "guides/install.md", "guides/usage.md"}
    assert searcher.search(q, k=3, filters={"lang": "es"}) == []
    with pytest.raises(ValueError, match="unknown filter key 'langue'"):
        searcher.search(q, filters={"langue": "fr"})


def test_filters_with_approximate_index_are_exact(tmp_path):
    s = Searcher(MiniReader(tmp_path, index_type="hnsw"), embedder=embed)
    hits = s.search("water the tomatoes", k=2, filters={"lang": "fr"}, retriever="dense")
    assert [h.chunk_id for h in hits] == ["c7", "c6"]


def test_parse_filters():
    assert parse_filters(["source=docs/*.md", "lang=en", "lang=fr"]) == {"source": ["docs/*.md"], "lang": ["en", "fr"]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_filters(["source"])


def test_mmr_drops_near_duplicates(searcher):
    q = "search the index with a question and read the top chunks"
    plain = [h.chunk_id for h in searcher.search(q, k=2, retriever="dense")]
    assert plain == ["c2", "c3"]  # two near-identical chunks
    diverse = [h.chunk_id for h in searcher.search(q, k=2, retriever="dense", mmr=True, mmr_lambda=0.3)]
    assert diverse[0] == "c2" and diverse[1] != "c3"


def test_batch_equals_single(searcher):
    qs = ["train to Vienna", "BM25 term frequency", "stir the sauce"]
    batch = searcher.search_batch(qs, k=3)
    assert [[h.chunk_id for h in hs] for hs in batch] == [[h.chunk_id for h in searcher.search(q, k=3)] for q in qs]


def test_bad_input_is_a_clear_error(searcher):
    with pytest.raises(ValueError, match="empty"):
        searcher.search("  ")
    with pytest.raises(ValueError, match="retriever must be one of"):
        searcher.search("q", retriever="sparse")
    with pytest.raises(ValueError, match="unknown search setting"):
        searcher.search("q", nonsense=1)
    with pytest.raises(ValueError, match="64-d"):
        Searcher(searcher.index, embedder=lambda t: np.ones((len(t), 8))).search("q", retriever="dense")
    with pytest.raises(ValueError, match="SearchConfig.fusion"):
        SearchConfig(fusion="max")
    assert len(searcher.search("vienna", k=50, retriever="dense")) == len(DOCS)
