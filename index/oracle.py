"""Exact brute-force search, recall, and seeded clustered data: the yardsticks for ANN indexes.

Everything here is plain numpy so that it shares no code path with FAISS: tests and
``scripts/bench_index.py`` compare :class:`index.FaissIndex` against :func:`exact_search`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} row {int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])} contains NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{name} row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is a zero vector")
    return x / norms


def exact_search(
    base: np.ndarray, queries: np.ndarray, k: int, *, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours by brute force, in float64.

    Both sides are L2-normalised first, exactly as :class:`index.FaissIndex` does, so the score
    is the cosine similarity. Ties are broken by lower position.

    Args:
        base: Database vectors.
        queries: Query vectors.
        k: Neighbours per query; ``min(k, N)`` columns are returned.
        batch_size: Most queries scored per matrix product; fewer when ``N`` is large, so that
            one block of scores stays under 2**26 floats. Defaults to 1024.

    Returns:
        ``(positions, scores)``: row positions into ``base`` best-first, and their scores.

    Shapes:
        base (N, D), queries (B, D) -> positions (B, K) int64, scores (B, K) float32
    """
    base_u = _unit_rows(base, "base")
    query_u = _unit_rows(queries, "queries")
    if base_u.shape[1] != query_u.shape[1]:
        raise ValueError(f"dimension mismatch: base has {base_u.shape[1]}, queries {query_u.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = base_u.shape[0]
    if n == 0:
        raise ValueError("base has no vectors: there is nothing to search")
    kk = min(k, n)
    positions = np.empty((len(query_u), kk), dtype=np.int64)
    scores = np.empty((len(query_u), kk), dtype=np.float32)
    order_pos = np.arange(n)
    batch_size = max(1, min(batch_size, (1 << 26) // n))
    for start in range(0, len(query_u), batch_size):
        sims = query_u[start : start + batch_size] @ base_u.T  # [B, N]
        for row, s in enumerate(sims):
            if kk < n:
                # Keep every item tied with the k-th score so the tie-break below is exact.
                kth = np.partition(s, n - kk)[n - kk]
                cand = np.flatnonzero(s >= kth)
            else:
                cand = order_pos
            best = cand[np.lexsort((cand, -s[cand]))][:kk]  # by score desc, then position asc
            positions[start + row] = best
            scores[start + row] = s[best]
    return positions, scores


def recall_at_k(found: np.ndarray | Sequence[Sequence[Any]], truth: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true top-``k`` that appears in its first ``k`` results.

    Args:
        found: Results per query (positions or ids, best-first); rows may be shorter than ``k``
            and ``-1`` entries (FAISS padding) count as misses.
        truth: Exact results per query in the same id space, e.g. from :func:`exact_search`.
        k: Cut-off.

    Returns:
        Recall in [0, 1], averaged over queries; a query whose truth row is shorter than ``k``
        is scored against that shorter row, and one with an empty truth row is left out.

    Shapes:
        found (B, >=K) or B lists, truth (B, >=K) -> scalar
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(found) != len(truth):
        raise ValueError(f"found has {len(found)} rows but truth has {len(truth)}")
    if len(truth) == 0:
        raise ValueError("recall of zero queries is undefined")
    total, scored = 0.0, 0
    for got_row, true_row in zip(found, truth):
        want = {_plain(t) for t in list(true_row)[:k]} - {-1}
        if not want:  # nothing to find: no recall to score
            continue
        got = {_plain(g) for g in list(got_row)[:k]} - {-1}
        total += len(got & want) / len(want)
        scored += 1
    if not scored:
        raise ValueError("every truth row is empty: recall is undefined")
    return total / scored


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def clustered_vectors(
    n: int,
    dim: int,
    *,
    n_clusters: int = 100,
    spread: float = 0.35,
    latent_dim: int = 8,
    noise: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Seeded synthetic embeddings shaped like real ones: clusters with low intrinsic dimension.

    Each cluster has a random unit centre and a random ``latent_dim``-dimensional subspace; a
    point is its centre plus a Gaussian step of norm ~``spread`` inside that subspace plus
    isotropic noise of norm ~``noise * spread``. Cluster sizes are Zipf-like (some topics are
    much bigger than others).
    Uniform random vectors would be the worst case for every ANN method and unlike any encoder
    output; this keeps benchmarks and recall thresholds meaningful. Calling it twice with
    different seeds but the same ``n_clusters`` gives different clusters, so draw queries from
    the same call as the base (e.g. generate ``n + n_queries`` rows and split).

    Args:
        n: Number of vectors.
        dim: Dimension.
        n_clusters: Number of clusters. Defaults to 100.
        spread: Typical distance of a point from its centre (centres have norm 1). Defaults to 0.35.
        latent_dim: Dimension of each cluster's subspace. Defaults to 8.
        noise: Norm of the isotropic noise, relative to ``spread``; larger is harder for ANN
            indexes (higher intrinsic dimension). Defaults to 0.1.
        seed: Random seed. Defaults to 0.

    Returns:
        Float32 vectors, not normalised.

    Shapes:
        -> (N, D) float32
    """
    rng = np.random.default_rng(seed)
    latent_dim = min(latent_dim, dim)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # [C, D]
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.5
    assign = rng.choice(n_clusters, size=n, p=weights / weights.sum())  # [N]
    out = np.empty((n, dim), dtype=np.float32)
    for c in range(n_clusters):
        rows = np.flatnonzero(assign == c)
        if rows.size == 0:
            continue
        basis, _ = np.linalg.qr(rng.standard_normal((dim, latent_dim)))  # [D, L] orthonormal
        z = rng.standard_normal((rows.size, latent_dim)) * (spread / np.sqrt(latent_dim))  # [n_c, L]
        iso = rng.standard_normal((rows.size, dim)) * (noise * spread / np.sqrt(dim))  # [n_c, D]
        out[rows] = centres[c] + z @ basis.T + iso  # [n_c, D]
    return out
