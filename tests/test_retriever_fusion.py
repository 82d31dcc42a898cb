"""Fusion and MMR: hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from retriever.fusion import convex, mmr, normalize, rrf


def test_rrf_weighted_hand_computed():
    ids, sc = rrf({"dense": np.array([1, 2, 3]), "bm25": np.array([3, 1])}, {"dense": 1.0, "bm25": 2.0}, rrf_k=0)
    # 1: 1/1 + 2/2 = 2.0 ; 3: 1/3 + 2/1 = 2.333 ; 2: 1/2
    assert ids.tolist() == [3, 1, 2]
    assert sc.tolist() == pytest.approx([7 / 3, 2.0, 0.5])
    assert rrf({}, {}, 60)[0].size == 0


def test_normalize_and_convex():
    assert normalize(np.array([1.0, 3.0, 2.0])).tolist() == [0.0, 1.0, 0.5]
    assert normalize(np.array([2.0, 2.0])).tolist() == [1.0, 1.0]
    z = normalize(np.array([1.0, 3.0]), "zscore")
    assert z.tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError):
        normalize(np.array([1.0]), "rank")
    ids, sc = convex(np.array([10, 11, 12]), {"dense": np.array([0.9, 0.5, 0.1]), "bm25": np.array([0.0, 4.0, 8.0])},
                     {"dense": 3.0, "bm25": 1.0})
    # dense mm: 1, .5, 0 ; bm25 mm: 0, .5, 1 ; 0.75*d + 0.25*b = .75, .5, .25
    assert ids.tolist() == [10, 11, 12] and sc.tolist() == pytest.approx([0.75, 0.5, 0.25])


def test_mmr_hand_computed():
    v = np.array([[1, 0], [1, 0], [0, 1]], dtype=float)  # 0 and 1 identical
    rel = np.array([1.0, 0.9, 0.5])
    assert mmr(rel, v, 2, lam=1.0).tolist() == [0, 1]
    assert mmr(rel, v, 2, lam=0.5).tolist() == [0, 2]
    assert mmr(rel, v, 5, lam=0.5).tolist() == [0, 2, 1]
    assert mmr(np.zeros(0), np.zeros((0, 2)), 3).size == 0
