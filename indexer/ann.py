"""Vector index variants (a small registry): exact flat inner product, HNSW, IVF.

Every variant is wrapped in `IndexIDMap2`, so ids are chunk ids and `reconstruct(id)`
works. Vectors are L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import faiss

    from indexer.config import IndexConfig


class FlatIndex:
    """Exact search; supports in-place `remove_ids`, so updates never rebuild."""

    name = "flat"
    exact = True

    def build(self, dim: int, vectors: np.ndarray, ids: np.ndarray, config: "IndexConfig") -> "faiss.Index":
        import faiss

        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(ids):
            index.add_with_ids(vectors, ids)
        return index

    def params(self, config: "IndexConfig") -> dict:
        return {}

    def configure(self, index: "faiss.Index", params: dict) -> None:
        return None


class HNSWIndex(FlatIndex):
    """Graph index: fast approximate search; HNSW cannot remove ids, so each generation rebuilds it."""

    name = "hnsw"
    exact = False

    def build(self, dim, vectors, ids, config):
        import faiss

        inner = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = max(40, 2 * config.hnsw_m)
        inner.hnsw.efSearch = config.hnsw_ef_search
        index = faiss.IndexIDMap2(inner)
        if len(ids):
            index.add_with_ids(vectors, ids)
        return index

    def params(self, config):
        return {"hnsw_m": config.hnsw_m, "ef_search": config.hnsw_ef_search}

    def configure(self, index, params):
        import faiss

        faiss.downcast_index(index.index).hnsw.efSearch = int(params.get("ef_search", 128))


class IVFIndex(FlatIndex):
    """Inverted lists over k-means cells (about sqrt(n) cells); `nprobe` cells are searched."""

    name = "ivf"
    exact = False

    def build(self, dim, vectors, ids, config):
        import faiss

        nlist = max(1, min(int(math.sqrt(max(len(ids), 1))), len(ids) // 39 or 1))
        quantizer = faiss.IndexFlatIP(dim)
        inner = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if len(ids):
            inner.train(vectors)
        else:  # an empty index still has to be trained to be written
            inner.train(np.zeros((1, dim), np.float32) + 1 / math.sqrt(dim))
        inner.nprobe = min(config.ivf_nprobe, nlist)
        inner.make_direct_map()
        quantizer.this.disown()
        inner.this.disown()
        index = faiss.IndexIDMap2(inner)
        index.own_fields = True
        if len(ids):
            index.add_with_ids(vectors, ids)
        return index

    def params(self, config):
        return {"nprobe": config.ivf_nprobe}

    def configure(self, index, params):
        import faiss

        inner = faiss.downcast_index(index.index)
        inner.nprobe = min(int(params.get("nprobe", 16)), inner.nlist)
        inner.make_direct_map()  # reconstruct(id) needs it


INDEX_TYPES = {cls.name: cls for cls in (FlatIndex, HNSWIndex, IVFIndex)}


def get_index_type(name: str) -> FlatIndex:
    if name not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {name!r}")
    return INDEX_TYPES[name]()


def all_vectors(index: "faiss.Index") -> tuple[np.ndarray, np.ndarray]:
    """`(ids, vectors)` of every entry of an IndexIDMap2, in storage order."""
    import faiss

    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    if not len(ids):
        return ids, np.zeros((0, index.d), np.float32)
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        inner.make_direct_map()
    return ids, inner.reconstruct_n(0, inner.ntotal)


def recall_vs_exact(index: "faiss.Index", vectors: np.ndarray, k: int = 10, n_queries: int = 200,
                    seed: int = 0) -> float:
    """Recall@k of `index` against exact inner-product search, with stored vectors as queries."""
    n = len(vectors)
    if n == 0:
        return 1.0
    k = min(k, n)
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=min(n_queries, n), replace=False)
    queries = vectors[rows]
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    ids = all_vectors(index)[0]
    truth = ids[exact]
    _, found = index.search(queries, k)
    hits = sum(len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found))
    return hits / (len(rows) * k)
