"""Fold-in: the vector of a user the model never trained on, from the items they interacted with.

A new user (or a session, or a known user's latest clicks) is placed against the trained item
vectors, held fixed, by the implicit-feedback least squares of Hu, Koren & Volinsky (ICDM 2008),
as iALS solves one user:

    u = argmin_u  sum_i c_i (p_i - u . v_i)^2 + lam ||u||^2
        p_i = 1, c_i = 1 + alpha for the history's items; p_i = 0, c_i = 1 for every other item
    =>  (V^T V + alpha V_H^T V_H + lam I) u = (1 + alpha) V_H^T 1

Every item not in the history pulls the user away from it, so a history of popular items does
not simply return more popular items, which is what the plain mean of the history's vectors
does. ``lam = reg * trace(V^T V) / D``: relative to the Gram matrix's mean eigenvalue, so one
default fits vectors of any scale. The Gram matrix is computed once per item set
(``O(N D^2)``); each user then costs one ``D x D`` solve.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

GRAM_CHUNK = 65536  # rows of V converted to float64 at a time for V^T V


class HistoryFoldIn:
    """Least-squares fold-in of users from their item histories, item vectors fixed.

    Args:
        item_vectors: ``[N, D]`` the vectors users are scored against by dot product.
        alpha: extra confidence of a history item over an unobserved one (default 1.0).
        reg: ridge weight, as a fraction of the mean eigenvalue of ``V^T V`` (default 0.1).

    Raises:
        ValueError: ``item_vectors`` not 2-D or empty, ``alpha < 0`` or ``reg <= 0``.

    Shapes:
        item_vectors (N, D); histories B lists of item rows -> user vectors (B, D)
    """

    def __init__(self, item_vectors: np.ndarray, alpha: float = 1.0, reg: float = 0.1) -> None:
        v = np.asarray(item_vectors)
        if v.dtype not in (np.float32, np.float64):
            v = v.astype(np.float64)
        if v.ndim != 2 or v.shape[0] == 0:
            raise ValueError(f"item_vectors must be [N, D] with N >= 1, got shape {v.shape}")
        self.vectors = v  # kept as given: no float64 copy of [N, D]
        self.gram = np.zeros((v.shape[1], v.shape[1]))  # [D, D], accumulated in float64 a chunk at a time
        for start in range(0, v.shape[0], GRAM_CHUNK):
            x = v[start : start + GRAM_CHUNK].astype(np.float64)  # [C, D]
            self.gram += x.T @ x
        self._set(alpha, reg)

    def _set(self, alpha: float, reg: float) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if reg <= 0:
            raise ValueError(f"reg must be > 0 (it keeps the system solvable), got {reg}")
        self.alpha, self.reg = float(alpha), float(reg)
        scale = float(np.trace(self.gram)) / self.gram.shape[0]
        # An all-zero item matrix has no scale: any positive ridge then gives u = 0.
        self.lam = self.reg * (scale if scale > 0 else 1.0)

    def with_settings(self, alpha: float | None = None, reg: float | None = None) -> HistoryFoldIn:
        """The same fold-in with another ``alpha`` and / or ``reg`` (default: this one's), sharing
        the item vectors and the Gram matrix instead of recomputing it.

        Raises:
            ValueError: ``alpha < 0`` or ``reg <= 0``.
        """
        other = copy.copy(self)
        other._set(self.alpha if alpha is None else alpha, self.reg if reg is None else reg)
        return other

    def __repr__(self) -> str:
        n, d = self.vectors.shape
        return f"HistoryFoldIn(items={n}, dim={d}, alpha={self.alpha}, reg={self.reg})"

    def __call__(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """User vectors for histories given as item rows (duplicates count once).

        Raises:
            ValueError: an empty history, or a row outside ``[0, N)``.
        """
        n, d = self.vectors.shape
        out = np.empty((len(histories), d), np.float32)
        eye = np.eye(d)
        for b, rows in enumerate(histories):
            vh = self.vectors[_history_rows(b, rows, n)].astype(np.float64)  # [H, D]
            a = self.gram + self.alpha * (vh.T @ vh) + self.lam * eye  # [D, D]
            out[b] = np.linalg.solve(a, (1.0 + self.alpha) * vh.sum(0))  # [D]
        return out


def history_mean(item_vectors: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """The mean of each history's item vectors (duplicates count once): ``[B, D]``.

    Raises:
        ValueError: an empty history, or a row outside ``[0, N)``.
    """
    v = np.asarray(item_vectors)
    out = np.empty((len(histories), v.shape[1]), np.float32)
    for b, rows in enumerate(histories):
        out[b] = v[_history_rows(b, rows, len(v))].astype(np.float64).mean(0)  # [D]
    return out


def _history_rows(b: int, rows: Sequence[int], n: int) -> np.ndarray:
    """History ``b``'s distinct item rows, checked against ``n`` items."""
    h = np.unique(np.asarray(rows, np.int64))
    if h.size == 0:
        raise ValueError(f"history {b} is empty: a user needs at least one item to be placed")
    if h[0] < 0 or h[-1] >= n:
        raise ValueError(f"history {b} holds item row {h[0] if h[0] < 0 else h[-1]}, outside [0, {n})")
    return h
