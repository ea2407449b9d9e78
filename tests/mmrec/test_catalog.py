from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrec.catalog import compose_text, load_catalog
from mmrec.errors import DataError

ROWS = [
    {"item_id": "007", "title": "Toy Story", "genres": "Animation|Comedy", "year": 1995},
    {"item_id": "b2", "title": "Heat", "genres": "Crime", "year": 1995},
    {"item_id": "c3", "title": "Alien", "genres": "", "year": 1979},
]


def write(tmp_path, name, rows, sep=","):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        cols = list(rows[0])
        lines = [sep.join(cols)] + [sep.join(str(r.get(c, "")) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name", ["items.csv", "items.tsv", "items.jsonl", "items.parquet"])
def test_every_format_gives_the_same_catalog(tmp_path, name):
    path = write(tmp_path, name, ROWS, sep="\t" if name.endswith(".tsv") else ",")
    cat = load_catalog(path)
    assert cat.item_ids == ["007", "b2", "c3"]  # leading zero kept
    assert cat.text_fields == ["title", "genres"]  # year is numeric, not a default text field
    assert cat.texts == ["Toy Story. Animation, Comedy", "Heat. Crime", "Alien"]
    assert cat.images == [None, None, None]
    assert cat.records[0]["year"] == "1995"


def test_integer_ids_become_int_and_text_fields_are_chosen(tmp_path):
    rows = [{"item_id": 10, "title": "A", "summary": "x"}, {"item_id": 2, "title": "B", "summary": "y"}]
    cat = load_catalog(write(tmp_path, "c.csv", rows), text_fields=["summary"])
    assert cat.item_ids == [10, 2]
    assert cat.texts == ["x", "y"]


def test_compose_text_skips_blanks():
    assert compose_text(["  A ", None, "", "x|y"]) == "A. x, y"


def test_missing_id_column(tmp_path):
    path = write(tmp_path, "c.csv", [{"id": 1, "title": "A"}])
    with pytest.raises(DataError, match=r"c\.csv: field 'item_id': required column missing"):
        load_catalog(path)


def test_duplicate_ids_are_all_listed(tmp_path):
    rows = [{"item_id": i % 2, "title": f"t{i}"} for i in range(5)]
    with pytest.raises(DataError) as e:
        load_catalog(write(tmp_path, "c.csv", rows))
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "row 3, field 'item_id': duplicate id '0' (first at row 1)" in msg
    assert "row 4, field 'item_id': duplicate id '1' (first at row 2)" in msg
    assert "row 5, field 'item_id': duplicate id '0' (first at row 1)" in msg


def test_row_without_text_or_image(tmp_path):
    rows = [{"item_id": "a", "title": "A", "image": ""}, {"item_id": "b", "title": "", "image": ""}]
    with pytest.raises(DataError, match=r"row 2: no text in title and no image in 'image'"):
        load_catalog(write(tmp_path, "c.csv", rows))
    # Content from precomputed features instead: such rows are items too.
    got = load_catalog(write(tmp_path, "c.csv", rows), require_content=False)
    assert got.item_ids == ["a", "b"] and got.texts == ["A", ""]


def test_unknown_text_field(tmp_path):
    with pytest.raises(DataError, match=r"field 'plot': text column not found"):
        load_catalog(write(tmp_path, "c.csv", ROWS), text_fields=["plot"])


def test_images_resolved_checked_and_skipped(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "img" / "ok.png")
    (tmp_path / "img" / "broken.jpg").write_bytes(b"not an image")
    rows = [
        {"item_id": "a", "title": "A", "picture": "img/ok.png"},
        {"item_id": "b", "title": "B", "picture": "img/missing.png"},
        {"item_id": "c", "title": "C", "picture": "img/broken.jpg"},
        {"item_id": "a", "title": "D", "picture": ""},
    ]
    path = write(tmp_path, "c.csv", rows)
    with pytest.raises(DataError) as e:
        load_catalog(path, image_field="picture")
    msg = str(e.value)
    assert "row 2, field 'picture'" in msg and "missing.png" in msg
    assert "row 3, field 'picture'" in msg and "broken.jpg" in msg
    assert "row 4, field 'item_id': duplicate id 'a'" in msg

    cat = load_catalog(path, image_field="picture", skip_invalid=True, show_progress=False)
    assert cat.item_ids == ["a"]
    assert cat.images == [str(tmp_path / "img" / "ok.png")]
    assert [p.row for p in cat.skipped] == [2, 3, 4]
    records = cat.skip_records()  # what skipped.jsonl lists, a JSON object a line
    assert [(r["row"], r["item_id"], r["file"]) for r in records] == [(2, "b", str(path)), (3, "c", str(path)),
                                                                       (4, "a", str(path))]
    assert [json.loads(json.dumps(r)) for r in records] == records


def test_image_root_overrides_catalog_folder(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "x.png")
    path = write(tmp_path, "c.csv", [{"item_id": "a", "title": "A", "image": "x.png"}])
    cat = load_catalog(path, image_root=root, show_progress=False)
    assert cat.images == [str(root / "x.png")]


def test_an_image_name_too_long_for_the_file_system_is_a_bad_image_of_its_row(tmp_path):
    # exists() let ENAMETOOLONG through: the run ended with a bare OSError naming no row, and
    # --skip-invalid / --mask-bad-images could not keep the other rows
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    long = "x" * 300 + ".jpg"
    path = write(tmp_path, "c.csv", [{"item_id": "a", "title": "A", "image": "ok.png"},
                                     {"item_id": "b", "title": "B", "image": long}])
    with pytest.raises(DataError, match=r"row 2, field 'image': .*x\.jpg: cannot be looked up \(File name too long\)"):
        load_catalog(path, show_progress=False)
    assert load_catalog(path, skip_invalid=True, show_progress=False).item_ids == ["a"]
    assert load_catalog(path, mask_bad_images=True, show_progress=False).images == [str(tmp_path / "ok.png"), None]


def test_an_empty_parquet_file_and_one_with_text_that_is_not_utf8_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # a writer that did not check its text: a bare codec error, naming no row or field
    title = pa.array([b"a", b"b\xff", b"c"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"item_id": ["1", "2", "3"], "title": title}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: row 2, field 'title': text that is not UTF-8 \(b'b\\xff'\)$"):
        load_catalog(tmp_path / "bad.parquet", show_progress=False)
    # no rows: "BatchSize must be greater than 0, got 0"
    pq.write_table(pa.table({"item_id": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match=r"empty\.parquet: file has no data rows$"):
        load_catalog(tmp_path / "empty.parquet", show_progress=False)
    # decimal ids holding integers are those integers, as float ones are ("7.0" before)
    pq.write_table(pa.table({"item_id": pa.array([7, 8], pa.decimal128(5, 1)), "title": ["a", "b"]}),
                   tmp_path / "d.parquet")
    assert load_catalog(tmp_path / "d.parquet", show_progress=False).item_ids == [7, 8]
    # a column named twice, as a CSV header's is refused (the raw Arrow schema was printed)
    pq.write_table(pa.table([["1"], ["a"], ["b"]], names=["item_id", "title", "title"]), tmp_path / "twice.parquet")
    with pytest.raises(DataError, match=r"twice\.parquet: field 'title': the header names this column 2 times"):
        load_catalog(tmp_path / "twice.parquet", show_progress=False)


def test_item_ids_that_print_alike_are_warned_about_and_kept_apart(tmp_path, caplog):
    # ids are matched as written: these are six items, two pairs of which a reader cannot tell apart
    rows = [("caf\u00e9", "A"), ("cafe\u0301", "B"), ("a", "C"), ("a\u200b", "D"), ("2\x00", "E"), ("b\u00e9", "F")]
    path = write(tmp_path, "c.csv", [{"item_id": i, "title": t} for i, t in rows])
    with caplog.at_level("WARNING", logger="mmrec.catalog"):
        cat = load_catalog(path, show_progress=False)
    assert cat.item_ids == [i for i, _ in rows]
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "2 item id(s) hold a control or invisible character, matched as written: row 4: 'a\\u200b'; row 5: '2\\x00'",
        "2 group(s) of item ids print alike but differ in Unicode composition or invisible characters, and are "
        "different items: 'caf\\xe9' (row 1) and 'cafe\\u0301' (row 2); 'a' (row 3) and 'a\\u200b' (row 4)",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmrec.catalog"):
        load_catalog(write(tmp_path, "d.csv", [{"item_id": i, "title": "t"} for i in ("caf\u00e9", "b", "7")]),
                     show_progress=False)
    assert not caplog.records  # plain, distinct ids: nothing to say


def test_unreadable_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_catalog(tmp_path / "nope.csv")
    (tmp_path / "c.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        load_catalog(tmp_path / "c.xlsx")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_catalog(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("item_id,title\n\n")  # a header and a blank line
    with pytest.raises(DataError, match=r"h\.csv: file has no data rows"):
        load_catalog(tmp_path / "h.csv")


@pytest.mark.parametrize("name, content", [
    ("items.csv", b"item_id,title\n1,ok\n2,caf\xe9 film\n"),
    ("items.jsonl", b'{"item_id": 1, "title": "ok"}\n{"item_id": 2, "title": "caf\xe9"}\n'),
])
def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    line = content[: content.index(b"\xe9")].count(b"\n") + 1
    with pytest.raises(DataError, match=rf"{name}: line {line} \(byte \d+\) holds byte 0xe9, which is not UTF-8"):
        load_catalog(tmp_path / name, show_progress=False)


def test_a_row_with_more_fields_than_the_header_is_named(tmp_path):
    # In the first data row pandas would silently take the surplus as an index column and shift
    # every field (item_id "Alpha", title "drama"); anywhere, it is an error naming the rows.
    (tmp_path / "a.csv").write_text("item_id,title,genre\n1,Alpha,drama,EXTRA\n2,Beta,comedy\n3,Gamma,war,x,y\n")
    with pytest.raises(DataError) as e:
        load_catalog(tmp_path / "a.csv")
    assert [(p.row, p.message) for p in e.value.problems] == [
        (1, "has 4 fields but the header names 3: a stray separator, an unquoted value or an unbalanced quote"),
        (3, "has 5 fields but the header names 3: a stray separator, an unquoted value or an unbalanced quote"),
    ]
    # A quoted separator is one field; a short row is a row with blanks.
    (tmp_path / "b.csv").write_text('item_id,title,genre\n1,"Alpha, the first",drama\n2,Beta\n')
    c = load_catalog(tmp_path / "b.csv")
    assert c.item_ids == [1, 2] and c.records[0]["title"] == "Alpha, the first" and c.texts[1] == "Beta"


def test_rows_need_content_in_a_modality_that_is_encoded(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")  # an unreadable image: checked only when images are encoded
    (tmp_path / "c.csv").write_text("item_id,title,image\n1,Alpha,\n2,,a.png\n3,Gamma,missing.png\n")
    with pytest.raises(DataError) as e:  # text off: rows 1 and 3 have no usable image
        load_catalog(tmp_path / "c.csv", encoded=["image"])
    assert [(p.row, p.field, p.message.split(":")[-1].strip() if p.field else p.message)
            for p in e.value.problems] == [
        (1, None, "no image in 'image' (text encoding is off)"),
        (2, "image", "cannot identify image file (not an image, or an unsupported format)"),
        (3, "image", "file not found"),
    ]
    # Images off: row 2 has no text; images are not opened, so rows 1 and 3 are fine.
    with pytest.raises(DataError, match=r"row 2: no text in title \(image encoding is off\)"):
        load_catalog(tmp_path / "c.csv", encoded=["text"])
    kept = load_catalog(tmp_path / "c.csv", encoded=["text"], skip_invalid=True)
    assert kept.item_ids == [1, 3] and [p.row for p in kept.skipped] == [2]


def test_a_catalog_with_nothing_to_encode_is_one_file_level_error(tmp_path):
    (tmp_path / "n.csv").write_text("item_id,year\n1,1990\n2,1991\n")
    with pytest.raises(DataError) as e:
        load_catalog(tmp_path / "n.csv")
    assert len(e.value.problems) == 1 and e.value.problems[0].row is None
    assert e.value.problems[0].message.startswith("nothing to encode: no text columns and no image column "
                                                  "(columns: item_id, year); name the text columns with --text-fields")


def test_json_lines_catalogs_share_the_interactions_reader(tmp_path):
    # Ids that change JSON type from line to line; a numeric column is not a default text field.
    (tmp_path / "c.jsonl").write_text('{"item_id": 1, "title": "Alpha", "year": 1990}\n\n'
                                      '{"item_id": "b2", "title": "Beta", "year": 1991.5}\n')
    c = load_catalog(tmp_path / "c.jsonl")
    assert c.item_ids == ["1", "b2"] and c.text_fields == ["title"] and c.texts == ["Alpha", "Beta"]
    assert c.records[1] == {"title": "Beta", "year": "1991.5"}
    # A broken line is named by its 1-based row (blank lines not counted), as in interaction files.
    (tmp_path / "b.jsonl").write_text('{"item_id": 1, "title": "A"}\n{"item_id": 2, "title": "B"}\n'
                                      '{"item_id": 3, "title": "C"\n')
    with pytest.raises(DataError, match=r"row 3: not a JSON object \(Expecting ',' delimiter\)"):
        load_catalog(tmp_path / "b.jsonl")
    (tmp_path / "l.jsonl").write_text('[1, 2]\n')
    with pytest.raises(DataError, match=r"row 1: not a JSON object \(a list\)"):
        load_catalog(tmp_path / "l.jsonl")


def test_catalog_reading_details_from_the_third_review(tmp_path):
    # A byte-order mark before the first JSON line is not data; an all-null column is not text.
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"item_id": 1, "title": "A", "note": null}\n')
    c = load_catalog(tmp_path / "bom.jsonl")
    assert c.item_ids == [1] and c.text_fields == ["title"]
    # Blank lines do not count as rows, for this error as for every other.
    (tmp_path / "blank.csv").write_text("item_id,title\n1,a\n\n2,b,c\n")
    with pytest.raises(DataError, match=r"row 2: has 3 fields but the header names 2"):
        load_catalog(tmp_path / "blank.csv")
    # With the only usable column's encoder off, the message says so and does not send the user
    # to --image-field for a column that is there.
    (tmp_path / "img.csv").write_text("item_id,image\n1,imgs/0.png\n")
    with pytest.raises(DataError) as e:
        load_catalog(tmp_path / "img.csv", encoded=["text"])
    assert e.value.problems[0].message == (
        "nothing to encode: no text columns and image encoding is off (--image-encoder none) (columns: item_id, "
        "image); name the text columns with --text-fields a,b (text_fields=)")
    with pytest.raises(DataError, match=r"text encoding is off \(--text-encoder none\) and image encoding is off "
                                        r".*; turn an encoder back on"):
        load_catalog(tmp_path / "img.csv", encoded=[])
    # Fields taken from an index (index add has no --text-fields): the message names the columns it reads.
    (tmp_path / "new.csv").write_text("item_id,name\n9,x\n")
    with pytest.raises(DataError) as e:
        load_catalog(tmp_path / "new.csv", text_fields=["title", "genres"], image_field="poster",
                     optional=["text_fields", "image_field"])
    assert e.value.problems[0].message == (
        "nothing to encode: the file has none of the text columns (title, genres) and no image column 'poster' "
        "that the index or model it extends reads (columns: item_id, name); give the new rows those columns "
        "(mmrec finetune also takes --text-fields / --image-field)")
    assert load_catalog(tmp_path / "new.csv", text_fields=["title", "name"], optional=["text_fields"]).texts == ["x"]


def test_a_byte_order_mark_and_na_like_values_change_no_id_or_text(tmp_path):
    # Excel's "CSV UTF-8" starts with a byte-order mark: the id column is still read as text.
    (tmp_path / "bom.csv").write_bytes("\ufeffitem_id,title\n007,space alien\n07,robot dog\n".encode("utf-8"))
    assert load_catalog(tmp_path / "bom.csv", show_progress=False).item_ids == ["007", "07"]
    (tmp_path / "le.csv").write_text("item_id,title\n1,a\n", encoding="utf-16-le")  # UTF-16 without its mark
    with pytest.raises(DataError, match=r"le.csv: the header row is not UTF-8 text \(NUL bytes: UTF-16\?\): save"):
        load_catalog(tmp_path / "le.csv")
    # Only an empty cell is missing: "NA", "null", "None" are values, as in JSON Lines.
    (tmp_path / "na.csv").write_text("item_id,title,note\nNA,None,\nnull,NA,NaN\n")
    cat = load_catalog(tmp_path / "na.csv", text_fields=["title"], show_progress=False)
    assert cat.item_ids == ["NA", "null"] and cat.texts == ["None", "NA"]
    assert cat.records == [{"title": "None", "note": ""}, {"title": "NA", "note": "NaN"}]


def test_numeric_csv_columns_show_their_cells_as_written(tmp_path):
    # pandas reads a number column with an empty cell as float (3 -> "3.0") and drops leading zeros
    # ("02139" -> 2139): the display fields, the text and --where keep what the file says.
    (tmp_path / "shop.csv").write_text("item_id,title,price,zip,rating\n1,A,3,02139,4.50\n2,B,,00501, 3\n3,C,2.5,12345,\n")
    cat = load_catalog(tmp_path / "shop.csv", show_progress=False)
    assert cat.text_fields == ["title"]  # still chosen by type: numeric columns are no text by default
    assert cat.records == [
        {"title": "A", "price": "3", "zip": "02139", "rating": "4.50"},
        {"title": "B", "price": "", "zip": "00501", "rating": "3"},
        {"title": "C", "price": "2.5", "zip": "12345", "rating": ""},
    ]
    named = load_catalog(tmp_path / "shop.csv", text_fields=["title", "zip"], show_progress=False)
    assert named.texts == ["A. 02139", "B. 00501", "C. 12345"]
    # A whitespace-only line is no row to either reader; a cell past the csv module's 128 KiB limit is data.
    long = "x" * 200_000
    (tmp_path / "odd.csv").write_text(f"item_id,title,price\n1,A,3\n   \n2,{long},\n3,C,02\n")
    odd = load_catalog(tmp_path / "odd.csv", show_progress=False)
    assert [r["price"] for r in odd.records] == ["3", "", "02"] and odd.texts[1] == long


def test_an_id_clash_names_the_file_row_after_skipped_rows(tmp_path):
    from mmrec.catalog import check_catalog_ids

    (tmp_path / "new.csv").write_text("item_id,title\n41,\n5,dup of an indexed item\n42,new movie\n")
    cat = load_catalog(tmp_path / "new.csv", text_fields=["title"], skip_invalid=True, show_progress=False)
    assert cat.item_ids == [5, 42] and cat.rows == [2, 3]
    assert cat.select([1]).rows == [3]
    with pytest.raises(DataError, match=r"new\.csv: row 2, field 'item_id': id '5' is already in the index"):
        check_catalog_ids(cat, {5}, str(tmp_path / "new.csv"))


def test_features_follow_a_loaded_catalogs_items_and_a_files_rows(tmp_path):
    import numpy as np

    from mmrec.pipeline import load_content

    (tmp_path / "c.csv").write_text("item_id,title\n1,A\n2,\n3,C\n")  # row 2 has no text: skipped
    np.save(tmp_path / "kept.npy", np.eye(2, dtype=np.float32))  # one row per item kept
    np.save(tmp_path / "rows.npy", np.eye(3, dtype=np.float32))  # one row per file row
    cat = load_catalog(tmp_path / "c.csv", skip_invalid=True, show_progress=False)
    content = load_content(cat, {"x": tmp_path / "kept.npy"}, text_encoder="none", image_encoder="none")
    assert content.item_ids == [1, 3] and content.features["x"].tolist() == [[1, 0], [0, 1]]
    with pytest.raises(DataError, match=r"row 2 was skipped \(--skip-invalid\), so the --features rows"):
        load_content(tmp_path / "c.csv", {"x": tmp_path / "rows.npy"}, text_encoder="none", image_encoder="none",
                     skip_invalid=True, require_content=True, encoded=["text"])


def test_a_json_true_list_or_object_is_no_item_id(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"item_id": true, "title": "a"}\n{"item_id": [1], "title": "b"}\n'
                                      '{"item_id": 7, "title": "c"}\n{"item_id": Infinity, "title": "d"}\n'
                                      '{"item_id": -1e999, "title": "e"}\n')
    with pytest.raises(DataError) as e:
        load_catalog(tmp_path / "c.jsonl", show_progress=False)
    assert [line.split(": ", 1)[1] for line in str(e.value).splitlines()[1:]] == [
        "row 1, field 'item_id': true is a bool: an item id is a string or an integer",
        "row 2, field 'item_id': [1] is a list: an item id is a string or an integer",
        # (they were the ids "inf" and "-inf", and a second 1e999 a duplicate of the first)
        "row 4, field 'item_id': inf is not a finite number: an item id is a string or an integer",
        "row 5, field 'item_id': -inf is not a finite number: an item id is a string or an integer",
    ]
    assert load_catalog(tmp_path / "c.jsonl", skip_invalid=True, show_progress=False).item_ids == [7]


def test_a_json_column_of_text_with_a_number_in_it_stays_text(tmp_path):
    # One title written as a number (1984) must not drop every item's title from the text, as a
    # CSV reads such a column as text too; numbers alone, booleans and lists of numbers are no text.
    (tmp_path / "m.jsonl").write_text('{"item_id": 1, "title": 1984, "year": 1984, "kids": true, "n": [1]}\n'
                                      '{"item_id": 2, "title": "Brazil", "year": 1985.5, "kids": false, "n": [2]}\n')
    c = load_catalog(tmp_path / "m.jsonl", show_progress=False)
    assert c.text_fields == ["title"] and c.texts == ["1984", "Brazil"]
    (tmp_path / "g.jsonl").write_text('{"item_id": 1, "genres": ["Horror", "SciFi"]}\n'
                                      '{"item_id": 2, "genres": ["Comedy", null]}\n')  # a null in a list: skipped
    g = load_catalog(tmp_path / "g.jsonl", show_progress=False)
    assert g.text_fields == ["genres"] and g.texts == ["Horror, SciFi", "Comedy"]
    (tmp_path / "m.json").write_text('[{"item_id": 1, "genres": ["Drama", 7]}, {"item_id": 2, "genres": "War"}]')
    with pytest.raises(DataError, match="no text columns"):  # a list holding a number is no list of text
        load_catalog(tmp_path / "m.json", show_progress=False)


def test_list_and_object_values_read_as_a_csvs_would(tmp_path):
    import numpy as np

    from mmrec.item_index import ItemIndex

    # A JSON list is a |-separated field (display, --where, text), an object its JSON: never Python's repr.
    (tmp_path / "l.jsonl").write_text('{"item_id": 1, "title": "A", "tags": ["x", " y z", ""], "meta": {"k": "é"}}\n'
                                      '{"item_id": 2, "title": "B", "tags": [], "meta": null}\n')
    c = load_catalog(tmp_path / "l.jsonl", show_progress=False)
    assert c.text_fields == ["title", "tags"]  # a list of text is text, as a CSV's x|y column is; an object is not
    assert c.texts == ["A. x, y z", "B"]
    assert c.records == [{"title": "A", "tags": "x|y z", "meta": '{"k": "é"}'}, {"title": "B", "tags": "", "meta": ""}]
    pq.write_table(pa.table({"item_id": ["1", "2"], "title": ["A", "B"], "tags": [["x", "y"], None],
                             "big": pa.array([["p"], ["q"]], type=pa.large_list(pa.large_string())),
                             "sizes": [[1, 2], [3]]}), tmp_path / "l.parquet")
    lp = load_catalog(tmp_path / "l.parquet")
    assert lp.records == [{"title": "A", "tags": "x|y", "big": "p", "sizes": "1|2"},
                          {"title": "B", "tags": "", "big": "q", "sizes": "3"}]
    assert lp.text_fields == ["title", "tags", "big"] and lp.texts == ["A. x, y. p", "B. q"]  # lists of numbers: no text
    idx = ItemIndex.from_features(c.item_ids, {"t": np.eye(2, dtype=np.float32)}, records=c.records, factory="Flat",
                                  show_progress=False)
    assert idx.matching(["tags=y z"]) == [1]


def test_a_bool_id_column_of_a_parquet_catalog_is_refused_by_row(tmp_path):
    pq.write_table(pa.table({"item_id": [True, False], "title": ["a", "b"]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"row 1, field 'item_id': true is a bool: an item id is a string or an integer"):
        load_catalog(tmp_path / "c.parquet", show_progress=False)


def test_every_row_with_too_many_fields_is_counted(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,title\n" + "".join(f"{k},a,b\n" for k in range(30)))
    with pytest.raises(DataError) as info:
        load_catalog(path)
    assert len(info.value.problems) == 30 and "... and 10 more" in str(info.value)


@pytest.mark.parametrize("layout", ["lines", "array"])
def test_a_json_catalog_keeps_ids_and_fields_as_written_like_jsonl(tmp_path, layout):
    rows = [{"item_id": 1, "title": "A", "zip": 2139}, {"item_id": "007", "title": "B", "zip": "02139"}]
    text = "\n".join(json.dumps(r) for r in rows) if layout == "lines" else json.dumps(rows, indent=1)
    (tmp_path / "items.json").write_text(text + "\n")
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got, want = load_catalog(tmp_path / "items.json"), load_catalog(tmp_path / "items.jsonl")
    assert got.item_ids == want.item_ids == ["1", "007"]  # a mixed column stays text: "007" is not 7
    assert [r["zip"] for r in got.records] == [r["zip"] for r in want.records] == ["2139", "02139"]
    (tmp_path / "bad.json").write_text('[{"item_id": 1}, 5]')
    with pytest.raises(DataError, match=r"bad.json: row 2: not a JSON object \(a int\)"):
        load_catalog(tmp_path / "bad.json")


def test_a_json_catalog_error_names_the_file_line_and_one_object_over_lines_reads(tmp_path):
    (tmp_path / "bad.json").write_text('\n\n\n[\n {"item_id": 1}\n {"item_id": 2}\n]\n')
    with pytest.raises(DataError, match=r"bad.json: not a JSON array \(Expecting ',' delimiter, line 6\)"):
        load_catalog(tmp_path / "bad.json")
    (tmp_path / "one.json").write_text('{\n "item_id": 1,\n "title": "A"\n}\n')
    assert load_catalog(tmp_path / "one.json").item_ids == [1]


def test_a_json_object_naming_a_key_twice_is_refused_with_its_row(tmp_path):
    # json keeps the last value without a word (another reader keeps the first): user 1 or 2?
    from mmrec.interactions import load_interactions

    catalog = lambda path: load_catalog(path, show_progress=False)  # noqa: E731
    cases = [
        ("inter.jsonl", '{"user_id": 1, "item_id": 1}\n\n{"user_id": 1, "user_id": 2, "item_id": 1}\n', load_interactions,
         r"row 2, field 'user_id': named twice in one object"),
        ("items.json", '[{"item_id": 1}, {"item_id": 2, "meta": [{"a": 1, "a": 2}]}]', catalog,
         r"row 2, field 'meta': holds an object naming 'a' twice"),
        ("one.json", '{\n "item_id": 1,\n "title": "A",\n "title": "B"\n}\n', catalog, r"row 1, field 'title': named twice"),
        # a 5,000-digit integer (read by the retry as its digits) beside a repeated key: still row 1
        ("long.jsonl", '{"item_id": ' + "9" * 5000 + ', "t": 1, "t": 2}\n', catalog, r"row 1, field 't': named twice"),
    ]
    for name, text, load, message in cases:
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=re.escape(name) + ": " + message):
            load(tmp_path / name)


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    from mmrec.interactions import load_interactions

    (tmp_path / "items.csv").write_text("item_id,title,title\n1,a,b\n")
    with pytest.raises(DataError, match=r"items\.csv: field 'title': the header names this column 2 times"):
        load_catalog(tmp_path / "items.csv", show_progress=False)
    (tmp_path / "inter.csv").write_text("user_id,item_id,item_id\n1,1,2\n")
    with pytest.raises(DataError, match=r"inter\.csv: field 'item_id': the header names this column 2 times"):
        load_interactions(tmp_path / "inter.csv")


def test_bad_images_can_be_left_out_with_their_rows_kept(tmp_path, image_paths, tiny_bert_dir, tiny_vit_dir):
    import json
    import shutil

    from mmrec.item_index import ItemIndex

    shutil.copy(image_paths[0], tmp_path / "ok.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "items.csv").write_text("item_id,title,image\nA,red boots,ok.jpg\nB,blue boots,gone.jpg\n"
                                        "C,green mug,broken.jpg\nD,,gone.jpg\nE,lamp,ok.jpg\n")
    with pytest.raises(DataError) as e:  # the default: every bad image named, nothing encoded
        load_catalog(tmp_path / "items.csv", show_progress=False)
    assert [p.row for p in e.value.problems] == [2, 3, 4]
    with pytest.raises(DataError, match=r"row 4, field 'image': .*gone\.jpg: .*; the row has no text to keep it by"):
        load_catalog(tmp_path / "items.csv", show_progress=False, mask_bad_images=True)  # D: nothing left
    cat = load_catalog(tmp_path / "items.csv", show_progress=False, mask_bad_images=True, skip_invalid=True)
    assert cat.item_ids == ["A", "B", "C", "E"] and cat.images[1:3] == [None, None] and cat.images[0] is not None
    assert [(p.row, p.field) for p in cat.masked] == [(2, "image"), (3, "image")]
    assert [p.row for p in cat.skipped] == [4]  # only D is skipped: its interactions go with it
    ItemIndex.build(tmp_path / "items.csv", tmp_path / "idx", text_encoder=tiny_bert_dir, image_encoder=tiny_vit_dir,
                    mask_bad_images=True, skip_invalid=True, show_progress=False)
    index = ItemIndex.load(tmp_path / "idx")
    assert index.ids == ["A", "B", "C", "E"] and index.present["image"].tolist() == [True, False, False, True]
    listed = [json.loads(line) for line in (tmp_path / "idx" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["row"], r["item_id"], r["field"]) for r in listed] == [(2, "B", "image"), (3, "C", "image"),
                                                                      (4, "D", "image")]
    assert "the image is left out, the row kept" in listed[0]["message"]


def test_empty_header_names_are_no_duplicates(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title,,\n1,a,,\n2,b,,\n")  # trailing commas, as spreadsheets write
    assert load_catalog(tmp_path / "items.csv", show_progress=False).item_ids == [1, 2]


def test_rows_in_memory_are_validated_as_a_file_is(tmp_path):
    from mmrec.catalog import catalog_from_records

    records = [{"item_id": "a", "title": "Alien war", "price": 3.5}, {"item_id": "b", "title": "Robot dog", "price": 2}]
    cat = catalog_from_records(records, text_fields=["title"])
    assert cat.item_ids == ["a", "b"] and cat.texts == ["Alien war", "Robot dog"]
    assert cat.records[0] == {"title": "Alien war", "price": "3.5"}
    with pytest.raises(DataError, match=r"<records>: row 2, field 'item_id': empty item id"):
        catalog_from_records([records[0], {"title": "no id"}], text_fields=["title"])
    # as a file's rows: one without an id is an invalid row, skipped on request, every one named
    cat = catalog_from_records([records[0], {"title": "no id"}, {"title": "nor here"}], text_fields=["title"],
                               skip_invalid=True)
    assert cat.item_ids == ["a"] and [(p.row, p.field) for p in cat.skipped] == [(2, "item_id"), (3, "item_id")]
    with pytest.raises(DataError, match=r"field 'item_id': required field missing \(fields: title\)"):
        catalog_from_records([{"title": "no id"}], text_fields=["title"], skip_invalid=True)
    # as a file's columns: a field named that no row has is refused, not read as empty text
    with pytest.raises(DataError, match=r"2 problem\(s\)\n.*field 'titel': text field not found \(fields: item_id, "
                                        r"title, price\)\n.*field 'picture': image field not found"):
        catalog_from_records(records, text_fields=["titel"], image_field="picture")
    with pytest.raises(DataError, match=r"row 2, field 'item_id': duplicate id 'a'"):
        catalog_from_records([records[0], records[0]], text_fields=["title"])


def test_a_row_dropped_for_its_id_is_not_listed_as_kept_and_records_take_the_option(tmp_path, image_paths):
    import shutil

    from mmrec.catalog import catalog_from_records, check_catalog_ids

    (tmp_path / "items.csv").write_text("item_id,title,image\nA,red boots,gone.png\nB,blue mug,gone.png\n")
    with pytest.raises(DataError, match=r"field 'image': none of the 2 images could be read \(.*gone.png: file not "
                                        r"found\): a wrong --image-root"):  # a new index with no picture at all
        load_catalog(tmp_path / "items.csv", show_progress=False, mask_bad_images=True)
    # extending an index (index add), every new image may be bad
    cat = load_catalog(tmp_path / "items.csv", show_progress=False, mask_bad_images=True, every_image_may_fail=True)
    assert [p.row for p in cat.masked] == [1, 2]
    left = check_catalog_ids(cat, {"A"}, str(tmp_path / "items.csv"), skip=True)  # A is in the index already
    records = left.skip_records()
    assert [(r["row"], r["field"]) for r in records] == [(1, "item_id"), (2, "image")]  # A skipped, not "kept"
    rows = [{"item_id": "A", "title": "red boots", "image": str(tmp_path / "gone.png")}]
    assert catalog_from_records(rows, text_fields=["title"], image_field="image", mask_bad_images=True).images == [None]
    # an "image" field is the image column by default, as in a file (it was read as a display field)
    shutil.copy(image_paths[0], tmp_path / "pic.jpg")
    rows = [{"item_id": "A", "title": "red boots", "image": "pic.jpg"}]
    got = catalog_from_records(rows, text_fields=["title"], image_root=tmp_path)
    assert got.image_field == "image" and got.images == [str(tmp_path / "pic.jpg")]
    assert got.records == [{"title": "red boots", "image": "pic.jpg"}]
    none = catalog_from_records([{"item_id": "A", "title": "x", "image": "http://cdn/x.jpg"}], text_fields=["title"],
                                image_field=None)  # told: no image column
    assert none.image_field is None and not none.has_images and none.records == [{"title": "x", "image": "http://cdn/x.jpg"}]


def test_a_csv_column_is_typed_over_every_row_not_the_first_10000(tmp_path):
    # pandas read 10,000 rows at a time, typed by the first chunk: a 2.5 or a word after row 10,000
    # failed the whole file with a message naming no row
    lines = ["item_id,title,price,note"] + [f"{i},item {i},{'2.5' if i > 10001 else '5'},{'a word' if i == 10003 else ''}"
                                            for i in range(10005)]
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n")
    cat = load_catalog(tmp_path / "big.csv", show_progress=False)
    assert len(cat) == 10005 and cat.text_fields == ["title", "note"]
    assert cat.records[10003] == {"title": "item 10003", "price": "2.5", "note": "a word"}
    assert cat.records[0] == {"title": "item 0", "price": "5", "note": ""}


def test_float32_cells_read_as_the_csv_writes_them(tmp_path):
    # widened to a Python float, a float32 4.1 read "4.099999904632568": shown so, in the text, and missed by
    # --where price=4.1
    import pandas as pd

    (tmp_path / "c.csv").write_text("item_id,title,price,weight\n1,a,4.1,0.3\n2,b,,1e-05\n")
    want = load_catalog(tmp_path / "c.csv", text_fields=["title"], show_progress=False).records
    assert [r["price"] for r in want] == ["4.1", ""]
    for kind in ("float32", "float16"):
        table = pa.table({"item_id": [1, 2], "title": ["a", "b"],
                          "price": pa.array([4.1, None], type=getattr(pa, kind)()),
                          "weight": pa.array([0.3, 1e-05], type=getattr(pa, kind)())})
        pq.write_table(table, tmp_path / "c.parquet")
        for source in (tmp_path / "c.parquet", table, table.to_pandas()):
            got = load_catalog(source, text_fields=["title"], show_progress=False).records
            assert [r["price"] for r in got] == ["4.1", ""] and [r["weight"] for r in got] == ["0.3", "1e-05"], got
    nullable = pd.DataFrame({"item_id": [1, 2], "title": ["a", "b"], "price": pd.array([4.1, None], dtype="Float32")})
    assert [r["price"] for r in load_catalog(nullable, text_fields=["title"], show_progress=False).records] == ["4.1", ""]
    frame = pd.DataFrame({"item_id": [1], "title": ["a"], "price": [4.1]})  # float64: as it was
    assert load_catalog(frame, text_fields=["title"], show_progress=False).records == [{"title": "a", "price": "4.1"}]
    # a list of them too (it read "4.099999904632568|2.5")
    table = pa.table({"item_id": [1, 2], "title": ["a", "b"],
                      "sizes": pa.array([[4.1, 2.5], [None, 0.3]], type=pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "l.parquet")
    for source in (tmp_path / "l.parquet", table):
        assert [r["sizes"] for r in load_catalog(source, text_fields=["title"], show_progress=False).records] == [
            "4.1|2.5", "0.3"]


def test_a_cell_of_characters_the_encoder_drops_is_no_text_and_cut_characters_in_memory_are_mended(tmp_path,
                                                                                                    caplog):
    from mmrec.catalog import has_text

    assert [has_text(t) for t in ("\u200b", "\ufeff", "\x00 ", "\xa0", " \u200b\u2060 ")] == [False] * 5
    assert [has_text(t) for t in ("a\u200b", "Toy\nStory", "\ue000", "7")] == [True] * 4
    # a zero-width space or a BOM alone was text: encoded as the empty text, every such item at 1.0 to the others
    (tmp_path / "zw.csv").write_text("item_id,title,tag\n1,Toy Story,\u200b\n2,\u200b,x\n3,\ufeff,\n",
                                     encoding="utf-8")
    with pytest.raises(DataError, match=r"row 3: no text in title, tag"):
        load_catalog(tmp_path / "zw.csv", show_progress=False)
    cat = load_catalog(tmp_path / "zw.csv", skip_invalid=True, show_progress=False)
    assert cat.texts == ["Toy Story", "x"]
    # rows in memory as a JSON Lines file is read: a lone surrogate is U+FFFD, with a warning (a bare
    # UnicodeEncodeError when the content was hashed)
    rows = [json.loads(line) for line in ['{"item_id": 1, "title": "ok"}', '{"item_id": 2, "title": "cut \\ud83d"}']]
    with caplog.at_level("WARNING", logger="mmrec.catalog"):
        assert load_catalog(rows, show_progress=False).texts == ["ok", "cut \ufffd"]
    assert "1 row(s) in memory hold a lone surrogate, half of a character (a cut emoji?), read as U+FFFD: row 2 " \
           "('\\ud83d')" in caplog.text


def test_parquet_binary_cells_are_text_and_a_pandas_index_is_no_column(tmp_path):
    import pandas as pd

    pq.write_table(pa.table({"item_id": pa.array([b"i0", b"i1"]), "title": pa.array([b"red boots", b"mug"])}),
                   tmp_path / "b.parquet")
    cat = load_catalog(tmp_path / "b.parquet", show_progress=False)
    assert cat.item_ids == ["i0", "i1"] and cat.texts == ["red boots", "mug"] and cat.text_fields == ["title"]
    pq.write_table(pa.table({"item_id": pa.array([b"i0", b"\xff"]), "title": ["a", "b"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"row 2, field 'item_id': binary value is not UTF-8 text"):
        load_catalog(tmp_path / "bad.parquet", show_progress=False)
    # fixed-size binary ids and lists of binary tags too
    pq.write_table(pa.table({"item_id": pa.array([b"ab", b"cd"], pa.binary(2)), "tags": pa.array([[b"x", b"y"], [b"z"]]),
                             "title": ["a", "b"]}), tmp_path / "fb.parquet")
    cat = load_catalog(tmp_path / "fb.parquet", show_progress=False)
    assert cat.item_ids == ["ab", "cd"] and cat.text_fields == ["tags", "title"] and cat.texts == ["x, y. a", "z. b"]
    assert cat.records == [{"tags": "x|y", "title": "a"}, {"tags": "z", "title": "b"}]
    # nulls in a list of binary tags; a list of ints stays no text even when empty; a binary hash that
    # is no text is left as it is (only an id must be text)
    pq.write_table(pa.table({"item_id": ["a", "b"], "tags": pa.array([[b"t1", None], []]),
                             "nums": pa.array([[], None], pa.list_(pa.int64())),
                             "md5": pa.array([b"\xff" * 4] * 2, pa.binary(4)), "title": ["x", "y"]}),
                   tmp_path / "p3.parquet")
    cat = load_catalog(tmp_path / "p3.parquet", show_progress=False)
    assert cat.text_fields == ["tags", "title"] and cat.texts == ["t1. x", "y"]
    # an image column of file names as the disk holds them, some no UTF-8 (Latin-1): read as those files (every
    # path read "b'...'", not found)
    names = [b"plain.png", b"gray.png", b"alpha.png", b"pal.png", b"lat\xe9.png"]
    for name in names:
        with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
            Image.new("RGB", (4, 4)).save(f, format="PNG")
    pq.write_table(pa.table({"item_id": list(range(5)), "title": [f"t{k}" for k in range(5)],
                             "image": pa.array(names, pa.binary())}), tmp_path / "img.parquet")
    cat = load_catalog(tmp_path / "img.parquet", text_fields=["title"], image_field="image", show_progress=False)
    assert [os.fsencode(p) for p in cat.images] == [os.path.join(os.fsencode(tmp_path), n) for n in names]
    assert [r["image"] for r in cat.records] == ["plain.png", "gray.png", "alpha.png", "pal.png", "lat\ufffd.png"]
    # a column of text with a bad cell is named, not dropped from the text
    titles = [f"t{k}".encode() for k in range(11)] + [b"\xffx"]
    pq.write_table(pa.table({"item_id": [str(k) for k in range(12)], "title": pa.array(titles)}), tmp_path / "p5.parquet")
    with pytest.raises(DataError, match=r"row 12, field 'title': binary value is not UTF-8 text"):
        load_catalog(tmp_path / "p5.parquet", show_progress=False)
    # a struct holding binary values, a date and a list of binary values is one JSON text (a TypeError
    # before); a struct of bytes that are no text keeps them as str shows them
    import datetime

    meta = pa.array([{"brand": b"Acme", "since": datetime.date(2020, 1, 2), "tags": [b"a", b"b"]},
                     {"brand": b"Zed", "since": None, "tags": []}])
    pq.write_table(pa.table({"item_id": ["a", "b"], "title": ["x", "y"], "meta": meta}), tmp_path / "st.parquet")
    cat = load_catalog(tmp_path / "st.parquet", text_fields=["title"], show_progress=False)
    assert cat.records == [{"title": "x", "meta": '{"brand": "Acme", "since": "2020-01-02", "tags": ["a", "b"]}'},
                           {"title": "y", "meta": '{"brand": "Zed", "since": null, "tags": []}'}]
    pq.write_table(pa.table({"item_id": ["a", "b"], "title": ["x", "y"], "h": pa.array([{"k": b"\xff"}, {"k": b"\x80"}])}),
                   tmp_path / "sh.parquet")
    assert [r["h"] for r in load_catalog(tmp_path / "sh.parquet", show_progress=False).records] == \
        ['{"k": "b\'\\\\xff\'"}', '{"k": "b\'\\\\x80\'"}']
    # a list of structs holding binary values is no text, as the same with string values is not
    for kind in (pa.binary(), pa.string()):
        value = b"red" if kind == pa.binary() else "red"
        column = pa.array([[{"n": value}], []], pa.list_(pa.struct([("n", kind)])))
        pq.write_table(pa.table({"item_id": ["a", "b"], "title": ["x", "y"], "c": column}), tmp_path / "ls.parquet")
        cat = load_catalog(tmp_path / "ls.parquet", show_progress=False)
        assert cat.text_fields == ["title"] and cat.texts == ["x", "y"], kind
    # DataFrame.to_parquet writes any index but a plain range as a column "__index_level_0__"
    pd.DataFrame({"item_id": [1, 2], "title": ["a", "b"]}, index=["x", "y"]).to_parquet(tmp_path / "ix.parquet")
    cat = load_catalog(tmp_path / "ix.parquet", show_progress=False)
    assert cat.texts == ["a", "b"] and cat.records == [{"title": "a"}, {"title": "b"}]


def test_an_id_holding_a_line_break_is_refused_and_header_names_are_stripped(tmp_path):
    (tmp_path / "quote.csv").write_text('item_id,title\n"1,a\n2,b\n3",c\n4,d\n')  # an unbalanced quote
    with pytest.raises(DataError, match=r"row 1, field 'item_id': holds a line break \(in a CSV: an unbalanced quote"):
        load_catalog(tmp_path / "quote.csv", show_progress=False)
    (tmp_path / "spaces.csv").write_text(" item_id, title ,price\n007, a ,3\n")
    cat = load_catalog(tmp_path / "spaces.csv", text_fields=["title"], show_progress=False)
    assert cat.item_ids == ["007"] and cat.records == [{"title": " a ", "price": "3"}] and cat.texts == ["a"]
    (tmp_path / "twice.csv").write_text("item_id,title, title\n1,a,b\n")
    with pytest.raises(DataError, match=r"field 'title': the header names this column 2 times"):
        load_catalog(tmp_path / "twice.csv", show_progress=False)


def test_a_wide_csv_is_typed_over_every_row_and_blank_header_names_are_unnamed(tmp_path):
    # pandas parsed a wide file in blocks of ~2**20 / columns rows: a word after row 32,768 in a
    # 20-column file failed the file; and names of spaces all became "", one column hiding another
    cols = ",".join(f"c{k}" for k in range(17))
    lines = [f"item_id,title,year,{cols}"] + [f"{i},t {i},{'unknown' if i == 35000 else 1998},{','.join(['x'] * 17)}"
                                             for i in range(40000)]
    (tmp_path / "wide.csv").write_text("\n".join(lines) + "\n")
    cat = load_catalog(tmp_path / "wide.csv", text_fields=["title"], show_progress=False)
    assert len(cat) == 40000 and cat.records[35000]["year"] == "unknown" and cat.records[0]["year"] == "1998"
    (tmp_path / "blank.csv").write_text("item_id,title, ,  \n1,a,x,z\n2,b,y,w\n")
    cat = load_catalog(tmp_path / "blank.csv", show_progress=False)
    assert cat.text_fields == ["title", "Unnamed: 2", "Unnamed: 3"] and cat.texts == ["a. x. z", "b. y. w"]
    (tmp_path / "types.csv").write_text("item_id,title,n,flag,empty\n007, a , 3 ,true,\n8,b,2.5e3,FALSE,\n")
    cat = load_catalog(tmp_path / "types.csv", show_progress=False)
    assert cat.item_ids == ["007", "8"] and cat.text_fields == ["title"]  # numbers, booleans, empties: no text
    assert cat.records == [{"title": " a ", "n": "3", "flag": "true", "empty": ""},
                           {"title": "b", "n": "2.5e3", "flag": "FALSE", "empty": ""}]


def test_a_number_column_with_a_few_words_is_warned_about_as_text(tmp_path, caplog):
    rows = "".join(f"{i},title {i},{'N/A' if i == 2 else i * 10}\n" for i in range(1, 12))
    (tmp_path / "p.csv").write_text("item_id,title,price\n" + rows)
    with caplog.at_level("WARNING", logger="mmrec.catalog"):
        assert load_catalog(tmp_path / "p.csv", show_progress=False).text_fields == ["title", "price"]
    assert "column 'price' is read as text: 1 of its 11 values is not a number (row 2: 'N/A')" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmrec.catalog"):  # named: no warning
        assert load_catalog(tmp_path / "p.csv", text_fields=["title"], show_progress=False).text_fields == ["title"]
    assert caplog.text == ""


def test_an_unclosed_quote_is_refused_and_a_quoted_empty_line_is_a_row(tmp_path):
    # the csv module reads a quote never closed as one field to the end of the file, silently
    (tmp_path / "q.csv").write_text('item_id,title,price\n1,a,3\n2,"Foo,3\n3,Bar,4\n4,Baz,5\n')
    with pytest.raises(DataError, match=r"q\.csv: row 2: an unbalanced quote: the field it opens runs to the end"):
        load_catalog(tmp_path / "q.csv", show_progress=False)
    # "" is what csv.writer writes for an empty one-field row: a row (an empty id), not a blank line
    (tmp_path / "e.csv").write_text('item_id,title\n1,a\n""\n   \n\n2,b\n')
    with pytest.raises(DataError, match=r"row 2, field 'item_id': empty item id"):
        load_catalog(tmp_path / "e.csv", show_progress=False)
    assert load_catalog(tmp_path / "e.csv", skip_invalid=True, show_progress=False).rows == [1, 3]
    # a stray quote inside a field is read as before, not refused; and it does not hide an open one later
    (tmp_path / "s.csv").write_text('item_id,title\n1,say "hi"\n2,"x"y\n3,b\n')
    assert load_catalog(tmp_path / "s.csv", show_progress=False).texts == ['say "hi"', "xy", "b"]
    (tmp_path / "s2.csv").write_text('item_id,title\n1,"a"b\n2,d\n3,"open\n4,e\n')
    with pytest.raises(DataError, match=r"s2\.csv: row 3: an unbalanced quote"):
        load_catalog(tmp_path / "s2.csv", show_progress=False)
    (tmp_path / "h.csv").write_text('item_id,"ti\ntle\n1,a\n')
    with pytest.raises(DataError, match=r"an unbalanced quote in the header"):
        load_catalog(tmp_path / "h.csv", show_progress=False)
    # a stray quote and an open one on one line; a quoted field closed on a later line after a stray one
    (tmp_path / "s3.csv").write_text('item_id,title,desc\n1,"a"b,"open\n2,x,y\n3,y,z\n')
    with pytest.raises(DataError, match=r"s3\.csv: row 1: an unbalanced quote"):
        load_catalog(tmp_path / "s3.csv", show_progress=False)
    (tmp_path / "s4.csv").write_text('item_id,title,desc,n\n1,"a"b,"x\n",2\n3,c,d,4\n')
    cat = load_catalog(tmp_path / "s4.csv", text_fields=["desc"], show_progress=False)
    assert cat.item_ids == [1, 3] and cat.records[0]["desc"] == "x\n"
    (tmp_path / "s5.csv").write_text('"item_id"x,title\n1,a\n2,"open\n')
    with pytest.raises(DataError, match=r"s5\.csv: row 2: an unbalanced quote"):
        load_catalog(tmp_path / "s5.csv", show_progress=False)


def test_checked_images_skip_the_decode_of_known_bytes_and_never_read_a_fifo(tmp_path, image_paths, monkeypatch):
    import os
    import shutil
    import threading

    import encoders.image
    from encoders.cache import file_hash

    shutil.copy(image_paths[0], tmp_path / "a.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    os.mkfifo(tmp_path / "fifo.jpg")  # reading it would wait for a writer forever
    (tmp_path / "c.csv").write_text("item_id,title,image\n1,x,a.jpg\n2,y,bad.jpg\n3,z,fifo.jpg\n")
    checked = []
    real = encoders.image.check_image
    monkeypatch.setattr(encoders.image, "check_image", lambda path: checked.append(os.path.basename(path)) or real(path))
    got = []
    reader = threading.Thread(target=lambda: got.append(load_catalog(
        tmp_path / "c.csv", mask_bad_images=True, checked_images={file_hash(tmp_path / "a.jpg")}, show_progress=False)),
        daemon=True)
    reader.start()
    reader.join(60)
    assert not reader.is_alive(), "the FIFO was read"
    assert checked == ["bad.jpg", "fifo.jpg"]  # a.jpg's bytes are known to decode
    assert got[0].images[0].endswith("a.jpg") and got[0].images[1:] == [None, None]
    assert "not a regular file" in got[0].masked[1].message


def test_image_paths_read_as_text_and_a_named_encoder_with_nothing_to_read_are_warned_about(tmp_path, caplog):
    from mmrec.item_index import catalog_encoders

    (tmp_path / "u.csv").write_text("item_id,title,img_url,tags\n1,a,http://cdn.example.com/p/1.jpg,a.jpg|b.jpg\n"
                                    "2,b,https://cdn.example.com/p/2.JPG?w=200&h=1,c.png|d.png\n")
    with caplog.at_level("WARNING", logger="mmrec"):  # URLs are named as such (--image-field reads local files)
        load_catalog(tmp_path / "u.csv", show_progress=False)
    assert "column 'img_url' holds image URLs ('http://cdn.example.com/p/1.jpg', ...), read as text: mmrec reads " \
           "local image files only" in caplog.text and "column 'tags'" not in caplog.text  # a list is no path
    caplog.clear()
    (tmp_path / "c.csv").write_text("item_id,title,picture\n1,red boots,p1.jpg\n2,blue mug,img/p2.PNG\n3,hat,\n")
    with caplog.at_level("WARNING", logger="mmrec"):
        cat = load_catalog(tmp_path / "c.csv", show_progress=False)
        assert cat.text_fields == ["title", "picture"] and not cat.has_images
        assert "column 'picture' holds image file names ('p1.jpg', ...) but is read as text, and no picture is read: " \
               "pass --image-field picture" in caplog.text
        caplog.clear()
        load_catalog(tmp_path / "c.csv", image_field="picture", check_images=False, show_progress=False)  # as images
        load_catalog(tmp_path / "c.csv", show_progress=False, encoded=["text"])  # images off: none either
        assert "holds image file names" not in caplog.text
        assert catalog_encoders(cat, text_encoder="none", image_encoder="resnet18") == ({}, {})
        assert f"image encoder resnet18 was named, but {tmp_path / 'c.csv'} has no images (image column: none): the " \
               "index has no image modality" in caplog.text
        caplog.clear()
        catalog_encoders(cat, text_encoder="none")  # the default encoder: nothing asked for by name
        assert "was named" not in caplog.text


def test_a_text_column_an_extended_index_reads_and_the_file_lacks_is_warned_about(tmp_path, caplog):
    (tmp_path / "new.csv").write_text("item_id,title\n1,red boots\n")
    with caplog.at_level("INFO", logger="mmrec.catalog"):
        cat = load_catalog(tmp_path / "new.csv", text_fields=["title", "year"], optional=["text_fields"],
                           show_progress=False)
        assert cat.text_fields == ["title"]
        assert [r.levelname for r in caplog.records if "has no 'year' column(s)" in r.message] == ["WARNING"]
        caplog.clear()  # an update keeps the stored values: nothing to warn about
        load_catalog(tmp_path / "new.csv", text_fields=["title", "year"], optional=["text_fields"], partial=True,
                     show_progress=False)
        assert [r.levelname for r in caplog.records if "has no 'year' column(s)" in r.message] == ["INFO"]


def test_json_booleans_read_as_json_writes_them_and_one_text_field_is_one_column(tmp_path):
    # a JSON true was stored as Python's 'True', so --where in_stock=true found nothing where a CSV's matched
    (tmp_path / "b.jsonl").write_text('{"item_id": 1, "title": "a", "in_stock": true}\n'
                                      '{"item_id": 2, "title": "b", "in_stock": false}\n')
    cat = load_catalog(tmp_path / "b.jsonl", show_progress=False)
    assert [r["in_stock"] for r in cat.records] == ["true", "false"]
    pq.write_table(pa.table({"item_id": [1, 2], "title": ["a", "b"], "ok": [True, None]}), tmp_path / "b.parquet")
    assert [r["ok"] for r in load_catalog(tmp_path / "b.parquet", show_progress=False).records] == ["true", ""]
    # text_fields="title" is the column title, not the columns t, i, t, l, e
    assert load_catalog(tmp_path / "b.jsonl", text_fields="title", show_progress=False).text_fields == ["title"]
    from mmrec.catalog import catalog_from_records

    assert catalog_from_records([{"item_id": 1, "title": "a"}], text_fields="title").texts == ["a"]


def test_an_image_url_is_named_as_one(tmp_path, image_paths):
    import shutil

    # "https://cdn/x.jpg" was joined to the catalog's folder and reported as "https:/cdn/x.jpg: file not found"
    (tmp_path / "c.csv").write_text("item_id,title,image\n1,a,https://cdn.example.com/p/1.jpg\n2,b,\n")
    with pytest.raises(DataError, match=r"row 1, field 'image': https://cdn.example.com/p/1.jpg: a URL: mmrec reads "
                                        r"local image files only"):
        load_catalog(tmp_path / "c.csv", show_progress=False)
    cat = load_catalog(tmp_path / "c.csv", mask_bad_images=True, show_progress=False)
    assert cat.images == [None, None] and "a URL" in cat.masked[0].message
    # a data: URI is no file either; a file:// URI is the local file it names
    shutil.copy(image_paths[0], tmp_path / "my pic.jpg")
    (tmp_path / "d.csv").write_text(f"item_id,title,image\n1,a,\"data:image/png;base64,AAAA\"\n2,b,"
                                    f"file://{tmp_path / 'my%20pic.jpg'}\n")
    cat = load_catalog(tmp_path / "d.csv", mask_bad_images=True, show_progress=False)
    assert cat.images == [None, str(tmp_path / "my pic.jpg")] and "a URL" in cat.masked[0].message


def test_empty_lines_before_the_header_are_skipped(tmp_path):
    (tmp_path / "b.csv").write_text("\ufeff\n\r\nitem_id,title\n1,a b\n")  # "file is empty (no header row)" before
    assert load_catalog(tmp_path / "b.csv", show_progress=False).item_ids == [1]


def test_an_image_cell_holding_a_list_is_named(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"item_id": 1, "title": "a", "image": ["a.jpg", "b.jpg"]}\n'
                                      '{"item_id": 2, "title": "b", "image": null}\n')
    with pytest.raises(DataError, match=r'row 1, field \'image\': \["a.jpg", "b.jpg"\]: an image cell holds one local '
                                        r"path \(a string\)"):
        load_catalog(tmp_path / "c.jsonl", show_progress=False)


def test_every_picture_failing_is_refused_for_a_new_index_only(tmp_path):
    (tmp_path / "c.csv").write_text("item_id,title,image\nA,red,gone.png\nB,,gone2.png\nC,blue,gone3.png\n")
    for skip in (False, True):  # B (no text) is a bad row of its own: no picture survives either way
        with pytest.raises(DataError, match=r"none of the 3 images could be read .*a wrong --image-root"):
            load_catalog(tmp_path / "c.csv", mask_bad_images=True, skip_invalid=skip, show_progress=False)
    # index add / update (their items have pictures of their own) take it, whichever options are given
    cat = load_catalog(tmp_path / "c.csv", mask_bad_images=True, skip_invalid=True, every_image_may_fail=True,
                       text_fields=["title"], image_field="image", show_progress=False)
    assert cat.item_ids == ["A", "C"] and cat.images == [None, None]
    (tmp_path / "u.csv").write_text("item_id,title,image\nA,red,https://x/a.jpg\nC,blue,https://x/c.jpg\n")
    with pytest.raises(DataError, match=r"none of the 2 images could be read .*they are URLs"):
        load_catalog(tmp_path / "u.csv", mask_bad_images=True, show_progress=False)
    # a JSON image cell holding a list is named once, not again as a row without content
    (tmp_path / "l.jsonl").write_text('{"item_id": 1, "title": "", "image": ["a.jpg"]}\n{"item_id": 2, "title": "b"}\n')
    with pytest.raises(DataError) as e:
        load_catalog(tmp_path / "l.jsonl", show_progress=False)
    assert str(e.value).count("row 1") == 1


def test_a_lone_surrogate_in_json_text_is_read_as_a_replacement_character(tmp_path, caplog):
    from mmrec.interactions import load_interactions

    # it failed later, writing the text as UTF-8, with a bare UnicodeEncodeError (half of an emoji, cut)
    (tmp_path / "items.jsonl").write_text('{"item_id": 1, "title": "ok \\ud83d\\ude00"}\n'
                                          '{"item_id": 2, "title": "bad \\ud83d", "tags": ["x\\udfff"]}\n')
    with caplog.at_level("WARNING", logger="mmrec.jsonlines"):
        cat = load_catalog(tmp_path / "items.jsonl", show_progress=False)
    assert cat.texts == ["ok \U0001F600", "bad \ufffd. x\ufffd"]
    assert caplog.records[0].getMessage() == (
        f"{tmp_path / 'items.jsonl'}: 1 row(s) hold a lone surrogate, half of a character (a cut emoji?), read as "
        "U+FFFD: row 2, field 'title' ('\\ud83d')")
    (tmp_path / "items.json").write_text('[{"item_id": 1, "title": "fine"}, {"item_id": 2, "title": "x \\udfff"}]')
    assert load_catalog(tmp_path / "items.json", show_progress=False).texts == ["fine", "x \ufffd"]
    (tmp_path / "one.json").write_text('{"item_id": "b", "title": "new \\udc00 title"}\n')  # one object: an update's
    assert load_catalog(tmp_path / "one.json", show_progress=False).texts == ["new \ufffd title"]
    (tmp_path / "inter.jsonl").write_text('{"user_id": "u1", "item_id": 1, "review": "great \\ud83d"}\n')
    assert load_interactions(tmp_path / "inter.jsonl").user_ids == ["u1"]  # a column nobody reads refuses nothing


def test_a_header_row_of_spaces_alone_is_named_as_such(tmp_path):
    # it was read as a header of one nameless column: "row 1: has 2 fields but the header names 1", every row so
    (tmp_path / "c.csv").write_text("  \nitem_id,title\n1,a\n")
    with pytest.raises(DataError) as e:
        load_catalog(tmp_path / "c.csv", show_progress=False)
    assert str(e.value) == (f"{tmp_path / 'c.csv'}: the header row names no column (a line of spaces, tabs or "
                            "separators alone?): the header is the first line that is not empty; delete the lines "
                            "before it")
    (tmp_path / "ok.csv").write_text("\n\nitem_id,title\n1,a\n")
    assert load_catalog(tmp_path / "ok.csv", show_progress=False).texts == ["a"]
