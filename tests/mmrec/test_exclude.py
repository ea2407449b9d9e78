"""``exclude``: item ids never returned (business rules), on every query kind, exact and approximate."""
from __future__ import annotations

import json

import pytest

from mmrec.cli import main
from mmrec.config import TrainConfig
from mmrec.pipeline import fit
from mmrec.recommender import Recommender
from tests.mmrec.conftest import write_planted

FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, epochs=4, patience=4, reg=1e-4, seed=0)


@pytest.fixture(scope="module", params=["Flat", "HNSW8"])
def rec(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("exclude")
    inter, feats = write_planted(d)
    fit(inter, features={"content": feats}, out=d / "model", config=TrainConfig(**FAST), split="random",
        factory=request.param, show_progress=False)
    return Recommender.load(d / "model", show_progress=False)


def ids(results) -> list:
    return [r.item_id for r in results]


def test_excluded_items_leave_the_ranking_and_the_rest_move_up(rec):
    # The oracle: the full ranking (every item, nothing cut), less the excluded ids, first k.
    drop = [5, "9", 13, "not-an-item"]  # "9" as typed on a command line; unknown ids are ignored
    gone = {5, 9, 13}
    n = len(rec.items)
    for user in rec.user_ids[:6]:
        full = ids(rec.recommend(user, n))
        assert ids(rec.recommend(user, 6, exclude=drop)) == [i for i in full if i not in gone][:6]
        everything = ids(rec.recommend(user, n, exclude_known=False))
        assert ids(rec.recommend(user, 5, exclude_known=False, exclude=drop)) == [i for i in everything if i not in gone][:5]
    left = n - len(rec.known_items("u0")) - 3
    assert len(rec.recommend("u0", n, exclude=drop)) == left  # every item left comes back, no more
    many = rec.recommend_many(rec.user_ids[:6], 6, exclude=drop)
    assert [ids(r) for r in many] == [ids(rec.recommend(u, 6, exclude=drop)) for u in rec.user_ids[:6]]
    for by in ("index", "cosine"):
        full = ids(rec.similar(3, n, by=by))
        assert ids(rec.similar(3, 7, by=by, exclude=drop)) == [i for i in full if i not in gone][:7]
        assert [ids(r) for r in rec.similar_many([3, 4], 7, by=by, exclude=drop)] == \
            [ids(rec.similar(i, 7, by=by, exclude=drop)) for i in (3, 4)]
    assert len(rec.similar(3, n, exclude=drop)) == n - 1 - 3
    # A history's own items come back with exclude_history=False; the excluded ones never do.
    every = ids(rec.recommend_history([0, 4], n, exclude_history=False))
    assert ids(rec.recommend_history([0, 4], 6, exclude_history=False, exclude=drop)) == [i for i in every if i not in gone][:6]
    assert not gone & set(ids(rec.recommend_history([0, 4], n, user="u1", exclude=drop)))


def test_cli_exclude_and_exclude_file(rec, tmp_path, capsys):
    d = str(rec.items.directory)
    (tmp_path / "stock.txt").write_text("\ufeff5\n\n9\n", encoding="utf-8")  # a byte-order mark, as some editors write
    assert main(["recommend", "--index", d, "--user", "u0", "-k", "6", "--exclude", "13", "--exclude-file",
                 str(tmp_path / "stock.txt"), "--json", "-q"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == ids(rec.recommend("u0", 6, exclude=[5, 9, 13]))
    assert main(["similar", "--index", d, "--item", "3", "4", "-k", "4", "--exclude", "5", "9", "--json", "-q"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[r["item_id"] for r in line["results"]] for line in lines] == \
        [ids(rec.similar(i, 4, exclude=[5, 9])) for i in (3, 4)]
    assert main(["recommend", "--index", d, "--user", "u0", "--exclude-file", str(tmp_path / "missing.txt"), "-q"]) == 1
    assert f"--exclude-file {tmp_path / 'missing.txt'}: cannot read it" in capsys.readouterr().err
    (tmp_path / "u16.txt").write_text("13\n", encoding="utf-16")  # Notepad's "Unicode"
    assert main(["recommend", "--index", d, "--user", "u0", "--only-file", str(tmp_path / "u16.txt"), "-q"]) == 1
    assert f"--only-file {tmp_path / 'u16.txt'}: line 1 (byte 0) holds byte 0xff, which is not UTF-8: save the file " \
           "as UTF-8" in capsys.readouterr().err


def test_a_single_id_is_one_id_and_unknown_ones_are_counted(rec, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="mmrec.item_index"):
        assert rec.items.excluded_ids("19") == {19} and rec.items.excluded_ids(19) == {19}
        assert ids(rec.similar(3, 31, exclude="19")) == [i for i in ids(rec.similar(3, 31)) if i != 19]
        assert rec.items.excluded_ids(["7", "nope", "7,9"]) == {7}
        assert rec.items.excluded_ids(b"19") == {19} and rec.items.excluded_ids([True]) == set()
    assert "2 of the 3 excluded ids are not in this index (ignored)" in caplog.text
    found, _ = rec.items.index.search(rec.items.vectors[:1], 31, exclude_all=19)  # one id
    assert 19 not in found[0] and len(found[0]) == 31
