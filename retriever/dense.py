"""Dense backend: inner-product search over the index's FAISS vectors (normalised, so
cosine). Filters are applied inside the search through an id selector, never after."""

from __future__ import annotations

import numpy as np


class DenseBackend:
    """Wraps the index's `faiss.IndexIDMap2`; ids are chunk ids (int64)."""

    name = "dense"

    def __init__(self, vectors):
        import faiss

        self.index = vectors
        inner = faiss.downcast_index(vectors.index) if hasattr(vectors, "index") else None
        self.exact = isinstance(inner, faiss.IndexFlat)
        self._matrix: np.ndarray | None = None
        self._sorted_ids: np.ndarray | None = None
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, qvecs: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids and scores per query (`(n, k')`, best first; -1 pads missing)."""
        import faiss

        qvecs = np.ascontiguousarray(qvecs, dtype=np.float32)
        k = min(k, len(self) if allowed is None else len(allowed))
        if k <= 0:
            return np.full((len(qvecs), 0), -1, np.int64), np.zeros((len(qvecs), 0), np.float32)
        if allowed is None:
            scores, ids = self.index.search(qvecs, k)
            return ids, scores
        if not self.exact and len(allowed) <= 50_000:
            # graph / inverted-list indexes lose recall under a restrictive selector: score exactly
            return self._exact_over(qvecs, k, allowed)
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64)))
        scores, ids = self.index.search(qvecs, k, params=params)
        return ids, scores

    # ----------------------------------------------------------------- exact scores
    def _load_matrix(self) -> None:
        import faiss

        if self._matrix is not None:
            return
        n = len(self)
        if self.exact:
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            matrix = self.index.index.reconstruct_n(0, n)
        else:
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            matrix = np.vstack([self.index.reconstruct(int(i)) for i in ids]) if n else np.zeros((0, self.index.d))
        order = np.argsort(ids, kind="stable")
        self._sorted_ids, self._order, self._matrix = ids[order], order, np.asarray(matrix, np.float32)

    def vectors_for(self, ids: np.ndarray) -> np.ndarray:
        """Stored (normalised) vectors of chunk `ids`, `(len(ids), dim)`; unknown ids give zeros."""
        self._load_matrix()
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.index.d), np.float32)
        if len(self._sorted_ids) == 0 or len(ids) == 0:
            return out
        pos = np.clip(np.searchsorted(self._sorted_ids, ids), 0, len(self._sorted_ids) - 1)
        found = self._sorted_ids[pos] == ids
        out[found] = self._matrix[self._order[pos[found]]]
        return out

    def scores_for(self, qvec: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact inner product of one query vector with chunks `ids`."""
        return self.vectors_for(ids) @ np.asarray(qvec, np.float32)

    def _exact_over(self, qvecs: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        allowed = np.asarray(allowed, dtype=np.int64)
        scores = qvecs @ self.vectors_for(allowed).T  # (n, len(allowed))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return allowed[top], np.take_along_axis(scores, top, axis=1)
