from __future__ import annotations

import numpy as np
import pytest

from index import clustered_vectors, exact_search, recall_at_k


def test_exact_search_hand_built_with_ties():
    base = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    pos, scores = exact_search(base, np.array([[5.0, 0.0], [0.0, -1.0]]), 3)
    # rows 0 and 2 are the same direction; rows 0, 2, 4 are all orthogonal to the second
    # query: ties go to the lower position
    np.testing.assert_array_equal(pos, [[0, 2, 3], [0, 2, 4]])
    np.testing.assert_allclose(scores[0], [1.0, 1.0, np.sqrt(0.5)], atol=1e-7)
    np.testing.assert_allclose(scores[1], [0.0, 0.0, 0.0], atol=1e-7)
    assert pos.dtype == np.int64 and scores.dtype == np.float32


def test_exact_search_k_larger_than_base_and_batching():
    rng = np.random.default_rng(0)
    base, queries = rng.standard_normal((7, 4)), rng.standard_normal((5, 4))
    pos, scores = exact_search(base, queries, 50)
    assert pos.shape == (5, 7)
    assert all(sorted(row) == list(range(7)) for row in pos.tolist())
    small_batches = exact_search(base, queries, 50, batch_size=2)
    np.testing.assert_array_equal(small_batches[0], pos)
    full = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (base / np.linalg.norm(base, axis=1, keepdims=True)).T
    np.testing.assert_allclose(scores, np.take_along_axis(full, pos, axis=1), atol=1e-6)


def test_exact_search_errors():
    with pytest.raises(ValueError, match="dimension mismatch: base has 3, queries 2"):
        exact_search(np.ones((4, 3)), np.ones((1, 2)), 1)
    with pytest.raises(ValueError, match="base row 1 is a zero vector"):
        exact_search(np.array([[1.0, 0], [0, 0]]), np.ones((1, 2)), 1)
    with pytest.raises(ValueError, match=r"queries must be 2-D \(N, D\), got shape \(2,\)"):
        exact_search(np.ones((4, 2)), np.ones(2), 1)


def test_recall_at_k_hand_computed():
    truth = np.array([[1, 2, 9, 8], [4, 5, 6, 7]])
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, -1]]), truth, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert recall_at_k([[9, 1], [7]], truth, 2) == pytest.approx((1 / 2 + 0) / 2)  # only first k count
    assert recall_at_k([["a", "b"]], [["b", "c"]], 2) == 0.5
    assert recall_at_k([[3]], np.array([[3]]), 10) == 1.0  # truth shorter than k
    with pytest.raises(ValueError, match="found has 1 rows but truth has 2"):
        recall_at_k([[1]], truth, 1)
    # An empty truth row (a query with nothing to find) is left out, not a division by zero.
    assert recall_at_k([[1, 2], [5]], [[1, 3], []], 2) == 0.5
    assert recall_at_k([[1, 2], [5]], [[1, 3], [-1, -1]], 2) == 0.5  # FAISS padding is no truth either
    with pytest.raises(ValueError, match="every truth row is empty"):
        recall_at_k([[1]], [[]], 1)
    with pytest.raises(ValueError, match="base has no vectors"):
        exact_search(np.zeros((0, 3)), np.ones((1, 3)), 1)


def test_clustered_vectors_seeded_and_clustered():
    a = clustered_vectors(2000, 16, n_clusters=10, seed=5)
    assert a.shape == (2000, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, clustered_vectors(2000, 16, n_clusters=10, seed=5))
    assert not np.array_equal(a, clustered_vectors(2000, 16, n_clusters=10, seed=6))
    # Nearest neighbours are much closer than random pairs (the point of "clustered").
    pos, scores = exact_search(a, a[:100], 2)
    rand = np.sum(a[:100] * a[100:200], axis=1) / np.linalg.norm(a[:100], axis=1) / np.linalg.norm(a[100:200], axis=1)
    assert np.median(scores[:, 1]) > 0.9 > np.median(rand) + 0.5


def test_non_finite_rows_are_refused_by_row():
    import numpy as np
    import pytest

    from index.oracle import exact_search

    base = np.eye(3)
    with pytest.raises(ValueError, match="queries row 0 contains NaN or inf"):
        exact_search(base, np.full((1, 3), np.nan), 2)
    with pytest.raises(ValueError, match="base row 1 contains NaN or inf"):
        exact_search(np.array([[1.0, 0, 0], [np.inf, 0, 0]]), np.eye(3)[:1], 1)
