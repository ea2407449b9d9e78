from __future__ import annotations

import numpy as np
import pytest

from index.mips import MipsTransform


def test_cosine_on_augmented_vectors_equals_inner_product_ranking():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(50, 4)).astype(np.float32) * rng.uniform(0.1, 3.0, size=(50, 1)).astype(np.float32)
    q = rng.normal(size=(1, 4)).astype(np.float32)
    t = MipsTransform.fit(items)
    xi, xq = t.items(items), t.queries(q)
    np.testing.assert_allclose(np.linalg.norm(xi, axis=1), 1.0, atol=1e-5)
    cos = (xi @ xq[0]) / np.linalg.norm(xq[0])
    np.testing.assert_array_equal(np.argsort(-cos), np.argsort(-(items @ q[0])))
    np.testing.assert_allclose(t.dot_products(cos, q[0]), items @ q[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t.original(xi), items, rtol=1e-5, atol=1e-6)


def test_exact_small_case():
    t = MipsTransform(2.0)
    np.testing.assert_allclose(t.items(np.array([[0.0, 2.0], [1.0, 0.0]])),
                               [[0.0, 1.0, 0.0], [0.5, 0.0, np.sqrt(3) / 2]], atol=1e-7)


def test_vectors_over_the_bound_are_shrunk(caplog):
    t = MipsTransform(1.0)
    out = t.items(np.array([[3.0, 4.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8, 0.0]], atol=1e-7)
    assert "exceed the index norm bound" in caplog.text
    with pytest.raises(ValueError, match="positive"):
        MipsTransform(0.0)


def test_non_finite_items_and_bounds_are_refused_by_row():
    import pytest

    from index.mips import MipsTransform

    items = np.array([[1.0, 0.0], [0.0, 2.0], [np.inf, 0.0]], np.float32)
    with pytest.raises(ValueError, match="item vector row 2 contains NaN or inf"):
        MipsTransform.fit(items)
    with pytest.raises(ValueError, match="max_norm must be a positive finite number, got inf"):
        MipsTransform(float("inf"))
    assert MipsTransform.fit(np.zeros((0, 2), np.float32)).max_norm == 1.0
    assert MipsTransform.fit(items[:2], headroom=1.5).max_norm == 3.0
