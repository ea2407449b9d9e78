"""``only`` / ``--only`` / ``--where``: candidate restriction (a category, a region's stock) on every
query kind, checked against the full ranking filtered by hand, exact and approximate."""
from __future__ import annotations

import json
import logging
import urllib.parse

import numpy as np
import pytest

from mmrec.cli import main
from mmrec.config import TrainConfig
from mmrec.errors import ConfigError
from mmrec.item_index import ItemIndex
from mmrec.pipeline import fit
from mmrec.recommender import Recommender
from tests.mmrec.conftest import write_planted
from tests.mmrec.test_server import dicts, get, serving

FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, epochs=4, patience=4, reg=1e-4, seed=0)
GENRES = ["Comedy", "Drama|Comedy", "Drama", "Horror | Drama"]  # item i has GENRES[i % 4]
SHOPS = ["north", "south", "North"]  # item i is in SHOPS[i % 3]; case counts


@pytest.fixture(scope="module", params=["Flat", "HNSW8"])
def rec(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("candidates")
    inter, feats = write_planted(d)
    rows = [f"{i},Film {i},{GENRES[i % 4]},{SHOPS[i % 3]},{1980 + i}" for i in range(32)]
    (d / "items.csv").write_text("item_id,title,genres,shop,year\n" + "\n".join(rows) + "\n")
    fit(inter, catalog=d / "items.csv", features={"content": feats}, text_encoder="none", image_encoder="none",
        out=d / "model", config=TrainConfig(**FAST), split="random", factory=request.param, show_progress=False)
    return Recommender.load(d / "model", show_progress=False)


def ids(results) -> list:
    return [r.item_id for r in results]


def test_matching_reads_display_fields_and_separated_values(rec, caplog):
    items = rec.items
    with caplog.at_level("WARNING", logger="mmrec.item_index"):
        assert items.matching({"genres": "comedy"}) == []
    assert "genres=comedy matches no item (case counts): the field holds 'Comedy'" in caplog.text
    comedy = [i for i in range(32) if i % 4 in (0, 1)]
    assert items.matching({"genres": "Comedy"}) == comedy  # "Comedy" and "Drama|Comedy", in index order
    assert items.matching({"genres": ["Horror", "Comedy"]}) == [i for i in range(32) if i % 4 != 2]
    assert items.matching({"genres": " Drama "}) == [i for i in range(32) if i % 4 != 0]  # spaces ignored
    assert items.matching({"shop": "north"}) == [i for i in range(32) if i % 3 == 0]  # not "North"
    assert items.matching({"shop": "north", "genres": "Drama"}) == [i for i in range(32) if i % 3 == 0 and i % 4]
    assert items.matching({"genres": "Western"}) == []
    with pytest.raises(ConfigError, match="field 'genre' is not a display field of this index; its fields are: "
                                          "genres, shop, title, year"):
        items.matching({"genre": "Comedy"})
    with pytest.raises(ConfigError, match="field 'genres' was given no value to match"):
        items.matching({"genres": []})
    assert items.matching({"genres": ""}) == items.matching({"genres": [" "]}) == []  # every item has genres
    assert items.matching({"shop": ("north",)}) == items.matching({"shop": "north"})


def test_only_keeps_the_candidates_on_every_query_kind(rec):
    # The oracle: the full ranking (every item, nothing cut), less what is not a candidate, first k.
    only = [1, "2", 5, 6, 9, 13, 14, 17, 21, 22, 25, 30, "not-an-item"]  # "2" as typed on a command line
    keep = {1, 2, 5, 6, 9, 13, 14, 17, 21, 22, 25, 30}
    n = len(rec.items)
    for user in rec.user_ids[:6]:
        full = ids(rec.recommend(user, n))
        assert ids(rec.recommend(user, 5, only=only)) == [i for i in full if i in keep][:5]
        assert ids(rec.recommend(user, 5, only=only, exclude=[5, 6])) == [i for i in full if i in keep - {5, 6}][:5]
        every = ids(rec.recommend(user, n, exclude_known=False))
        assert ids(rec.recommend(user, n, exclude_known=False, only=only)) == [i for i in every if i in keep]
    # Every candidate left comes back, no more.
    assert len(rec.recommend("u0", n, only=only)) == len(keep - set(rec.known_items("u0")))
    many = rec.recommend_many(rec.user_ids[:6], 4, only=only)
    assert [ids(r) for r in many] == [ids(rec.recommend(u, 4, only=only)) for u in rec.user_ids[:6]]
    for by in ("index", "cosine"):
        full = ids(rec.similar(3, n, by=by))
        assert ids(rec.similar(3, 6, by=by, only=only)) == [i for i in full if i in keep][:6]
        assert ids(rec.similar(5, n, by=by, only=only)) == [i for i in ids(rec.similar(5, n, by=by)) if i in keep]
        assert [ids(r) for r in rec.similar_many([3, 4], 6, by=by, only=only, exclude=[9])] == \
            [ids(rec.similar(i, 6, by=by, only=only, exclude=[9])) for i in (3, 4)]
    every = ids(rec.recommend_history([0, 4], n, exclude_history=False))
    assert ids(rec.recommend_history([0, 4], 6, exclude_history=False, only=only)) == [i for i in every if i in keep][:6]
    assert ids(rec.recommend_history([0, 4], 6, diversity=0.5, only=only)) and \
        set(ids(rec.recommend_history([0, 4], 6, diversity=0.5, only=only))) <= keep
    assert set(ids(rec.recommend("u1", 6, diversity=0.5, only=only))) <= keep
    # Nothing allowed: nothing back (not an error); a single id is one id.
    assert rec.recommend("u0", 5, only=[]) == [] and rec.similar(3, 5, only=["nope"]) == []
    assert ids(rec.similar(3, 5, only="21")) == [21]


def test_text_and_image_query_vectors_keep_the_candidates(rec):
    # Trained directories rank query vectors by an exact cosine scan; content indexes by FAISS.
    q = rec.items.query_vector("content", np.eye(4, dtype=np.float32)[:1])
    full = ids(rec.items._search_queries([q], 32)[0])
    assert ids(rec.items._search_queries([q], 5, [8], [0, 4, 8, 12, 16, 20, 3])[0]) == \
        [i for i in full if i in {0, 4, 12, 16, 20, 3}][:5]
    feats = np.eye(4, dtype=np.float32)[np.arange(32) % 4] + 0.01 * np.arange(32)[:, None]
    content = ItemIndex.from_features(list(range(32)), {"content": feats.astype(np.float32)}, factory="Flat",
                                      show_progress=False)
    q = content.query_vector("content", feats[:1])
    full = ids(content._search_queries([q], 32)[0])
    assert ids(content._search_queries([q], 3, [], ["4", 8, 5, 9])[0]) == [i for i in full if i in {4, 8, 5, 9}][:3]


def test_cli_only_only_file_and_where(rec, tmp_path, capsys, caplog):
    d = str(rec.items.directory)
    (tmp_path / "stock.txt").write_text("\ufeff5\n\n9\n13\n", encoding="utf-8")
    assert main(["recommend", "--index", d, "--user", "u0", "-k", "3", "--only", "1", "2", "--only-file",
                 str(tmp_path / "stock.txt"), "--json", "-q"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == ids(rec.recommend("u0", 3, only=[1, 2, 5, 9, 13]))
    # --where fields combine (AND), its values alternate (OR), --only narrows it.
    comedy_north = rec.items.matching({"genres": ["Comedy", "Horror"], "shop": "north"})
    assert main(["similar", "--index", d, "--item", "3", "4", "-k", "4", "--where", "genres=Comedy",
                 "--where", "genres=Horror", "--where", "shop=north", "--json", "-q"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[r["item_id"] for r in line["results"]] for line in lines] == \
        [ids(rec.similar(i, 4, only=comedy_north)) for i in (3, 4)]
    later = rec.items.matching(["genres!=Horror", "year>=1995", "year<2005"])
    assert later == [i for i in range(15, 25) if i % 4 != 3]
    assert main(["recommend", "--index", d, "--user", "u2", "-k", "4", "--where", "genres!=Horror", "--where",
                 "year>=1995", "--where", "year<2005", "--json", "-q"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == ids(rec.recommend("u2", 4, only=later))
    assert main(["recommend", "--index", d, "--all-users", "-k", "2", "--where", "genres=Comedy", "--only", "0", "1",
                 "4", "--exclude", "4", "--json", "-q"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[r["item_id"] for r in line["results"]] for line in lines] == \
        [ids(r) for r in rec.recommend_many(rec.user_ids, 2, only=[0, 1], exclude=[4])]
    with caplog.at_level(logging.WARNING, logger="mmrec"):
        assert main(["recommend", "--index", d, "--user", "u0", "--where", "genres=Western", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert "no item of the index is a candidate (genres=Western): nothing to return" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmrec"):
        assert main(["similar", "--index", d, "--item", "3", "--where", "genres=Western", "--where", "genres=Noir",
                     "--where", "shop=north", "--json"]) == 0
    assert "(genres=Western or genres=Noir and shop=north)" in caplog.text
    assert main(["recommend", "--index", d, "--user", "u0", "--where", "year> =1990", "-q"]) == 1  # as written
    assert "condition 'year> =1990': '=1990' is not a number" in capsys.readouterr().err
    assert main(["recommend", "--index", d, "--user", "u0", "--where", "genre=Comedy", "-q"]) == 1
    assert "field 'genre' is not a display field of this index" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # malformed: a usage error
        main(["recommend", "--index", d, "--user", "u0", "--where", "genres"])
    assert stop.value.code == 2 and "expected FIELD=VALUE, FIELD!=VALUE or FIELD>=N (>, <=, <), got 'genres'" in \
        capsys.readouterr().err
    assert main(["similar", "--index", d, "--item", "3", "--only-file", str(tmp_path / "missing.txt"), "-q"]) == 1
    assert f"--only-file {tmp_path / 'missing.txt'}: cannot read it" in capsys.readouterr().err


def test_server_only_and_where(rec):
    where = urllib.parse.quote("genres=Comedy")
    comedy = rec.items.matching({"genres": "Comedy"})
    with serving(rec) as url:
        cases = [
            (f"/recommend?user=u3&k=4&where={where}", rec.recommend("u3", 4, only=comedy)),
            (f"/recommend?user=u3&k=4&where={where}&only=0&only=1&only=2&only=99", rec.recommend("u3", 4, only=[0, 1])),
            ("/similar?item=3&k=3&only=5&only=9&only=13&exclude=9", rec.similar(3, 3, only=[5, 13])),
            (f"/history?item=0&k=3&where={where}", rec.recommend_history([0], 3, only=comedy)),
            ("/recommend?user=u3&k=4&only=", []),
            (f"/similar?item=3&k=3&where={urllib.parse.quote('year>2000')}&where={urllib.parse.quote('genres!=Drama')}",
             rec.similar(3, 3, only=rec.items.matching(["year>2000", "genres!=Drama"]))),
        ]
        for path, want in cases:
            extra = {"ignored": []} if path.startswith("/history") else {}
            extra |= {"ignored_only": ["99"] if "only=99" in path else []} if "only=" in path else {}
            extra |= {"ignored_exclude": []} if "exclude=" in path else {}
            assert get(url + path) == (200, {"results": dicts(want)} | extra), path
        status, body = get(f"{url}/recommend?user=u3&where=genres")
        assert status == 400 and "'where' must be FIELD=VALUE, FIELD!=VALUE or FIELD>=N" in body["error"]
        status, body = get(f"{url}/similar?item=3&where={urllib.parse.quote('genre=x')}")
        assert status == 400 and "field 'genre' is not a display field" in body["error"]


def test_matching_follows_adds_and_removes():
    feats = np.eye(3, dtype=np.float32)
    idx = ItemIndex.from_features(["a", "b", "c"], {"text": feats},
                                  records=[{"genres": "x|y"}, {"genres": "y"}, {"genres": "z"}], factory="Flat",
                                  show_progress=False)
    assert idx.matching({"genres": "y"}) == ["a", "b"] and idx.matching({"genres": "x|y"}) == ["a"]
    idx.matching({"genres": "y"}).append("zz")  # the answer is kept for the next call: never the caller's list
    assert idx.matching({"genres": "y"}) == ["a", "b"] == idx.matching(["genres=y"])
    idx.add_features(["d"], {"text": np.ones((1, 3), np.float32)}, {"text": np.ones(1, bool)}, [{"genres": "y | z"}])
    assert idx.matching({"genres": "y"}) == ["a", "b", "d"] and idx.matching({"genres": ["z"]}) == ["c", "d"]
    idx.remove(["a"])
    assert idx.matching({"genres": "y"}) == ["b", "d"]
    assert ids(idx.similar("b", 5, only=idx.matching({"genres": "z"}))) == [i for i in ids(idx.similar("b", 5))
                                                                          if i in {"c", "d"}]


def test_a_number_is_one_value_matched_by_its_text():
    idx = ItemIndex.from_features(["a", "b", "c"], {"text": np.eye(3, dtype=np.float32)},
                                  records=[{"year": "1995"}, {"year": "1994"}, {"year": "1995"}], factory="Flat",
                                  show_progress=False)
    assert idx.matching({"year": 1995}) == ["a", "c"] == idx.matching({"year": [1995]})


def test_values_and_conditions_come_in_any_collection():
    import pandas as pd

    idx = ItemIndex.from_features(list("abcd"), {"text": np.eye(4, dtype=np.float32)}, factory="Flat",
                                  records=[{"g": "A", "year": "1990"}, {"g": "B", "year": "1991"},
                                           {"g": "C", "year": "1992"}, {"g": "A|C", "year": "1999"}],
                                  show_progress=False)
    # an array, a Series, a range or a generator of values: each member a value (the whole was one text: [])
    for values in (np.array(["A", "B"]), pd.Series(["A", "B"]), pd.Index(["A", "B"]), (v for v in "AB"), {"A": 1, "B": 2}.keys()):
        assert idx.matching({"g": values}) == ["a", "b", "d"], type(values)
    assert idx.matching({"year": range(1990, 1992)}) == ["a", "b"] == idx.matching({"year": np.arange(1990, 1992)})
    assert idx.matching({"g": np.array("C")}) == ["c", "d"]  # a 0-d array: one value
    rated = ItemIndex.from_features(list("xy"), {"text": np.eye(2, dtype=np.float32)}, factory="Flat",
                                    records=[{"r": "4.1"}, {"r": "3.5"}], show_progress=False)
    for values in ([np.float32(4.1)], np.array([4.1], np.float32), pd.Series([4.1], dtype="float32"), np.float32(4.1)):
        assert rated.matching({"r": values}) == ["x"], values  # float32 as the catalog writes it, not 4.0999999
    # conditions as an array or a Series in filters / candidate_ids (a bare "truth value ... ambiguous" before)
    assert idx.candidate_ids(None, np.array(["g=A", "year>=1995"])) == {"d"}
    assert idx.filters((), None, pd.Series(["g=B"]))[1] == {"b"}
    assert idx.candidate_ids(None, np.array([], dtype=str)) is None  # no condition: every item, as []
    for bad in (None, 5):
        with pytest.raises(ConfigError, match=r"where is a FIELD -> value\(s\) mapping or a list of conditions such as "
                                              r"'genres=Comedy', got (NoneType None|int 5)"):
            idx.matching(bad)


def test_where_conditions_not_equal_and_numeric_ranges(caplog):
    from mmrec.item_index import describe_where, split_where

    assert split_where("year>=1990") == ("year", ">=", "1990") and split_where(" genres != Horror ") == \
        ("genres", "!=", "Horror")
    assert split_where("a=b=c") == ("a", "=", "b=c") and split_where("x<3") == ("x", "<", "3")
    assert [split_where(t) for t in ("genres", "=x", "x>=", "x<", "a!b")] == [None] * 5
    assert split_where("x=") == ("x", "=", "") and split_where(" x != ") == ("x", "!=", "")  # the field is empty
    records = [{"genres": "Comedy|Drama", "year": "1995"}, {"genres": "Horror", "year": "1988"},
               {"genres": "Drama", "year": "n/a"}, {"genres": "Comedy", "year": " 2001 "}, {"genres": "", "year": "1990"}]
    idx = ItemIndex.from_features(list("abcde"), {"text": np.eye(5, dtype=np.float32)}, records=records,
                                  factory="Flat", show_progress=False)
    assert idx.matching(["year>=1990"]) == ["a", "d", "e"]  # "n/a" is no number: no comparison holds
    assert "year" not in idx._facets[1]  # compared as a number only: no lookup of its texts was built
    with pytest.raises(ConfigError, match="field 'yr' is not a display field of this index; its fields are: "
                                          "genres, year"):
        idx.matching(["yr>=1990"])
    assert idx.matching(["year>1990", "year<2000"]) == ["a"] and idx.matching(["year<=1990"]) == ["b", "e"]
    # a dict's Python values read as stored cells read: None is the blank cell, True 'true' (str() gave 'None', 'True')
    assert idx.matching({"genres": None}) == idx.matching(["genres="]) == ["e"]
    spelled = ItemIndex.from_features(list("ab"), {"text": np.eye(2, dtype=np.float32)}, show_progress=False,
                                      records=[{"price": "1e2"}, {"price": "100"}], factory="Flat")
    with caplog.at_level("WARNING", logger="mmrec.item_index"):
        assert spelled.matching(["price=1E2"]) == ["a", "b"]  # the same number: it matched, nothing to warn of
    assert "case counts" not in caplog.text  # (it said "price=1E2 matches no item (case counts): ... holds '1e2'")
    # a part of a |-separated field is the same number too, as it is the same text (sizes=1.0 missed '1|2')
    sizes = ItemIndex.from_features(list("abcd"), {"text": np.eye(4, dtype=np.float32)}, show_progress=False,
                                    records=[{"sizes": "1|2"}, {"sizes": " 1.0 | 3"}, {"sizes": "12"}, {"sizes": "1x|2"}],
                                    factory="Flat")
    assert sizes.matching(["sizes=1.0"]) == sizes.matching(["sizes=1"]) == ["a", "b"]
    assert sizes.matching(["sizes=2e0"]) == ["a", "d"] and sizes.matching(["sizes!=1"]) == ["c", "d"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmrec.item_index"):  # = then a comparison's sign: the text '>1990'
        assert idx.matching(["year=>1990"]) == [] and idx.matching(["year=<1990"]) == []
        assert idx.matching(["year==1995"]) == []
    assert ("year=>1990 compares the text '>1990', which no item has: year>=1990 compares numbers" in caplog.text
            and "year<=1990 compares numbers" in caplog.text and "year=1995 compares numbers" in caplog.text)
    caplog.clear()
    marks = ItemIndex.from_features(list("ab"), {"text": np.eye(2, dtype=np.float32)}, show_progress=False,
                                    records=[{"grade": ">5"}, {"grade": "5"}], factory="Flat")
    with caplog.at_level("WARNING", logger="mmrec.item_index"):
        assert marks.matching(["grade=>5"]) == ["a"] and marks.matching(["grade=>x"]) == []
    assert "compares" not in caplog.text  # an item holds '>5'; '>x' is no number to compare
    flags = ItemIndex.from_features(list("ab"), {"text": np.eye(2, dtype=np.float32)}, show_progress=False,
                                    records=[{"in_stock": "true"}, {"in_stock": "false"}], factory="Flat")
    assert flags.matching({"in_stock": True}) == ["a"] and flags.matching({"in_stock": [False, True]}) == ["a", "b"]
    assert idx.matching(["genres!=Comedy"]) == ["b", "c", "e"]  # a |-separated part counts, as for =
    assert idx.matching(["genres=Comedy", "genres=Horror", "year<2000"]) == ["a", "b"]  # = values alternate
    assert idx.matching(["genres!=Drama", "genres!=Horror"]) == ["d", "e"]
    assert idx.matching("genres=Drama") == ["a", "c"] == idx.matching({"genres": "Drama"})
    # = also reads as a number (as the comparisons do); an empty value is the items without the field
    assert idx.matching(["year=2001.0"]) == ["d"] == idx.matching(["year=2001"]) == idx.matching({"year": 2001.0})
    assert idx.matching(["year=1995", "year=1e3"]) == ["a"] and idx.matching(["year!=1990.00"]) == ["a", "b", "c", "d"]
    assert idx.matching(["year=n/a"]) == ["c"] and idx.matching(["genres="]) == ["e"] == idx.matching({"genres": ""})
    assert idx.matching(["genres!="]) == ["a", "b", "c", "d"]
    sparse = ItemIndex.from_features(list("pqrst"), {"text": np.eye(5, dtype=np.float32)}, factory="Flat",
                                     records=[{"price": "10"}, {}, {"price": " "}, {"price": "x|"}, {"price": "0010"}],
                                     show_progress=False)
    assert sparse.matching(["price="]) == ["q", "r"]  # missing or blank; "x|" is "x", not also empty
    assert sparse.matching(["price=10"]) == ["p", "t"] and sparse.matching(["price=x"]) == ["s"]
    # = compares the exact numbers written: long ids that float64 would merge stay apart
    skus = ItemIndex.from_features(list("abcd"), {"text": np.eye(4, dtype=np.float32)}, factory="Flat", records=[
        {"sku": "12345678901234567890"}, {"sku": "12345678901234567891"}, {"sku": "1e400"}, {"sku": "5e999"}],
        show_progress=False)
    assert skus.matching(["sku=12345678901234567890"]) == ["a"] and skus.matching(["sku=1.2345678901234567891e19"]) == ["b"]
    assert skus.matching(["sku!=12345678901234567890"]) == ["b", "c", "d"] and skus.matching(["sku=10e399"]) == ["c"]
    # an exponent past Decimal's range is text only, on either side (an InvalidOperation, a 500, before)
    huge = ItemIndex.from_features(list("ab"), {"text": np.eye(2, dtype=np.float32)}, factory="Flat",
                                   records=[{"p": "1e9999999999999999999"}, {"p": "5"}], show_progress=False)
    assert huge.matching(["p=5"]) == ["b"] and huge.matching(["p=1e9999999999999999999"]) == ["a"]
    assert huge.matching(["p=2e9999999999999999999"]) == [] and huge.matching(["p!=5.0"]) == ["a"]
    for bound in ("abc", "nan", "inf", "1_990", " =3"):  # decimal notation only: "y> =3" is no y>=3
        with pytest.raises(ConfigError, match=rf"condition 'year>{bound}': '{bound.strip()}' is not a number"):
            idx.matching([f"year>{bound}"])
    odd = ItemIndex.from_features(list("pqrs"), {"text": np.eye(4, dtype=np.float32)}, factory="Flat",
                                  records=[{"n": "inf"}, {"n": "1e3"}, {"n": "-0"}, {"n": "1_000"}], show_progress=False)
    assert odd.matching(["n>=-1"]) == ["q", "r"]  # "inf" and "1_000" are no numbers in a field either
    with pytest.raises(ConfigError, match=r"condition 'year' is not FIELD=VALUE"):
        idx.matching(["year"])
    assert describe_where([("g", "=", "A"), ("y", ">=", "1990"), ("g", "=", "B"), ("y", ">=", "1990")]) == \
        "g=A or g=B and y>=1990"


def test_kept_matching_answers_are_bounded_by_the_catalog_size():
    n = 50
    idx = ItemIndex.from_features([f"i{k}" for k in range(n)], {"text": np.eye(n, dtype=np.float32)},
                                  records=[{"price": str(k)} for k in range(n)], factory="Flat", show_progress=False)
    for bound in range(n):  # 50 distinct filters of up to 50 ids each
        assert idx.matching([f"price>={bound}"]) == [f"i{k}" for k in range(bound, n)]
    kept = idx._facets[3]
    assert 0 < sum(len(ids) + 1 for ids, _ in kept.values()) <= 4 * n
    assert ("price", ">=", "49") in {c for key in kept for c in key}
    for bound in range(1000, 1400):  # filters that match nothing still count: at most 256 are kept
        assert idx.matching([f"price>={bound}"]) == []
    kept = idx._facets[3]
    assert 0 < len(kept) <= 4 * n and sum(len(ids) + 1 for ids, _ in kept.values()) <= 4 * n
    for bound in range(n):  # a set made of an answer counts its ids again
        assert len(idx.candidate_ids(None, [f"price>={bound}"])) == n - bound
    kept = idx._facets[3]
    assert sum(len(ids) * (1 + (made is not None)) + 1 for ids, made in kept.values()) <= 4 * n
    with pytest.raises(ConfigError, match="not a display field"):  # a field of another type is named, not sorted
        idx.matching({"price": "1", 7: "x"})


@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF4,Flat"])
def test_a_where_set_is_kept_and_its_faiss_labels_follow_changes(factory):
    # A server's repeated --where: one set object, whose FAISS labels and selector are made once
    # per version of the items; after a change the same set (or a stale one) still answers right.
    from mmrec.item_index import CandidateSet

    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, 8)).astype(np.float32)
    records = [{"colour": "red" if k % 3 == 0 else "blue"} for k in range(n)]
    idx = ItemIndex.from_features(list(range(n)), {"v": x}, records=records, factory=factory, show_progress=False)
    if factory.startswith("IVF"):
        idx.index.nprobe = 4  # every list: exact, so the oracle below is the exact ranking

    def oracle(query_row, allowed, k=5, exclude=()):
        unit = idx.vectors / np.linalg.norm(idx.vectors, axis=1, keepdims=True)
        q = idx.vectorizer.item_query(idx.vectors[[query_row]])[0]
        scores = unit @ (q / np.linalg.norm(q))
        rows = [r for r in np.argsort(-scores, kind="stable") if idx.ids[r] in allowed
                and idx.ids[r] not in exclude and r != query_row]
        return [idx.ids[r] for r in rows[:k]]

    red = idx.candidate_ids(None, ["colour=red"])
    assert type(red) is CandidateSet and red == {k for k in range(n) if k % 3 == 0}
    assert idx.candidate_ids(None, ["colour=red"]) is red and idx.excluded_ids(red) is red
    for q in range(4):
        got = [r.item_id for r in idx.similar(q, 5, only=red)]
        assert got == oracle(q, red)
        assert idx.index._only_memo[0] is red  # made once, used again
    made = idx.index._only_memo[3]
    assert [r.item_id for r in idx.similar(1, 5, only=red)] == oracle(1, red) and idx.index._only_memo[3] is made
    # exclude_all beside it: labels made for that query alone, the kept ones untouched
    assert [r.item_id for r in idx.similar(1, 5, only=red, exclude=[0, 3])] == oracle(1, red, exclude={0, 3})
    assert idx.index._only_memo[3] is made
    # A removed red item: the stale set is resolved again (never returned), and so are the labels.
    idx.remove([0, 3, 6])
    assert idx.candidate_ids(None, ["colour=red"]) is not red
    assert idx.excluded_ids(red) == red - {0, 3, 6}
    for q in (1, 2):
        row = idx._pos[q]
        got = [r.item_id for r in idx.similar(q, 5, only=red)]
        assert got == oracle(row, red - {0, 3, 6}) and not {0, 3, 6} & set(got)
    # A frozenset given to the FAISS index itself is kept by identity too: an id added later joins it.
    mine, query = frozenset({3, 9, 12}), idx.similar_queries(np.array([idx._pos[1]]))[0]
    assert sorted(idx.index.search(query, 3, only=mine)[0][0]) == [9, 12] and idx.index._only_memo[0] is mine
    # Added back with another vector: the new labels count (FAISS labels differ from before).
    idx.add_features([3], {"v": x[[1]] * 2}, {"v": np.ones(1, bool)}, [{"colour": "red"}], save=False)
    assert idx.index.search(query, 1, only=mine)[0] == [[3]]
    red2 = idx.candidate_ids(None, ["colour=red"])
    assert 3 in red2 and [r.item_id for r in idx.similar(1, 1, only=red2)] == [3]
    assert [r.item_id for r in idx.similar(1, 1, only=red2)] == [3]  # the kept labels again
