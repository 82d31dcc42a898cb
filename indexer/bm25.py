"""The BM25 side index, saved in each index generation beside the vectors.

Built by the indexer together with the FAISS index (so the two always describe the
same chunks) and read by `retriever` for lexical and hybrid search. Row `i` of the
BM25 index is the chunk whose FAISS id is `ids[i]`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

IDS_FILE = "ids.npy"
CONFIG_FILE = "ragtune_bm25.json"


@dataclass(frozen=True)
class BM25Config:
    k1: float = 1.2
    """Term-frequency saturation."""
    b: float = 0.75
    """Length normalisation."""
    stemmer: str | None = "english"
    """Snowball stemmer language (PyStemmer), or None for no stemming."""
    stopwords: str | None = "en"
    """Stopword list name understood by bm25s, or None."""

    def __post_init__(self) -> None:
        if self.k1 <= 0 or not 0 <= self.b <= 1:
            raise ValueError(f"BM25Config needs k1 > 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")


@functools.cache
def _stemmer(language: str | None):
    if language is None:
        return None
    import Stemmer

    return Stemmer.Stemmer(language).stemWords


def tokenize(texts: list[str], config: BM25Config):
    import bm25s

    return bm25s.tokenize(texts, stopwords=config.stopwords, stemmer=_stemmer(config.stemmer),
                          show_progress=False, allow_empty=True)


def tokenize_strings(texts: list[str], config: BM25Config) -> list[list[str]]:
    """Like `tokenize`, but the (stemmed) tokens as strings, for `BM25Index.scores`."""
    import bm25s

    return bm25s.tokenize(texts, stopwords=config.stopwords, stemmer=_stemmer(config.stemmer),
                          show_progress=False, return_ids=False)


def build_bm25(texts: list[str], ids: np.ndarray, out_dir: Path, config: BM25Config = BM25Config()) -> None:
    """Index `texts` (chunk `ids[i]` is `texts[i]`) and save everything into `out_dir`."""
    import bm25s

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) != len(texts):
        raise ValueError(f"build_bm25 got {len(texts)} texts but {len(ids)} ids")
    model = bm25s.BM25(k1=config.k1, b=config.b)
    if texts:
        model.index(tokenize(texts, config), show_progress=False)
        model.save(str(out_dir), show_progress=False)
    np.save(out_dir / IDS_FILE, ids)
    (out_dir / CONFIG_FILE).write_text(json.dumps(asdict(config)))


class BM25Index:
    """A loaded BM25 side index: `search()` returns chunk ids and scores, best first."""

    def __init__(self, directory: Path):
        import bm25s

        directory = Path(directory)
        self.config = BM25Config(**json.loads((directory / CONFIG_FILE).read_text()))
        self.ids = np.load(directory / IDS_FILE)
        self.model = bm25s.BM25.load(str(directory), show_progress=False, verbosity=0) if len(self.ids) else None

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: list[str], k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: `(chunk_ids, scores)`, both `(n_queries, k')` with k' = min(k, size).

        `mask` (bool or float per BM25 row) restricts the candidates before ranking;
        rows that are masked out or score 0 come back with id -1.
        """
        k = min(k, len(self.ids))
        if k == 0 or self.model is None:
            return np.full((len(queries), 0), -1, np.int64), np.zeros((len(queries), 0), np.float32)
        tokens = tokenize(queries, self.config)
        weight_mask = None if mask is None else np.asarray(mask, dtype=np.float32)
        rows, scores = self.model.retrieve(tokens, k=k, show_progress=False, n_threads=1, weight_mask=weight_mask)
        chunk_ids = np.where(scores > 0, self.ids[rows], -1)
        return chunk_ids, scores.astype(np.float32)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every row for one query: `(len(self),)` float32, row i is chunk `ids[i]`."""
        if self.model is None:
            return np.zeros(len(self.ids), np.float32)
        tokens = tokenize_strings([query], self.config)[0]
        if not tokens:  # only stopwords / punctuation: bm25s.get_scores fails on an empty list
            return np.zeros(len(self.ids), np.float32)
        return np.asarray(self.model.get_scores(tokens), dtype=np.float32)
