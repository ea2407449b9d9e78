"""Maximum inner product search on a cosine index.

:class:`~index.FaissIndex` normalises every vector, so it ranks by cosine. A trained
recommender scores by the raw dot product (the norm of an item vector carries its popularity).
The classic reduction (Bachrach et al., RecSys 2014) makes the two agree exactly: every item
gets one extra coordinate so that all items have the same norm ``M``::

    item x -> [x, sqrt(M^2 - ||x||^2)] / M        query q -> [q, 0]

and then ``cos(q', x') = (q . x) / (M ||q||)``: for one query the ranking is the dot-product
ranking, and the dot product is recovered as ``score * M * ||q||``.
"""
from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


class MipsTransform:
    """Augments vectors so a cosine index ranks by inner product.

    Args:
        max_norm: ``M``, at least the largest item norm. Items added later with a larger norm
            are shrunk to norm ``M`` (logged): build with headroom (``headroom`` in
            :meth:`fit`) when items will be added.

    Shapes:
        items (N, D) -> (N, D + 1); queries (B, D) -> (B, D + 1)
    """

    def __init__(self, max_norm: float) -> None:
        if not 0 < max_norm < float("inf"):
            raise ValueError(f"max_norm must be a positive finite number, got {max_norm}")
        self.max_norm = float(max_norm)

    @classmethod
    def fit(cls, items: np.ndarray, headroom: float = 1.5) -> "MipsTransform":
        """``M = headroom * max ||x||`` over the given items (1 for none, or all zero).

        Raises:
            ValueError: an item holding NaN or inf, named by its row.
        """
        items = np.asarray(items, dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(items).all(axis=1)) if items.size else []
        if len(bad):
            raise ValueError(f"item vector row {int(bad[0])} contains NaN or inf")
        largest = float(np.linalg.norm(items, axis=1).max()) if len(items) else 0.0
        return cls(largest * headroom or 1.0)

    def items(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)  # [N, 1]
        over = norms[:, 0] > self.max_norm
        if over.any():
            logger.warning("%d item vector(s) exceed the index norm bound %.3g: shrunk", int(over.sum()), self.max_norm)
            x = np.where(over[:, None], x * (self.max_norm / np.maximum(norms, 1e-12)), x)
            norms = np.minimum(norms, self.max_norm)
        extra = np.sqrt(np.maximum(self.max_norm**2 - norms**2, 0.0))  # [N, 1]
        return (np.concatenate([x, extra], axis=1) / self.max_norm).astype(np.float32)  # [N, D+1]

    def original(self, items: np.ndarray) -> np.ndarray:
        """Undo :meth:`items`: ``[N, D + 1]`` augmented vectors -> the ``[N, D]`` raw vectors."""
        return (np.asarray(items, np.float32)[:, :-1] * self.max_norm).astype(np.float32, copy=False)  # one copy

    def queries(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float32)
        return np.concatenate([q, np.zeros((len(q), 1), np.float32)], axis=1)  # [B, D+1]

    def dot_products(self, scores: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Undo the cosine scaling: cosine scores of query ``q`` ``[D]`` -> inner products."""
        return (np.asarray(scores, np.float64) * self.max_norm * float(np.linalg.norm(q))).astype(np.float32)

    def __repr__(self) -> str:
        return f"MipsTransform(max_norm={self.max_norm:.4g})"
