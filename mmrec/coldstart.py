"""The cold-start protocol: items held out of training entirely, then ranked from content alone.

A fraction of the items that have interactions (default 20%, seeded) is chosen as *cold*.
Training sees none of their interactions and never samples them as negatives; at test time
they enter the index through the trained content path (ID token masked, no graph edges), like
any item added later with ``mmrec index add``, and each user who interacted with a cold item is
scored on ranking the cold items: the truth is all of the user's interactions with cold items,
and warm items are not candidates. Warm-item metrics are reported beside them on the usual
test split.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmrec.errors import ConfigError
from mmrec.interactions import TEST, TRAIN, Interactions
from mmrec.metrics import evaluate


def hold_out_items(inter: Interactions, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Choose the cold items: ``round(fraction * #items with interactions)`` of them, seeded.

    Returns:
        ``[N]`` bool, True for cold items.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"the cold-start fraction must lie in (0, 1), got {fraction}")
    active = np.flatnonzero(np.bincount(inter.items, minlength=inter.num_items) > 0)
    n_cold = int(round(fraction * len(active)))
    if n_cold == 0 or n_cold == len(active):
        raise ConfigError(f"a cold-start fraction of {fraction} leaves {n_cold} of {len(active)} items cold")
    cold = np.zeros(inter.num_items, dtype=bool)
    cold[np.random.default_rng(seed).choice(active, size=n_cold, replace=False)] = True
    return cold


def _rows(inter: Interactions, keep: np.ndarray, split: np.ndarray) -> Interactions:
    return Interactions(
        inter.user_ids, inter.item_ids, inter.users[keep], inter.items[keep],
        ratings=None if inter.ratings is None else inter.ratings[keep],
        timestamps=None if inter.timestamps is None else inter.timestamps[keep],
        split=split[keep], report=inter.report,
    )


def warm_part(inter: Interactions, cold: np.ndarray) -> Interactions:
    """The interactions of warm items only, with their split (what training sees)."""
    return _rows(inter, ~cold[inter.items], inter.split)


def cold_part(inter: Interactions, cold: np.ndarray) -> Interactions:
    """Cold-item evaluation data: every interaction with a cold item is a test row; the warm
    training rows stay as training rows (they are the users' known history); the rest is dropped."""
    is_cold = cold[inter.items]
    keep = is_cold | (inter.split == TRAIN)
    split = np.where(is_cold, TEST, inter.split).astype(np.int8)
    return _rows(inter, keep, split)


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

    return evaluate(score, cold_part(inter, cold), split="test", mask="all", ks=ks, batch_size=batch_size)
