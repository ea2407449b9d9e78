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

This is the single place the untrained combination lives; the trained fusion model replaces it
for indexes built from a trained model.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def combine_modalities(
    vectors: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray] | None = None,
    weights: Mapping[str, float] | None = None,
    order: Sequence[str] | None = None,
    renormalize: bool = True,
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
        norms = np.linalg.norm(x, axis=1)  # [N]
        has = norms > 0 if present is None or m not in present else np.asarray(present[m], bool) & (norms > 0)
        scale = np.where(has, np.sqrt(wm) / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)
        parts.append(x * scale[:, None])  # [N, D_m]
        any_present |= has & (wm > 0)
    if not any_present.all():
        missing = np.flatnonzero(~any_present)[:10].tolist()
        raise ValueError(f"items at positions {missing} have no modality present")
    v = np.concatenate(parts, axis=1)  # [N, sum D_m]
    if renormalize:
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float32, copy=False)
