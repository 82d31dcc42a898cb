"""Typed, validated search settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

RETRIEVERS = ("dense", "bm25", "hybrid")
FUSIONS = ("rrf", "convex")
NORMALIZATIONS = ("minmax", "zscore")


@dataclass
class SearchConfig:
    """How `Searcher` ranks chunks. Defaults are the setting measured best on SQuADShifts
    (tuned there, reported on SQuAD dev by benchmarks/bench_retrieval.py)."""

    retriever: str = "hybrid"
    """`dense` (FAISS), `bm25` (lexical) or `hybrid` (both, fused)."""
    k: int = 5
    """Hits returned."""
    fusion: str = "convex"
    """Hybrid fusion: `rrf` (weighted reciprocal rank fusion) or `convex` (weighted sum of normalised scores)."""
    dense_weight: float = 0.5
    """Weight of the dense ranking in the fusion."""
    bm25_weight: float = 0.5
    """Weight of the BM25 ranking in the fusion."""
    rrf_k: int = 60
    """RRF constant: score = sum_r weight_r / (rrf_k + rank_r)."""
    normalization: str = "zscore"
    """Convex fusion: how each retriever's candidate scores are scaled before summing."""
    candidates: int = 50
    """Candidates taken from each retriever before fusion / MMR (at least k)."""
    mmr: bool = False
    """Re-order the fused candidates with maximal marginal relevance (fewer near-duplicates)."""
    mmr_lambda: float = 0.7
    """MMR trade-off: 1 = relevance only, 0 = diversity only."""
    query_model: str | None = None
    """Adapted query encoder (`python -m retriever.adapt_embedder`): None embeds queries with the
    index's model; "auto" uses `<index model>-query` from RAGTUNE_HOME/models when it exists;
    or a folder name / path."""

    def __post_init__(self) -> None:
        if self.retriever not in RETRIEVERS:
            raise ValueError(f"SearchConfig.retriever must be one of {', '.join(RETRIEVERS)}; got {self.retriever!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"SearchConfig.fusion must be one of {', '.join(FUSIONS)}; got {self.fusion!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"SearchConfig.normalization must be one of {', '.join(NORMALIZATIONS)}; "
                             f"got {self.normalization!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"SearchConfig.k must be a positive integer, got {self.k!r}")
        if self.dense_weight < 0 or self.bm25_weight < 0 or self.dense_weight + self.bm25_weight == 0:
            raise ValueError("SearchConfig.dense_weight and bm25_weight must be >= 0 and not both 0")
        if not isinstance(self.rrf_k, int) or self.rrf_k < 0:
            raise ValueError(f"SearchConfig.rrf_k must be an integer >= 0, got {self.rrf_k!r}")
        if not isinstance(self.candidates, int) or self.candidates < 1:
            raise ValueError(f"SearchConfig.candidates must be a positive integer, got {self.candidates!r}")
        if not 0 <= self.mmr_lambda <= 1:
            raise ValueError(f"SearchConfig.mmr_lambda must be in [0, 1], got {self.mmr_lambda!r}")

    def to_dict(self) -> dict:
        return asdict(self)
