"""`Searcher`: dense, BM25 or hybrid search over one index generation, with metadata
filters applied before ranking and optional MMR re-ordering."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from retriever.config import RETRIEVERS, SearchConfig
from retriever.dense import DenseBackend
from retriever.embedding import encode_queries
from retriever.filters import allowed_ids, normalize_filters
from retriever.fusion import convex, mmr, rrf
from retriever.hit import Hit

_CHUNK_FIELDS = ("source", "title", "heading", "page", "file_type")


class Searcher:
    """Search one open index (`indexer.open_index`). Thread-safe for reads.

    Args:
        index: an `IndexReader` (needs `.vectors`, `.bm25`, `.get_chunks`, `.all_chunks`, `.meta`).
        embedder: the query embedding model (must match the index's); loaded lazily from
            `index.meta.embedding_model` when None and a dense search is asked for.
        config: defaults for every search (`SearchConfig`).
        models_dir: where embedding presets live (default: RAGTUNE_HOME/models).
    """

    def __init__(self, index: Any, embedder: Any = None, config: SearchConfig | None = None,
                 models_dir: Path | None = None):
        self.index = index
        self.config = config or SearchConfig()
        self.models_dir = models_dir
        self._embedder = embedder
        self.dense = DenseBackend(index.vectors)
        self.bm25 = index.bm25
        self._lock = threading.Lock()
        self._allowed_cache: dict[tuple, np.ndarray] = {}
        self._query_paths: dict[str, Path | None] = {}
        self._query_models: dict[Path, Any] = {}
        order = np.argsort(self.bm25.ids, kind="stable")
        self._bm25_sorted, self._bm25_order = np.asarray(self.bm25.ids)[order], order

    # ----------------------------------------------------------------- public API
    @property
    def embedder(self) -> Any:
        """The index's embedding model (passed in, or loaded from `index.meta.embedding_model`)."""
        with self._lock:
            if self._embedder is None:
                from indexer.embed import load_embedder

                self._embedder = load_embedder(self.index.meta.embedding_model, self._models_dir())
            return self._embedder

    def query_embedder(self, cfg: SearchConfig | None = None) -> Any:
        """The model that embeds queries: the adapted query encoder `cfg.query_model` if one
        applies to this index (see retriever.query_model), else the index's model."""
        cfg = cfg or self.config
        key = cfg.query_model
        if key in (None, "", "none"):
            return self.embedder
        with self._lock:
            if key not in self._query_paths:
                from retriever.query_model import resolve_query_model

                self._query_paths[key] = resolve_query_model(key, self.index.meta.embedding_model,
                                                             self._models_dir())
            path = self._query_paths[key]
            if path is not None and path not in self._query_models:
                from indexer.embed import load_embedder

                self._query_models[path] = load_embedder(str(path), self._models_dir())
        return self.embedder if path is None else self._query_models[path]

    def _models_dir(self) -> Path:
        if self.models_dir is None:
            from ragtune.settings import Settings

            self.models_dir = Settings.from_env().models_dir
        return self.models_dir

    def embed(self, queries: list[str], cfg: SearchConfig | None = None) -> np.ndarray:
        """Normalised query vectors; checks they match the index's dimension."""
        vecs = encode_queries(self.query_embedder(cfg), queries)
        if vecs.shape[1] != self.dense.index.d:
            raise ValueError(f"the embedding model gives {vecs.shape[1]}-d vectors but the index holds "
                             f"{self.dense.index.d}-d ones: use the model the index was built with "
                             f"({self.index.meta.embedding_model})")
        return vecs

    def search(self, query: str, k: int | None = None, filters: dict | None = None,
               retriever: str | None = None, **overrides) -> list[Hit]:
        """Top-k hits for one query, best first. `overrides` are SearchConfig fields for this call."""
        return self.search_batch([query], k=k, filters=filters, retriever=retriever, **overrides)[0]

    def search_batch(self, queries: list[str], k: int | None = None, filters: dict | None = None,
                     retriever: str | None = None, **overrides) -> list[list[Hit]]:
        """Top-k hits for each query (query embedding and BM25 done in one batch)."""
        cfg = self._config(k, retriever, overrides)
        queries = [self._check_query(q) for q in queries]
        if not queries:
            return []
        allowed = self.allowed(filters)
        if allowed is not None and len(allowed) == 0:
            return [[] for _ in queries]
        ranked = self.rank(queries, cfg, allowed)
        return self._to_hits(ranked)

    def allowed(self, filters: dict | None) -> np.ndarray | None:
        """Chunk ids passing `filters` (None = everything); cached per index generation."""
        key = normalize_filters(filters)
        if not key:
            return None
        cache_key = (getattr(self.index, "generation", None), key)
        with self._lock:
            hit = self._allowed_cache.get(cache_key)
        if hit is None:
            chunks = self.index.all_chunks()
            hit = allowed_ids(chunks, key)
            if len(hit) == 0:
                _check_keys(chunks, key)
            with self._lock:
                if len(self._allowed_cache) > 256:
                    self._allowed_cache.clear()
                self._allowed_cache[cache_key] = hit
        return hit

    # ----------------------------------------------------------------- ranking
    def rank(self, queries: list[str], cfg: SearchConfig, allowed: np.ndarray | None = None
             ) -> list[list[tuple[int, float, list[str]]]]:
        """Per query: [(chunk id, score, retrievers that found it)], best first, length <= cfg.k."""
        mode = cfg.retriever
        depth = max(cfg.candidates, cfg.k) if (mode == "hybrid" or cfg.mmr) else cfg.k
        qvecs = self.embed(queries, cfg) if (mode in ("dense", "hybrid") or cfg.mmr) else None
        lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if mode in ("dense", "hybrid"):
            lists["dense"] = self.dense.search(qvecs, depth, allowed)
        bm25_rows: list[np.ndarray] = []
        if mode in ("bm25", "hybrid"):
            mask = None if allowed is None else np.isin(self.bm25.ids, allowed)
            bm25_rows = [self.bm25.scores(q) for q in queries]  # every row's score, kept for convex fusion
            lists["bm25"] = _top_rows(bm25_rows, np.asarray(self.bm25.ids), depth, mask)
        out = []
        for qi, query in enumerate(queries):
            per = {name: _valid(ids[qi], sc[qi]) for name, (ids, sc) in lists.items()}
            found: dict[int, list[str]] = {}
            for name, (ids, _) in per.items():
                for i in ids:
                    found.setdefault(int(i), []).append(name)
            if mode != "hybrid":
                ids, scores = per[mode]
            elif cfg.fusion == "rrf":
                ids, scores = rrf({n: v[0] for n, v in per.items()}, self._weights(cfg), cfg.rrf_k)
            else:
                ids = np.fromiter(found.keys(), dtype=np.int64, count=len(found))
                raw = {"dense": self.dense.scores_for(qvecs[qi], ids), "bm25": self._bm25_lookup(bm25_rows[qi], ids)}
                ids, scores = convex(ids, raw, self._weights(cfg), cfg.normalization)
            if cfg.mmr and len(ids) > 1:
                pick = mmr(scores, self.dense.vectors_for(ids), cfg.k, cfg.mmr_lambda)
                ids, scores = ids[pick], scores[pick]
            out.append([(int(i), float(s), found.get(int(i), [])) for i, s in zip(ids[:cfg.k], scores[:cfg.k])])
        return out

    def _bm25_lookup(self, row_scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """BM25 scores of chunk `ids`, from one query's per-row scores."""
        if len(self._bm25_sorted) == 0:
            return np.zeros(len(ids), np.float32)
        pos = np.clip(np.searchsorted(self._bm25_sorted, ids), 0, len(self._bm25_sorted) - 1)
        found = self._bm25_sorted[pos] == ids
        return np.where(found, row_scores[self._bm25_order[pos]], 0.0)

    @staticmethod
    def _weights(cfg: SearchConfig) -> dict[str, float]:
        return {"dense": cfg.dense_weight, "bm25": cfg.bm25_weight}

    # ----------------------------------------------------------------- helpers
    def _config(self, k: int | None, retriever: str | None, overrides: dict) -> SearchConfig:
        changes = dict(overrides)
        if k is not None:
            changes["k"] = k
        if retriever is not None:
            if retriever not in RETRIEVERS:
                raise ValueError(f"retriever must be one of {', '.join(RETRIEVERS)}; got {retriever!r}")
            changes["retriever"] = retriever
        if not changes:
            return self.config
        try:
            return replace(self.config, **changes)
        except TypeError as err:
            raise ValueError(f"unknown search setting: {err}") from None

    @staticmethod
    def _check_query(q: Any) -> str:
        if not isinstance(q, str) or not q.strip():
            raise ValueError("the search query is empty")
        return q

    def _to_hits(self, ranked: list[list[tuple[int, float, list[str]]]]) -> list[list[Hit]]:
        wanted = list(dict.fromkeys(i for row in ranked for i, _, _ in row))
        chunks = {c.id: c for c in self.index.get_chunks(wanted)} if wanted else {}
        out = []
        for row in ranked:
            hits = []
            for i, score, found in row:
                c = chunks.get(i)
                if c is None:  # vector without a stored chunk: should not happen in a consistent index
                    continue
                hits.append(Hit(chunk_id=c.chunk_id, id=c.id, source=c.source, text=c.text, score=score,
                                title=c.title or "", heading=c.heading or "", page=c.page, file_type=c.file_type,
                                retrievers=list(found), metadata=dict(c.metadata or {})))
            out.append(hits)
        return out


def _check_keys(chunks: list, key: tuple) -> None:
    """A filter on a key no chunk has is a typo, not an empty result: say so."""
    from retriever.filters import FIELDS

    known = set(FIELDS) | {m for c in chunks for m in (c.metadata or {})}
    unknown = [k for k, _ in key if k not in known]
    if unknown:
        raise ValueError(f"unknown filter key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")


def _top_rows(rows: list[np.ndarray], ids: np.ndarray, k: int, mask: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k chunk ids per query from full BM25 score rows; rows outside `mask` or scoring 0
    are not candidates (-1 pads). Same contract as `BM25Index.search`."""
    k = min(k, len(ids))
    out_ids = np.full((len(rows), k), -1, np.int64)
    out_sc = np.zeros((len(rows), k), np.float32)
    for qi, sc in enumerate(rows):
        sc = np.where(mask, sc, 0.0) if mask is not None else sc
        nz = np.flatnonzero(sc > 0)
        if len(nz) > k:
            nz = nz[np.argpartition(-sc[nz], k - 1)[:k]]
        nz = nz[np.argsort(-sc[nz], kind="stable")]
        out_ids[qi, :len(nz)], out_sc[qi, :len(nz)] = ids[nz], sc[nz]
    return out_ids, out_sc


def _valid(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.asarray(ids) >= 0
    return np.asarray(ids, np.int64)[keep], np.asarray(scores, np.float64)[keep]
