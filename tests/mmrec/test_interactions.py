from __future__ import annotations

import decimal
import gzip
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrec.errors import ConfigError, DataError, MMRecError
from mmrec.ids import normalize_ids
from mmrec.interactions import Interactions, UnknownIdError, check_columns, load_interactions

DATA = Path(__file__).parents[2].parent / "shared" / "data"

HEADER = ["user_id", "item_id", "rating", "timestamp", "split"]
ROWS = [
    ["7", "30", "5", "100", "train"],
    ["7", "10", "3", "105", "train"],
    ["2", "10", "4", "99", "valid"],
    ["7", "30", "1", "200", "test"],  # duplicate of row 1: kept once (row 1 wins)
    ["2", "20", "2.5", "101", "test"],
    ["11", "30", "4", "50", "train"],
]


def write(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    """Write rows as CSV / TSV (by extension, .gz compressed) or Parquet (all-text columns)."""
    if path.suffix == ".parquet":
        pq.write_table(pa.table({h: [r[k] for r in rows] for k, h in enumerate(header)}), path)
        return path
    sep = "\t" if ".tsv" in path.suffixes else ","
    text = "\n".join(sep.join(r) for r in [header] + rows) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def fields(inter: Interactions) -> dict:
    report = {k: v for k, v in inter.report.items() if k != "path"}
    return {
        "user_ids": inter.user_ids,
        "item_ids": inter.item_ids,
        "types": [type(x) for x in inter.user_ids + inter.item_ids],
        "users": inter.users.tolist(),
        "items": inter.items.tolist(),
        "ratings": inter.ratings.tolist(),
        "timestamps": inter.timestamps.tolist(),
        "split": inter.split.tolist(),
        "report": report,
    }


def test_load_exact_contents(tmp_path: Path) -> None:
    inter = load_interactions(write(tmp_path / "i.csv", ROWS))
    assert inter.user_ids == [2, 7, 11]  # integer ids, sorted numerically (not "11" < "2")
    assert inter.item_ids == [10, 20, 30]
    assert inter.users.tolist() == [1, 1, 0, 0, 2]  # file order, duplicate row 4 dropped
    assert inter.items.tolist() == [2, 0, 0, 1, 2]
    assert inter.ratings.tolist() == [5.0, 3.0, 4.0, 2.5, 4.0]
    assert inter.timestamps.tolist() == [100.0, 105.0, 99.0, 101.0, 50.0]
    assert inter.split.tolist() == [0, 0, 1, 2, 0]
    assert inter.users.dtype == np.int64 and inter.split.dtype == np.int8
    assert inter.report["duplicates"] == 1 and inter.report["rows"] == 6 and inter.report["invalid"] == 0
    split = "split={'train': 3, 'valid': 1, 'test': 1}"
    assert repr(inter) == f"Interactions(users=3, items=3, interactions=5, {split})"


def test_csv_tsv_parquet_and_gzip_give_identical_interactions(tmp_path: Path) -> None:
    ref = fields(load_interactions(write(tmp_path / "i.csv", ROWS)))
    for name in ("i.tsv", "i.parquet", "i.csv.gz", "i.tsv.gz"):
        assert fields(load_interactions(write(tmp_path / name, ROWS))) == ref, name


def test_parquet_with_typed_columns_matches_csv(tmp_path: Path) -> None:
    table = pa.table(
        {
            "user_id": [7, 7, 2, 7, 2, 11],
            "item_id": [30, 10, 10, 30, 20, 30],
            "rating": [5.0, 3.0, 4.0, 1.0, 2.5, 4.0],
            "timestamp": [100, 105, 99, 200, 101, 50],
            "split": pa.array(["train", "train", "valid", "test", "test", "train"]).dictionary_encode(),
        }
    )
    pq.write_table(table, tmp_path / "typed.parquet")
    got = fields(load_interactions(tmp_path / "typed.parquet"))
    assert got == fields(load_interactions(write(tmp_path / "i.csv", ROWS)))
    # decimal ids holding integers are those integers, as float ones are (a decimal(5, 1) 7.0 read "7.0")
    decimals = table.set_column(0, "user_id", pa.array([decimal.Decimal(u) for u in table["user_id"].to_pylist()],
                                                       pa.decimal128(5, 1)))
    pq.write_table(decimals, tmp_path / "decimal.parquet")
    assert fields(load_interactions(tmp_path / "decimal.parquet")) == got


def test_a_parquet_float_id_that_is_infinite_is_refused_by_row(tmp_path: Path) -> None:
    # it read as the id "inf" (and turned the column's ids into text); NaN is a missing value, as pandas writes one
    table = pa.table({"user_id": [1.0, math.inf, -math.inf, math.nan], "item_id": [1, 2, 3, 4]})
    pq.write_table(table, tmp_path / "u.parquet")
    with pytest.raises(DataError) as e:
        load_interactions(tmp_path / "u.parquet")
    assert [str(p) for p in e.value.problems] == [
        "row 2, field 'user_id': not a finite number: inf", "row 3, field 'user_id': not a finite number: -inf",
        "row 4, field 'user_id': missing value"]
    assert load_interactions(tmp_path / "u.parquet", on_invalid="skip").user_ids == [1]


def test_float32_parquet_ratings_meet_a_threshold_as_the_csv_does(tmp_path: Path) -> None:
    # widened to float64 first, 4.1 read 4.099999904632568 and fell below a threshold of 4.1
    rows = {"user_id": ["u1", "u2", "u3"], "item_id": ["a", "b", "c"], "rating": [4.1, 3.7, 4.6]}
    write(tmp_path / "r.csv", [[u, i, str(r), "1", "train"] for u, i, r in zip(*rows.values())])
    for kind in ("float32", "float16", "float64"):
        pq.write_table(pa.table(rows | {"rating": pa.array(rows["rating"], type=getattr(pa, kind)())}),
                       tmp_path / f"r_{kind}.parquet")
        for name in (f"r_{kind}.parquet", "r.csv"):
            inter = load_interactions(tmp_path / name, rating_threshold=4.1)
            assert inter.user_ids == ["u1", "u3"] and inter.ratings.tolist() == [4.1, 4.6], (kind, name)


def test_string_ids_keep_leading_zeros(tmp_path: Path) -> None:
    rows = [["u1", "007", "1", "1", "train"], ["u2", "12", "1", "1", "train"], ["u1", "12", "1", "1", "test"]]
    inter = load_interactions(write(tmp_path / "s.csv", rows))
    assert inter.user_ids == ["u1", "u2"]
    assert inter.item_ids == ["007", "12"]  # one non-canonical id keeps the whole column text
    assert inter.item_ids == sorted(normalize_ids(["007", "12"]))  # the same rule as catalogs
    assert inter.item_index("007") == 0 and inter.item_index(12) == 1  # matched by str()
    with pytest.raises(UnknownIdError, match="unknown item id 7: not in the item space"):
        inter.item_index(7)


def test_minus_zero_is_not_the_integer_zero(tmp_path: Path) -> None:
    # "-0" and "0" would collide as int 0 (one user unreachable): such a column stays text.
    assert normalize_ids(["0", "-0", "5"]) == ["0", "-0", "5"]
    assert normalize_ids(["0", "-5", "5"]) == [0, -5, 5]
    rows = [["0", "5", "1", "1", "train"], ["-0", "6", "1", "1", "train"], ["0", "7", "1", "1", "test"]]
    inter = load_interactions(write(tmp_path / "z.csv", rows))
    assert inter.user_ids == ["-0", "0"]
    assert inter.user_index("0") == 1 and inter.user_index("-0") == 0


def test_header_names_with_spaces_around_them(tmp_path: Path) -> None:
    # "user_id, item_id, rating" (a space after each comma) reads as the plain names.
    (tmp_path / "s.csv").write_text("user_id, item_id , rating\nu1, 5, 4\nu2,6,3\n")
    inter = load_interactions(tmp_path / "s.csv")
    assert inter.user_ids == ["u1", "u2"] and inter.item_ids == [5, 6]
    assert inter.ratings.tolist() == [4.0, 3.0]


def test_catalog_item_space_and_cold_items(tmp_path: Path) -> None:
    catalog = [30, 99, 10, 20]  # catalog order; item 99 has no interactions
    inter = load_interactions(write(tmp_path / "i.csv", ROWS), item_ids=catalog)
    assert inter.item_ids == catalog
    assert inter.items.tolist() == [0, 2, 2, 3, 0]
    assert inter.report["cold_items"] == 1
    assert inter.user_items("all").shape == (3, 4)
    str_catalog = ["30", "99", "10", "20"]  # str ids match the file's int ids by str()
    by_str = load_interactions(write(tmp_path / "i.csv", ROWS), item_ids=str_catalog)
    assert by_str.items.tolist() == [0, 2, 2, 3, 0]


def test_user_and_item_lookup(tmp_path: Path) -> None:
    inter = load_interactions(write(tmp_path / "i.csv", ROWS))
    assert inter.user_index(11) == 2 and inter.user_index("11") == 2 and inter.item_index(20) == 1
    with pytest.raises(UnknownIdError) as err:
        inter.user_index(5)
    assert str(err.value) == "unknown user id 5: no interactions for this user"
    assert isinstance(err.value, KeyError) and isinstance(err.value, MMRecError)


def test_rating_threshold(tmp_path: Path) -> None:
    inter = load_interactions(write(tmp_path / "i.csv", ROWS), rating_threshold=4)
    # Kept: rows 1 (5), 3 (4), 6 (4); row 4 (rating 1) is below threshold, not a duplicate.
    assert inter.ratings.tolist() == [5.0, 4.0, 4.0]
    assert inter.user_ids == [2, 7, 11] and inter.item_ids == [10, 30]
    assert inter.report["below_threshold"] == 3 and inter.report["duplicates"] == 0
    with pytest.raises(DataError, match="no interactions left"):
        load_interactions(write(tmp_path / "i.csv", ROWS), rating_threshold=10)
    with pytest.raises(DataError, match="field 'rating': rating_threshold is set but the file has no rating col"):
        load_interactions(write(tmp_path / "n.csv", [r[:2] for r in ROWS], HEADER[:2]), rating_threshold=3)
    for threshold in (float("nan"), float("inf")):  # NaN compares False: it would keep every row
        with pytest.raises(ConfigError, match=rf"the rating threshold must be a finite number, got {threshold}"):
            load_interactions(write(tmp_path / "i.csv", ROWS), rating_threshold=threshold)


def test_optional_columns_absent(tmp_path: Path) -> None:
    inter = load_interactions(write(tmp_path / "n.csv", [r[:2] for r in ROWS], HEADER[:2]))
    assert inter.ratings is None and inter.timestamps is None and inter.split is None
    assert repr(inter) == "Interactions(users=3, items=3, interactions=5)"
    with pytest.raises(ConfigError, match="not split yet"):
        inter.subset("train")


def test_subset_and_user_items(tmp_path: Path) -> None:
    inter = load_interactions(write(tmp_path / "i.csv", ROWS))
    train = inter.subset("train")
    assert train.user_ids == inter.user_ids and train.item_ids == inter.item_ids
    assert train.users.tolist() == [1, 1, 2] and train.items.tolist() == [2, 0, 2]
    m = inter.user_items(["valid", "test"])
    assert m.toarray().tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert inter.item_popularity("train").tolist() == [1, 0, 2]
    with pytest.raises(ConfigError, match="unknown split 'tset'"):
        inter.user_items("tset")


def test_rows_keep_ratings_timestamps_and_may_replace_the_split(tmp_path: Path) -> None:
    inter = load_interactions(write(tmp_path / "i.csv", ROWS))
    keep = np.array([True, False, True, False, True])
    got = inter.rows(keep)
    assert got.user_ids == inter.user_ids and got.item_ids == inter.item_ids
    assert got.users.tolist() == inter.users[keep].tolist() and got.items.tolist() == inter.items[keep].tolist()
    assert got.ratings.tolist() == inter.ratings[keep].tolist()
    assert got.timestamps.tolist() == inter.timestamps[keep].tolist()
    assert got.split.tolist() == inter.split[keep].tolist() and got.report == inter.report
    relabelled = inter.rows(keep, np.array([2, 2, 0, 2, 1], np.int8))
    assert relabelled.split.tolist() == [2, 0, 1]
    assert inter.split.tolist() != [2, 2, 0, 2, 1]  # the original keeps its own split


# -- errors: each names the file, and the row and field where there is one --------------------
def check_error(tmp_path: Path, rows: list[list[str]], expected: list[str], **kwargs) -> DataError:
    path = write(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as err:
        load_interactions(path, **kwargs)
    message = str(err.value)
    for line in expected:
        assert f"{path}: {line}" in message, message
    return err.value


def test_error_non_numeric_rating_and_timestamp(tmp_path: Path) -> None:
    rows = [r[:] for r in ROWS]
    rows[1][2] = "good"
    rows[4][3] = "yesterday"
    rows[5][2] = "nan"
    err = check_error(
        tmp_path,
        rows,
        [
            "row 2, field 'rating': not a finite number: 'good'",
            "row 5, field 'timestamp': not a finite number: 'yesterday'",
            "row 6, field 'rating': not a finite number: 'nan'",
        ],
    )
    assert len(err.problems) == 3


def test_error_unknown_split_and_missing_values(tmp_path: Path) -> None:
    rows = [r[:] for r in ROWS]
    rows[2][4] = "validation"
    rows[3][0] = ""
    rows[4][3] = ""
    check_error(
        tmp_path,
        rows,
        [
            "row 3, field 'split': unknown split 'validation' (expected one of train, valid, test)",
            "row 4, field 'user_id': missing value",
            "row 5, field 'timestamp': missing value",
        ],
    )


def test_error_unknown_catalog_item(tmp_path: Path) -> None:
    expected = ["row 5, field 'item_id': unknown item id '20': not in the catalog"]
    check_error(tmp_path, ROWS, expected, item_ids=[10, 30])


def test_unknown_items_skipped_on_request_and_named_by_item_space(tmp_path: Path) -> None:
    path = write(tmp_path / "i.csv", ROWS)
    inter = load_interactions(path, item_ids=[10, 30], unknown_items="skip")
    assert inter.report["unknown_items"] == 1 and inter.report["invalid"] == 0  # row 5 (item 20)
    assert inter.report["users_only_unknown_items"] == 0  # user 2 keeps row 3
    only_10 = load_interactions(path, item_ids=[10], unknown_items="skip")
    # rows 1, 4, 5, 6 skipped; user 11's one row (6) was item 30, so user 11 drops out
    assert only_10.report["unknown_items"] == 4 and only_10.report["users_only_unknown_items"] == 1
    assert only_10.user_ids == [2, 7]
    # With ratings >= 4 as positives, user 7's one positive row (row 1) is item 30: user 7 drops
    # out because of the skipped items too (row 2, rated 3, would not have kept them).
    rated = load_interactions(path, item_ids=[10], unknown_items="skip", rating_threshold=4)
    assert rated.report["users_only_unknown_items"] == 2 and rated.user_ids == [2]
    assert inter.user_ids == [2, 7, 11] and inter.item_ids == [10, 30]
    # rows 1, 2, 3, 6 in file order (4 duplicates 1, 5 is item 20)
    assert list(zip(inter.users.tolist(), inter.items.tolist())) == [(1, 1), (1, 0), (0, 0), (2, 1)]
    with pytest.raises(DataError, match=r"row 5, field 'item_id': unknown item id '20': not in the index"):
        load_interactions(path, item_ids=[10, 30], item_space="the index")
    with pytest.raises(ConfigError, match="unknown_items must be one of"):
        load_interactions(path, item_ids=[10, 30], unknown_items="drop")
    with pytest.raises(DataError, match="no interactions left"):
        load_interactions(path, item_ids=[99], unknown_items="skip")
    # Only the skippable unknown ids are skipped (items removed since training); others are errors.
    removed = load_interactions(path, item_ids=[10], unknown_items="skip", skippable=[30, 20])
    assert removed.report["unknown_items"] == 4 and removed.user_ids == [2, 7]
    with pytest.raises(DataError) as e:
        load_interactions(path, item_ids=[10], unknown_items="skip", skippable=[30], item_space="the index")
    assert [str(p) for p in e.value.problems] == ["row 5, field 'item_id': unknown item id '20': not in the index"]


def test_error_missing_column_empty_file_no_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "cols.csv", [[r[0], r[2]] for r in ROWS], ["user_id", "rating"])
    expected = r"cols.csv: field 'item_id': required column is missing \(columns found: 'user_id', 'rating'\)"
    with pytest.raises(DataError, match=expected):
        load_interactions(path)
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DataError, match=r"empty.tsv: file is empty \(no header row\)"):
        load_interactions(tmp_path / "empty.tsv")
    (tmp_path / "header.csv").write_text("user_id,item_id\n")
    with pytest.raises(DataError, match="header.csv: file has no data rows"):
        load_interactions(tmp_path / "header.csv")
    with pytest.raises(DataError, match="file not found"):
        load_interactions(tmp_path / "missing.csv")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"unknown file type '.json'"):
        load_interactions(tmp_path / "x.json")


def test_on_invalid_skip_counts_and_reports(tmp_path: Path, caplog) -> None:
    rows = [r[:] for r in ROWS]
    rows[1][2] = "good"
    rows[2][4] = "later"
    with caplog.at_level("WARNING", logger="mmrec.interactions"):
        inter = load_interactions(write(tmp_path / "bad.csv", rows), on_invalid="skip")
    # The warning names the bad rows (up to 3), not only the first.
    assert ("skipped 2 invalid row(s) of 6: row 2, field 'rating': not a finite number: 'good'; row 3, field "
            "'split': unknown split 'later'") in caplog.text
    assert inter.report["invalid"] == 2
    assert inter.report["problems"] == [
        "row 2, field 'rating': not a finite number: 'good'",
        "row 3, field 'split': unknown split 'later' (expected one of train, valid, test)",
    ]
    assert len(inter) == 3 and inter.user_ids == [2, 7, 11]  # rows 1, 5, 6 (4 duplicates 1)
    assert inter.report["users_only_invalid"] == 0
    # a user whose every row is invalid drops out: counted, as one whose rows are all below a threshold
    # (it disappeared without a word); a row with no user id is no user lost
    caplog.clear()
    (tmp_path / "lost.csv").write_text("user_id,item_id,rating\n1,a,5\n2,b,x\n2,c,y\n,d,4\n3,e,4\n")
    with caplog.at_level("WARNING", logger="mmrec.interactions"):
        lost = load_interactions(tmp_path / "lost.csv", on_invalid="skip")
    assert lost.user_ids == [1, 3] and lost.report["users_only_invalid"] == 1
    assert "skipped 3 invalid row(s) of 5 (1 user(s) had no other row): row 2" in caplog.text
    with pytest.raises(ConfigError, match="on_invalid must be one of"):
        load_interactions(write(tmp_path / "bad.csv", rows), on_invalid="ignore")


def test_interactions_constructor_checks() -> None:
    with pytest.raises(ValueError, match=r"items indices must lie in \[0, 2\)"):
        Interactions(user_ids=[0], item_ids=[0, 1], users=[0], items=[2])
    with pytest.raises(ValueError, match="split codes"):
        Interactions(user_ids=[0], item_ids=[0], users=[0], items=[0], split=[3])


def test_amazon_baby_published_counts() -> None:
    path = DATA / "amazon-baby" / "interactions.tsv"
    if not path.is_file():
        pytest.skip(f"real data not present at {path}")
    inter = load_interactions(path)
    assert (inter.num_users, inter.num_items) == (19_445, 7_050)
    assert inter.split_counts() == {"train": 118_551, "valid": 20_559, "test": 21_682}
    assert inter.report["duplicates"] == 0 and inter.report["invalid"] == 0


def test_parquet_date_and_time_columns_are_seconds_since_1970(tmp_path: Path) -> None:
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    stamps = [datetime.datetime(2022, 12, 1), datetime.datetime(2022, 12, 1, 0, 0, 30)]
    pq.write_table(pa.table({"user_id": ["a", "a"], "item_id": ["1", "2"],
                             "timestamp": pa.array(stamps, pa.timestamp("us"))}), tmp_path / "t.parquet")
    assert load_interactions(tmp_path / "t.parquet").timestamps.tolist() == [1669852800.0, 1669852830.0]
    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["1"],
                             "timestamp": pa.array([datetime.date(1970, 1, 2)], pa.date32())}), tmp_path / "d.parquet")
    assert load_interactions(tmp_path / "d.parquet").timestamps.tolist() == [86400.0]
    # Fractions of a second are kept (a safe cast to whole seconds would refuse them).
    fine = [datetime.datetime(2020, 1, 1, 0, 0, 0, 500000), datetime.datetime(2020, 1, 1, 0, 0, 1, 250000)]
    for unit in ("ms", "us", "ns"):
        pq.write_table(pa.table({"user_id": ["a", "a"], "item_id": ["1", "2"],
                                 "timestamp": pa.array(fine, pa.timestamp(unit))}), tmp_path / "f.parquet")
        assert load_interactions(tmp_path / "f.parquet").timestamps.tolist() == [1577836800.5, 1577836801.25]
    # A zone-aware column counts from 1970 UTC.
    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["1"],
                             "timestamp": pa.array([datetime.datetime(1970, 1, 1, 1, 0, 0, 500000)],
                                                   pa.timestamp("ms", tz="UTC"))}), tmp_path / "z.parquet")
    assert load_interactions(tmp_path / "z.parquet").timestamps.tolist() == [3600.5]


def test_interactions_not_in_utf8_are_named_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "i.csv").write_bytes(b"user_id,item_id\nu1,1\nu\xe92,2\n")
    with pytest.raises(DataError, match=r"i.csv: line 3 \(byte 22\) holds byte 0xe9, which is not UTF-8"):
        load_interactions(tmp_path / "i.csv")
    # compressed, the same (it was arrow's "In CSV column #0: ... invalid UTF8 data", no line, a 0-based column)
    import bz2

    (tmp_path / "i.csv.gz").write_bytes(gzip.compress((tmp_path / "i.csv").read_bytes()))
    (tmp_path / "i.tsv.bz2").write_bytes(bz2.compress(b"user_id\titem_id\nu1\t1\nu2\tcaf\xe9\n"))
    for name, byte in (("i.csv.gz", 22), ("i.tsv.bz2", 27)):
        with pytest.raises(DataError, match=fr"{name}: line 3 \(byte {byte} of the decompressed text\) holds byte 0xe9"):
            load_interactions(tmp_path / name)
    # UTF-16 (Notepad's "Unicode"): named as such, not as a header that lacks the user_id column.
    (tmp_path / "u16.tsv").write_text("user_id\titem_id\nu1\t1\n", encoding="utf-16")
    with pytest.raises(DataError, match=r"u16.tsv: line 1 \(byte 0\) holds byte 0xff, which is not UTF-8: save"):
        load_interactions(tmp_path / "u16.tsv")
    (tmp_path / "odd.tsv").write_text("us\ufffdr_id\titem_id\nu1\t1\n")  # UTF-8 that holds a U+FFFD: a column name
    with pytest.raises(DataError, match=r"odd.tsv: field 'user_id': required column is missing \(columns found: "
                                        "'us\ufffdr_id', 'item_id'\\)"):
        load_interactions(tmp_path / "odd.tsv")
    (tmp_path / "le.tsv").write_text("user_id\titem_id\nu1\t1\n", encoding="utf-16-le")  # no byte-order mark
    with pytest.raises(DataError, match=r"le.tsv: the header row is not UTF-8 text \(NUL bytes: UTF-16\?\): save the file as UTF-8"):
        load_interactions(tmp_path / "le.tsv")


def test_json_lines_read_like_csv_even_when_value_types_change_between_lines(tmp_path: Path) -> None:
    (tmp_path / "i.jsonl").write_text(
        '{"user_id": "u1", "item_id": 1, "rating": 5, "timestamp": 10}\n'
        '{"user_id": 7, "item_id": "2", "rating": 3.5, "timestamp": 11, "extra": [1]}\n'
        '{"user_id": "u1", "item_id": 2.0, "rating": "4", "timestamp": 12}\n')
    inter = load_interactions(tmp_path / "i.jsonl")
    assert inter.user_ids == ["7", "u1"] and inter.item_ids == [1, 2]
    assert list(zip(inter.users.tolist(), inter.items.tolist(), inter.ratings.tolist())) == [
        (1, 0, 5.0), (0, 1, 3.5), (1, 1, 4.0)]
    (tmp_path / "bad.jsonl").write_text('{"user_id": "u1", "item_id": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad.jsonl: row 2: not a JSON object \(a list\)"):
        load_interactions(tmp_path / "bad.jsonl")
    # an integer past Python's 4,300-digit limit for text -> int is an id of those digits, text, so the
    # column's ids are text, as where types change between lines (it was a bare ValueError naming no file)
    huge = "9" * 5000
    (tmp_path / "huge.jsonl").write_text(f'{{"user_id": "u1", "item_id": {huge}}}\n{{"user_id": "u1", "item_id": 4}}\n')
    assert load_interactions(tmp_path / "huge.jsonl").item_ids == ["4", huge]
    (tmp_path / "i.xml").write_text("<x/>")
    with pytest.raises(DataError, match=r"unknown file type '.xml' \(use .csv, .tsv, .jsonl or .parquet"):
        load_interactions(tmp_path / "i.xml")


def test_pairs_rated_below_the_threshold_are_seen_not_positive(tmp_path: Path) -> None:
    path = write(tmp_path / "i.csv", ROWS)
    inter = load_interactions(path, rating_threshold=4)
    # positives: (7, 30) rated 5, (2, 10) rated 4, (11, 30) rated 4; seen below 4: (7, 10) rated 3,
    # (7, 30) rated 1 (a duplicate of a positive), (2, 20) rated 2.5 (item 20 has no positive row)
    assert inter.user_ids == [2, 7, 11] and inter.item_ids == [10, 30]
    known = inter.known_items().toarray()
    np.testing.assert_array_equal(known, [[1, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(inter.user_items("all").toarray(), [[1, 0], [0, 1], [0, 1]])
    # (7, 30) is a positive, so it is not a seen pair too (evaluation would mask a positive)
    assert sorted(zip(inter.seen[0].tolist(), inter.seen[1].tolist())) == [(1, 0)]
    np.testing.assert_array_equal(inter.seen_items().toarray(), [[0, 0], [1, 0], [0, 0]])
    inter.seen = (np.array([1, 1]), np.array([0, 0]))  # a pair listed twice is one seen pair
    np.testing.assert_array_equal(inter.seen_items().toarray(), [[0, 0], [1, 0], [0, 0]])
    with_catalog = load_interactions(path, item_ids=[10, 20, 30], rating_threshold=4)
    np.testing.assert_array_equal(with_catalog.known_items().toarray(), [[1, 1, 0], [1, 0, 1], [0, 0, 1]])
    assert load_interactions(path).seen is None


def test_a_row_subset_keeps_the_seen_pairs_so_evaluation_still_masks_them() -> None:
    import torch

    from mmrec.coldstart import warm_part
    from mmrec.interactions import TEST, TRAIN
    from mmrec.metrics import evaluate

    # One user: item 0 in train, item 1 in test, item 2 rated below the threshold (seen), which
    # the scorer likes best. mask="all" never ranks item 2, so item 1 comes first.
    inter = Interactions(user_ids=["u"], item_ids=[0, 1, 2, 3], users=[0, 0], items=[0, 1], split=[TRAIN, TEST],
                         seen=(np.array([0]), np.array([2])))

    def score(users: np.ndarray) -> torch.Tensor:
        return torch.tensor([[0.0, 1.0, 5.0, 0.5]]).repeat(len(users), 1)

    assert evaluate(score, inter, ks=(1,))["hit@1"] == 1.0
    for part in (inter.rows(np.ones(2, bool)), inter.subset(["train", "test"]), warm_part(inter, np.zeros(4, bool))):
        assert [a.tolist() for a in part.seen] == [[0], [2]]
        assert evaluate(score, part, ks=(1,))["hit@1"] == 1.0


def test_items_rated_below_the_threshold_are_never_recommended_back(tmp_path: Path) -> None:
    from mmrec.config import TrainConfig
    from mmrec.pipeline import fit
    from tests.mmrec.conftest import write_planted

    inter_path, feats = write_planted(tmp_path)  # 48 users, 32 items in 4 clusters, 6 of 8 cluster items a user
    header, *lines = inter_path.read_text().splitlines()
    mine = {int(ln.split("\t")[1]) for ln in lines if ln.split("\t")[0] == "u0"}
    disliked = [i for i in range(0, 32, 4) if i not in mine]  # u0's cluster-0 items it has not rated well
    rows = [f"{ln}\t5" for ln in lines] + [f"u0\t{i}\t1" for i in disliked]
    (tmp_path / "rated.tsv").write_text("\n".join([header + "\trating", *rows]) + "\n")
    rec, _, _ = fit(tmp_path / "rated.tsv", features={"content": feats}, rating_threshold=4, split="random",
                    config=TrainConfig(dim=16, layers=1, heads=2, epochs=2), show_progress=False)
    got = [r.item_id for r in rec.recommend("u0", 32)]
    assert len(disliked) == 2 and not set(got) & set(disliked) and not set(got) & mine
    assert len(got) == 32 - len(mine) - len(disliked)


def test_rows_with_a_wrong_field_count_are_named_by_data_row(tmp_path: Path) -> None:
    (tmp_path / "i.csv").write_text("user_id,item_id\n1,a\n2,b,extra\n3,c\n\n4\n5,e\n")
    with pytest.raises(DataError) as e:
        load_interactions(tmp_path / "i.csv")
    assert str(e.value).splitlines()[1:] == [
        f"  {tmp_path / 'i.csv'}: row 2: has 3 fields but the header names 2: a stray separator, an unquoted value or an unbalanced quote",
        f"  {tmp_path / 'i.csv'}: row 4: has 1 fields but the header names 2: a stray separator, an unquoted value or an unbalanced quote",
    ]


def test_a_json_bool_list_or_object_is_refused_by_row_and_field(tmp_path: Path) -> None:
    (tmp_path / "i.jsonl").write_text('{"user_id": 1, "item_id": "a", "rating": 4}\n'
                                      '{"user_id": false, "item_id": "b", "rating": 5}\n'
                                      '{"user_id": 2, "item_id": "c", "rating": {"x": 1}}\n'
                                      '{"user_id": 3, "item_id": "d", "rating": "x"}\n')
    with pytest.raises(DataError) as e:
        load_interactions(tmp_path / "i.jsonl")
    assert [line.split(": ", 1)[1] for line in str(e.value).splitlines()[1:]] == [
        "row 2, field 'user_id': false is a JSON bool: expected a string or a number",
        "row 3, field 'rating': {\"x\": 1} is a JSON dict: expected a string or a number",
        "row 4, field 'rating': not a finite number: 'x'",  # reported beside them, as any invalid row
    ]
    kept = load_interactions(tmp_path / "i.jsonl", on_invalid="skip")  # invalid rows, skipped as any other
    assert kept.user_ids == [1] and kept.report["invalid"] == 3


def test_a_large_csv_with_line_breaks_inside_quotes_reads_whole(tmp_path):
    # Past the reader's first block (1 MiB) a quoted line break needs its slower mode: taken
    # when the fast one fails, never a refusal of a valid file.
    # Line breaks inside quotes, some followed by text that looks like rows of the file.
    rows = ["user_id,item_id,note"] + [f'u{k % 500},i{k % 997},"line one\nx,y,z\nv,w,{k}"' for k in range(60_000)]
    path = tmp_path / "notes.csv"
    path.write_text("\n".join(rows) + "\n")
    assert path.stat().st_size > 2 << 20
    inter = load_interactions(path)
    assert len(inter) + inter.report["duplicates"] == 60_000 and inter.num_users == 500
    assert inter.user_ids == sorted(f"u{k}" for k in range(500)) and len(inter.item_ids) == 997  # nothing made up


def test_a_file_with_carriage_return_line_ends_reads(tmp_path):
    path = tmp_path / "mac.csv"
    path.write_bytes(b"user_id,item_id\ru1,i1\ru2,i2\r")
    inter = load_interactions(path)
    assert inter.user_ids == ["u1", "u2"] and inter.item_ids == ["i1", "i2"]


def test_compression_is_read_from_the_suffix_whatever_its_case_and_a_broken_file_is_named(tmp_path):
    text = b"user_id,item_id\nu1,i1\nu2,i2\n"
    for name in ("a.csv.gz", "b.CSV.GZ", "c.tsv.Gz"):
        data = text.replace(b",", b"\t") if ".tsv" in name.lower() else text
        (tmp_path / name).write_bytes(gzip.compress(data))
        assert len(load_interactions(tmp_path / name)) == 2
    (tmp_path / "plain.csv.gz").write_bytes(text)  # not gzip at all
    with pytest.raises(DataError, match=r"plain.csv.gz: cannot be read as gzip-compressed text"):
        load_interactions(tmp_path / "plain.csv.gz")


def test_a_header_wider_than_64_kib_is_read_whole(tmp_path):
    names = [f"extra_column_{k}" for k in range(8000)] + ["user_id", "item_id"]
    path = tmp_path / "wide.csv"
    path.write_text(",".join(names) + "\n" + ",".join(["x"] * 8000 + ["u1", "i1"]) + "\n")
    assert len(",".join(names)) > 1 << 16
    inter = load_interactions(path)
    assert inter.user_ids == ["u1"] and inter.item_ids == ["i1"]


def test_parquet_columns_that_hold_no_ids_are_named_and_utf8_bytes_are_text(tmp_path):
    for column, values in (("user_id", pa.array([["a"], ["b"]])), ("item_id", pa.array([True, False])),
                           ("rating", pa.array([b"\xff", b"4"]))):
        table = {"user_id": pa.array(["u1", "u2"]), "item_id": pa.array(["i1", "i2"]), column: values}
        path = tmp_path / f"{column}.parquet"
        pq.write_table(pa.table(table), path)
        with pytest.raises(DataError, match=rf"{column}.parquet: field '{column}': is a column of "):
            load_interactions(path)
    # Strings stored as bytes (older writers): read as the text they are.
    path = tmp_path / "bytes.parquet"
    pq.write_table(pa.table({"user_id": pa.array([b"u1", b"u2"]), "item_id": pa.array([b"i1", b"i2"], pa.binary(2)),
                             "rating": pa.array([b"5", b"4"], pa.large_binary())}), path)
    inter = load_interactions(path)
    assert inter.user_ids == ["u1", "u2"] and inter.item_ids == ["i1", "i2"] and inter.ratings.tolist() == [5, 4]


def test_non_finite_json_ids_and_python_only_number_spellings_are_invalid_rows(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"user_id": NaN, "item_id": 1}\n{"user_id": Infinity, "item_id": 2}\n'
                    '{"user_id": 1e400, "item_id": 3}\n{"user_id": "u", "item_id": 4}\n')
    inter = load_interactions(path, on_invalid="skip")
    assert inter.user_ids == ["u"] and inter.report["invalid"] == 3
    with pytest.raises(DataError, match=r"row 1, field 'user_id': nan is not a finite number"):
        load_interactions(path)
    rated = tmp_path / "rated.csv"
    rated.write_text("user_id,item_id,rating,timestamp\nu,1,1_0,5\nu,2,\uff15,5\nu,3,4,1_600\nu,4,4,\u0665\n"
                     "u,5,4.5,1e3\nu,6,+.5,-7\n")
    ok = load_interactions(rated, on_invalid="skip")
    assert ok.report["invalid"] == 4 and ok.ratings.tolist() == [4.5, 0.5] and ok.timestamps.tolist() == [1000, -7]


def test_users_whose_every_row_is_below_the_threshold_are_counted(tmp_path):
    path = write(tmp_path / "r.csv", [["a", "1", "1"], ["a", "2", "2"], ["b", "1", "5"], ["b", "2", "1"]],
                 header=["user_id", "item_id", "rating"])
    inter = load_interactions(path, rating_threshold=4)
    assert inter.user_ids == ["b"]
    assert (inter.report["below_threshold"], inter.report["users_only_below_threshold"]) == (3, 1)


def test_a_directory_given_as_a_file_is_named_as_one(tmp_path):
    from mmrec.catalog import load_catalog
    from mmrec.pipeline import load_npy_features

    with pytest.raises(DataError, match=r": is a directory, not a file$"):
        load_interactions(tmp_path)
    with pytest.raises(DataError, match=r": is a directory, not a file$"):
        load_catalog(tmp_path)
    with pytest.raises(DataError, match=r"feature file for modality 'x' is a directory, not a file$"):
        load_npy_features({"x": tmp_path}, 3)


def test_an_unbalanced_quote_that_swallows_rows_is_named_not_merged(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('user_id,item_id\nu1,"i1\nu2,i2\nu3,i3\n')  # the quote never closes: three lines, one value
    with pytest.raises(DataError, match=r"row 1: an unbalanced quote: the field it opens runs to the end of the file"):
        load_interactions(path)
    path.write_text('user_id,item_id\nu1,"i1\nu2,i2"\nu3,i3\n')  # closed later: an id holding a line break
    with pytest.raises(DataError, match=r"row 1, field 'item_id': holds a line break: an unbalanced quote"):
        load_interactions(path)
    # a quote opened in the header: it said a column was missing and listed "item_id\nu1,i1..." as found
    for text in ('user_id,"item_id\nu1,i1\nu2,i2\n', 'user_id,item_id,"rating\nu1,i1,5\n', 'user_id,"item_id\nu1",i1\n'):
        path.write_text(text)
        for read in (check_columns, load_interactions):
            with pytest.raises(DataError, match=r"quote.csv: an unbalanced quote in the header: a column name runs past "
                                                r"the header's line end$"):
                read(path)
    only_header = tmp_path / "header.csv"
    only_header.write_text("user_id,item_id")  # no line end, no rows
    with pytest.raises(DataError, match=r"header.csv: file has no data rows$"):
        load_interactions(only_header)


def test_a_categorical_or_view_column_of_bytes_that_are_not_utf8_is_named(tmp_path):
    ok = {"user_id": pa.array(["u1", "u2"]), "rating": pa.array([5.0, 4.0])}
    for name, column in (("dict", pa.array([b"i1", b"\xff"]).dictionary_encode()),
                         ("view", pa.array([b"i1", b"\xff"], pa.binary_view()))):
        pq.write_table(pa.table(ok | {"item_id": column}), tmp_path / f"{name}.parquet")
        with pytest.raises(DataError, match=rf"{name}.parquet: field 'item_id': is a column of .* not UTF-8 text"):
            load_interactions(tmp_path / f"{name}.parquet")
    pq.write_table(pa.table(ok | {"item_id": pa.array([b"i1", b"i2"]).dictionary_encode()}), tmp_path / "good.parquet")
    assert load_interactions(tmp_path / "good.parquet").item_ids == ["i1", "i2"]


def test_the_unbalanced_quote_is_named_with_a_catalog_too_and_other_formats_keep_line_breaks(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('user_id,item_id\nu1,"a\nu2,b"\nu3,c\n')
    with pytest.raises(DataError, match=r"row 1, field 'item_id': holds a line break: an unbalanced quote"):
        load_interactions(path, item_ids=["a", "b", "c"])
    path.write_text('user_id,item_id\nu0,a\nu1,"a\nu2,b"\nu3,c\n')
    skipped = load_interactions(tmp_path / "quote.csv", item_ids=["a", "b", "c"], on_invalid="skip",
                                unknown_items="skip")
    assert "holds a line break" in skipped.report["problems"][0]
    path.write_text('user_id,item_id\nu0,a\nu1,"a\nu2,b\nu3,c\n')  # open to the end: refused even when skipping,
    with pytest.raises(DataError, match=r"row 2: an unbalanced quote"):  # as the rows it took cannot be had back
        load_interactions(tmp_path / "quote.csv", item_ids=["a", "b", "c"], on_invalid="skip", unknown_items="skip")
    lines = tmp_path / "break.jsonl"  # no quoting in JSON lines: a line break is part of the id
    lines.write_text('{"user_id": "u1", "item_id": "Line\\nBreak"}\n')
    assert load_interactions(lines).item_ids == ["Line\nBreak"]


def test_a_line_of_only_spaces_is_a_blank_line(tmp_path):
    # an editor's stray "   " at the end of a file stopped training with "has 1 fields"
    (tmp_path / "inter.csv").write_text("user_id,item_id\nu1,1\n   \nu2,2\nu2,x,\n  \n")
    with pytest.raises(DataError) as e:
        load_interactions(tmp_path / "inter.csv")
    assert [str(p) for p in e.value.problems] == [
        "row 3: has 3 fields but the header names 2: a stray separator, an unquoted value or an unbalanced quote"]
    (tmp_path / "inter.csv").write_text("user_id,item_id\nu1,1\n   \nu2,2\n  \n")
    got = load_interactions(tmp_path / "inter.csv")
    assert got.user_ids == ["u1", "u2"] and got.items.tolist() == [0, 1]


def test_empty_lines_before_the_header_an_open_quote_and_a_long_row(tmp_path, caplog):
    import gzip

    # empty lines before the header are skipped, as after it (it was "file is empty (no header row)")
    (tmp_path / "blank.csv").write_text("\ufeff\r\n\r\nuser_id,item_id\r\n1,2\r\n3,4\r\n")
    assert len(load_interactions(tmp_path / "blank.csv")) == 2
    # a quote left open to the end of the file took the rows after it into an unread column, silently
    text = 'user_id,item_id,review\n1,10,ok\n2,20,"great\n3,30,fine\n4,40,x\n'
    (tmp_path / "open.csv").write_text(text)
    with gzip.open(tmp_path / "open.csv.gz", "wt") as f:
        f.write(text)
    for name in ("open.csv", "open.csv.gz"):
        with pytest.raises(DataError, match=r"row 2: an unbalanced quote: the field it opens runs to the end of the file"):
            load_interactions(tmp_path / name)
    # mixed line ends (bare CR and bare LF) were undercounted; a quote opened in the last row, holding the
    # final line end, was let through
    for name, text in (("mixed.csv", 'user_id,item_id,review\r1,10,x\r2,20,"a\n3,30,b\n'),
                       ("last.csv", 'user_id,item_id,review\n1,10,ok\n2,20,"great\n'),
                       ("last_no_end.csv", 'user_id,item_id,review\n1,10,ok\n2,20,"great'),
                       # one line swallowed, without a last line end: it fitted the line-end count's slack
                       ("one_no_end.csv", 'user_id,item_id,review\n1,10,ok\n2,20,"great\n3,30,ok')):
        (tmp_path / name).write_bytes(text.encode())
        with pytest.raises(DataError, match=r"row 2: an unbalanced quote"):
            load_interactions(tmp_path / name)
    (tmp_path / "open.tsv").write_text('user_id\titem_id\treview\n1\t10\t"bad\n2\t20\tx\n')
    with pytest.raises(DataError, match=r"row 1: an unbalanced quote"):
        load_interactions(tmp_path / "open.tsv")
    # a quoted review spanning lines is data, and so is one longer than the reader's 1 MiB block; said, as in a
    # file that does not quote values (a TSV export), a value starting with a quote took in the rows up to the
    # next one, silently
    (tmp_path / "multi.csv").write_text('user_id,item_id,review\n\n1,10,"great\nfilm"\n2,20,"a ""b"""\n')
    with caplog.at_level("WARNING", logger="mmrec.interactions"):
        assert len(load_interactions(tmp_path / "multi.csv")) == 2
    (tmp_path / "unquoted.tsv").write_text('user_id\titem_id\treview\n1\t10\t"Wow\n2\t20\tgood"\n3\t30\tok\n')
    with caplog.at_level("WARNING", logger="mmrec.interactions"):
        assert load_interactions(tmp_path / "unquoted.tsv").item_ids == [10, 30]
    said = [r.getMessage() for r in caplog.records if "spanning lines" in r.getMessage()]
    assert said == [f"{tmp_path / name}: 1 row(s) hold a quoted value spanning lines, each read as one row (rows 1): "
                    "if the file does not quote values, a value starting with \" took in the lines after it, whose "
                    "interactions are lost" for name in ("multi.csv", "unquoted.tsv")]
    (tmp_path / "long.csv").write_text("user_id,item_id,review\n1,10," + "z" * 2_100_000 + "\n2,20,ok\n")
    assert len(load_interactions(tmp_path / "long.csv")) == 2


def test_a_split_or_rating_column_named_otherwise_is_warned_about(tmp_path, caplog):
    # "Split" was silently not read, and --split auto then made a random split
    (tmp_path / "i.csv").write_text("user_id,item_id,Split,RATING,x_label\n1,2,train,5,0\n1,3,test,4,2\n")
    with caplog.at_level("WARNING", logger="mmrec.interactions"):
        inter = load_interactions(tmp_path / "i.csv")
    assert inter.split is None and inter.ratings is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'i.csv'}: column 'RATING' is not read: the column read is 'rating', in lower case",
        f"{tmp_path / 'i.csv'}: column 'Split' is not read: the column read is 'split', in lower case",
        f"{tmp_path / 'i.csv'}: column 'x_label' is not read: the split is read from a column 'split' of train / "
        "valid / test (MMRec's x_label 0 / 1 / 2 are those three)"]
    # the same rows as JSON lines (their keys were lost with the unread values: no warning, a random split)
    caplog.clear()
    (tmp_path / "i.jsonl").write_text('{"user_id": 1, "item_id": 2, "Split": "train", "RATING": 5, "x_label": 0}\n'
                                      '{"user_id": 1, "item_id": 3, "Split": "test", "RATING": 4, "x_label": 2}\n')
    with caplog.at_level("WARNING", logger="mmrec.interactions"):
        assert load_interactions(tmp_path / "i.jsonl").split is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'i.jsonl'}: column 'RATING' is not read: the column read is 'rating', in lower case",
        f"{tmp_path / 'i.jsonl'}: column 'Split' is not read: the column read is 'split', in lower case",
        f"{tmp_path / 'i.jsonl'}: column 'x_label' is not read: the split is read from a column 'split' of train / "
        "valid / test (MMRec's x_label 0 / 1 / 2 are those three)"]
    (tmp_path / "m.jsonl").write_text('{"userId": 1, "itemId": 2}\n{"userId": 1, "itemId": 3, "when": 7}\n')
    with pytest.raises(DataError, match=r"'user_id': required column is missing \(columns found: 'userId', 'itemId', "
                                        r"'when'\)"):  # (was "columns found: " and nothing)
        load_interactions(tmp_path / "m.jsonl")
    caplog.clear()
    # the checks before any encoding name them too (--split given said "this file has none", no more)
    with pytest.raises(ConfigError, match=r"needs a split column .* has none: use --split auto or random \(column "
                                          r"'Split' is not read: the column read is 'split', in lower case\)$"):
        check_columns(tmp_path / "i.csv", split="given")
    with pytest.raises(DataError, match=r"has no rating column \(column 'RATING' is not read"):
        check_columns(tmp_path / "i.csv", rating_threshold=4)
    caplog.clear()
    # loading says so too (evaluate loads with the model's threshold; a warning said it, the refusal did not),
    # before reading the rows
    with caplog.at_level("WARNING", logger="mmrec.interactions"), pytest.raises(
            DataError, match=r"i.jsonl: field 'rating': .* has no rating column \(column 'RATING' is not read"):
        load_interactions(tmp_path / "i.jsonl", rating_threshold=4)
    assert not caplog.records
    with pytest.raises(ConfigError, match=r"needs a timestamp column, and this file has none: use a random split "
                                          r"\(--split random\) or a file with timestamps$"):
        check_columns(tmp_path / "i.csv", split="temporal")
    caplog.clear()
    (tmp_path / "j.csv").write_text("user_id,item_id,split,Split\n1,2,train,x\n1,3,test,y\n")
    with caplog.at_level("WARNING", logger="mmrec.interactions"):
        assert load_interactions(tmp_path / "j.csv").split is not None
    assert not caplog.records  # the column read is there: nothing to say


def test_an_unknown_id_that_a_catalog_id_writes_otherwise_is_pointed_at(tmp_path):
    # a Parquet column of numbers against a catalog of "007": every row said "not in the catalog", no more
    pq.write_table(pa.table({"user_id": [1, 2, 3], "item_id": [7, 8, 9]}), tmp_path / "i.parquet")
    with pytest.raises(DataError) as e:
        load_interactions(tmp_path / "i.parquet", item_ids=["007", "8.0", "x"])
    assert [str(p) for p in e.value.problems] == [
        "row 1, field 'item_id': unknown item id '7': not in the catalog (it has '007': ids are matched as text, as written)",
        "row 2, field 'item_id': unknown item id '8': not in the catalog (it has '8.0': ids are matched as text, as written)",
        "row 3, field 'item_id': unknown item id '9': not in the catalog"]


def test_a_header_row_of_spaces_alone_is_named_as_such(tmp_path):
    # read as the header, a line of spaces before it said "required column is missing (columns found: '')"
    message = "the header row names no column (a line of spaces, tabs or separators alone?): the header is the first " \
              "line that is not empty; delete the lines before it"
    for name, text in (("s.csv", "  \nuser_id,item_id\nu1,1\n"), ("t.tsv", "\t\nuser_id\titem_id\nu1\t1\n"),
                       ("c.csv", ",\nuser_id,item_id\nu1,1\n")):
        (tmp_path / name).write_text(text)
        for read in (load_interactions, check_columns):
            with pytest.raises(DataError) as e:
                read(tmp_path / name)
            assert str(e.value) == f"{tmp_path / name}: {message}"
    (tmp_path / "ok.csv").write_text("\n\nuser_id,item_id\nu1,1\n  \nu2,2\n")  # empty lines, and spaces after it
    assert load_interactions(tmp_path / "ok.csv").user_ids == ["u1", "u2"]
