"""scripts/bench_history.py: the held-out users and what they are scored on."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_history  # noqa: E402
from mmrec.interactions import Interactions  # noqa: E402


def small() -> Interactions:
    """10 users x 6 items; user 9 has no training row (only a test one)."""
    users, items, split = [], [], []
    for u in range(9):
        for i in range(3):
            users.append(u), items.append((u + i) % 6), split.append(0)
        users.append(u), items.append((u + 3) % 6), split.append(2)
    users.append(9), items.append(0), split.append(2)
    return Interactions([f"u{u}" for u in range(10)], list(range(6)), np.array(users), np.array(items),
                        split=np.array(split))


def test_held_out_users_are_a_partition_with_histories():
    inter = small()
    for seed in range(5):
        kept, held, rows = bench_history.split_users(inter, seed)
        assert held.num_users == 2 and kept.num_users == 8
        assert 9 not in rows  # no training row: nothing to place them by
        assert sorted(kept.user_ids + held.user_ids) == sorted(inter.user_ids)
        assert held.user_ids == [f"u{r}" for r in rows]
        assert len(kept.users) + len(held.users) == len(inter.users)
        # Every held-out row is kept with its item and split, under the user's new index.
        for u, name in enumerate(held.user_ids):
            old = int(name[1:])
            mine = np.flatnonzero(held.users == u)
            want = np.flatnonzero(inter.users == old)
            assert held.items[mine].tolist() == inter.items[want].tolist()
            assert held.split[mine].tolist() == inter.split[want].tolist()
        hist = bench_history.histories(held)
        assert [sorted(h.tolist()) for h in hist] == [sorted((r + i) % 6 for i in range(3)) for r in rows]


def test_metrics_of_scores_history_masked_exactly():
    # Two users, only training items masked (valid items stay candidates): a's test item 4 ranks
    # 2nd (after 5), b's test item 5 last of five.
    inter = Interactions(["a", "b"], list(range(6)), np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 4, 1, 3, 5]),
                         split=np.array([0, 1, 2, 0, 1, 2]))
    items = np.arange(6, dtype=np.float32)[:, None] * np.array([[1.0]])  # item i scores i * user
    users = np.array([[1.0], [-1.0]])  # a prefers high ids, b low ids
    got = bench_history.metrics_of(users, items, inter)["test"]
    assert got["recall@20"] == 1.0 and got["recall@10"] == 1.0
    ndcg_a, ndcg_b = 1 / np.log2(3), 1 / np.log2(6)  # ranks 2 and 5
    assert abs(got["ndcg@20"] - round((ndcg_a + ndcg_b) / 2, 4)) < 1e-4
