"""The mmrec CLI end to end, with the real packaged MiniLM text encoder."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmrec.cli import main
from mmrec.errors import MMRecError
from mmrec.recommender import Recommender

MOVIES = [
    ("m1", "Toy Tales", "An animated cartoon film for children about toys that come to life"),
    ("m2", "Deep Freeze", "A submarine crew is trapped under the arctic ice"),
    ("m3", "Court Day", "A lawyer defends an innocent man in a tense courtroom drama"),
    ("m4", "Galaxy Run", "Astronauts fight aliens on a distant planet in outer space"),
    ("m5", "Kitchen Love", "A romantic comedy about two rival chefs in Paris"),
    ("m6", "Stock Crash", "A documentary about the financial crisis and Wall Street banks"),
]


def write(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "summary"])
        w.writerows(rows)
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write(d / "movies.csv", MOVIES)
    assert main(["index", "build", "--catalog", str(d / "movies.csv"), "--out", str(d / "idx"), "--no-cache", "-q"]) == 0
    return d


def test_search_ranks_the_animated_film_first(built, capsys):
    code, out, _ = run(capsys, "search", "--index", str(built / "idx"), "--text", "animation for kids", "--json", "-q")
    assert code == 0
    res = json.loads(out)
    assert res[0]["item_id"] == "m1" and res[0]["title"] == "Toy Tales"
    assert len(res) == 6 and set(res[0]) == {"item_id", "score", "title", "summary"}
    assert res[0]["score"] > res[1]["score"]


def test_similar_table_and_json(built, capsys):
    code, out, _ = run(capsys, "similar", "--index", str(built / "idx"), "--item", "m4", "-k", "3", "-q")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "score", "item_id", "title"]
    assert len(lines) == 4 and "m4" not in out.split("item_id", 1)[1]
    code, out, _ = run(capsys, "similar", "--index", str(built / "idx"), "--item", "m4", "-k", "3", "--json", "-q")
    assert [r["item_id"] for r in json.loads(out)] == [line.split()[2] for line in lines[1:]]


def test_several_text_queries_are_one_batch_and_answer_as_one_at_a_time(built, capsys, tmp_path, caplog):
    idx = str(built / "idx")
    queries = ["animation for kids", "outer space aliens", "a trial in court"]
    rec = Recommender.load(idx, show_progress=False)
    want = [rec.search_text(q, 3) for q in queries]
    got = rec.search_texts(queries, 3)
    assert [[r.item_id for r in g] for g in got] == [[r.item_id for r in w] for w in want]
    assert [g[0].item_id for g in got] == ["m1", "m4", "m3"]
    # Encoded in one padded batch: equal to the single encodes up to float32 rounding.
    np.testing.assert_allclose([[r.score for r in g] for g in got], [[r.score for r in w] for w in want], atol=1e-5)
    code, out, _ = run(capsys, "search", "--index", idx, *sum((["--text", q] for q in queries), []), "-k", "3",
                       "--json", "-q")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [line["query"] for line in lines] == queries
    assert [[r["item_id"] for r in line["results"]] for line in lines] == [[r.item_id for r in g] for g in got]
    (tmp_path / "q.txt").write_text("\n".join(queries) + "\n", encoding="utf-8")
    code, out, _ = run(capsys, "search", "--index", idx, "--queries", str(tmp_path / "q.txt"), "-k", "3", "--json", "-q")
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == lines
    (tmp_path / "one.txt").write_text(queries[0], encoding="utf-8")  # a file of one query still answers in lines
    code, out, _ = run(capsys, "search", "--index", idx, "--queries", str(tmp_path / "one.txt"), "-k", "3", "-q")
    assert code == 0 and out.startswith("query animation for kids\n") and out.splitlines()[2].split()[2] == "m1"
    (tmp_path / "bad.txt").write_text("space\n\ncourt\n  \nlaw\n", encoding="utf-8")
    code, _, err = run(capsys, "search", "--index", idx, "--queries", str(tmp_path / "bad.txt"), "-q")
    assert code == 1 and "bad.txt: row 2: empty query" in err and "bad.txt: row 4: empty query" in err
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    code, _, err = run(capsys, "search", "--index", idx, "--queries", str(tmp_path / "latin1.txt"), "-q")
    assert code == 1 and "latin1.txt: not UTF-8 text (byte 3)" in err
    code, _, err = run(capsys, "search", "--index", idx, "--queries", str(tmp_path / "none.txt"), "-q")
    assert code == 1 and "none.txt: file not found" in err
    code, _, err = run(capsys, "search", "--index", idx, "--queries", str(tmp_path), "-q")
    assert code == 1 and f"{tmp_path}: cannot read it (Is a directory)" in err
    # A byte-order mark is dropped, blank lines at the end are ignored, only newlines split queries.
    (tmp_path / "bom.txt").write_bytes("\ufeffanimation for kids\r\nouter\u2028space aliens\n\n\n".encode("utf-8"))
    code, out, _ = run(capsys, "search", "--index", idx, "--queries", str(tmp_path / "bom.txt"), "-k", "1", "--json",
                       "-q")
    assert code == 0 and [json.loads(line)["query"] for line in out.splitlines()] == \
        ["animation for kids", "outer\u2028space aliens"]
    with pytest.raises(MMRecError, match="search_texts takes a list of queries, got one string"):
        rec.search_texts("space")
    with pytest.raises(MMRecError, match="text query 2 of 2 is empty"):
        rec.search_texts(["space", " "])
    assert rec.search_texts([]) == []
    # only characters the tokenizer drops: the empty text's vector, every such item at 1.0 (it was accepted)
    with pytest.raises(MMRecError, match=r"text query 2 of 2 is empty \(only characters the encoder drops\)"):
        rec.search_texts(["space", "\u200b\ufeff "])
    with pytest.raises(MMRecError, match=r"empty text query \(only characters the encoder drops\)"):
        rec.search_text("\x00")
    # half of a character (a command-line argument that is no UTF-8: caf\xe9 in a UTF-8 locale), read as U+FFFD
    with caplog.at_level("WARNING", logger="mmrec.item_index"):
        code, out, _ = run(capsys, "search", "--index", idx, "--text", "caf\udce9", "-k", "2", "--json")
    assert code == 0 and json.loads(out) == [r.to_dict() for r in rec.search_text("caf\ufffd", 2)]
    assert "text query 1 of 1 holds '\\udce9', half of a character (no UTF-8), read as U+FFFD" in caplog.text
    assert rec.search_text("caf\udce9", 2) == rec.search_text("caf\ufffd", 2)


def test_similar_for_several_items_and_for_the_whole_catalog(built, capsys, monkeypatch):
    idx = str(built / "idx")
    rec = Recommender.load(idx, show_progress=False)
    code, out, _ = run(capsys, "similar", "--index", idx, "--item", "m4", "m1", "-k", "2", "--json", "-q")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [line["item_id"] for line in lines] == ["m4", "m1"]
    assert [[r["item_id"] for r in line["results"]] for line in lines] == \
        [[r.item_id for r in rec.similar(i, 2)] for i in ("m4", "m1")]
    code, out, _ = run(capsys, "similar", "--index", idx, "--all-items", "-k", "5", "--by", "cosine", "--json", "-q")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["item_id"] for line in lines] == [m[0] for m in MOVIES]
    monkeypatch.setattr("mmrec.cli.STREAM_BATCH", 4)  # printed 4 items at a time: the same lines
    assert run(capsys, "similar", "--index", idx, "--all-items", "-k", "5", "--by", "cosine", "--json", "-q")[1] == out
    assert all(len(line["results"]) == 5 and line["item_id"] not in {r["item_id"] for r in line["results"]}
               for line in lines)
    code, out, _ = run(capsys, "similar", "--index", idx, "--item", "m4", "--item", "m1", "-k", "2", "-q")
    assert code == 0 and out.startswith("item m4\n") and "\nitem m1\n" in out
    for argv, message, status in [(["--item", "m1", "m2", "--explain"], "--explain takes one --item", 2),
                                  (["--item", "m1", "nope"], "item 'nope' is not in this index", 1)]:
        code, _, err = run(capsys, "similar", "--index", idx, *argv, "-q")
        assert code == status and message in err  # options that do not go together: 2, as the parser's errors
    for argv, message in [(["--all-items", "--item", "m1"], "argument --item: not allowed with argument --all-items"),
                          ([], "one of the arguments --item --all-items is required")]:
        with pytest.raises(SystemExit) as exit_:
            main(["similar", "--index", idx, *argv, "-q"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # (the last of the two was explained, the first dropped, exit 0)
        main(["explain", "--index", idx, "--item", "m1", "--item", "m2", "-q"])
    assert exit_.value.code == 2 and "argument --item: given twice; it takes one value" in capsys.readouterr().err


def test_a_table_without_a_title_field_has_no_blank_column():
    import io

    from mmrec.cli import print_results
    from mmrec.item_index import Result

    results = [Result(7, 0.5, {}), Result("long-id-42", -0.25, {"title": "T"})]
    out = io.StringIO()
    print_results(results, False, None, out)
    assert out.getvalue().splitlines() == ["rank    score  item_id", "   1   0.5000  7", "   2  -0.2500  long-id-42"]
    out = io.StringIO()
    print_results(results, False, "title", out)
    assert out.getvalue().splitlines() == ["rank    score  item_id     title", "   1   0.5000  7",
                                           "   2  -0.2500  long-id-42  T"]
    out = io.StringIO()  # a multi-line title (a quoted CSV value) stays on its result's line
    print_results([Result(1, 0.5, {"title": "Toy\nStory\r\n (1995)"})], False, "title", out)
    assert out.getvalue().splitlines() == ["rank    score  item_id  title", "   1   0.5000  1        Toy Story (1995)"]
    # widths as a terminal shows them (a CJK character takes two columns: the title column moved), a terminal
    # escape in a title not obeyed, a long wide title cut at 70 columns, not 70 characters
    out = io.StringIO()
    print_results([Result("東京-3", 0.5, {"title": "\x1b[31mred\x1b[0m"}), Result("é4", 0.25, {"title": "語" * 50})],
                  False, "title", out)
    assert out.getvalue().splitlines() == ["rank    score  item_id  title", "   1   0.5000  東京-3   [31mred [0m",
                                           "   2   0.2500  é4       " + "語" * 33 + "..."]


def test_the_header_line_of_each_query_shows_its_id_escaped(capsys):
    from mmrec.cli import print_batches
    from mmrec.item_index import Result

    # an id from the data file reached the terminal raw: an escape in it was obeyed, a no-break space passed for a space
    print_batches("item_id", ["x\x1b[7mINV", "a\xa0b"], [[Result(1, 0.5, {})], []], False)
    assert capsys.readouterr().out.splitlines()[::3] == ["item x\\x1b[7mINV", "item a\\xa0b"]


def test_display_widths_and_one_line_text():
    from mmrec.display import display_width, one_line, pad, visible

    assert [display_width(t) for t in ("abc", "東京", "e\u0301", "a\u200db", "")] == [3, 4, 1, 2, 0]
    # emoji: with the presentation selector, a skin tone, a family joined by U+200D: two columns each
    assert [display_width(t) for t in ("\u2764\ufe0f", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469")] == [2, 2, 2]
    assert one_line("x\u202eabc\u202c y") == "xabc y"  # a bidirectional override reorders what follows
    assert visible("a\tb\x1b\u202e") == "a\\tb\\x1b\\u202e" and visible("a  b") == "a  b"  # ids stay apart
    assert visible("a\\tb") == "a\\\\tb" and visible("a\u200bb") == "a\\u200bb" and visible("a\xa0b") == "a\\xa0b"
    # joined emoji with a text-style symbol (a health worker, a pirate flag) and decomposed Hangul: one cell each
    assert [display_width(t) for t in ("\U0001f9d1\u200d\u2695\ufe0f", "\U0001f3f4\u200d\u2620\ufe0f",
                                       "\u1100\u1161\u11a8")] == [2, 2, 2]
    assert display_width("\u4e2d\u200dx") == 3  # a joiner before a letter joins nothing, nor between CJK
    assert display_width("\u4e2d\u200d\u6587") == 4 and visible("\u4e2d\u200d\u6587") == "\u4e2d\\u200d\u6587"
    for seq in ("\U0001f3f3\ufe0f\u200d\U0001f308", "\u2764\ufe0f\u200d\U0001f525",  # rainbow flag, heart on fire
                "\U0001f469\u200d\u2764\ufe0f\u200d\U0001f48b\u200d\U0001f468"):  # a kiss
        assert display_width(seq) == 2 and visible(seq) == seq
    # a joiner or selector that joins nothing is escaped (they printed alike: these as plain 中文, a, 中)
    assert visible("\u4e2d\u200d\ufe0f\u6587") == "\u4e2d\\u200d\\ufe0f\u6587" and visible("a\ufe0f") == "a\\ufe0f"
    assert visible("\u4e2d\U000e0100") == "\u4e2d\\U000e0100" and visible("\u3164") == "\\u3164"
    assert display_width("1\ufe0f\u20e3") == 2 and visible("1\ufe0f\u20e3") == "1\ufe0f\u20e3"  # a keycap
    assert visible("\U0001f468\u200d\U0001f469") == "\U0001f468\u200d\U0001f469" and visible("a\u200db") == "a\\u200db"
    assert one_line("a\tb\n\x07c  d\u2028e") == "a b c d e"
    assert one_line("東京物語", 7) == "東京..." and one_line("東京物語", 8) == "東京物語" and one_line("abcdefgh", 6) == "abc..."
    assert pad("東", 4) == "東  " and pad("abcdef", 3) == "abcdef"


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(("quiet", "out_tty", "err_tty", "shown"), [
    (False, False, True, True),  # answers to a file, watched from a terminal
    (False, True, True, False),  # answers on the terminal: they are the progress, a bar would break them
    (False, False, False, False),  # everything to files: no bar in the log
    (True, False, True, False),  # -q
])
def test_the_answering_bar_shows_for_an_export_watched_from_a_terminal(quiet, out_tty, err_tty, shown):
    from mmrec.cli import answer_bar_wanted

    assert answer_bar_wanted(quiet, _Stream(out_tty), _Stream(err_tty)) is shown


def test_add_then_remove(built, capsys, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(built / "idx", idx)
    new = write(tmp_path / "new.csv", [("m7", "Puppet Show", "An animated musical cartoon with puppets for kids")])
    code, out, _ = run(capsys, "index", "add", "--index", str(idx), "--catalog", str(new), "--no-cache", "-q")
    assert code == 0 and "added 1 item to" in out and "7 items" in out
    code, out, _ = run(capsys, "search", "--index", str(idx), "--text", "animated puppets", "-k", "2", "--json", "-q")
    assert [r["item_id"] for r in json.loads(out)] == ["m7", "m1"]
    code, out, _ = run(capsys, "index", "remove", "--index", str(idx), "--item", "m7", "m1", "-q")
    assert code == 0 and "removed 2 items from" in out
    code, out, _ = run(capsys, "search", "--index", str(idx), "--text", "animated puppets", "--json", "-q")
    assert {r["item_id"] for r in json.loads(out)} == {"m2", "m3", "m4", "m5", "m6"}


def test_index_add_skip_invalid_skips_an_id_already_in_the_index_as_it_skips_a_duplicate(built, capsys, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(built / "idx", idx)
    rows = [("m2", "Deep Freeze II", "again"), ("m7", "Puppet Show", "puppets"), ("m7", "Puppet Show", "twice"),
            ("m8", "", "")]
    new = write(tmp_path / "new.csv", rows)
    only_known = write(tmp_path / "known.csv", [("m2", "Deep Freeze II", "again")])
    code, _, err = run(capsys, "index", "add", "--index", str(idx), "--catalog", str(only_known), "--no-cache", "-q")
    assert code == 1 and "row 1, field 'item_id': id 'm2' is already in the index" in err  # without it: refused
    code, out, _ = run(capsys, "index", "add", "--index", str(idx), "--catalog", str(new), "--skip-invalid",
                       "--no-cache", "-q")
    assert code == 0 and out.startswith("added 1 item to") and "7 items" in out
    report = [json.loads(line) for line in (idx / "skipped.jsonl").read_text().splitlines()]
    assert [(r["row"], r["item_id"], r["field"]) for r in report] == [(1, "m2", "item_id"), (3, "m7", "item_id"),
                                                                      (4, "m8", None)]
    assert report[0]["message"] == "id 'm2' is already in the index"
    kept = Recommender.load(idx, show_progress=False).items
    assert [it["fields"]["title"] for it in kept.items if it["item_id"] == "m2"] == ["Deep Freeze"]  # the old item stays
    nothing_left = write(tmp_path / "none.csv", [("m2", "Deep Freeze II", "again"), ("m9", "", "")])
    code, _, err = run(capsys, "index", "add", "--index", str(idx), "--catalog", str(nothing_left), "--skip-invalid",
                       "--no-cache", "-q")
    assert code == 1 and "no valid rows left" in err and "row 1, field 'item_id': id 'm2' is already in the index" in err
    assert "row 2: no text in title, summary" in err  # every row's reason, not the clashes alone


def test_index_build_from_precomputed_features_with_or_without_a_catalog(capsys, tmp_path):
    from mmrec.item_index import ItemIndex
    from mmrec.pipeline import npy_present

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(30, 4)).astype(np.float32)
    a[5] = 0  # item 5 lacks modality a: placed by b alone
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    code, out, _ = run(capsys, "index", "build", "--features", f"a={tmp_path / 'a.npy'}", "--features",
                       f"b={tmp_path / 'b.npy'}", "--out", str(tmp_path / "f"), "-q")
    assert code == 0 and out.startswith(f"built {tmp_path / 'f'}: 30 items")
    got = Recommender.load(tmp_path / "f", show_progress=False).items
    want = ItemIndex.from_features(list(range(30)), {"a": a, "b": b}, {"a": npy_present(a), "b": npy_present(b)},
                                   factory="Flat", show_progress=False)
    assert got.ids == list(range(30)) and got.modalities == ["a", "b"]  # MMRec's rows: item i is row i
    np.testing.assert_array_equal(got.vectors, want.vectors)
    assert [r.item_id for r in got.similar(3, 5)] == [r.item_id for r in want.similar(3, 5)]
    # index add takes the new items' rows of those features.
    (tmp_path / "new.csv").write_text("item_id\n30\n31\n")
    new_a, new_b = rng.normal(size=(2, 8)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32)
    np.save(tmp_path / "na.npy", new_a)
    np.save(tmp_path / "nb.npy", new_b)
    code, out, _ = run(capsys, "index", "add", "--index", str(tmp_path / "f"), "--catalog", str(tmp_path / "new.csv"),
                       "--features", f"a={tmp_path / 'na.npy'}", "--features", f"b={tmp_path / 'nb.npy'}", "-q")
    assert code == 0 and out.startswith("added 2 items to")
    added = Recommender.load(tmp_path / "f", show_progress=False).items
    # An id already in the index, skipped, would shift the feature rows: refused, nothing added.
    (tmp_path / "again.csv").write_text("item_id\n30\n32\n")
    code, _, err = run(capsys, "index", "add", "--index", str(tmp_path / "f"), "--catalog", str(tmp_path / "again.csv"),
                       "--features", f"a={tmp_path / 'na.npy'}", "--features", f"b={tmp_path / 'nb.npy'}",
                       "--skip-invalid", "-q")
    assert code == 1 and "row 1 was skipped (--skip-invalid), so the --features rows no longer line up" in err
    assert len(Recommender.load(tmp_path / "f", show_progress=False).items) == 32
    np.testing.assert_allclose(added.vector_of(31), got.vectorizer.item_vectors(
        {"a": new_a[1:], "b": new_b[1:]}, {"a": np.ones(1, bool), "b": np.ones(1, bool)}), rtol=1e-6)
    # Beside a catalog: its rows, its display fields; a row with no content anywhere is named.
    write(tmp_path / "c.csv", [(f"m{i}", f"Film {i}", "") for i in range(30)])
    code, _, err = run(capsys, "index", "build", "--catalog", str(tmp_path / "c.csv"), "--text-encoder", "none",
                       "--features", f"a={tmp_path / 'a.npy'}", "--out", str(tmp_path / "c"), "-q")
    assert code == 1 and "c.csv: row 6: item 'm5' has no content: no encoded text or image, and an all-zero row " \
        "in every feature file" in err and not (tmp_path / "c").exists()
    code, _, _ = run(capsys, "index", "build", "--catalog", str(tmp_path / "c.csv"), "--text-encoder", "none",
                     "--features", f"b={tmp_path / 'b.npy'}", "--out", str(tmp_path / "c"), "-q")
    with_catalog = Recommender.load(tmp_path / "c", show_progress=False).items
    assert code == 0 and with_catalog.ids[:2] == ["m0", "m1"] and with_catalog.similar("m3", 1)[0].fields["title"]
    np.testing.assert_array_equal(with_catalog.vectors, ItemIndex.from_features(
        list(range(30)), {"b": b}, factory="Flat", show_progress=False).vectors)
    # A row count that does not match the catalog, and options that need a catalog.
    code, _, err = run(capsys, "index", "build", "--catalog", str(tmp_path / "new.csv"), "--text-encoder", "none",
                       "--features", f"b={tmp_path / 'b.npy'}", "--out", str(tmp_path / "x"), "-q")
    assert code == 1 and "b.npy: 30 rows, but the catalog has 2 items" in err
    code, _, err = run(capsys, "index", "build", "--out", str(tmp_path / "x"), "-q")
    assert code == 2 and "give --catalog, --features NAME=PATH.npy, or both" in err
    code, _, err = run(capsys, "index", "build", "--features", f"b={tmp_path / 'b.npy'}", "--text-fields", "title",
                       "--skip-invalid", "--out", str(tmp_path / "x"), "-q")
    assert code == 2 and "--text-fields, --skip-invalid read the catalog: give --catalog too" in err
    write(tmp_path / "bad.csv", [("m0", "Film", "")] * 30)  # 29 duplicate ids skipped: the rows no longer line up
    code, _, err = run(capsys, "index", "build", "--catalog", str(tmp_path / "bad.csv"), "--text-encoder", "none",
                       "--features", f"b={tmp_path / 'b.npy'}", "--skip-invalid", "--out", str(tmp_path / "x"), "-q")
    assert code == 1 and "rows 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... were skipped (--skip-invalid), so the --features rows" in err
    code, _, err = run(capsys, "train", "--interactions", str(tmp_path / "none.tsv"), "--catalog", str(tmp_path / "c.csv"),
                       "--features", f"b={tmp_path / 'b.npy'}", "--skip-invalid", "--out", str(tmp_path / "x"), "-q")
    assert code == 2 and "--skip-invalid cannot be used with --features beside a catalog" in err  # before any read


def test_errors_are_one_line_without_traceback(built, capsys, tmp_path):
    code, _, err = run(capsys, "similar", "--index", str(tmp_path / "missing"), "--item", "m1")
    assert code == 1 and "error:" in err and "no such index directory" in err and "Traceback" not in err
    code, _, err = run(capsys, "similar", "--index", str(built / "movies.csv"), "--item", "m1")
    assert code == 1 and f"{built / 'movies.csv'}: is a file, not an index directory" in err
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--interactions", "i.tsv", "--out", "o", "--rating-threshold", "nan"])
    assert exit_.value.code == 2 and "expected a finite number, got 'nan'" in capsys.readouterr().err
    for name in ("id", "a.b"):  # refused before the catalog is read, by a model and a content index alike
        for command in (["train", "--interactions", str(tmp_path / "i.tsv")], ["index", "build"]):
            code, _, err = run(capsys, *command, "--out", str(tmp_path / "o"), "--features", f"{name}=f.npy", "-q")
            assert code == 2 and f"--features {name}=f.npy: modality name '{name}' is not allowed: names are " \
                "non-empty strings without '.', and 'id' is the ID token's" in err, err
            assert not (tmp_path / "o").exists()
    code, _, err = run(capsys, "train", "--interactions", str(tmp_path / "i.tsv"), "--out", str(tmp_path / "o"),
                       "--features", "a=1.npy", "--features", "a=2.npy", "-q")
    assert code == 2 and "--features names 'a' twice (1.npy, 2.npy): one file a modality" in err
    code, _, err = run(capsys, "similar", "--index", str(built / "idx"), "--item", "nope", "-q")
    assert code == 1 and "item 'nope' is not in this index" in err
    bad = write(tmp_path / "bad.csv", MOVIES + [("m2", "Again", "duplicate")])
    code, _, err = run(capsys, "index", "build", "--catalog", str(bad), "--out", str(tmp_path / "x"), "--no-cache")
    assert code == 1 and "row 7, field 'item_id': duplicate id 'm2' (first at row 2)" in err
    assert not (tmp_path / "x").exists()
    code, _, err = run(capsys, "index", "build", "--catalog", str(bad), "--out", str(built / "idx"), "--no-cache")
    assert code == 1 and "already exists" in err
    code, _, err = run(capsys, "index", "build", "--catalog", str(built / "movies.csv"), "--out", str(tmp_path / "y"),
                       "--text-encoder", "some-org/some-model", "--no-cache", "-q")
    assert code == 1 and "downloads are off" in err and not (tmp_path / "y").exists()
    code, _, err = run(capsys, "search", "--index", str(built / "idx"), "--image", str(tmp_path / "q.jpg"), "-q")
    assert code == 1 and "this index has no image modality (encoded: text)" in err
    # Messages that say it all carry no "rerun with --debug" hint and no exception class name.
    (tmp_path / "not-an-index").mkdir()
    code, _, err = run(capsys, "similar", "--index", str(tmp_path / "not-an-index"), "--item", "m1", "-q")
    assert code == 1 and err.strip().endswith("no manifest.json (not a saved index directory?)") and "--debug" not in err
    code, _, err = run(capsys, "index", "build", "--catalog", str(built / "movies.csv"), "--out", str(tmp_path / "z"),
                       "--text-encoder", str(tmp_path / "no-such-model"), "--no-cache", "-q")
    assert code == 1 and err.startswith(f"error: text encoder {tmp_path / 'no-such-model'}: text model") and "--debug" not in err
    with pytest.raises(SystemExit):
        main(["index", "build", "--catalog", "c.csv", "--out", "o", "--max-length", "1"])
    assert "must be at least 2, got 1" in capsys.readouterr().err
    for option in (["--batch-size", "0"], ["-k", "0"]):
        argv = ["index", "build", "--catalog", "c.csv", "--out", "o"] if option[0] != "-k" else \
            ["similar", "--index", str(built / "idx"), "--item", "m1"]
        with pytest.raises(SystemExit):
            main(argv + option)
        assert "must be at least 1" in capsys.readouterr().err


def test_skip_invalid_writes_a_report(tmp_path, capsys):
    bad = write(tmp_path / "bad.csv", MOVIES[:3] + [("m2", "Again", "duplicate"), ("", "No id", "x")])
    code, out, _ = run(capsys, "index", "build", "--catalog", str(bad), "--out", str(tmp_path / "idx"),
                       "--skip-invalid", "--no-cache", "-q")
    assert code == 0 and "3 items" in out
    report = [json.loads(line) for line in (tmp_path / "idx" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["row"], r["item_id"], r["field"]) for r in report] == [(4, "m2", "item_id"), (5, None, "item_id")]


def test_console_script_entry_point(built):
    exe = Path(sys.executable).with_name("mmrec")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mmrec.cli"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    done = subprocess.run(cmd + ["similar", "--index", str(built / "idx"), "--item", "m1", "-k", "2", "--json", "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 2
    done = subprocess.run(cmd + ["similar", "--index", str(built / "idx")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 2 and "--item" in done.stderr


def test_a_closed_pipe_is_not_an_error(built, capsys, monkeypatch):
    import mmrec.cli

    def reader_went_away(args):
        raise BrokenPipeError(32, "Broken pipe")  # what print() raises under `mmrec ... | head`

    monkeypatch.setattr(mmrec.cli, "cmd_similar", reader_went_away)
    code, _, err = run(capsys, "similar", "--index", str(built / "idx"), "--item", "m1", "-q")
    assert code == 0 and err == ""


def test_a_reader_of_the_logs_going_away_does_not_stop_the_work(tmp_path):
    # `mmrec train ... 2>&1 | head -2`: a progress bar's write raised BrokenPipeError, taken for a reader of the
    # results stopping early: no directory was written, and the exit status was 0
    rng = np.random.default_rng(0)
    np.save(tmp_path / "f.npy", rng.normal(size=(12, 4)).astype(np.float32))
    (tmp_path / "inter.tsv").write_text("user_id\titem_id\n" + "".join(f"u{u}\t{(u + j) % 12}\n" for u in range(8)
                                                                      for j in range(4)))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    for extra in ([], ["--json"]):
        out = tmp_path / f"model{len(extra)}"
        proc = subprocess.Popen([sys.executable, "-m", "mmrec.cli", "train", "--interactions", str(tmp_path / "inter.tsv"),
                                 "--features", f"f={tmp_path / 'f.npy'}", "--out", str(out), "--epochs", "3",
                                 "--dim", "8", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        proc.stderr.close()  # the reader of the logs and bars has gone
        stdout = proc.stdout.read()
        assert proc.wait(timeout=300) == 0 and (out / "manifest.json").is_file()
        assert not extra or json.loads(stdout)["best_epoch"] >= 1
    # stdout closed when the process starts (`>&-`): it said AttributeError: 'NoneType' object has no attribute 'write'
    done = subprocess.run(f'"{sys.executable}" -m mmrec.cli -q index info --index "{tmp_path / "model0"}" >&-',
                          shell=True, capture_output=False, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stderr == ""


def _option_help(command: str, flag: str) -> str:
    import argparse

    from mmrec.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return action.help


def test_finetune_help_names_the_source_model_as_the_default():
    # train shows TrainConfig's own defaults; finetune's left-out options take the source's values.
    assert _option_help("train", "--lr").endswith("(default 0.001)")
    assert _option_help("finetune", "--lr").endswith("(default the source model's)")
    assert _option_help("finetune", "--dim").endswith("(default the source model's; cannot change)")
    assert _option_help("finetune", "--id-mode").endswith("(default the source model's; cannot change)")


def test_overwrite_never_deletes_the_catalog_or_a_foreign_directory(tmp_path, capsys):
    box = tmp_path / "box"
    box.mkdir()
    write(box / "movies.csv", MOVIES)
    code, _, err = run(capsys, "index", "build", "--catalog", str(box / "movies.csv"), "--out", str(box), "--overwrite")
    assert code != 0 and "is not an index or model directory (no mmrec manifest.json)" in err
    assert sorted(p.name for p in box.iterdir()) == ["movies.csv"]
    # An index directory that holds its own catalog: replacing it would delete the catalog.
    assert main(["index", "build", "--catalog", str(box / "movies.csv"), "--out", str(tmp_path / "idx"), "--no-cache",
                 "-q"]) == 0
    shutil.copy(box / "movies.csv", tmp_path / "idx" / "movies.csv")
    code, _, err = run(capsys, "index", "build", "--catalog", str(tmp_path / "idx" / "movies.csv"),
                       "--out", str(tmp_path / "idx"), "--overwrite", "--no-cache")
    assert code != 0 and "holds files mmrec did not write (movies.csv)" in err
    assert (tmp_path / "idx" / "movies.csv").exists()
    # A manifest.json that is not mmrec's (a browser extension's) does not make a directory ours.
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "manifest.json").write_text('{"manifest_version": 3}')
    (ext / "background.js").write_text("x")
    code, _, err = run(capsys, "index", "build", "--catalog", str(box / "movies.csv"), "--out", str(ext),
                       "--overwrite", "--no-cache")
    assert code != 0 and "no mmrec manifest.json" in err and (ext / "background.js").exists()


def test_a_larger_catalog_is_centred_unless_no_center_and_search_still_finds_the_film(tmp_path, capsys):
    # 40 items (the centring threshold is 32): the six films and a run of near-identical episodes,
    # which pull the catalog mean towards themselves.
    episodes = [(f"e{k}", f"Episode {k}", f"Episode {k} of a long-running television series") for k in range(34)]
    write(tmp_path / "all.csv", MOVIES + episodes)
    for flag, centred in (([], ["text"]), (["--no-center"], [])):
        out = tmp_path / f"idx{len(flag)}"
        assert main(["index", "build", "--catalog", str(tmp_path / "all.csv"), "--out", str(out), "--no-cache", "-q",
                     *flag]) == 0
        capsys.readouterr()
        assert json.loads((out / "manifest.json").read_text())["centered"] == centred
        code, got, _ = run(capsys, "search", "--index", str(out), "--text", "animation for kids", "--json", "-q")
        assert code == 0 and json.loads(got)[0]["item_id"] == "m1"
        code, got, _ = run(capsys, "similar", "--index", str(out), "--item", "e3", "-k", "3", "--json", "-q")
        assert code == 0 and all(r["item_id"].startswith("e") for r in json.loads(got))


def test_the_server_answers_text_queries_as_search_text(built):
    from tests.mmrec.test_server import dicts, get, serving

    rec = Recommender.load(built / "idx", show_progress=False)
    with serving(rec) as url:
        status, body = get(f"{url}/search?text=animation+for+kids&k=3")
        assert status == 200 and body == {"results": dicts(rec.search_text("animation for kids", 3))}
        assert body["results"][0]["item_id"] == "m1"
        status, body = get(f"{url}/search?text=+&k=3")
        assert status == 400 and body == {"error": "empty text query"}


def test_search_encodes_queries_on_the_device_asked_for(built, capsys, monkeypatch):
    from mmrec.item_index import Encoders

    idx = str(built / "idx")
    moved = []
    real_to = Encoders.to
    monkeypatch.setattr(Encoders, "to", lambda self, device: moved.append(device) or real_to(self, device))
    code, out, _ = run(capsys, "search", "--index", idx, "--text", "animation for kids", "--device", "cpu", "--json",
                       "-q")
    assert code == 0 and json.loads(out)[0]["item_id"] == "m1" and moved == ["cpu"]
    assert run(capsys, "search", "--index", idx, "--text", "animation for kids", "-q")[0] == 0 and moved == ["cpu"]
    for command in (["search", "--text", "x"], ["serve"]):
        code, _, err = run(capsys, command[0], "--index", idx, *command[1:], "--device", "gpu0", "-q")
        assert code == 1 and "device 'gpu0' is not a torch device" in err
    import torch

    if not torch.cuda.is_available():
        code, _, err = run(capsys, "search", "--index", idx, "--text", "x", "--device", "cuda", "-q")
        assert code == 1 and "sees no CUDA GPU on this machine; use cpu" in err


def test_a_queries_file_is_split_on_newlines_only(tmp_path):
    from mmrec.cli import read_queries

    (tmp_path / "q.txt").write_bytes(b"a\rb\r\nc\n")
    assert read_queries(tmp_path / "q.txt") == ["a\rb", "c"]  # a lone \r is no line end; \r\n is


def test_index_info_names_the_encoder(built, capsys):
    code, out, _ = run(capsys, "index", "info", "--index", str(built / "idx"), "-q")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"{built / 'idx'}: content directory, 6 items (format 2, written ")
    assert lines[1] == "  index: Flat, dim 385, exact search"
    assert lines[3].startswith("  encoder text: default (text:all-MiniLM-L6-v2@") and lines[3].endswith(", 384-d)")
    assert lines[4] == "  catalog: text from title, summary"  # what index add reads from a new file


def test_repeated_list_options_add_up(built, capsys, tmp_path):
    idx = str(built / "idx")
    for name, ids in (("e1.txt", "m2\n"), ("e2.txt", "m3\n")):
        (tmp_path / name).write_text(ids)
    files = ("--exclude-file", str(tmp_path / "e1.txt"), "--exclude-file", str(tmp_path / "e2.txt"))
    code, out, _ = run(capsys, "similar", "--index", idx, "--item", "m1", "-k", "5", "--json", "-q", *files)
    assert code == 0 and {r["item_id"] for r in json.loads(out)} == {"m4", "m5", "m6"}  # m2 and m3 both left out
    only = [x.replace("exclude", "only") for x in files]
    code, out, _ = run(capsys, "similar", "--index", idx, "--item", "m1", "-k", "5", "--json", "-q", *only)
    assert code == 0 and {r["item_id"] for r in json.loads(out)} == {"m2", "m3"}
    shutil.copytree(built / "idx", tmp_path / "idx")
    code, _, _ = run(capsys, "index", "remove", "--index", str(tmp_path / "idx"), "--item", "m5", "--item", "m6", "-q")
    assert code == 0 and Recommender.load(tmp_path / "idx", show_progress=False).items.ids == ["m1", "m2", "m3", "m4"]
    with pytest.raises(SystemExit) as exit_:  # a seed numpy would refuse with its own words
        main(["index", "tune", "--index", idx, "--seed", "-1"])
    assert exit_.value.code == 2


def test_train_refuses_catalog_options_without_a_catalog_and_bad_values_as_usage(tmp_path, capsys):
    from tests.mmrec.conftest import write_planted

    inter, _ = write_planted(tmp_path)
    base = ("train", "--interactions", str(inter), "--out", str(tmp_path / "m"), "-q")
    code, _, err = run(capsys, *base, "--text-fields", "title", "--image-encoder", "resnet18")
    assert code == 2 and "--text-fields, --image-encoder read the catalog: give --catalog too" in err
    # the default named, or the default truncation: still a catalog's options (they trained ID-only, silently)
    code, _, err = run(capsys, *base, "--text-encoder", "default", "--max-length", "256")
    assert code == 2 and "--max-length, --text-encoder read the catalog: give --catalog too" in err
    code, _, err = run(capsys, *base, "--epochs", "0")
    assert code == 2 and "epochs must be positive, got 0" in err and not (tmp_path / "m").exists()


def test_quiet_and_debug_go_before_the_command_too(built, capsys):
    code, out, err = run(capsys, "-q", "similar", "--index", str(built / "idx"), "--item", "m1", "-k", "2", "--json")
    assert code == 0 and len(json.loads(out)) == 2 and err == ""  # no info log line
    code, _, err = run(capsys, "--debug", "similar", "--index", str(built / "idx"), "--item", "nope", "-q")
    assert code == 1 and "Traceback" in err


def test_encoders_turned_off_need_no_catalog_and_finetune_checks_as_train(tmp_path, capsys):
    from tests.mmrec.conftest import write_planted

    inter, feats = write_planted(tmp_path)
    code, _, err = run(capsys, "train", "--interactions", str(inter), "--features", f"x={feats}", "--text-encoder",
                       "none", "--image-encoder", "none", "--out", str(tmp_path / "m"), "--epochs", "1", "-q")
    assert code == 0, err  # "none" reads no catalog: accepted beside --features alone, as index build takes it
    base = ("finetune", "--from", str(tmp_path / "m"), "--interactions", str(inter), "--features", f"x={feats}",
            "--out", str(tmp_path / "ft"), "-q")
    code, _, err = run(capsys, *base, "--text-fields", "title")
    assert code == 2 and "--text-fields read the catalog: give --catalog too" in err
    code, _, err = run(capsys, *base, "--epochs", "0")
    assert code == 2 and "epochs must be positive, got 0" in err and not (tmp_path / "ft").exists()


def test_no_mask_bad_images_without_a_catalog_is_refused_as_the_flag_is(tmp_path, capsys):
    from mmrec.cli import main

    code = main(["finetune", "--from", str(tmp_path / "m"), "--interactions", str(tmp_path / "i.tsv"), "--out",
                 str(tmp_path / "f"), "--no-mask-bad-images"])
    assert code == 2 and "--no-mask-bad-images read the catalog: give --catalog too" in capsys.readouterr().err


@contextlib.contextmanager
def _logging_beside_bars(stream, name: str):
    """A logger ``name`` writing to ``stream`` through the CLI's handler (as ``main`` sets it up), alone."""
    import logging

    from mmrec.cli import _LogBesideBars

    handler = _LogBesideBars(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.propagate = False
    try:
        yield log
    finally:
        log.removeHandler(handler)


def test_log_lines_never_start_where_a_progress_bar_line_ends():
    import io

    from tqdm import tqdm

    stream = io.StringIO()
    with _logging_beside_bars(stream, "mmrec.test_bars") as log:
        with tqdm(total=3, file=stream, desc="working", mininterval=0) as bar:
            bar.update(1)
            log.warning("epoch 1 done")
            bar.update(1)
    line = next(line for line in stream.getvalue().split("\n") if "epoch 1 done" in line)
    assert line.rsplit("\r", 1)[-1] == "WARNING mmrec.test_bars: epoch 1 done"  # (was "working:  33%|...WARNING ...")


def test_bars_bound_for_no_terminal_redraw_every_30_seconds_unless_the_user_says(monkeypatch, capsys, tmp_path):
    import os

    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert run(capsys, "index", "info", "--index", str(tmp_path / "none"))[0] == 1
    assert os.environ["TQDM_MININTERVAL"] == "30"  # (captured stderr is no terminal)
    monkeypatch.setenv("TQDM_MININTERVAL", "5")
    assert run(capsys, "index", "info", "--index", str(tmp_path / "none"))[0] == 1
    assert os.environ["TQDM_MININTERVAL"] == "5"


def test_bars_bound_for_no_terminal_are_lines_of_their_own():
    import io

    from tqdm import tqdm

    from mmrec.cli import _BarsAsLines

    raw = io.StringIO()
    stream = _BarsAsLines(raw)
    with _logging_beside_bars(stream, "mmrec.test_bar_lines") as log:
        with tqdm(total=2, file=stream, desc="outer", mininterval=0, bar_format="{desc} {n}/{total}") as outer:
            log.warning("epoch 1 done")
            with tqdm(total=1, file=stream, desc="inner", mininterval=0, bar_format="{desc} {n}/{total}") as inner:
                inner.update(1)
            outer.update(2)
    # no redraw in place (a carriage return, blanking spaces, a cursor move up): each state its own line, the log
    # line not followed by a redraw of the bar, the stacked bar's lines between the outer's, and no blank line
    assert raw.getvalue() == ("outer 0/2\nWARNING mmrec.test_bar_lines: epoch 1 done\ninner 0/1\ninner 1/1\n"
                              "outer 2/2\n")
    assert stream.write("\rnot\ra bar") == 10 and raw.getvalue().endswith("\rnot\ra bar")  # kept as written
    stream.write("\n")
    assert raw.getvalue().endswith("a bar\n")  # (ended a line no bar drew: kept)
    stream.write("half a line")
    stream.write("\rbar 1/2")
    assert raw.getvalue().endswith("a bar\nhalf a line\nbar 1/2\n")  # a bar never ends another's line


def test_a_log_file_of_training_holds_no_redraws(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "f.npy", rng.normal(size=(12, 4)).astype(np.float32))
    (tmp_path / "inter.tsv").write_text("user_id\titem_id\n" + "".join(f"u{u}\t{(u + j) % 12}\n" for u in range(8)
                                                                      for j in range(4)))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]), TQDM_MININTERVAL="0")
    with open(tmp_path / "log.txt", "w") as log:
        done = subprocess.run([sys.executable, "-m", "mmrec.cli", "train", "--interactions", str(tmp_path / "inter.tsv"),
                               "--features", f"f={tmp_path / 'f.npy'}", "--out", str(tmp_path / "m"), "--epochs", "3",
                               "--dim", "8"], stdout=subprocess.DEVNULL, stderr=log, env=env, timeout=300)
    text = (tmp_path / "log.txt").read_text()
    assert done.returncode == 0 and "\r" not in text and "\x1b" not in text, text
    lines = text.splitlines()
    bars = [line for line in lines if line.startswith("training:")]
    assert bars[0].startswith("training:   0%") and " 3/3 " in bars[-1] and len(bars) <= 5, text
    epochs = [line for line in lines if line.startswith("INFO mmrec.train: epoch ")]
    assert [line.split()[3] for line in epochs] == ["1", "2", "3"], text  # each log line whole, on its own line
