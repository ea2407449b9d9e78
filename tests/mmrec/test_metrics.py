from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrec.errors import ConfigError
from mmrec.interactions import Interactions
from mmrec.metrics import evaluate, evaluate_ranking, rank_topk

# 3 users x 6 items. User 0 has 4 truth items (more than K), user 1 has 1 (fewer than K),
# user 2 has none and must not enter any mean.
TOPK = np.array([[0, 1, 2], [3, 4, 5], [2, 5, 0]])
TRUTH = [np.array([1, 3, 4, 5]), np.array([5]), np.array([], dtype=np.int64)]
POP = np.array([4, 2, 1, 1, 0, 0])  # sum 8 -> self-information [1, 2, 3, 3, 3, 3] bits
VECS = np.array([[1, 0], [0, 1], [1, 1], [1, 0], [-1, 0], [0, 2]], dtype=np.float64)
L3 = 1 / math.log2(3)  # discount at rank 2


def test_hand_computed_metrics() -> None:
    m = evaluate_ranking(TOPK, TRUTH, (2, 3), num_items=6, item_popularity=POP, item_vectors=VECS)
    assert m["num_users"] == 2.0
    # K=2: user 0 hits item 1 at rank 2; user 1 has no hit in [3, 4].
    assert m["recall@2"] == pytest.approx((1 / 4 + 0) / 2, abs=1e-15)
    assert m["precision@2"] == pytest.approx((1 / 2 + 0) / 2, abs=1e-15)
    assert m["hit@2"] == 0.5
    assert m["mrr@2"] == pytest.approx((1 / 2 + 0) / 2, abs=1e-15)
    assert m["ndcg@2"] == pytest.approx((L3 / (1 + L3) + 0) / 2, abs=1e-15)  # IDCG over min(4, 2)
    # K=3: user 1 hits item 5 at rank 3; its IDCG is over min(1, 3) = 1 item.
    assert m["recall@3"] == pytest.approx((1 / 4 + 1) / 2, abs=1e-15)
    assert m["precision@3"] == pytest.approx((1 / 3 + 1 / 3) / 2, abs=1e-15)
    assert m["hit@3"] == 1.0
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2, abs=1e-15)
    assert m["ndcg@3"] == pytest.approx((L3 / (1 + L3 + 0.5) + 0.5 / 1) / 2, abs=1e-15)
    assert m["ndcg@3"] == pytest.approx(0.3980409554829326, abs=1e-15)
    # Beyond accuracy, over users 0 and 1 only (user 2's items 2, 5 would make coverage@2 1.0).
    assert m["coverage@2"] == pytest.approx(4 / 6)
    assert m["coverage@3"] == 1.0
    assert m["novelty@2"] == pytest.approx(((1 + 2) / 2 + (3 + 3) / 2) / 2)
    assert m["novelty@3"] == pytest.approx(((1 + 2 + 3) / 3 + 3) / 2)
    assert m["diversity@2"] == pytest.approx((1.0 + 2.0) / 2, rel=1e-6)  # cos 0 and cos -1
    u0 = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3
    u1 = (2 + 1 + 1) / 3
    assert m["diversity@3"] == pytest.approx((u0 + u1) / 2, rel=1e-6)
    # Coverage among the items that could be ranked (say 5: one held out of every list).
    held = evaluate_ranking(TOPK, TRUTH, (2, 3), num_items=6, candidates=5)
    assert held["coverage@2"] == pytest.approx(4 / 5) and held["recall@3"] == m["recall@3"]


def test_csr_and_list_truth_agree_and_optional_metrics_absent() -> None:
    csr = sp.csr_matrix((np.ones(5), (np.array([0, 0, 0, 0, 1]), np.array([1, 3, 4, 5, 5]))), shape=(3, 6))
    a = evaluate_ranking(TOPK, csr, (2, 3))
    b = evaluate_ranking(TOPK, TRUTH, (2, 3), num_items=6)
    assert a == b
    assert not any(key.startswith(("novelty", "diversity")) for key in a)
    # lists of one item hold no pair: diversity@K is absent (it was NaN, which --json printed as no JSON)
    short = evaluate_ranking(np.array([[1, -1], [5, -1]]), TRUTH[:2], (1, 2), num_items=6, item_vectors=VECS)
    assert not any(key.startswith("diversity") for key in short) and short["recall@1"] == 0.625
    some = evaluate_ranking(np.array([[1, 3], [5, -1]]), TRUTH[:2], (1, 2), num_items=6, item_vectors=VECS)
    assert "diversity@1" not in some and some["diversity@2"] == pytest.approx(1.0)  # user 0's pair alone: 1 - cos 90°
    # every list empty: novelty@K is absent too (it was NaN)
    empty = evaluate_ranking(np.full((2, 3), -1), TRUTH[:2], (3,), num_items=6, item_popularity=np.ones(6))
    assert not any(key.startswith("novelty") for key in empty) and empty["recall@3"] == 0.0


def _oracle(topk: np.ndarray, truth: list[set[int]], k: int) -> dict[str, float]:
    """Per-user loop straight from the definitions (MMRec utils/metrics.py)."""
    acc: dict[str, list[float]] = {n: [] for n in ("recall", "ndcg", "precision", "hit", "mrr")}
    for row, t in zip(topk, truth):
        if not t:
            continue
        ranks = [r for r, item in enumerate(row[:k], start=1) if item in t]
        acc["recall"].append(len(ranks) / len(t))
        acc["precision"].append(len(ranks) / k)
        acc["hit"].append(float(bool(ranks)))
        acc["mrr"].append(1 / ranks[0] if ranks else 0.0)
        dcg = sum(1 / math.log2(r + 1) for r in ranks)
        idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(t), k) + 1))
        acc["ndcg"].append(dcg / idcg)
    return {f"{n}@{k}": float(np.mean(v)) for n, v in acc.items()}


def test_vectorised_metrics_match_per_user_oracle() -> None:
    rng = np.random.default_rng(0)
    num_users, num_items = 60, 40
    topk = np.stack([rng.permutation(num_items)[:20] for _ in range(num_users)])
    truth = [set(rng.choice(num_items, size=rng.integers(0, 12), replace=False).tolist()) for _ in range(num_users)]
    got = evaluate_ranking(topk, [np.array(sorted(t), dtype=np.int64) for t in truth], (5, 20), num_items=num_items)
    for k in (5, 20):
        for key, value in _oracle(topk, truth, k).items():
            assert got[key] == pytest.approx(value, abs=1e-12), key


def test_evaluate_ranking_errors() -> None:
    with pytest.raises(ValueError, match=r"each K must lie in \[1, 3\]"):
        evaluate_ranking(TOPK, TRUTH, (10,), num_items=6)
    with pytest.raises(ValueError, match="no user has a truth item"):
        evaluate_ranking(TOPK, [np.array([], dtype=np.int64)] * 3, (2,), num_items=6)
    with pytest.raises(ValueError, match="truth has 2 rows but topk has 3"):
        evaluate_ranking(TOPK, TRUTH[:2], (2,), num_items=6)
    # an index N was counted as the next row's item 0 (recall@1 0.5 here), a repeated hit twice (recall 2.0)
    with pytest.raises(ValueError, match=r"topk holds item indices outside \[-1, 3\): 1 \.\. 3"):
        evaluate_ranking(np.array([[3], [1]]), [np.array([1]), np.array([0])], (1,), num_items=3)
    with pytest.raises(ValueError, match=r"topk row 1 holds an item index more than once"):
        evaluate_ranking(np.array([[0, 1], [2, 2]]), [np.array([0]), np.array([2])], (2,), num_items=3)
    got = evaluate_ranking(np.array([[0, -1, -1], [2, 1, -1]]), [np.array([0]), np.array([2])], (3,), num_items=3)
    assert got["recall@3"] == 1.0  # empty slots may repeat


def test_rank_topk_breaks_ties_by_index_whatever_k_and_ranks_wide_scores_exactly() -> None:
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.integers(0, 3, size=(64, 500)).astype(np.float32))  # many ties
    exclude = sp.random(64, 500, density=0.1, format="csr", random_state=3)
    lists = {k: rank_topk(lambda u: scores[torch.from_numpy(u)], np.arange(64), k, exclude) for k in (1, 10, 20, 100, 500)}
    for row in range(64):  # oracle: (score descending, index ascending), excluded items never
        s = scores[row].numpy().astype(np.float64)
        s[exclude[row].indices] = -np.inf
        oracle = np.lexsort((np.arange(500), -s))
        oracle[s[oracle] == -np.inf] = -1
        for k, top in lists.items():  # (topk's own order of ties changed with k: recall@10 moved when @20 was asked)
            np.testing.assert_array_equal(top[row], oracle[:k])
    # float64 and integer scores were ranked in float32: 1e5 + 1e-3 steps merged, -1e39 became -inf (dropped)
    fine = 100000.0 + 1e-3 * (100 - np.arange(100))
    np.testing.assert_array_equal(rank_topk(lambda b: np.tile(fine, (len(b), 1)), np.array([0]), 5,
                                            sp.csr_matrix((1, 100))), [[0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(rank_topk(lambda b: np.array([[-1e39, -2e39, -3e39]]), np.array([0]), 3,
                                            sp.csr_matrix((1, 3))), [[0, 1, 2]])
    big = np.array([[2**24 + 1, 2**24, 2**24 + 2]], dtype=np.int64)
    np.testing.assert_array_equal(rank_topk(lambda b: big, np.array([0]), 3, sp.csr_matrix((1, 3))), [[2, 0, 1]])
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64, np.int32):  # (torch has no min of uint16-64: it raised)
        np.testing.assert_array_equal(rank_topk(lambda b: np.array([[3, 1, 3, 2]], dtype)[b], np.arange(1), 2,
                                                sp.csr_matrix((1, 4))), [[0, 2]])
    # no items: every slot empty (it raised IndexError)
    np.testing.assert_array_equal(rank_topk(lambda b: torch.zeros(len(b), 0), np.arange(2), 3, sp.csr_matrix((2, 0))),
                                  [[-1, -1, -1], [-1, -1, -1]])


def test_tied_rows_are_resolved_in_slices_within_the_memory_budget(monkeypatch) -> None:
    import mmrec.metrics as metrics

    rng = np.random.default_rng(1)
    counts = torch.from_numpy(rng.integers(0, 4, size=(40, 300)))  # int64 counts: ties in every row
    exclude = sp.random(40, 300, density=0.2, format="csr", random_state=5)
    whole = rank_topk(lambda u: counts[torch.from_numpy(u)], np.arange(40), 25, exclude)
    monkeypatch.setattr(metrics, "SCORE_BYTES", 300 * 5 * 3)  # three rows a slice (and fewer users a batch)
    sliced = rank_topk(lambda u: counts[torch.from_numpy(u)], np.arange(40), 25, exclude)
    np.testing.assert_array_equal(sliced, whole)
    for row in range(40):
        s = counts[row].numpy().astype(np.float64)
        s[exclude[row].indices] = -np.inf
        np.testing.assert_array_equal(whole[row], np.lexsort((np.arange(300), -s))[:25])


SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.5, 0.7, 0.3, 0.2],
        [0.2, 0.8, 0.6, 0.4, 0.95, 0.1],
        [0.3, 0.2, 0.1, 0.6, 0.5, 0.4],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
    ]
)
EXCLUDE = sp.csr_matrix(
    (np.ones(6), (np.array([0, 0, 1, 3, 3, 3]), np.array([0, 3, 4, 5, 4, 3]))), shape=(5, 6)
)


def test_rank_topk_masks_excluded_items_exactly() -> None:
    top = rank_topk(lambda u: SCORES[u], np.arange(5), 3, EXCLUDE)
    np.testing.assert_array_equal(
        top,
        [
            [2, 4, 5],  # 0 and 3 masked
            [1, 2, 3],  # 4 masked
            [3, 4, 5],
            [2, 1, 0],  # 3, 4, 5 masked
            [0, 1, 2],
        ],
    )


def test_rank_topk_batched_equals_unbatched_and_never_exceeds_batch() -> None:
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.permutation(37 * 23).reshape(37, 23).astype(np.float32))  # distinct
    exclude = sp.random(37, 23, density=0.2, format="csr", random_state=2)
    users = rng.permutation(37)[:30]
    seen: list[int] = []

    def score_fn(u: np.ndarray) -> torch.Tensor:
        seen.append(len(u))
        return scores[torch.from_numpy(u)]

    batched = rank_topk(score_fn, users, 10, exclude, batch_size=7)
    assert max(seen) == 7 and sum(seen) == 30
    whole = rank_topk(lambda u: scores[torch.from_numpy(u)], users, 10, exclude, batch_size=1024)
    np.testing.assert_array_equal(batched, whole)
    # Oracle: sort each user's non-excluded items by score.
    for row, u in zip(batched, users):
        s = scores[u].numpy().copy()
        s[exclude[u].indices] = -np.inf
        np.testing.assert_array_equal(row, np.argsort(-s, kind="stable")[:10])


def test_rank_topk_pads_with_minus_one_and_leaves_scores_untouched() -> None:
    before = SCORES.clone()
    top = rank_topk(lambda u: SCORES[3:4].expand(len(u), -1), np.array([3]), 8, EXCLUDE)
    np.testing.assert_array_equal(top, [[2, 1, 0, -1, -1, -1, -1, -1]])  # 3 of 6 items left
    assert torch.equal(SCORES, before)
    numpy_scores = SCORES.numpy().astype(np.float64)
    top_np = rank_topk(lambda u: numpy_scores[u], np.arange(5), 3, EXCLUDE)
    np.testing.assert_array_equal(top_np, rank_topk(lambda u: SCORES[u], np.arange(5), 3, EXCLUDE))


def test_rank_topk_masks_fresh_scores_in_place_and_copies_any_other(monkeypatch) -> None:
    import mmrec.metrics as metrics

    whole = SCORES.clone()
    handed: list[torch.Tensor] = []

    def own(u: np.ndarray) -> torch.Tensor:  # a view of the caller's matrix, as a cache would hand out
        handed.append(whole[int(u[0]) : int(u[-1]) + 1])
        return handed[-1]

    want = rank_topk(lambda u: SCORES[u], np.arange(5), 3, EXCLUDE)
    np.testing.assert_array_equal(rank_topk(own, np.arange(5), 3, EXCLUDE, batch_size=2), want)
    assert torch.equal(whole, SCORES)  # not the scorer's to change: masked on a copy
    fresh: list[torch.Tensor] = []
    top = rank_topk(lambda u: fresh.append(SCORES[u].clone()) or fresh[-1], np.arange(5), 3, EXCLUDE,
                    batch_size=2, fresh_scores=True)
    np.testing.assert_array_equal(top, want)
    masked = torch.cat(fresh)  # no copy: the fresh tensors themselves hold the -inf of the excluded items
    assert torch.equal(torch.isinf(masked), torch.from_numpy(EXCLUDE.toarray() > 0))
    halves = rank_topk(lambda u: SCORES[u].double(), np.arange(5), 3, EXCLUDE, fresh_scores=True)
    np.testing.assert_array_equal(halves, want)  # float64 scores are converted (a copy) whatever the flag
    # A batch's scores stay under SCORE_BYTES: 6 items x 4 bytes, 48 bytes, is 2 users a call.
    monkeypatch.setattr(metrics, "SCORE_BYTES", 48)
    sizes: list[int] = []
    capped = rank_topk(lambda u: sizes.append(len(u)) or SCORES[u], np.arange(5), 3, EXCLUDE, batch_size=1024)
    assert sizes == [2, 2, 1]
    np.testing.assert_array_equal(capped, want)


def test_rank_topk_rejects_bad_scores() -> None:
    with pytest.raises(ValueError, match=r"score_fn returned shape \(2, 5\), expected \(2, 6\)"):
        rank_topk(lambda u: torch.zeros(len(u), 5), np.arange(2), 3, EXCLUDE)
    one_nan = SCORES.clone()
    one_nan[4, 5] = float("nan")  # the lowest-scored item of user 4
    with pytest.raises(ValueError, match="score_fn returned NaN scores"):
        rank_topk(lambda u: one_nan[u], np.arange(5), 3, EXCLUDE, batch_size=2)


def _split_interactions() -> Interactions:
    # user 0: train {0}, valid {1}, test {2}; user 1: train {3}, test {4}; user 2: train {5} only.
    return Interactions(
        user_ids=["a", "b", "c"],
        item_ids=list("pqrstu"),
        users=np.array([0, 0, 0, 1, 1, 2]),
        items=np.array([0, 1, 2, 3, 4, 5]),
        split=np.array([0, 1, 2, 0, 2, 0]),
    )


def test_evaluate_mask_conventions() -> None:
    inter = _split_interactions()
    # Scores prefer items 0, 1, 3 (already seen) over the test items.
    pref = torch.tensor([10.0, 9.0, 5.0, 8.0, 4.0, 0.0])
    score_fn = lambda u: pref.expand(len(u), -1)  # noqa: E731
    all_mask = evaluate(score_fn, inter, "test", "all", ks=(1, 2))
    # "all": user 0 loses 0 (train) and 1 (valid) -> top1 = 3, top2 = [3, 2]; user 1 loses 3 -> [1, 0].
    assert all_mask["num_users"] == 2.0
    assert all_mask["hit@1"] == 0.0
    assert all_mask["recall@2"] == pytest.approx(0.5)  # user 0 hits item 2, user 1 misses item 4
    train_mask = evaluate(score_fn, inter, "test", "train", ks=(1, 2))
    # "train": user 0 keeps its valid item 1 -> top2 = [1, 3], no hit; user 1 -> [0, 1], no hit.
    assert train_mask["recall@2"] == 0.0
    valid = evaluate(score_fn, inter, "valid", "all", ks=(1,))
    assert valid["num_users"] == 1.0 and valid["hit@1"] == 1.0  # user 0: train item 0 masked -> 1
    # User 1 also rated items 0, 1 and 2 below a rating threshold: "all" masks them as serving
    # does (top1 = 4, a hit); "train" ranks them.
    inter.seen = (np.array([1, 1, 1]), np.array([0, 1, 2]))
    seen_all = evaluate(score_fn, inter, "test", "all", ks=(1, 2))
    assert seen_all["hit@1"] == 0.5 and seen_all["recall@2"] == 1.0  # user 0 as before: [3, 2]
    assert evaluate(score_fn, inter, "test", "train", ks=(1, 2))["recall@2"] == 0.0
    seen_valid = evaluate(score_fn, inter, "valid", "all", ks=(1,))  # user 0 has no seen pair
    assert seen_valid["hit@1"] == 1.0
    # A seen pair that is also the evaluated positive (hand-built; loading never makes one) stays
    # rankable: user 0's test item 2 listed as seen too, with item 3 (masked: top1 = 2, a hit).
    inter.seen = (np.array([1, 1, 1, 0, 0]), np.array([0, 1, 2, 2, 3]))
    both = evaluate(score_fn, inter, "test", "all", ks=(1, 2))
    assert both["hit@1"] == 1.0 and both["recall@2"] == 1.0


def test_evaluate_errors() -> None:
    inter = _split_interactions()
    with pytest.raises(ConfigError, match="split must be 'valid' or 'test'"):
        evaluate(lambda u: torch.zeros(len(u), 6), inter, "train")
    with pytest.raises(ConfigError, match="mask must be one of all, train"):
        evaluate(lambda u: torch.zeros(len(u), 6), inter, "test", "everything")


def test_diversity_is_computed_in_chunks_that_fit_the_memory_budget(monkeypatch) -> None:
    import mmrec.metrics as metrics

    # [K, K] arrays for 1,024 users at once took over 20 GB at K = 1000 (the process was killed)
    assert metrics._diversity_chunk(1000, 64, 4) == 10 and metrics._diversity_chunk(20, 64, 4) == 1024
    rng = np.random.default_rng(4)
    vecs = rng.normal(size=(50, 8))
    topk = np.stack([rng.permutation(50)[:20] for _ in range(30)])
    topk[3, 5:] = -1  # a short list: its pairs alone
    truth = [np.array([r % 50]) for r in range(30)]
    whole = evaluate_ranking(topk, truth, (20,), num_items=50, item_vectors=vecs)["diversity@20"]
    monkeypatch.setattr(metrics, "SCORE_BYTES", 2 * (20 * 20 * 25 + 20 * 8 * 8))  # two users a chunk
    assert metrics._diversity_chunk(20, 8, 8) == 2
    assert evaluate_ranking(topk, truth, (20,), num_items=50, item_vectors=vecs)["diversity@20"] == \
        pytest.approx(whole, rel=1e-12)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)  # oracle: mean over pairs, then over users
    per_user = []
    for row in topk:
        items = row[row >= 0]
        per_user.append(np.mean([1 - unit[a] @ unit[b] for a in items for b in items if a != b]))
    assert whole == pytest.approx(np.mean(per_user), rel=1e-6)  # (float32 vectors)
