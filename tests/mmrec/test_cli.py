"""The mmrec CLI end to end, with the real packaged MiniLM text encoder."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmrec.cli import main

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


def test_add_then_remove(built, capsys, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(built / "idx", idx)
    new = write(tmp_path / "new.csv", [("m7", "Puppet Show", "An animated musical cartoon with puppets for kids")])
    code, out, _ = run(capsys, "index", "add", "--index", str(idx), "--catalog", str(new), "--no-cache", "-q")
    assert code == 0 and "added 1 items" in out and "7 items" in out
    code, out, _ = run(capsys, "search", "--index", str(idx), "--text", "animated puppets", "-k", "2", "--json", "-q")
    assert [r["item_id"] for r in json.loads(out)] == ["m7", "m1"]
    code, out, _ = run(capsys, "index", "remove", "--index", str(idx), "--item", "m7", "m1", "-q")
    assert code == 0 and "removed 2 items" in out
    code, out, _ = run(capsys, "search", "--index", str(idx), "--text", "animated puppets", "--json", "-q")
    assert {r["item_id"] for r in json.loads(out)} == {"m2", "m3", "m4", "m5", "m6"}


def test_errors_are_one_line_without_traceback(built, capsys, tmp_path):
    code, _, err = run(capsys, "similar", "--index", str(tmp_path / "missing"), "--item", "m1")
    assert code == 1 and "error:" in err and "no such index directory" in err and "Traceback" not in err
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
    for option in (["--batch-size", "0"], ["--max-length", "-1"], ["-k", "0"]):
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
