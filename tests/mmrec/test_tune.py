"""Recommender.tune_search / set_search and `mmrec index tune`: the search knob for a target recall."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index import FaissIndex, clustered_vectors, recall_at_k
from index.persist import sha256_file
from mmrec.cli import main
from mmrec.config import TrainConfig
from mmrec.errors import ConfigError, MMRecError
from mmrec.item_index import ItemIndex
from mmrec.pipeline import fit
from mmrec.recommender import Recommender
from tests.mmrec.conftest import write_planted

FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, epochs=4, patience=4, reg=1e-4, seed=0)


def content_ivf(path: Path, n: int = 400) -> Path:
    vecs = clustered_vectors(n, 8, n_clusters=20, seed=5)
    ItemIndex.from_features([f"i{j}" for j in range(n)], {"text": vecs}, factory="IVF8,Flat",
                            show_progress=False).save(path)
    return path


def test_a_trained_directory_is_tuned_on_its_users_and_items(tmp_path):
    inter, feats = write_planted(tmp_path, users=96, items=400, per_user=12)
    fit(inter, features={"content": feats}, out=tmp_path / "model", config=TrainConfig(**FAST), split="random",
        factory="IVF8,Flat", show_progress=False)
    rec = Recommender.load(tmp_path / "model", show_progress=False)
    calls = []
    sweep = rec.items.index.sweep_knob

    def recorded(queries, k, **kw):
        calls.append((queries, kw["exclude"]))
        return sweep(queries, k, **kw)

    rec.items.index.sweep_knob = recorded
    report = rec.tune_search(recall=1.0, k=5)
    # The queries are those similar() and recommend() send: every item less itself, every user less
    # its known items (the sample covers them all here).
    (item_q, item_ex), (user_q, user_ex) = calls
    assert np.array_equal(item_q, rec.items.vectorizer.item_query(rec.items.vectors))
    assert item_ex == [{i} for i in rec.items.ids]
    assert np.array_equal(user_q, rec.items.vectorizer.mips.queries(rec.user_vectors))
    assert user_ex == [set(rec.known_items(u)) for u in rec.user_ids] and all(user_ex)
    assert report["knob"] == "nprobe" and report["before"] == 8 and report["saved"]
    users = report["sweeps"]["users"]
    assert users[0]["value"] == 1 and users[0]["recall"] < 1.0 and users[-1]["recall"] == 1.0
    assert report["value"] == max(s[-1]["value"] for s in report["sweeps"].values()) < 8
    assert report["reached"] == {kind: s[-1]["recall"] for kind, s in report["sweeps"].items()}
    assert min(report["reached"].values()) >= report["recall"]
    assert Recommender.load(tmp_path / "model", show_progress=False).items.index.nprobe == report["value"]
    # The users' first row against an exact oracle: dot products, known items left out, as recommend serves.
    rec.set_search(1, save=False)
    items = rec.items.vectorizer.mips.original(rec.items.vectors).astype(np.float64)  # [N, D]
    ids = rec.items.ids
    found, truth = [], []
    for row, user in enumerate(rec.user_ids):
        known = set(rec.known_items(user))
        scores = items @ rec.user_vectors[row].astype(np.float64)
        truth.append([ids[j] for j in np.argsort(-scores, kind="stable") if ids[j] not in known][:5])
        found.append([r.item_id for r in rec.recommend(user, 5)])
    assert users[0]["recall"] == pytest.approx(recall_at_k(found, truth, 5), abs=1e-12)


def test_a_content_index_is_tuned_on_its_items_and_a_dry_run_writes_nothing(tmp_path):
    d = content_ivf(tmp_path / "idx")
    before = {p.name: sha256_file(p) for p in d.iterdir()}
    rec = Recommender.load(d, show_progress=False)
    report = rec.tune_search(recall=0.99, k=10, save=False)
    assert list(report["sweeps"]) == ["items"] and not report["saved"] and report["before"] == 8  # 8 lists: all of them
    assert [r["value"] for r in report["sweeps"]["items"]] == [1, 2, 4, 8][: len(report["sweeps"]["items"])]
    assert rec.items.index.nprobe == report["value"] < 8  # set on the object,
    assert {p.name: sha256_file(p) for p in d.iterdir()} == before  # not on disk
    def recalls(r):
        return [(row["value"], row["recall"]) for row in r["sweeps"]["items"]]

    rec.set_search(8, save=False)
    assert recalls(rec.tune_search(recall=0.99, k=10, save=False)) == recalls(report)  # seeded: the same sample
    assert recalls(rec.tune_search(recall=0.99, k=10, sample=50, seed=1, save=False)) != recalls(report)
    rec.tune_search(recall=0.99, k=10)
    assert Recommender.load(d, show_progress=False).items.index.nprobe == report["value"]


def test_what_cannot_be_tuned_is_refused_and_changes_nothing(tmp_path):
    d = content_ivf(tmp_path / "idx")
    rec = Recommender.load(d, show_progress=False)
    with pytest.raises(MMRecError, match=r"nprobe must be an int in \[1, 8\]"):
        rec.set_search(9)
    assert rec.items.index.nprobe == 8
    with pytest.raises(MMRecError, match=r"recall must be a number in \(0, 1\], got "):
        rec.tune_search(recall=0.0)
    (d / "notes.txt").write_text("mine")  # a rewrite would delete it: refused before the sweep
    with pytest.raises(MMRecError, match="files mmrec did not write"):
        rec.tune_search()
    with pytest.raises(MMRecError, match="files mmrec did not write"):
        rec.set_search(4)
    assert rec.items.index.nprobe == 8 and Recommender.load(d, show_progress=False).items.index.nprobe == 8
    solo = ItemIndex.from_features(["a"], {"text": np.ones((1, 2), np.float32)}, factory="HNSW8", show_progress=False)
    with pytest.raises(MMRecError, match="cannot measure the items' queries: every query excludes every item"):
        Recommender(solo).tune_search()  # similar() of the only item has nothing to return
    flat = ItemIndex.from_features(["a", "b"], {"text": np.eye(2, dtype=np.float32)}, factory="Flat", show_progress=False)
    with pytest.raises(MMRecError, match="exact search"):
        Recommender(flat).tune_search()
    with pytest.raises(MMRecError, match="exact search"):
        Recommender(flat).set_search(4)
    hnsw = Recommender(ItemIndex.from_features(["a", "b"], {"text": np.eye(2, dtype=np.float32)}, factory="HNSW8",
                                               show_progress=False))
    with pytest.raises(MMRecError, match=r"ef_search must be an int in \[1, 2147483647\] \(FAISS's int\), got "
                                         r"2147483648"):  # (kept, it made every later save of the directory unloadable)
        hnsw.set_search(2**31)
    assert hnsw.items.index.ef_search == 256


def test_cli_index_tune(tmp_path, capsys):
    d = content_ivf(tmp_path / "idx")
    assert main(["index", "tune", "--index", str(d), "--nprobe", "2", "-q"]) == 0
    assert capsys.readouterr().out == f"IVF8,Flat: nprobe 8 -> 2; saved to {d}\n"
    assert Recommender.load(d, show_progress=False).items.index.nprobe == 2
    assert main(["index", "tune", "--index", str(d), "--recall", "1.0", "--json", "--dry-run", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["before"] == 2 and report["sweeps"]["items"][-1]["recall"] == 1.0 and not report["saved"]
    assert Recommender.load(d, show_progress=False).items.index.nprobe == 2
    assert main(["index", "tune", "--index", str(d), "--recall", "1.0", "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"IVF8,Flat: nprobe 2 -> {report['value']}; recall@10 >= 1.0 for items; saved to {d}"
    assert out[1].split() == ["queries", "nprobe", "recall@10", "ms/query"] and len(out) == 2 + len(report["sweeps"]["items"])
    assert main(["index", "tune", "--index", str(d), "--ef-search", "64", "-q"]) == 1
    assert "is IVF8,Flat: its knob is --nprobe, not --ef-search" in capsys.readouterr().err
    assert main(["index", "tune", "--index", str(tmp_path / "nowhere"), "--nprobe", "4", "--recall", "0.9", "-q"]) == 2
    assert "--nprobe sets the knob without measuring: --recall would be unused" in capsys.readouterr().err  # unopened
    assert Recommender.load(d, show_progress=False).items.index.nprobe == report["value"]


def test_rebuild_changes_the_factory_and_keeps_what_the_directory_answers(tmp_path):
    d = tmp_path / "idx"
    vecs = clustered_vectors(400, 8, n_clusters=20, seed=5)
    ItemIndex.from_features([f"i{j}" for j in range(400)], {"text": vecs}, factory="Flat", show_progress=False).save(d)
    rec = Recommender.load(d, show_progress=False)
    exact = rec.similar_many(rec.items.ids[:50], 10)
    assert rec.items.rebuild("IVF8,Flat") == "IVF8,Flat"
    again = Recommender.load(d, show_progress=False)
    assert again.items.manifest["factory"] == "IVF8,Flat" and again.items.index.factory == "IVF8,Flat"
    assert again.items.index.nprobe == 8  # every list: exact again, so the same answers
    assert [[r.item_id for r in rs] for rs in again.similar_many(again.items.ids[:50], 10)] == \
        [[r.item_id for r in rs] for rs in exact]
    # The same factory keeps a tuned setting; HNSW drops removed items' tombstones when rebuilt as it is.
    again.set_search(2)
    assert again.items.rebuild() == "IVF8,Flat" and again.items.index.nprobe == 2
    assert again.items.rebuild("HNSW8") == "HNSW8" and again.items.index.ef_search == 256  # the default
    again.items.remove(["i1", "i2"])
    assert again.items.index.faiss_index.ntotal == 400
    assert again.items.rebuild() == "HNSW8"
    loaded = Recommender.load(d, show_progress=False).items
    assert loaded.index.faiss_index.ntotal == 398 == len(loaded) and "i1" not in loaded.index
    assert loaded.rebuild("auto") == "Flat"  # chosen again for 398 items


def test_rebuild_refuses_before_any_work_and_a_trained_directory_keeps_its_model(tmp_path, capsys):
    inter, feats = write_planted(tmp_path, users=48, items=40)
    fit(inter, features={"content": feats}, out=tmp_path / "model", config=TrainConfig(**FAST), split="random",
        show_progress=False)
    d = tmp_path / "model"
    rec = Recommender.load(d, show_progress=False)
    before = {u: [r.item_id for r in rec.recommend(u, 5)] for u in rec.user_ids}
    files = {p.name: sha256_file(p) for p in d.iterdir()}
    assert main(["index", "rebuild", "--index", str(d), "--factory", "IVF64,Flat", "-q"]) == 1
    assert "error: factory 'IVF64,Flat' needs at least 2496" in capsys.readouterr().err  # 40 items, 64 lists
    assert main(["index", "rebuild", "--index", str(d), "--factory", "Bogus", "-q"]) == 1
    assert "error: unknown factory 'Bogus'; accepted forms" in capsys.readouterr().err
    assert main(["index", "rebuild", "--index", str(d), "--factory", "HNSW8", "--factory", "IVF1,PQ4", "-q"]) == 1
    assert "error: factory 'IVF1,PQ4' needs" in (err := capsys.readouterr().err) and "PQ codebooks need 9984 rows" in err
    assert {p.name: sha256_file(p) for p in d.iterdir()} == files
    # Its own factory, which the items no longer train (IVF1 after removals), says what to give.
    shutil.copytree(d, tmp_path / "copy")
    copy = Recommender.load(tmp_path / "copy", show_progress=False).items
    copy.rebuild("IVF1,Flat")
    copy.remove(copy.ids[:36])
    with pytest.raises(ConfigError, match=r"this index's own factory IVF1,Flat cannot be built again on its 4 items "
                                          r"\(.*\): choose another \(--factory, factory="):
        copy.rebuild()
    assert main(["index", "rebuild", "--index", str(d), "--factory", "HNSW8", "-q"]) == 0
    assert capsys.readouterr().out == (f"rebuilt {d}: Flat -> HNSW8, 40 items; efSearch 256, the default "
                                       "(`mmrec index tune` sets it for a target recall)\n")
    rec = Recommender.load(d, show_progress=False)
    assert rec.trained and rec.items.index.factory == "HNSW8"
    assert {u: [r.item_id for r in rec.recommend(u, 5)] for u in rec.user_ids} == before
    for name in ("model.safetensors", "users.safetensors", "config.json"):
        assert sha256_file(d / name) == files[name]


def test_a_failed_save_leaves_the_index_object_as_it_was(tmp_path, monkeypatch):
    d = content_ivf(tmp_path / "idx")
    items = Recommender.load(d, show_progress=False).items
    index = items.index

    def broken(*args, **kwargs):
        raise OSError("disk full")

    files = {p.name: sha256_file(p) for p in d.iterdir()}
    monkeypatch.setattr(FaissIndex, "save", broken)  # inside ItemIndex.save's temporary directory
    with pytest.raises(OSError, match="disk full"):
        items.rebuild("Flat")
    assert items.index is index and items.manifest["factory"] == "IVF8,Flat"
    with pytest.raises(OSError, match="disk full"):
        Recommender(items).set_search(2)
    assert index.nprobe == 8
    assert {p.name: sha256_file(p) for p in d.iterdir()} == files and sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_info_says_what_a_directory_holds(tmp_path, capsys, monkeypatch):
    inter, feats = write_planted(tmp_path, users=48, items=40)
    fit(inter, features={"content": feats}, out=tmp_path / "model", config=TrainConfig(**FAST), split="random",
        factory="HNSW8", show_progress=False)
    d = tmp_path / "model"
    rec = Recommender.load(d, show_progress=False)
    info = rec.info()
    report = json.loads((d / "train_report.json").read_text())
    assert (info["kind"], info["items"], info["users"], info["format_version"]) == ("trained", 40, 48, 2)
    assert info["index"] == {"factory": "HNSW8", "dim": rec.items.vectors.shape[1], "ef_search": 256}
    assert info["modalities"] == {"content": {"weight": 1.0, "centered": True, "masked": False}} and info["encoders"] == {}
    assert info["config"]["dim"] == 16 and info["config"]["lr"] == 0.05 and info["cold_items"] == 0
    assert info["training"]["best_epoch"] == report["best_epoch"] and info["training"]["epochs_run"] == len(report["history"])
    assert info["training"]["test"] == {k: report["test"][k] for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")}
    rec.set_search(64)  # a tuned setting shows
    assert main(["index", "info", "--index", str(d), "--json", "-q"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["index"]["ef_search"] == 64 and shown["training"] == info["training"]
    assert main(["index", "info", "--index", str(d), "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{d}: trained directory, 40 items, 48 users (format 2, written ")
    assert lines[1] == f"  index: HNSW8, dim {info['index']['dim']}, efSearch 64"
    assert lines[2] == "  modalities: content (weight 1.0, centred)"
    assert lines[3].startswith(f"  training: best epoch {report['best_epoch']} of {len(report['history'])} (")
    assert f"test recall@10 {report['test']['recall@10']:.4f}" in lines[3]
    assert lines[4] == "  model: dim 16, 2 layers, loss bpr, lr 0.05, content on, encoders frozen"
    # A file with no valid or test rows left nothing to measure: said so, not an empty "valid ; test " tail.
    blank = {**info, "training": {**info["training"], "valid": {}, "test": {}}}
    with monkeypatch.context() as m:
        m.setattr(Recommender, "info", lambda self: blank)
        assert main(["index", "info", "--index", str(d), "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[3].endswith(" s/epoch); no valid or test metrics")
    assert info["left_beside"] == [] and len(lines) == 5
    import shutil  # a version a write killed between its renames left beside the directory: named, not deleted

    shutil.copytree(d, tmp_path / ".model.old-0123")
    assert Recommender.load(d, show_progress=False).info()["left_beside"] == [str(tmp_path / ".model.old-0123")]
    assert main(["index", "info", "--index", str(d), "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[5] == (f"  left beside it by an interrupted write: {tmp_path}/.model.old"
                                                       "-0123 (previous versions: delete them once you do not need them)")
    content = Recommender.load(content_ivf(tmp_path / "idx"), show_progress=False).info()
    assert content["kind"] == "content" and content["users"] == 0 and "config" not in content
    assert content["index"] == {"factory": "IVF8,Flat", "dim": 9, "nprobe": 8}


def test_tuning_a_directory_another_command_rewrote_is_refused_before_the_sweep(tmp_path, monkeypatch):
    from index import FaissIndex

    d = content_ivf(tmp_path / "idx")
    stale, other = Recommender.load(d, show_progress=False), Recommender.load(d, show_progress=False)
    other.set_search(4)  # another command saves a setting meanwhile

    def no_sweep(*args, **kwargs):
        raise AssertionError("swept before the directory was checked")

    monkeypatch.setattr(FaissIndex, "sweep_knob", no_sweep)
    with pytest.raises(MMRecError, match="was rewritten by another command since it was loaded"):
        stale.tune_search(recall=0.99, k=10)
    assert Recommender.load(d, show_progress=False).items.index.nprobe == 4


def test_an_hnsw_graph_that_only_its_exhaustive_setting_tunes_is_named(tmp_path, monkeypatch, caplog):
    vecs = clustered_vectors(100, 8, n_clusters=5, seed=5)
    idx = ItemIndex.from_features([f"i{j}" for j in range(100)], {"text": vecs}, factory="HNSW8", show_progress=False)
    rec = Recommender(idx)
    stuck = [{"value": v, "recall": r, "ms_per_query": 0.1} for v, r in ((16, 0.55), (32, 0.57), (64, 0.57), (100, 1.0))]
    monkeypatch.setattr(FaissIndex, "sweep_knob", lambda self, q, k, exclude=None, target=None: stuck)
    with caplog.at_level("WARNING", logger="mmrec.recommender"):
        report = rec.tune_search(recall=0.99, save=False)
    assert report["value"] == 100 == idx.index.knob_top
    assert "only efSearch 100, the number of stored vectors, reaches recall 0.99: every search now scans them all, " \
           "as Flat does (items: 0.5700 at efSearch 64)" in caplog.text
    caplog.clear()
    monkeypatch.setattr(FaissIndex, "sweep_knob", lambda self, q, k, exclude=None, target=None: stuck[:2])
    with caplog.at_level("WARNING", logger="mmrec.recommender"):
        rec.tune_search(recall=0.5, save=False)
    assert "only efSearch" not in caplog.text  # the graph reached it
