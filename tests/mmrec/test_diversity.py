"""Maximal marginal relevance re-ranking (mmrec.diversity) against hand-computed lists and a plain oracle."""
from __future__ import annotations

import numpy as np
import pytest

from mmrec.diversity import mmr_rerank
from mmrec.errors import ConfigError


def mmr_oracle(rel, vecs, k, w):
    """MMR written out literally: rescale, then pick the best gain (first of equals) k times."""
    rel = [float(r) for r in rel]
    lo, hi = min(rel), max(rel)
    scaled = [(r - lo) / (hi - lo) if hi > lo else 1.0 for r in rel]

    def cos(a, b):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return 0.0 if na == 0 or nb == 0 else float(np.dot(a, b) / (na * nb))

    chosen = []
    for _ in range(min(k, len(rel))):
        best, best_gain = None, -np.inf
        for i in range(len(rel)):
            if i in chosen:
                continue
            closest = max((cos(vecs[i], vecs[j]) for j in chosen), default=0.0)
            gain = (1 - w) * scaled[i] - w * closest if chosen else scaled[i]  # first: the most relevant
            if gain > best_gain + 1e-12:
                best, best_gain = i, gain
        chosen.append(best)
    return chosen


# A and B are the same direction, C orthogonal, D a zero vector (similar to nothing).
REL = np.array([1.0, 0.9, 0.5, 0.0])
VECS = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])


def test_weight_zero_keeps_the_relevance_order_ties_by_position():
    assert mmr_rerank(REL, VECS, 4, 0.0).tolist() == [0, 1, 2, 3]
    assert mmr_rerank(np.array([0.5, 0.9, 0.9, 0.1]), np.eye(4), 4, 0.0).tolist() == [1, 2, 0, 3]


def test_hand_computed_list():
    # w = 0.5, scaled relevance = REL. Pick A (gain 0.5). Then B: 0.45 - 0.5 = -0.05, C: 0.25, D: 0 -> C.
    # Then B: -0.05, D: 0 -> D; then B.
    assert mmr_rerank(REL, VECS, 4, 0.5).tolist() == [0, 2, 3, 1]
    assert mmr_rerank(REL, VECS, 2, 0.5).tolist() == [0, 2]
    assert mmr_rerank(REL, VECS, 9, 0.5).tolist() == [0, 2, 3, 1]  # at most C come back
    # w = 1 ignores relevance after the first pick, the most relevant: then C and D (cosine 0 to A)
    # before B (cosine 1); candidates not in relevance order too.
    assert mmr_rerank(REL, VECS, 4, 1.0).tolist() == [0, 2, 3, 1]
    assert mmr_rerank(np.array([0.0, 1.0, 2.0]), np.eye(3), 2, 1.0).tolist() == [2, 0]
    # equal relevance everywhere: scaled to 1, the first candidate first
    assert mmr_rerank(np.ones(3), np.eye(3), 3, 0.3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("w", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
def test_matches_the_literal_oracle(w):
    rng = np.random.default_rng(int(w * 10))
    for _ in range(5):
        c, d = int(rng.integers(1, 30)), int(rng.integers(2, 8))
        rel, vecs = rng.normal(size=c), rng.normal(size=(c, d))
        k = int(rng.integers(1, 35))
        assert mmr_rerank(rel, vecs, k, w).tolist() == mmr_oracle(rel, vecs, k, w)


def test_errors():
    with pytest.raises(ConfigError, match=r"diversity weight must lie in \[0, 1\], got 1.5"):
        mmr_rerank(REL, VECS, 2, 1.5)
    with pytest.raises(ConfigError, match="k must be at least 1"):
        mmr_rerank(REL, VECS, 0, 0.5)
    with pytest.raises(ValueError, match="must match"):
        mmr_rerank(REL, VECS[:3], 2, 0.5)
    with pytest.raises(ValueError, match="finite"):
        mmr_rerank(np.array([1.0, np.nan, 0.0, 0.0]), VECS, 2, 0.5)
    with pytest.raises(ValueError, match="vectors must be finite"):  # an IndexError before
        mmr_rerank(REL, np.where(np.arange(VECS.size).reshape(VECS.shape) == 2, np.nan, VECS), 2, 0.5)


def test_an_exact_tie_goes_to_the_earlier_candidate_whatever_the_rounding():
    # Items 2 and 3 duplicate 0 and 1: after 0 and 1, each has a largest cosine of exactly 1 to a
    # pick, but unit vectors compute it as 1 for one and 1 - 2e-16 for the other.
    relevance = np.array([1.0, 1.0, 0.0, 0.0])
    vectors = np.array([[0.0, -1.0], [-1.0, 1.0], [0.0, -1.0], [-1.0, 1.0]])
    assert mmr_rerank(relevance, vectors, 4, 1.0).tolist() == [0, 1, 2, 3]
    assert mmr_rerank(relevance, vectors, 4, 0.5).tolist() == [0, 1, 2, 3]
