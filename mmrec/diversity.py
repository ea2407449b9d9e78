"""Diversified top-k lists by maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998).

A ranked list by relevance alone often repeats itself (five sequels of one film). MMR re-ranks
a longer candidate list greedily: the next item is the one with the best

``(1 - w) * rel(i) - w * max_{j already chosen} cos(v_i, v_j)``

where ``rel`` is the candidate's relevance min-max scaled to ``[0, 1]`` over the candidates (so
``w`` means the same whatever the score scale) and ``v`` are item vectors. ``w = 0`` keeps the
relevance order exactly; ``w = 1`` ignores relevance after the first pick. ``diversity@K`` in
:mod:`mmrec.metrics` is the mean ``1 - cos`` over the list's pairs, the quantity the second
term trades for.
"""
from __future__ import annotations

import numbers

import numpy as np

from mmrec.errors import ConfigError


def check_weight(weight: float) -> float:
    """``weight`` as a float in ``[0, 1]``, else :class:`~mmrec.errors.ConfigError`."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ConfigError(f"the diversity weight must be a number in [0, 1], got {weight!r}")
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"the diversity weight must lie in [0, 1], got {weight}")
    return weight


_TIE = 1e-12  # gains (in [-1, 1]) closer than this are a tie, whatever float64 rounding did


def mmr_rerank(relevance: np.ndarray, vectors: np.ndarray, k: int, weight: float) -> np.ndarray:
    """Positions of the ``k`` candidates MMR picks, in pick order.

    Args:
        relevance: ``[C]`` relevance of each candidate (higher is better), finite.
        vectors: ``[C, D]`` the candidates' item vectors (cosine similarity between them; a zero
            vector is similar to nothing).
        k: list length (at most ``C`` come back).
        weight: ``w`` in ``[0, 1]``, see the module docstring. Ties go to the earlier candidate
            (gains within 1e-12 are equal, so rounding in the cosines cannot reorder equals), so
            ``w = 0`` returns the candidates by relevance, order kept among equals.

    Returns:
        ``[min(k, C)]`` int64 positions into the candidates.

    Shapes: relevance (C,), vectors (C, D) -> (min(k, C),)
    """
    weight = check_weight(weight)
    rel = np.asarray(relevance, dtype=np.float64)  # [C]
    vecs = np.asarray(vectors, dtype=np.float64)  # [C, D]
    if rel.ndim != 1 or vecs.ndim != 2 or len(vecs) != len(rel):
        raise ValueError(f"relevance [C] and vectors [C, D] must match, got {list(rel.shape)} and {list(vecs.shape)}")
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if not np.isfinite(rel).all():
        raise ValueError("relevance must be finite")
    if not np.isfinite(vecs).all():  # a NaN cosine would make every gain NaN and pick nothing
        raise ValueError("vectors must be finite")
    c = len(rel)
    span = rel.max() - rel.min() if c else 0.0
    scaled = (rel - rel.min()) / span if span > 0 else np.ones(c)  # [C] in [0, 1]
    norms = np.linalg.norm(vecs, axis=1)
    unit = vecs / np.where(norms > 0, norms, 1.0)[:, None]  # [C, D], zero rows stay zero
    closest = np.zeros(c)  # [C] max cosine to the chosen items (0 before the first pick)
    free = np.ones(c, dtype=bool)
    picks: list[int] = []
    for step in range(min(k, c)):
        # The first pick is the most relevant whatever w (nothing is chosen yet to differ from;
        # at w = 1 every gain would otherwise tie at 0).
        gain = scaled.copy() if step == 0 else (1.0 - weight) * scaled - weight * closest  # [C]
        gain[~free] = -np.inf
        # The first of equals, gains within _TIE counting as equal: two unit vectors of a duplicate
        # pair can have a cosine of 1 - 2e-16 with one and exactly 1 with the other.
        i = int(np.flatnonzero(gain >= gain.max() - _TIE)[0])
        picks.append(i)
        free[i] = False
        sims = unit @ unit[i]  # [C]
        closest = sims if step == 0 else np.maximum(closest, sims)
    return np.asarray(picks, dtype=np.int64)
