"""Per-user train / validation / test splits.

How many of a user's ``n`` interactions go to each split follows MMRec's preprocessing
(``preprocessing/1splitting.ipynb`` in enoche/MMRec, which produced the published
Baby / Sports / Clothing splits), generalised to any ratios ``(r_train, r_valid, r_test)``:

* ``n >= min_full`` (default 10): ``n_eval = floor(n * (r_valid + r_test))``,
  ``n_valid = floor(n_eval * r_valid / (r_valid + r_test))``, ``n_test = n_eval - n_valid``,
  the rest is train. For 0.8/0.1/0.1 this is MMRec's ``int(n * 0.2)`` held out, halved with
  the odd one going to test (n = 15: 12 / 1 / 2).
* ``n < min_full``: one interaction to test and one to validation, the rest to train
  (MMRec: ``[0] * (n - 2) + [1] + [2]``) -- so every user with >= 3 interactions is evaluated.
  Under other ratios these users get the sizes above, raised to at least one test and one
  validation interaction (for 0.8/0.1/0.1 the same thing), so that a user with more
  interactions never keeps fewer for training (0.5/0.25/0.25: n = 9 gives 5 / 2 / 2, n = 10
  gives 5 / 2 / 3; it gave 7 / 1 / 1 at n = 9).
  MMRec's rule leaves no training item at n = 2 and breaks at n = 1 (its data is 5-core
  filtered, so it never meets them); here, as in RecBole's ``_calcu_split_ids``, a user
  always keeps at least one training interaction and test is served before validation:
  n = 2 gives 1 train + 1 test, n = 1 gives 1 train. A split whose ratio is 0 gets nothing.

The rule reproduces the published amazon-baby split's per-user counts exactly (checked in
``tests/mmrec/test_split.py`` when the data is present).

Which interactions go where: :func:`split_random` orders each user's interactions by a seeded
key that depends on the seed, the user id and the item id alone (MMRec shuffles the whole table
once): the split of a user's pairs does not depend on the file's row order or on other users'
rows, so a file with rows added for other users, or reordered, splits the same; a user whose
own rows change is split anew. :func:`split_temporal` orders them by timestamp, so the latest
ones are the test set.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from mmrec.errors import ConfigError
from mmrec.interactions import SPLITS, TEST, TRAIN, VALID, Interactions

logger = logging.getLogger(__name__)

_EPS = 1e-9  # n * 0.2 may land a hair under an integer in floating point


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(not np.isfinite(r) or r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ConfigError(f"ratios must be three non-negative numbers (train, valid, test), got {tuple(ratios)}")
    total = float(sum(ratios))
    r_train, r_valid, r_test = (float(r) / total for r in ratios)
    if r_train <= 0:
        raise ConfigError(f"the train ratio must be positive, got {tuple(ratios)}")
    return r_train, r_valid, r_test


def split_sizes(
    counts: np.ndarray, ratios: Sequence[float] = (0.8, 0.1, 0.1), min_full: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (train, valid, test) sizes under the module rule.

    Args:
        counts: number of interactions of each user.
        ratios: (train, valid, test), normalised to sum to 1; default 0.8/0.1/0.1.
        min_full: users with fewer interactions get at least one valid and one test interaction,
            where that leaves them one to train on (test first: n = 2 gives 1 / 0 / 1) and the
            split's ratio is not 0.

    Returns:
        (n_train, n_valid, n_test), int64 arrays shaped like ``counts``.

    Raises:
        ConfigError: negative ratios, a zero train ratio, ``min_full`` < 1.
    """
    _, r_valid, r_test = _check_ratios(ratios)
    if min_full < 1:
        raise ConfigError(f"min_full must be >= 1, got {min_full}")
    n = np.asarray(counts, dtype=np.int64)
    r_eval = r_valid + r_test
    n_eval = np.floor(n * r_eval + _EPS).astype(np.int64)
    n_valid = np.floor(n_eval * (r_valid / r_eval if r_eval > 0 else 0.0) + _EPS).astype(np.int64)
    n_test = n_eval - n_valid
    small = n < min_full
    n_test = np.where(small & (r_test > 0) & (n >= 2), np.maximum(n_test, 1), n_test)
    n_valid = np.where(small & (r_valid > 0) & (n - n_test - n_valid >= 2), np.maximum(n_valid, 1), n_valid)
    return n - n_valid - n_test, n_valid, n_test


def _assign(inter: Interactions, order: np.ndarray, ratios: Sequence[float], min_full: int) -> np.ndarray:
    """Split codes given a row order that groups users and ranks rows within each user."""
    counts = np.bincount(inter.users, minlength=inter.num_users)
    n_train, n_valid, _ = split_sizes(counts, ratios, min_full)
    start = np.concatenate(([0], np.cumsum(counts)[:-1]))  # first position of each user in `order`
    sorted_users = inter.users[order]
    position = np.arange(len(order)) - start[sorted_users]  # rank within the user
    code = np.full(len(order), TEST, dtype=np.int8)
    code[position < n_train[sorted_users] + n_valid[sorted_users]] = VALID
    code[position < n_train[sorted_users]] = TRAIN
    split = np.empty(len(order), dtype=np.int8)
    split[order] = code
    return split


def _with_split(inter: Interactions, split: np.ndarray, how: dict) -> Interactions:
    out = replace(inter, split=split, report={**inter.report, "split": how})
    how["counts"] = out.split_counts()
    logger.info("split %s: %s", how["method"], how["counts"])
    return out


KEYS = ("pairs", "rows")  # split_random's keys: by (seed, user, item), or one draw per row (older directories)


def split_random(
    inter: Interactions, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, *, min_full: int = 10,
    keys: str = "pairs",
) -> Interactions:
    """Random per-user split; sizes per user follow the module rule.

    Args:
        inter: interactions (an existing split is replaced).
        ratios: (train, valid, test), default 0.8/0.1/0.1.
        seed: seed of the keys (:func:`pair_keys`); the same seed and pairs give the same split,
            whatever the row order and whatever other users' rows the file holds.
        min_full: see :func:`split_sizes`.
        keys: ``"pairs"`` (default): :func:`pair_keys`; ``"rows"``: one draw of a seeded
            generator per row, in file order -- the keys of directories trained before the pair
            keys, which ``mmrec evaluate`` uses to rebuild their training split.

    Returns:
        A copy of ``inter`` with ``split`` set and ``report["split"]`` describing it.

    Raises:
        ConfigError: unknown ``keys``.
    """
    if keys not in KEYS:
        raise ConfigError(f"keys must be one of {', '.join(KEYS)}, got {keys!r}")
    key = pair_keys(inter, seed) if keys == "pairs" else np.random.default_rng(seed).random(len(inter))
    order = np.lexsort((key, inter.users))  # by user, then by the pair's key
    split = _assign(inter, order, ratios, min_full)
    how = {"method": "random", "ratios": list(ratios), "seed": seed, "min_full": min_full, "keys": keys}
    return _with_split(inter, split, how)


def _id_hashes(ids: Sequence[object], seed: int, kind: str) -> np.ndarray:
    """A 64-bit hash of each id (as text, so ``42`` and ``"42"`` agree), stable across processes."""
    salt = f"{seed}:{kind}:".encode()
    return np.array([int.from_bytes(hashlib.blake2b(salt + str(i).encode(), digest_size=8).digest(), "little")
                     for i in ids], dtype=np.uint64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def pair_keys(inter: Interactions, seed: int = 0) -> np.ndarray:
    """A key in ``[0, 1)`` for each interaction, a function of ``(seed, user id, item id)`` only.

    Uniform and independent across pairs for practical purposes; ordering a user's rows by it
    shuffles them the same way whatever the file's row order or other content.

    Shapes:
        -> (len(inter),) float64
    """
    users = _id_hashes(inter.user_ids, seed, "user")  # [U]
    items = _id_hashes(inter.item_ids, seed, "item")  # [N]
    x = _mix64(users[inter.users] ^ _mix64(items[inter.items]))  # [E]
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def split_temporal(
    inter: Interactions, ratios: Sequence[float] = (0.8, 0.1, 0.1), *, min_full: int = 10
) -> Interactions:
    """Per-user split by time: each user's earliest interactions train, the latest test.

    Ties in timestamp keep file order. Sizes per user follow the module rule.

    Raises:
        ConfigError: the interactions have no timestamps.
    """
    if inter.timestamps is None:
        raise ConfigError("a temporal split (--split temporal) needs a timestamp column: use a random split "
                          "(--split random) or a file with timestamps")
    order = np.lexsort((np.arange(len(inter)), inter.timestamps, inter.users))
    split = _assign(inter, order, ratios, min_full)
    return _with_split(inter, split, {"method": "temporal", "ratios": list(ratios), "min_full": min_full})


HOW = ("auto", "given", "random", "temporal")


def check_rule_columns(how: str, *, has_split: bool, has_timestamps: bool, option: str = "--split",
                       source: str | Path | None = None) -> None:
    """Refuse an unknown split rule, and one the file's columns cannot serve: ``given`` without a
    split column, ``temporal`` without timestamps (``option`` names the command-line option in
    the message, ``source`` the file).

    Raises:
        ConfigError: saying what to use instead.
    """
    if how not in HOW:
        raise ConfigError(f"the split rule ({option}) must be one of {', '.join(HOW)}, got {how!r}")
    where = f"{source}: " if source is not None else ""
    if how == "given" and not has_split:
        raise ConfigError(f"{where}the given split ({option} given) needs a split column ({', '.join(SPLITS)}) in "
                          f"the interactions, and this file has none: use {option} auto or random")
    if how == "temporal" and not has_timestamps:
        raise ConfigError(f"{where}a temporal split ({option} temporal) needs a timestamp column, and this file has "
                          f"none: use a random split ({option} random) or a file with timestamps")


def ensure_split(
    inter: Interactions,
    how: str = "auto",
    seed: int = 0,
    *,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    option: str = "--split",
    keys: str = "pairs",
    source: str | Path | None = None,
) -> Interactions:
    """Interactions with a split: the given one, or a new random / temporal one.

    Args:
        inter: interactions, split or not.
        how: ``"auto"`` (default): the file's split when there is one, else random;
            ``"given"``: the file's split (error if none); ``"random"``, ``"temporal"``:
            a new split even when the file has one.
        seed: seed of the random split.
        ratios: (train, valid, test) for a new split.
        option: the command-line option that chose ``how``, for messages (``mmrec evaluate``
            calls it ``--split-rule``).
        keys: the random split's keys (:func:`split_random`).
        source: the file the interactions came from, named in messages.

    Raises:
        ConfigError: an unknown ``how``; ``"given"`` without a split column;
            ``"temporal"`` without timestamps.
    """
    check_rule_columns(how, has_split=inter.split is not None, has_timestamps=inter.timestamps is not None,
                       option=option, source=source)
    if how == "given" or (how == "auto" and inter.split is not None):
        return inter
    if how == "temporal":
        return split_temporal(inter, ratios)
    return split_random(inter, ratios, seed, keys=keys)
