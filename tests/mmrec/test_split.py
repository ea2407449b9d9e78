from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmrec.errors import ConfigError, DataError
from mmrec.interactions import Interactions, load_interactions
from mmrec.split import ensure_split, split_random, split_sizes, split_temporal

DATA = Path(__file__).parents[2].parent / "shared" / "data"


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, (1, 0, 0)),  # MMRec's rule would break; a user keeps its one interaction for training
        (2, (1, 0, 1)),  # test before validation, as RecBole
        (3, (1, 1, 1)),  # MMRec: [0] * (n - 2) + [1] + [2]
        (9, (7, 1, 1)),
        (10, (8, 1, 1)),  # int(10 * 0.2) = 2 held out
        (15, (12, 1, 2)),  # int(3) held out; the odd one goes to test
        (20, (16, 2, 2)),
        (23, (19, 2, 2)),  # int(4.6) = 4
        (101, (81, 10, 10)),
    ],
)
def test_split_sizes_follow_mmrec_rule(n: int, expected: tuple[int, int, int]) -> None:
    got = split_sizes(np.array([n]))
    assert tuple(int(a[0]) for a in got) == expected


def test_split_sizes_other_ratios() -> None:
    n = np.array([1, 2, 3, 10, 20])
    train, valid, test = split_sizes(n, (0.8, 0.0, 0.2))
    assert (train.tolist(), valid.tolist(), test.tolist()) == ([1, 1, 2, 8, 16], [0, 0, 0, 0, 0], [0, 1, 1, 2, 4])
    train, valid, test = split_sizes(n, (6, 2, 2), min_full=3)  # unnormalised ratios are normalised
    assert (train.tolist(), valid.tolist(), test.tolist()) == ([1, 1, 2, 6, 12], [0, 0, 0, 2, 4], [0, 1, 1, 2, 4])
    # a small user's sizes are the ratio's raised to one valid and one test (they were 1 / 1 whatever
    # the ratios: 0.5/0.25/0.25 gave 7 / 1 / 1 at n = 9 and 5 / 2 / 3 at n = 10)
    train, valid, test = split_sizes(np.arange(1, 12), (0.5, 0.25, 0.25))
    assert train.tolist() == [1, 1, 1, 2, 3, 3, 4, 4, 5, 5, 6]
    assert valid.tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2]
    assert test.tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    train, valid, test = split_sizes(np.array([3, 5]), (0.1, 0.05, 0.85))  # a valid row only where one trains
    assert (train.tolist(), valid.tolist(), test.tolist()) == ([1, 1], [0, 0], [2, 4])
    with pytest.raises(ConfigError, match="the train ratio must be positive"):
        split_sizes(n, (0, 0.5, 0.5))
    with pytest.raises(ConfigError, match="three non-negative numbers"):
        split_sizes(n, (0.9, -0.1, 0.2))


def _random_interactions(seed: int = 0, num_users: int = 40, num_items: int = 60) -> Interactions:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, size=num_users)
    users = np.repeat(np.arange(num_users), counts)
    items = np.concatenate([rng.choice(num_items, size=c, replace=False) for c in counts])
    shuffle = rng.permutation(len(users))
    return Interactions(
        user_ids=list(range(num_users)),
        item_ids=list(range(num_items)),
        users=users[shuffle],
        items=items[shuffle],
        timestamps=rng.permutation(len(users)).astype(np.float64) * 10,
    )


def test_random_split_is_seeded_per_user_and_complete() -> None:
    inter = _random_interactions()
    a, b, c = split_random(inter, seed=3), split_random(inter, seed=3), split_random(inter, seed=4)
    np.testing.assert_array_equal(a.split, b.split)
    assert not np.array_equal(a.split, c.split)
    assert inter.split is None  # the input is not modified
    counts = np.bincount(inter.users, minlength=inter.num_users)
    expected = split_sizes(counts)
    for code, sizes in enumerate(expected):
        np.testing.assert_array_equal(np.bincount(a.users[a.split == code], minlength=inter.num_users), sizes)
        np.testing.assert_array_equal(np.bincount(c.users[c.split == code], minlength=inter.num_users), sizes)
    assert (np.bincount(a.users[a.split == 0], minlength=inter.num_users) >= 1).all()  # everyone trains
    # Every interaction is in exactly one split and the (user, item) sets do not overlap.
    pairs = [set(zip(a.users[a.split == s].tolist(), a.items[a.split == s].tolist())) for s in range(3)]
    assert sum(map(len, pairs)) == len(inter)
    assert not (pairs[0] & pairs[1] or pairs[0] & pairs[2] or pairs[1] & pairs[2])
    assert a.report["split"] == {
        "method": "random", "ratios": [0.8, 0.1, 0.1], "seed": 3, "min_full": 10, "keys": "pairs",
        "counts": a.split_counts()
    }


def _pairs_split(inter: Interactions) -> dict[tuple, int]:
    return {(inter.user_ids[u], inter.item_ids[i]): int(c) for u, i, c in zip(inter.users, inter.items, inter.split)}


def test_random_split_of_a_pair_depends_on_the_user_s_pairs_not_on_the_file() -> None:
    inter = _random_interactions()
    want = _pairs_split(split_random(inter, seed=3))
    rng = np.random.default_rng(1)
    order = rng.permutation(len(inter))  # the rows in another order, in other index spaces
    users = [f"x{u}" for u in range(5)] + inter.user_ids  # new users first: every index shifts
    items = list(reversed(inter.item_ids))
    shuffled = Interactions(users, items, inter.users[order] + 5, len(items) - 1 - inter.items[order])
    assert _pairs_split(split_random(shuffled, seed=3)) == want
    # Another user's rows added or removed leave every other user's split as it was.
    extra = np.repeat(np.arange(5), 12)
    grown = Interactions(users, items, np.concatenate([extra, shuffled.users]),
                         np.concatenate([np.tile(np.arange(12), 5), shuffled.items]))
    assert {p: c for p, c in _pairs_split(split_random(grown, seed=3)).items() if p[0] in want_users(want)} == want
    shrunk = shuffled.rows(shuffled.users != 5 + 7)  # user 7 gone
    assert _pairs_split(split_random(shrunk, seed=3)) == {p: c for p, c in want.items() if p[0] != 7}
    # 42 and "42" are one id (a file read as text or as numbers splits the same).
    as_text = Interactions([str(u) for u in inter.user_ids], [str(i) for i in inter.item_ids], inter.users, inter.items)
    np.testing.assert_array_equal(split_random(as_text, seed=3).split, split_random(inter, seed=3).split)


def test_row_keys_reproduce_the_older_split_of_one_seeded_draw_per_row() -> None:
    inter = _random_interactions()
    got = split_random(inter, seed=3, keys="rows")
    key = np.random.default_rng(3).random(len(inter))  # what split_random drew before the pair keys
    order = np.lexsort((key, inter.users))
    counts = np.bincount(inter.users, minlength=inter.num_users)
    n_train, n_valid, _ = split_sizes(counts)
    rank = np.empty(len(inter), np.int64)
    for u in range(inter.num_users):  # each user's rows in key order: train, then valid, then test
        rows = order[inter.users[order] == u]
        rank[rows] = np.arange(len(rows))
    want = np.where(rank < n_train[inter.users], 0, np.where(rank < (n_train + n_valid)[inter.users], 1, 2))
    np.testing.assert_array_equal(got.split, want)
    assert got.report["split"]["keys"] == "rows" and split_random(inter, seed=3).report["split"]["keys"] == "pairs"
    assert not np.array_equal(split_random(inter, seed=3).split, got.split)
    with pytest.raises(ConfigError, match="keys must be one of pairs, rows"):
        split_random(inter, keys="hash")


def want_users(split: dict[tuple, int]) -> set:
    return {u for u, _ in split}


def test_temporal_split_orders_by_time() -> None:
    inter = _random_interactions(1)
    t = split_temporal(inter)
    counts = np.bincount(inter.users, minlength=inter.num_users)
    for code, sizes in enumerate(split_sizes(counts)):
        np.testing.assert_array_equal(np.bincount(t.users[t.split == code], minlength=inter.num_users), sizes)
    for u in range(inter.num_users):
        mine = t.users == u
        ts, sp = t.timestamps[mine], t.split[mine]
        for early, late in ((0, 1), (1, 2), (0, 2)):
            if (sp == early).any() and (sp == late).any():
                assert ts[sp == early].max() < ts[sp == late].min()


def test_temporal_ties_keep_file_order() -> None:
    inter = Interactions(
        user_ids=[0], item_ids=list(range(3)), users=[0, 0, 0], items=[2, 0, 1], timestamps=[5.0, 5.0, 5.0]
    )
    assert split_temporal(inter).split.tolist() == [0, 1, 2]


def test_ensure_split() -> None:
    inter = _random_interactions()
    given = split_random(inter, seed=9)
    assert ensure_split(given) is given  # auto keeps a given split
    assert ensure_split(given, "given") is given
    np.testing.assert_array_equal(ensure_split(inter, seed=9).split, given.split)  # auto: random
    np.testing.assert_array_equal(ensure_split(given, "temporal").split, split_temporal(inter).split)
    with pytest.raises(ConfigError, match=r"the given split \(--split given\) needs a split column .* and this file has none"):
        ensure_split(inter, "given")
    with pytest.raises(ConfigError, match=r"the split rule \(--split\) must be one of auto, given, random, temporal"):
        ensure_split(inter, "leave-one-out")
    no_time = Interactions(user_ids=[0], item_ids=[0], users=[0], items=[0])
    with pytest.raises(ConfigError, match=r"a temporal split \(--split temporal\) needs a timestamp column"):
        ensure_split(no_time, "temporal")
    # Messages name the option of the command that chose the rule (mmrec evaluate: --split-rule).
    with pytest.raises(ConfigError, match=r"\(--split-rule given\) needs a split column .*: use --split-rule auto"):
        ensure_split(inter, "given", option="--split-rule")
    with pytest.raises(ConfigError, match=r"\(--split-rule temporal\) .*\(--split-rule random\)"):
        ensure_split(no_time, "temporal", option="--split-rule")


def test_rule_reproduces_published_amazon_baby_split() -> None:
    """The published MMRec split's per-user train/valid/test sizes are exactly split_sizes."""
    path = DATA / "amazon-baby" / "interactions.tsv"
    if not path.is_file():
        pytest.skip(f"real data not present at {path}")
    inter = load_interactions(path)
    counts = np.bincount(inter.users, minlength=inter.num_users)
    for code, sizes in enumerate(split_sizes(counts)):
        got = np.bincount(inter.users[inter.split == code], minlength=inter.num_users)
        np.testing.assert_array_equal(got, sizes)


def test_an_unknown_split_rule_is_refused_from_the_header_before_any_encoding(tmp_path):
    from mmrec.interactions import check_columns

    (tmp_path / "inter.tsv").write_text("user_id\titem_id\nu1\t1\n")
    with pytest.raises(ConfigError, match=r"the split rule \(--split\) must be one of auto, given, random, temporal, "
                                          r"got 'leave-one-out'"):
        check_columns(tmp_path / "inter.tsv", split="leave-one-out")
    (tmp_path / "twice.csv").write_text("user_id,item_id,timestamp,timestamp\nu1,1,5,6\n")  # as the loader refuses it
    with pytest.raises(DataError, match=r"field 'timestamp': the header names this column 2 times: keep one"):
        check_columns(tmp_path / "twice.csv")


def test_a_json_lines_files_columns_are_checked_before_any_encoding_too(tmp_path):
    from mmrec.interactions import check_columns

    path = tmp_path / "inter.jsonl"  # (it was not looked at: a temporal split failed after the catalog's encoding)
    path.write_text('{"user_id": "u1", "item_id": 1}\n{"user_id": "u2", "item_id": 2, "rating": 4}\n')
    with pytest.raises(ConfigError, match=r"timestamp"):
        check_columns(path, split="temporal")
    with pytest.raises(ConfigError, match=r"split"):
        check_columns(path, split="given")
    check_columns(path, rating_threshold=4)  # a key one line uses is a column
    path.write_text('{"user_id": "u1", "item_id": 1, "timestamp": 5}\nnot json\n')
    with pytest.raises(DataError, match=r"row 2: not a JSON object"):  # as loading it says
        check_columns(path, split="temporal")
