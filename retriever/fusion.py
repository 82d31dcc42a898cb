"""Rank fusion and diversity re-ordering: pure functions over id / score arrays."""

from __future__ import annotations

from typing import Mapping

import numpy as np


def rrf(rankings: Mapping[str, np.ndarray], weights: Mapping[str, float], rrf_k: int = 60
        ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted reciprocal rank fusion.

    Args:
        rankings: retriever name -> chunk ids, best first (no -1).
        weights: retriever name -> weight.
        rrf_k: constant added to the 1-based rank.
    Returns:
        (ids, fused scores), best first; ties keep first-seen order.
    """
    fused: dict[int, float] = {}
    for name, ids in rankings.items():
        w = float(weights.get(name, 1.0))
        for rank, i in enumerate(ids, 1):
            fused[int(i)] = fused.get(int(i), 0.0) + w / (rrf_k + rank)
    return _sorted(fused)


def normalize(scores: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Scale scores to comparable ranges: `minmax` to [0, 1], `zscore` to mean 0 / std 1."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    if method == "minmax":
        lo, hi = scores.min(), scores.max()
        return (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
    if method == "zscore":
        sd = scores.std()
        return (scores - scores.mean()) / sd if sd > 0 else np.zeros_like(scores)
    raise ValueError(f"normalization must be 'minmax' or 'zscore', got {method!r}")


def convex(ids: np.ndarray, scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
           method: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of normalised scores over one candidate set.

    Args:
        ids: candidate chunk ids (the union of the retrievers' candidates).
        scores: retriever name -> raw score of every candidate (aligned with `ids`).
        weights: retriever name -> weight (normalised to sum to 1).
    Returns:
        (ids, fused scores), best first.
    """
    ids = np.asarray(ids, dtype=np.int64)
    total = sum(float(weights.get(n, 1.0)) for n in scores) or 1.0
    fused = np.zeros(len(ids))
    for name, s in scores.items():
        fused += float(weights.get(name, 1.0)) / total * normalize(s, method)
    order = np.argsort(-fused, kind="stable")
    return ids[order], fused[order]


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float = 0.7) -> np.ndarray:
    """Maximal marginal relevance: indices of `k` items trading relevance against redundancy.

    Args:
        relevance: relevance of each candidate (any scale; min-max normalised here).
        vectors: normalised vectors of the candidates `(n, d)` (cosine similarity between them).
        k: how many to pick.
        lam: 1 = relevance only, 0 = diversity only.
    Returns:
        indices into the candidates, in picked order.
    """
    n = len(relevance)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    rel = normalize(np.asarray(relevance, np.float64), "minmax")
    sim = np.asarray(vectors, np.float64) @ np.asarray(vectors, np.float64).T
    picked = [int(np.argmax(rel))]
    max_sim = sim[picked[0]].copy()
    chosen = np.zeros(n, dtype=bool)
    chosen[picked[0]] = True
    while len(picked) < k:
        score = lam * rel - (1 - lam) * max_sim
        score[chosen] = -np.inf
        j = int(np.argmax(score))
        picked.append(j)
        chosen[j] = True
        max_sim = np.maximum(max_sim, sim[j])
    return np.array(picked, dtype=np.int64)


def _sorted(fused: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    if not fused:
        return np.zeros(0, np.int64), np.zeros(0)
    ids = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    sc = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    order = np.argsort(-sc, kind="stable")
    return ids[order], sc[order]
