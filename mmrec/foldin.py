"""Choosing the history fold-in's ridge on validation, when a model is trained.

:class:`fusion.foldin.HistoryFoldIn` places a user by their history against every item vector;
its ridge ``reg`` decides how far the solve whitens the item space. A small ridge lets every
unchosen item push the user away from popular directions (right on dense data, where the history
says enough); a large one keeps the popular directions, and as ``reg`` grows the user tends to
the plain sum of the history's vectors (right on sparse data, where popularity is most of what a
short history tells). On the benchmark data (``scripts/bench_history.py``) the ridges validation
chose ran from 1 (ml100k-plus) to 100 (tiktok, ID-only model), and the fixed 0.1 lost 19-27% of
tiktok's Recall@20, so ``fit`` picks it on the validation split, as every other choice: the
validation users are placed by their training items alone and scored on their validation items.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from fusion.foldin import HistoryFoldIn
from mmrec.interactions import Interactions
from mmrec.metrics import evaluate, score_users

logger = logging.getLogger(__name__)

FOLD_IN_REGS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)  # the validation grid
DEFAULT_FOLD_IN_REG = 0.1  # without a validation split (and in directories older than the choice)
MAX_USERS = 2000  # validation users the choice is measured on at most
SELECT_KEY = "recall@20"


def select_fold_in_reg(
    item_vectors: np.ndarray,
    inter: Interactions,
    *,
    excluded: np.ndarray | None = None,
    mask: str = "all",
    seed: int = 0,
    regs: Sequence[float] = FOLD_IN_REGS,
    max_users: int = MAX_USERS,
    batch_size: int = 1024,
) -> tuple[float, dict[str, float], int]:
    """The fold-in ridge with the best validation Recall@20.

    Where several ridges tie for the best (a validation split too small to tell them apart),
    the one nearest :data:`DEFAULT_FOLD_IN_REG` (by ratio) is kept.

    Args:
        item_vectors: ``[N, D]`` the served item vectors, in ``inter``'s item order.
        inter: the training interactions with their split.
        excluded: ``[N]`` items that are never candidates (held out of a cold-start model).
        mask: which of a user's other interactions are masked (as validation while training).
        seed: picks the users when more than ``max_users`` have a validation item and a history.
        regs: the ridges tried.
        max_users: at most this many validation users.
        batch_size: users scored at once (a ``[batch_size, N]`` score matrix).

    Returns:
        ``(reg, {str(reg): valid recall@20}, users measured)``; ``(DEFAULT_FOLD_IN_REG, {}, 0)``
        when no user has both a training and a validation item.

    Shapes:
        item_vectors (N, D), excluded (N,)
    """
    train = inter.user_items("train").tocsr()  # [U, N]
    has_valid = np.bincount(inter.users[inter.split_mask("valid")], minlength=inter.num_users) > 0
    users = np.flatnonzero(has_valid & (np.diff(train.indptr) > 0))
    if not len(users):  # (said: on sparse data a review measured 0.089 at 0.1 against 0.112 at 100)
        logger.warning("no user has both a training and a validation interaction: recommend --history's fold-in keeps "
                       "its default ridge %s, not one chosen on validation (sparse histories tend to do better with "
                       "a larger one)", DEFAULT_FOLD_IN_REG)
        return DEFAULT_FOLD_IN_REG, {}, 0
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    keep = np.zeros(inter.num_users, bool)
    keep[users] = True
    sample = inter.rows(keep[inter.users])  # the same user space, only the sampled users' rows
    slot = np.full(inter.num_users, -1)
    slot[users] = np.arange(len(users))  # user index -> row of the placed users
    histories = [train.indices[train.indptr[u] : train.indptr[u + 1]] for u in users]
    vectors = np.asarray(item_vectors)
    items = torch.as_tensor(vectors, dtype=torch.float32)  # [N, D]
    fold = HistoryFoldIn(vectors)  # the Gram matrix once, each ridge by with_settings
    scores: dict[str, float] = {}
    for reg in regs:
        placed = fold.with_settings(reg=reg)(histories)  # [S, D]
        scores[str(reg)] = evaluate(lambda b: score_users(placed, items, excluded, slot[b]), sample,
                                    split="valid", mask=mask, ks=(20,), batch_size=batch_size,
                                    fresh_scores=True)[SELECT_KEY]
    top = max(scores.values())
    best = min((r for r in regs if scores[str(r)] == top), key=lambda r: abs(math.log(r / DEFAULT_FOLD_IN_REG)))
    logger.info("history fold-in: reg %g (valid recall@20 %.4f over %d users; tried %s)", best, top, len(users),
                ", ".join(f"{r:g}: {scores[str(r)]:.4f}" for r in regs))
    return float(best), scores, len(users)
