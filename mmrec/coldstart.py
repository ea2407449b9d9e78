"""The cold-start protocol: items held out of training entirely, then ranked from content alone.

A fraction of the items that have interactions (default 20%, seeded) is chosen as *cold*.
Training sees none of their interactions and never samples them as negatives; at test time
they enter the index through the trained content path (ID token masked, no graph edges, blended
with the mean trained vector of their nearest warm items by content: :func:`neighbour_mean`), like
any item added later with ``mmrec index add``, and each user who interacted with a cold item is
scored on ranking the cold items: the truth is all of the user's interactions with cold items,
and warm items are not candidates. Warm-item metrics are reported beside them on the usual
test split.
"""
from __future__ import annotations

from collections.abc import Sequence

from collections.abc import Mapping

import numpy as np
import torch

from fusion.fixed import combine_modalities
from mmrec.errors import ConfigError
from mmrec.interactions import TEST, TRAIN, Interactions
from mmrec.metrics import evaluate


def with_content(present: Mapping[str, np.ndarray], num_items: int) -> np.ndarray:
    """``[N]`` bool: the items with at least one modality present (those content can place)."""
    masks = [np.asarray(x, bool) for x in present.values()]
    return np.any(masks, axis=0) if masks else np.zeros(num_items, bool)


def hold_out_items(inter: Interactions, fraction: float = 0.2, seed: int = 0,
                   eligible: np.ndarray | None = None) -> np.ndarray:
    """Choose the cold items: ``round(fraction * #items with interactions)`` of them, seeded,
    among the ``eligible`` ones (``[N]`` bool; default all): an item without content cannot be
    ranked from it, so :func:`mmrec.pipeline.fit` passes :func:`with_content`. With every item
    eligible the draw is the one it always was.

    Returns:
        ``[N]`` bool, True for cold items.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"the cold-start fraction must lie in (0, 1), got {fraction}")
    counts = np.bincount(inter.items, minlength=inter.num_items) > 0
    if eligible is not None:
        counts &= np.asarray(eligible, bool)
    active = np.flatnonzero(counts)
    n_cold = int(round(fraction * len(active)))
    if n_cold == 0 or n_cold == len(active):
        which = "items with interactions" + (" and content" if eligible is not None else "")
        raise ConfigError(f"a cold-start fraction of {fraction} leaves {n_cold} of {len(active)} {which} cold")
    cold = np.zeros(inter.num_items, dtype=bool)
    cold[np.random.default_rng(seed).choice(active, size=n_cold, replace=False)] = True
    return cold


def warm_part(inter: Interactions, cold: np.ndarray) -> Interactions:
    """The interactions of warm items only, with their split (what training sees)."""
    return inter.rows(~cold[inter.items])


def cold_part(inter: Interactions, cold: np.ndarray) -> Interactions:
    """Cold-item evaluation data: every interaction with a cold item is a test row; the warm
    training rows stay as training rows (they are the users' known history); the rest is dropped."""
    is_cold = cold[inter.items]
    keep = is_cold | (inter.split == TRAIN)
    split = np.where(is_cold, TEST, inter.split).astype(np.int8)
    return inter.rows(keep, split)


def evaluate_cold(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    inter: Interactions,
    cold: np.ndarray,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Rank the cold items for every user who interacted with one (dot-product scores).

    Shapes:
        user_vectors (U, D), item_vectors (N, D), cold (N,)
    """
    warm = torch.from_numpy(~cold)

    def score(users: np.ndarray) -> torch.Tensor:
        s = user_vectors[torch.as_tensor(users)] @ item_vectors.T  # [B, N]
        s[:, warm] = float("-inf")  # only cold items are candidates
        return s

    # Coverage among the cold items; no novelty: they have no training interactions, so it would be constant.
    return evaluate(score, cold_part(inter, cold), split="test", mask="all", ks=ks, batch_size=batch_size,
                    fresh_scores=True, candidates=int(cold.sum()), novelty=False)


def neighbour_mean(
    features: dict[str, np.ndarray],
    present: dict[str, np.ndarray],
    pool_features: dict[str, np.ndarray],
    pool_present: dict[str, np.ndarray],
    pool_vectors: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    block_size: int = 1024,
    centers: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Mean trained vector of each item's ``k`` nearest pool items by content.

    Similarity is that of the untrained content index (:func:`fusion.fixed.combine_modalities`:
    ``sum_m cos_m / M`` over the ``M`` modalities, a modality either item lacks adding 0, so a
    pool item sharing one of two modalities scores half its cosine; measured from the modality
    means ``centers`` when given). ``exclude[b]`` is a pool row item ``b`` may not
    pick (itself, when the items are pool items: leave-one-out), ``-1`` for none.

    Shapes:
        features[m] (B, D_m), present[m] (B,), pool_features[m] (P, D_m), pool_vectors (P, D),
        exclude (B,) -> (B, D)
    """
    order = sorted(features)
    out = np.zeros((len(next(iter(features.values()))), pool_vectors.shape[1]), np.float32)  # [B, D]
    # Items with no modality at all have no content to compare: a query row without one gets no
    # neighbour (zero), a pool row without one is nobody's neighbour. A modality counts where it
    # is present with a non-zero row, as combine_modalities reads it.
    def has_content(feats: dict[str, np.ndarray], pres: dict[str, np.ndarray]) -> np.ndarray:
        return np.any([np.asarray(pres[m], bool) & np.any(np.asarray(feats[m]) != 0, axis=1) for m in order], axis=0)

    q_rows = np.flatnonzero(has_content(features, present))  # [B']
    p_rows = np.flatnonzero(has_content(pool_features, pool_present))  # [P']
    if not len(q_rows) or not len(p_rows):
        return out
    q = combine_modalities({m: features[m][q_rows] for m in order}, {m: present[m][q_rows] for m in order},
                           order=order, renormalize=False, centers=centers)  # [B', sum D_m]
    p = combine_modalities({m: pool_features[m][p_rows] for m in order},
                           {m: pool_present[m][p_rows] for m in order}, order=order, renormalize=False,
                           centers=centers)  # [P', sum D_m]
    if exclude is not None:
        # The excluded pool row as a position among the pool rows with content (-1: none or content-less).
        position = np.full(len(pool_vectors), -1, np.int64)
        position[p_rows] = np.arange(len(p_rows))
        ex = np.asarray(exclude)[q_rows]
        ex = np.where(ex >= 0, position[np.maximum(ex, 0)], -1)  # [B']
    kk = min(k, len(p) - (exclude is not None and bool((ex >= 0).any())))
    if kk < 1:
        return out
    vectors = pool_vectors[p_rows]  # [P', D]
    total = vectors.astype(np.float64).sum(axis=0)  # [D]
    for start in range(0, len(q), block_size):
        s = q[start : start + block_size] @ p.T  # [b, P']
        if exclude is not None:
            rows = np.flatnonzero(ex[start : start + block_size] >= 0)
            s[rows, ex[start : start + block_size][rows]] = -np.inf
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]  # [b, k]
        # A tie across the k-th place takes its first pool rows, not those the partition left there
        # (which rows it leaves depends on its pivots): a query having a modality that few pool items
        # have ties with every pool item at cosine 0 (rare rows, fixed up one at a time).
        kth = np.take_along_axis(s, top, axis=1).min(axis=1)  # [b]
        for r in np.flatnonzero((s >= kth[:, None]).sum(axis=1) > kk):
            above = np.flatnonzero(s[r] > kth[r])
            top[r] = np.concatenate([above, np.flatnonzero(s[r] == kth[r])[: kk - len(above)]])
        out[q_rows[start : start + len(s)]] = vectors[top].mean(axis=1)
        # An item whose content equals the means has no direction to be near anything by: every pool item is as
        # near as any other, so it borrows from them all, not from the first k in index order (as it did).
        for b in np.flatnonzero(~np.any(q[start : start + len(s)] != 0, axis=1)):
            e = ex[start + b] if exclude is not None else -1
            rest = total - (vectors[e] if e >= 0 else 0.0)
            out[q_rows[start + b]] = rest / max(len(vectors) - (e >= 0), 1)
    return out


def blend_with_neighbours(content: np.ndarray, neighbours: np.ndarray, weight: float) -> np.ndarray:
    """``weight * |n| * c / |c| + (1 - weight) * n`` per row: the item's own content direction
    at its neighbours' scale, mixed with its neighbours' mean trained vector ``n``. Rows with no
    neighbour (``n = 0``) keep ``content``.

    Shapes:
        content (B, D), neighbours (B, D) -> (B, D)
    """
    n_norm = np.linalg.norm(neighbours, axis=1, keepdims=True)  # [B, 1]
    c_unit = content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12)  # [B, D]
    mixed = weight * n_norm * c_unit + (1.0 - weight) * neighbours
    return np.where(n_norm > 0, mixed, content).astype(np.float32)
