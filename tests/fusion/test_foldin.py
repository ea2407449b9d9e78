"""Least-squares fold-in of users from item histories: exact values, the objective's minimiser, errors."""
from __future__ import annotations

import numpy as np
import pytest

from fusion import foldin
from fusion.foldin import HistoryFoldIn, history_mean


def test_hand_computed_fold_in():
    # G = V^T V = [[2, 1], [1, 2]], mean eigenvalue 2, so reg 0.5 gives lam = 1. History {0}:
    # A = G + 1 * [[1, 0], [0, 0]] + I = [[4, 1], [1, 3]], b = 2 * [1, 0]; u = A^-1 b = [6/11, -2/11].
    v = np.array([[1, 0], [0, 1], [1, 1]], np.float64)
    fold = HistoryFoldIn(v, alpha=1.0, reg=0.5)
    assert fold.lam == 1.0
    np.testing.assert_allclose(fold([[0]]), [[6 / 11, -2 / 11]], rtol=1e-6)
    # History {0, 2}: A = G + [[2, 1], [1, 1]] + I = [[5, 2], [2, 4]], b = 2 * [2, 1] = [4, 2];
    # det 16, u = [[4, -2], [-2, 5]] [4, 2] / 16 = [12/16, 2/16].
    np.testing.assert_allclose(fold([[2, 0]]), [[0.75, 0.125]], rtol=1e-6)


def weighted_least_squares(v: np.ndarray, history: list[int], alpha: float, lam: float) -> np.ndarray:
    """The objective written out row by row and solved by lstsq: sqrt(c_i) (v_i . u - p_i), sqrt(lam) u."""
    n, d = v.shape
    h = set(history)
    rows, target = [], []
    for i in range(n):
        c = 1.0 + alpha if i in h else 1.0
        rows.append(np.sqrt(c) * v[i])
        target.append(np.sqrt(c) * (1.0 if i in h else 0.0))
    rows += list(np.sqrt(lam) * np.eye(d))
    target += [0.0] * d
    return np.linalg.lstsq(np.array(rows), np.array(target), rcond=None)[0]


@pytest.mark.parametrize("alpha,reg", [(1.0, 0.1), (0.0, 1.0), (10.0, 0.01)])
def test_fold_in_is_the_minimiser_of_the_weighted_objective(alpha, reg):
    rng = np.random.default_rng(3)
    v = rng.normal(size=(40, 6)) * rng.uniform(0.1, 3.0, size=(40, 1))  # items of many norms
    fold = HistoryFoldIn(v, alpha=alpha, reg=reg)
    histories = [[0], [5, 9, 13], list(range(20, 40)), [7, 7, 3]]  # the last repeats an item
    got = fold(histories)
    assert got.shape == (4, 6) and got.dtype == np.float32
    for b, hist in enumerate(histories):
        want = weighted_least_squares(v, sorted(set(hist)), alpha, fold.lam)
        np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-6)
    # Order and repetition do not matter.
    np.testing.assert_array_equal(fold([[3, 7]]), fold([[7, 3, 7]]))


def test_gram_in_chunks_equals_the_whole_product(monkeypatch):
    v = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)
    whole = HistoryFoldIn(v)
    monkeypatch.setattr(foldin, "GRAM_CHUNK", 7)  # 50 rows: 7 full chunks and one of 1
    chunked = HistoryFoldIn(v)
    np.testing.assert_allclose(chunked.gram, v.astype(np.float64).T @ v.astype(np.float64), rtol=1e-12)
    np.testing.assert_allclose(chunked([[1, 2, 3]]), whole([[1, 2, 3]]), rtol=1e-6)
    assert chunked.vectors is v  # float32 vectors are kept, not copied


def test_other_settings_share_the_gram_matrix_and_equal_a_fresh_fold_in():
    v = np.random.default_rng(1).normal(size=(30, 4))
    fold = HistoryFoldIn(v)
    other = fold.with_settings(alpha=3.0, reg=2.0)
    fresh = HistoryFoldIn(v, alpha=3.0, reg=2.0)
    assert other.gram is fold.gram and other.lam == fresh.lam
    np.testing.assert_array_equal(other([[1, 5, 9]]), fresh([[1, 5, 9]]))
    assert (fold.alpha, fold.reg) == (1.0, 0.1)  # the original keeps its settings
    assert fold.with_settings(reg=0.5).alpha == 1.0
    with pytest.raises(ValueError, match="reg must be > 0"):
        fold.with_settings(reg=0.0)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        fold.with_settings(alpha=-0.5)


def test_history_mean_counts_each_item_once():
    v = np.array([[1, 0], [0, 2], [4, 4]], np.float32)
    np.testing.assert_allclose(history_mean(v, [[0, 1], [2, 0, 2]]), [[0.5, 1.0], [2.5, 2.0]])


def test_a_zero_item_matrix_gives_zero_users():
    assert not np.any(HistoryFoldIn(np.zeros((3, 2)))([[1]]))


def test_errors_and_repr():
    v = np.ones((3, 2))
    fold = HistoryFoldIn(v)
    assert repr(fold) == "HistoryFoldIn(items=3, dim=2, alpha=1.0, reg=0.1)"
    with pytest.raises(ValueError, match="history 1 is empty"):
        fold([[0], []])
    with pytest.raises(ValueError, match=r"history 0 holds item row 3, outside \[0, 3\)"):
        fold([[0, 3]])
    with pytest.raises(ValueError, match=r"item row -1"):
        history_mean(v, [[-1]])
    with pytest.raises(ValueError, match="history 0 is empty"):
        history_mean(v, [[]])
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        HistoryFoldIn(v, alpha=-1.0)
    with pytest.raises(ValueError, match="reg must be > 0"):
        HistoryFoldIn(v, reg=0.0)
    with pytest.raises(ValueError, match=r"\[N, D\] with N >= 1"):
        HistoryFoldIn(np.ones(3))
