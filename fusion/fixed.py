"""The untrained multimodal item vector: a fixed, documented combination of modality vectors.

Until a model is trained, an item's index vector is built from its modality vectors alone:

    v = concat_m( sqrt(w_m) * x_m / ||x_m|| )   over modalities m in a fixed order,
    x_m := 0 for a modality the item lacks, and (optionally) v := v / ||v||.

With weights summing to one, the inner product of two items is ``sum_m w_m cos(x_m, y_m)`` over
the modalities both have: a weighted mean of per-modality cosine similarities in which a
modality one of them lacks contributes zero. Without the final normalisation (``renormalize=
False``, what the item index uses) that holds for every pair, and a one-modality query
``x_m / sqrt(w_m)`` scores exactly ``cos(x_m, y_m)`` against every item that has modality m, so
items with fewer modalities are not favoured. With it, an item is rescaled over the modalities
it has.

Centring (``centers``): each modality's vectors can first have that modality's catalog mean
subtracted, ``x_m := x_m - mu_m``, so every cosine above is the cosine of the centred vectors.
Pretrained encoders put all their outputs in a narrow cone (MiniLM sentence vectors of
MovieLens movies have a mean pairwise cosine of 0.19), and the shared direction dominates
sums of them: a user's mean history vector then ranks items by how typical they are rather
than by how close they are to that user's items. Removing the mean direction is the first
step of the "all-but-the-top" post-processing of Mu & Viswanath (ICLR 2018). On the
benchmark data (``scripts/bench_content_index.py``) it raised the untrained index's Recall@20
for users' histories from 0.026 to 0.090 on ml100k-plus, and for held-out cold items from
0.164 to 0.243 (tiktok: 0.036 to 0.048). :func:`modality_centers` computes the means; a
modality with fewer than :data:`CENTER_MIN_ITEMS` items is not centred (the mean of a handful
of items is mostly the items themselves: a single item would centre to zero).

This is the single place the untrained combination lives; the trained fusion model replaces it
for indexes built from a trained model.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

CENTER_MIN_ITEMS = 32  # a modality is centred only when at least this many items have it


def modality_centers(
    vectors: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray] | None = None,
    min_items: int = CENTER_MIN_ITEMS,
) -> dict[str, np.ndarray]:
    """Each modality's mean vector over the items that have it: the ``centers`` of
    :func:`combine_modalities`.

    Args:
        vectors: modality name -> ``[N, D_m]`` vectors.
        present: modality name -> ``[N]`` bool (default: present where the row is non-zero).
        min_items: centre a modality only when at least this many items have it (default
            :data:`CENTER_MIN_ITEMS`).

    Returns:
        modality name -> ``[D_m]`` float32 mean, for the modalities with at least ``min_items``
        items whose vectors are not all equal (centring those would leave nothing); other
        modalities are left out (not centred).

    Shapes:
        vectors[m] (N, D_m), present[m] (N,) -> centers[m] (D_m,)
    """
    centers = {}
    for m, x in vectors.items():
        x = np.asarray(x, dtype=np.float32)
        has = np.abs(x).sum(axis=1) > 0  # [N]
        if present is not None and m in present:
            has &= np.asarray(present[m], bool)
        rows = x[has]  # [n_m, D_m]
        if len(rows) < min_items:
            continue
        mean = rows.mean(axis=0, dtype=np.float64).astype(np.float32)  # [D_m]
        if np.abs(rows - mean).max() > 1e-6 * max(float(np.abs(rows).max()), 1e-30):
            centers[m] = mean
    return centers


_NORM_ROWS = 65536  # rows converted to float64 at a time for their norms


def _row_norms(x: np.ndarray) -> np.ndarray:
    """``[N]`` float64 L2 norms of float32 rows, computed in float64 a block at a time: float32
    squares overflow to inf from entries near 1e19 (a row then scaled by 1 / inf would vanish)
    and underflow to 0 below 1e-23 (a small but real row would count as absent)."""
    out = np.empty(len(x), np.float64)
    for start in range(0, len(x), _NORM_ROWS):
        out[start : start + _NORM_ROWS] = np.linalg.norm(x[start : start + _NORM_ROWS].astype(np.float64), axis=1)
    return out


def combine_modalities(
    vectors: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray] | None = None,
    weights: Mapping[str, float] | None = None,
    order: Sequence[str] | None = None,
    renormalize: bool = True,
    centers: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Combine per-modality vectors into one L2-normalised vector per item.

    Args:
        vectors: modality name -> ``[N, D_m]`` vectors (any scale; each row is normalised here).
        present: modality name -> ``[N]`` bool, False where the item lacks that modality (its
            row is then ignored, whatever it holds). Default: present where the row is non-zero.
        weights: modality name -> non-negative weight, default equal weights. Weights are
            normalised to sum to one.
        order: the modality order of the concatenation, default ``sorted(vectors)``. Keep it
            fixed for one index: queries must use the same order.
        renormalize: scale each row to unit norm (default). Off, a row's squared norm is the
            sum of the weights of the modalities it has.
        centers: modality name -> ``[D_m]`` vector subtracted from that modality's rows before
            they are normalised (:func:`modality_centers`); modalities not in it are not centred.
            A present row equal to its centre contributes zero (it still counts as present).

    Returns:
        ``[N, sum_m D_m]`` float32 (rows L2-normalised when ``renormalize``).

    Raises:
        ValueError: mismatched row counts, unknown or negative weights, or an item with no
            modality present (it has no vector at all).

    Shapes:
        vectors[m] (N, D_m), present[m] (N,) -> (N, sum D_m)
    """
    if not vectors:
        raise ValueError("combine_modalities needs at least one modality")
    names = list(order) if order is not None else sorted(vectors)
    if set(names) != set(vectors):
        raise ValueError(f"order {names} does not match modalities {sorted(vectors)}")
    weights = dict(weights or {m: 1.0 for m in names})
    unknown = set(weights) - set(names)
    if unknown:
        raise ValueError(f"weights given for unknown modalities {sorted(unknown)}")
    raw = np.array([float(weights.get(m, 0.0)) for m in names])
    if (raw < 0).any() or raw.sum() <= 0:
        raise ValueError(f"modality weights must be non-negative with a positive sum, got {weights}")
    w = raw / raw.sum()

    n = {len(vectors[m]) for m in names}
    if len(n) != 1:
        raise ValueError(f"modalities have different row counts: { {m: len(vectors[m]) for m in names} }")
    (num,) = n
    parts, any_present = [], np.zeros(num, dtype=bool)
    for m, wm in zip(names, w):
        x = np.asarray(vectors[m], dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"modality '{m}' must be 2-d [N, D], got shape {x.shape}")
        norms = _row_norms(x)  # [N]
        has = norms > 0 if present is None or m not in present else np.asarray(present[m], bool) & (norms > 0)
        x = np.where(has[:, None], x, 0.0).astype(np.float32)  # an absent row may hold anything, NaN included
        if centers is not None and m in centers:
            center = np.asarray(centers[m], dtype=np.float32)
            if center.shape != (x.shape[1],):
                raise ValueError(f"the centre of modality '{m}' has shape {center.shape}, its vectors {x.shape[1]} columns")
            x = np.where(has[:, None], x - center, 0.0).astype(np.float32)  # [N, D_m]
            norms = _row_norms(x)  # [N]
        scale = np.where(has & (norms > 0), np.sqrt(wm) / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
        parts.append(x * scale[:, None])  # [N, D_m]
        any_present |= has & (wm > 0)
    if not any_present.all():
        missing = np.flatnonzero(~any_present)[:10].tolist()
        raise ValueError(f"items at positions {missing} have no modality present")
    v = np.concatenate(parts, axis=1)  # [N, sum D_m]
    if renormalize:  # a row left with no direction (it equals its centres) stays zero
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), np.float32(1e-30))
    return v.astype(np.float32, copy=False)
