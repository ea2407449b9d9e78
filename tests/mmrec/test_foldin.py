"""mmrec.foldin: the fold-in ridge chosen on validation, against a brute-force oracle."""
from __future__ import annotations

import numpy as np
import pytest

from fusion.foldin import HistoryFoldIn
from mmrec.foldin import DEFAULT_FOLD_IN_REG, select_fold_in_reg
from mmrec.interactions import Interactions


def synthetic(users: int = 30, items: int = 60, seed: int = 0) -> tuple[np.ndarray, Interactions]:
    """Item vectors [N, 4] and users with 6 training and 2 validation items drawn by a hidden taste."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(items, 4))
    taste = rng.normal(size=(users, 4))
    u_rows, i_rows, split = [], [], []
    for u in range(users):
        p = np.exp(v @ taste[u])
        picks = rng.choice(items, 8, replace=False, p=p / p.sum())
        u_rows += [u] * 8
        i_rows += picks.tolist()
        split += [0] * 6 + [1] * 2
    return v, Interactions([f"u{u}" for u in range(users)], list(range(items)), np.array(u_rows), np.array(i_rows),
                           split=np.array(split))


def brute_recall(v: np.ndarray, inter: Interactions, reg: float, excluded: np.ndarray | None = None,
                 users=None) -> float:
    """Recall@20 over the validation users (default all), written out user by user."""
    out = []
    for u in range(inter.num_users) if users is None else users:
        mine = inter.users == u
        train = inter.items[mine & (inter.split == 0)]
        valid = set(inter.items[mine & (inter.split == 1)].tolist())
        user = HistoryFoldIn(v, reg=reg)([train])[0].astype(np.float64)
        scores = v.astype(np.float32).astype(np.float64) @ user
        scores[train] = -np.inf  # mask "train": only the training items
        if excluded is not None:
            scores[excluded] = -np.inf
        top = np.argsort(-scores, kind="stable")[:20]
        out.append(len(valid & set(top.tolist())) / min(len(valid), 20))
    return float(np.mean(out))


def test_scores_and_choice_equal_the_brute_force_oracle():
    v, inter = synthetic()
    regs = (0.01, 1.0, 100.0)
    best, scores, users = select_fold_in_reg(v, inter, mask="train", regs=regs)
    assert users == 30
    for r in regs:
        assert scores[str(r)] == pytest.approx(brute_recall(v, inter, r), abs=1e-9)
    assert len(set(scores.values())) == 3  # no tie: the choice is the best score
    assert best == max(regs, key=lambda r: scores[str(r)])


def test_excluded_items_are_never_candidates():
    v, inter = synthetic(seed=1)
    # As in fit, held-out items have no rows of their own; here: a third of the items no user
    # validates on, some of them training items.
    excluded = np.zeros(len(v), bool)
    excluded[np.setdiff1d(np.arange(len(v)), inter.items[inter.split == 1])[::3]] = True
    assert excluded.sum() >= 5
    _, scores, _ = select_fold_in_reg(v, inter, excluded=excluded, mask="train", regs=(0.1,))
    assert scores["0.1"] == pytest.approx(brute_recall(v, inter, 0.1, excluded), abs=1e-9)


def test_without_validation_rows_the_default_stands_and_is_said(caplog):
    v, inter = synthetic()
    train_only = Interactions(inter.user_ids, inter.item_ids, inter.users, inter.items, split=np.zeros(len(inter), np.int8))
    with caplog.at_level("WARNING", logger="mmrec.foldin"):
        assert select_fold_in_reg(v, train_only) == (DEFAULT_FOLD_IN_REG, {}, 0)
    assert f"fold-in keeps its default ridge {DEFAULT_FOLD_IN_REG}, not one chosen on validation" in caplog.text


def test_at_most_max_users_are_measured():
    v, inter = synthetic(users=40)
    _, few, n = select_fold_in_reg(v, inter, mask="train", regs=(1.0,), max_users=5, seed=3)
    assert n == 5
    sample = np.sort(np.random.default_rng(3).choice(40, 5, replace=False))  # every user is eligible
    assert few["1.0"] == pytest.approx(brute_recall(v, inter, 1.0, users=sample), abs=1e-9)
    assert few["1.0"] != pytest.approx(brute_recall(v, inter, 1.0))  # not the 40 users' recall
    assert select_fold_in_reg(v, inter, mask="train", regs=(1.0,), max_users=5, seed=3)[1] == few  # seeded


def test_ties_go_to_the_ridge_nearest_the_default():
    # Two items only: every validation item is in every top 20, so every ridge scores 1.0.
    inter = Interactions(["a", "b"], [0, 1], np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]),
                         split=np.array([0, 1, 0, 1]))
    v = np.eye(2)
    best, scores, _ = select_fold_in_reg(v, inter, regs=(100.0, 0.03, 0.3, 0.1, 1.0))
    assert set(scores.values()) == {1.0} and best == DEFAULT_FOLD_IN_REG
    assert select_fold_in_reg(v, inter, regs=(100.0, 0.03, 0.3))[0] == 0.3  # ratio 3 beats 3.3 and 1000
