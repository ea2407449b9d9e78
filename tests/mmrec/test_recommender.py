"""Recommender.recommend_history: a history of item ids as a user, trained and content directories."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusion.foldin import HistoryFoldIn
from index.persist import sha256_file
from mmrec.cli import main
from mmrec.config import TrainConfig
from mmrec.errors import ConfigError, MMRecError, UnknownIdError
from mmrec.foldin import FOLD_IN_REGS
from mmrec.item_index import ItemIndex
from mmrec.pipeline import fit
from mmrec.recommender import Recommender
from tests.mmrec.conftest import write_planted

FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, epochs=4, patience=4, reg=1e-4, seed=0)
CLUSTERS = 4  # write_planted: item i is in cluster i % 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("history")
    inter, feats = write_planted(d)
    fit(inter, features={"content": feats}, out=d / "model", config=TrainConfig(**FAST), split="random",
        show_progress=False)
    return d


def raw_vectors(rec: Recommender) -> np.ndarray:
    return rec.items.vectorizer.mips.original(rec.items.vectors).astype(np.float64)  # [N, D]


def oracle(rec: Recommender, user: np.ndarray, exclude: set) -> list[tuple[object, float]]:
    """Every item not excluded, by exact dot product with ``user``, ties by index order."""
    scores = raw_vectors(rec) @ user.astype(np.float64)  # [N]
    ids = sorted(rec.items._pos, key=rec.items._pos.get)  # row order
    order = [i for i in np.argsort(-scores, kind="stable") if ids[i] not in exclude]
    return [(ids[i], float(scores[i])) for i in order]


def oracle_similar(rec: Recommender, vecs: np.ndarray, item: object) -> list[tuple[object, float]]:
    """Every other item by exact inner product of ``vecs`` rows with the item's, ties by index order."""
    row = rec.items._pos[item]
    scores = vecs @ vecs[row]  # [N]
    ids = rec.items.ids
    return [(ids[i], float(scores[i])) for i in np.argsort(-scores, kind="stable") if i != row]


def test_fold_in_ranking_equals_the_exact_oracle(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    history = [0, 4, 8]
    got = rec.recommend_history(history, 10)
    rows = [rec.items._pos[i] for i in history]
    user = HistoryFoldIn(raw_vectors(rec), reg=rec.fold_in_reg)([rows])[0]
    want = oracle(rec, user, set(history))[:10]
    assert [r.item_id for r in got] == [i for i, _ in want]
    np.testing.assert_allclose([r.score for r in got], [s for _, s in want], rtol=1e-4, atol=1e-5)
    # A history from one planted cluster brings back that cluster first.
    assert {r.item_id % CLUSTERS for r in got[:5]} == {0}


def test_the_fold_in_ridge_is_chosen_on_validation_saved_and_used(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    report = json.loads((trained / "model" / "train_report.json").read_text())
    config = json.loads((trained / "model" / "config.json").read_text())
    tried = report["fold_in"]["valid_recall@20"]
    assert set(tried) == {str(r) for r in FOLD_IN_REGS} and report["fold_in"]["users"] > 0
    best = rec.fold_in_reg
    assert best == report["fold_in"]["reg"] == config["fold_in_reg"]
    assert tried[str(best)] == max(tried.values())
    # The ridge is what the fold-in uses; changing it rebuilds the fold-in.
    rec.recommend_history([0, 4], 3)
    assert rec._foldin[1].reg == best
    gram = rec._foldin[1].gram
    rec.fold_in_reg = 1234.0
    got = rec.recommend_history([0, 4], 5)
    assert rec._foldin[1].reg == 1234.0 and rec._foldin[1].gram is gram  # not recomputed
    user = HistoryFoldIn(raw_vectors(rec), reg=1234.0)([[rec.items._pos[0], rec.items._pos[4]]])[0]
    assert [r.item_id for r in got] == [i for i, _ in oracle(rec, user, {0, 4})[:5]]


def test_mean_scores_are_the_mean_of_the_item_to_item_scores(trained):
    # Independent path: similar() scores item pairs through FAISS; the mean method's score of an
    # item is, by linearity, the mean of its scores against the history's items.
    rec = Recommender.load(trained / "model", show_progress=False)
    history = [1, 5]
    n = len(rec.items)
    pair = {h: {r.item_id: r.score for r in rec.similar(h, n - 1)} for h in history}
    got = rec.recommend_history(history, n - 2, method="mean")
    assert len(got) == n - 2 and not {r.item_id for r in got} & set(history)
    for r in got:
        assert r.score == pytest.approx(np.mean([pair[h][r.item_id] for h in history]), rel=1e-4, abs=1e-4)


def test_every_remaining_item_comes_back_from_an_approximate_index(tmp_path):
    inter, feats = write_planted(tmp_path)
    rec, _, _ = fit(inter, features={"content": feats}, config=TrainConfig(**FAST), split="random",
                    factory="HNSW8", show_progress=False)
    total = len(rec.items)
    for history in ([3], [0, 1, 2, 3, 4, 5], list(range(0, 32, 3))):
        got = rec.recommend_history(history, total - len(history))
        assert len(got) == total - len(history)
        assert not set(history) & {r.item_id for r in got}
    # --include-known's API: the history may come back.
    assert 3 in {r.item_id for r in rec.recommend_history([3], total, exclude_history=False)}


def test_the_fold_in_follows_changes_to_the_index(trained, tmp_path):
    shutil.copytree(trained / "model", tmp_path / "model")  # remove() rewrites the directory
    rec = Recommender.load(tmp_path / "model", show_progress=False)
    before = rec.recommend_history([0, 4], 5)
    assert rec._foldin[1].vectors.shape[0] == 32
    rec.items.remove([before[0].item_id])
    after = rec.recommend_history([0, 4], 5)
    assert rec._foldin[0] is rec.items.vectors and rec._foldin[1].vectors.shape[0] == 31
    user = HistoryFoldIn(raw_vectors(rec), reg=rec.fold_in_reg)([[rec.items._pos[0], rec.items._pos[4]]])[0]
    assert [r.item_id for r in after] == [i for i, _ in oracle(rec, user, {0, 4})[:5]]


def test_items_added_later_join_the_fold_in_and_may_be_the_history(trained, tmp_path):
    shutil.copytree(trained / "model", tmp_path / "model")  # add_features() rewrites the directory
    rec = Recommender.load(tmp_path / "model", show_progress=False)
    rec.recommend_history([0], 3)
    feats = np.load(trained / "content.npy")[:2]  # look like items 0 and 1
    rec.items.add_features([100, 101], {"content": feats}, {"content": np.ones(2, bool)})
    got = rec.recommend_history(["100", 4], 5)
    assert rec._foldin[0] is rec.items.vectors and rec._foldin[1].vectors.shape[0] == 34
    user = HistoryFoldIn(raw_vectors(rec), reg=rec.fold_in_reg)([[rec.items._pos[100], rec.items._pos[4]]])[0]
    assert [r.item_id for r in got] == [i for i, _ in oracle(rec, user, {100, 4})[:5]]


def test_explanations_name_the_history_items(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    plain = rec.recommend_history([0, 4, 9], 6)
    got = rec.recommend_history([0, 4, 9], 6, explain=True, explain_items=2)
    assert [(r.item_id, r.score) for r in got] == [(r.item_id, r.score) for r in plain]
    raw = raw_vectors(rec)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)  # named by cosine
    for r in got:
        named = r.explanation["history"]
        assert 1 <= len(named) <= 2 and {h["item_id"] for h in named} <= {0, 4, 9}
        sims = {h: float(raw[rec.items._pos[r.item_id]] @ raw[rec.items._pos[h]]) for h in (0, 4, 9)}
        best = sorted((h for h in sims if sims[h] > 0), key=lambda h: -sims[h])[:2]
        assert [h["item_id"] for h in named] == best
        assert set(r.explanation["attention"]) == {"content", "id"}


def test_diversity_over_a_history(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    plain = rec.recommend_history([0, 4], 6)
    assert [r.item_id for r in rec.recommend_history([0, 4], 6, diversity=0.0)] == [r.item_id for r in plain]
    got = rec.recommend_history([0, 4], 6, diversity=0.7)
    assert len(got) == 6 and len({r.item_id for r in got}) == 6 and not {0, 4} & {r.item_id for r in got}


def test_errors(trained, caplog):
    rec = Recommender.load(trained / "model", show_progress=False)
    with pytest.raises(MMRecError, match=r"history items '999', 'x' are not in this index \(32 items\): no history"):
        rec.recommend_history(["999", "x"])
    # One id no longer in the index (removed since: out of stock) leaves the rest of the history to answer.
    with caplog.at_level("WARNING", logger="mmrec.recommender"):
        assert rec.recommend_history([0, "999", 4], 5) == rec.recommend_history([0, 4], 5)
    assert "1 history item(s) not in this index left out (removed, or never added): '999'" in caplog.text
    with pytest.raises(MMRecError, match="the history is empty"):
        rec.recommend_history([])
    with pytest.raises(ConfigError, match="method must be"):
        rec.recommend_history([0], method="pca")
    with pytest.raises(ConfigError, match="diversity weight"):
        rec.recommend_history([0], diversity=2.0)
    assert [r.item_id for r in rec.recommend_history(["0", "4"], 5)] == [r.item_id for r in rec.recommend_history([0, 4], 5)]
    # One id, as a string or an int, is a history of one item ("12" is item 12, not items 1 and 2).
    one = [r.item_id for r in rec.recommend_history([12], 5)]
    assert [r.item_id for r in rec.recommend_history("12", 5)] == one == [r.item_id for r in rec.recommend_history(12, 5)]


def test_a_user_with_no_liked_item_left_and_unknown_history_items_is_not_found(trained, tmp_path):
    # it was a plain error (400 from serve) saying "give item ids" where ids were given; without a user, 404
    from mmrec.errors import UnknownIdError

    shutil.copytree(trained / "model", tmp_path / "m")
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    user = rec.user_ids[0]
    rec.items.remove(rec.known_items(user))
    with pytest.raises(UnknownIdError, match=f"user '{user}' has no liked items in this index, and the history items "
                                             r"given \('999'\) are not in it either"):
        rec.recommend_history(["999"], user=user)
    with pytest.raises(MMRecError, match="give item ids") as e:
        rec.recommend_history([], user=user)
    assert not isinstance(e.value, UnknownIdError)


def test_a_manifest_that_stops_checksumming_the_model_is_refused(trained, tmp_path):
    # the index's own files had to be listed; the model's were loaded unverified once their entry was gone
    from index import IndexFormatError

    shutil.copytree(trained / "model", tmp_path / "m")
    path = tmp_path / "m" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["checksums"].pop("model.safetensors")
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=r"manifest.json: 'checksums' does not list model.safetensors \(the "
                                               r"manifest was edited"):
        Recommender.load(tmp_path / "m", show_progress=False)


def test_arguments_of_the_wrong_kind_get_a_message_naming_them(trained):
    # (a bare TypeError or AttributeError from deep inside before)
    from mmrec.pipeline import evaluate_directory

    rec = Recommender.load(trained / "model", show_progress=False)
    with pytest.raises(MMRecError, match="one user id was expected, got a list: recommend_many takes several"):
        rec.recommend(["u1", "u2"])
    with pytest.raises(MMRecError, match="a text query is a string, got int"):
        rec.items.search_text(123)
    with pytest.raises(MMRecError, match="a text query is a string, got list: search_texts takes several"):
        rec.items.search_text(["a"])
    inter = trained / "interactions.tsv"
    with pytest.raises(ConfigError, match="split must be 'valid' or 'test', got 'train'"):
        evaluate_directory(rec, inter, split="train")
    with pytest.raises(ConfigError, match=r"ks must be whole numbers >= 1 \(10, or \(10, 20\)\), got \(0,\)"):
        evaluate_directory(rec, inter, ks=(0,))
    # a path is taken as Recommender.load takes it, and one K as (K,)
    got = evaluate_directory(str(trained / "model"), inter, split="valid", ks=5)
    assert got["recall@5"] == evaluate_directory(rec, inter, split="valid", ks=(5,))["recall@5"] and "recall@10" not in got
    with pytest.raises(ConfigError, match="the rating threshold must be a number, got '4'"):
        fit(inter, features={"content": trained / "content.npy"}, config=TrainConfig(**FAST), rating_threshold="4",
            show_progress=False)


def test_content_index_history_is_the_mean_of_the_pair_scores(tmp_path):
    text = np.array([[1, 0], [1, 0], [0.6, 0.8], [0, 0]], np.float32)
    image = np.array([[1, 0], [0, 1], [0, 0], [0, 1]], np.float32)
    present = {"text": np.array([True, True, True, False]), "image": np.array([True, True, False, True])}
    index = ItemIndex.from_features(["x", "y", "n", "t"], {"text": text, "image": image}, present,
                                    [{"title": f"Item {i}"} for i in "xynt"], factory="Flat",
                                    weights={"text": 3.0, "image": 1.0}, show_progress=False)
    index.save(tmp_path / "idx")
    rec = Recommender.load(tmp_path / "idx", show_progress=False)
    # Scores are sum_m w_m cos_m with weights 3/4 and 1/4 (no modality centred: 4 items < 32).
    # x-y: text cos 1, image cos 0 -> 0.75; x-t: image cos 0 -> 0; n-y: text cos 0.6 -> 0.45;
    # n-t: nothing shared -> 0. History {x, n}: y (0.75 + 0.45) / 2 = 0.6, t 0.
    got = rec.recommend_history(["x", "n"], 5)
    assert [r.item_id for r in got] == ["y", "t"]
    np.testing.assert_allclose([r.score for r in got], [0.6, 0.0], atol=1e-6)
    assert got[0].fields["title"] == "Item y"


def test_cli_recommend_history(trained, capsys):
    rec = Recommender.load(trained / "model", show_progress=False)
    d = str(trained / "model")
    assert main(["recommend", "--index", d, "--history", "0", "4", "-k", "3", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = rec.recommend_history([0, 4], 3)
    assert [r["item_id"] for r in out] == [r.item_id for r in want]
    np.testing.assert_allclose([r["score"] for r in out], [r.score for r in want], rtol=1e-5)
    assert main(["recommend", "--index", d, "--history", "0", "--method", "mean", "-k", "2", "--explain", "-q"]) == 0
    assert "why:" in capsys.readouterr().out
    assert main(["recommend", "--index", d, "--user", "u0", "--method", "mean", "-q"]) == 2
    assert "--method applies to --history only" in capsys.readouterr().err
    assert main(["recommend", "--index", d, "--history", "0", "--history", "4", "-k", "3", "--json", "-q"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == [r.item_id for r in want]  # repeated: both
    assert main(["recommend", "--index", d, "--history", "nope", "-q"]) == 1
    assert "history item 'nope' is not in this index" in capsys.readouterr().err
    # --user with --history: the user's liked items, then the new ones.
    assert main(["recommend", "--index", d, "--user", "u0", "--history", "5", "-k", "3", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["item_id"] for r in out] == [r.item_id for r in rec.recommend_history([5], 3, user="u0")]
    assert main(["recommend", "--index", d, "-q"]) == 2
    assert "give --user ID, --history ITEM [ITEM ...], or both" in capsys.readouterr().err


def test_a_known_users_history_is_their_liked_items_then_the_new_ones(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    liked = rec.liked_items("u0")
    assert liked == rec.known_items("u0") and len(liked) == 6  # no threshold: every known item is liked
    from safetensors.numpy import load_file
    assert set(load_file(str(trained / "model" / "users.safetensors"))) == {"user_vectors", "known_indptr",
                                                                             "known_indices"}  # nothing to add
    new = [i for i in range(32) if i not in liked][:2]
    got = rec.recommend_history(new, 8, user="u0")
    user = HistoryFoldIn(raw_vectors(rec), reg=rec.fold_in_reg)([[rec.items._pos[i] for i in liked + new]])[0]
    assert [r.item_id for r in got] == [i for i, _ in oracle(rec, user, set(liked + new))[:8]]
    # No new items: the fold-in of the liked items alone; the same items again change nothing.
    alone = HistoryFoldIn(raw_vectors(rec), reg=rec.fold_in_reg)([[rec.items._pos[i] for i in liked]])[0]
    assert [r.item_id for r in rec.recommend_history(user="u0", k=5)] == [i for i, _ in oracle(rec, alone, set(liked))[:5]]
    assert [r.item_id for r in rec.recommend_history(liked[:2], 5, user="u0")] == \
        [r.item_id for r in rec.recommend_history((), 5, user="u0")]
    with pytest.raises(MMRecError, match="user 'nobody' is not known"):
        rec.recommend_history([0], user="nobody")


def test_liked_items_leave_out_items_below_the_threshold_and_removed_ones(tmp_path):
    inter, feats = write_planted(tmp_path)
    rows = inter.read_text().splitlines()
    # Every planted row rated 5; u0 also rated three items of another cluster 1 (below threshold 3).
    rated = [rows[0] + "\trating"] + [r + "\t5" for r in rows[1:]] + [f"u0\t{i}\t1" for i in (1, 5, 9)]
    inter.write_text("\n".join(rated) + "\n")
    fit(inter, features={"content": feats}, out=tmp_path / "model", config=TrainConfig(**FAST), split="random",
        rating_threshold=3, show_progress=False)
    rec = Recommender.load(tmp_path / "model", show_progress=False)
    planted = [int(r.split("\t")[1]) for r in rows[1:] if r.startswith("u0\t")]
    assert sorted(rec.liked_items("u0")) == sorted(planted)
    assert sorted(rec.known_items("u0")) == sorted(planted + [1, 5, 9])  # never recommended back
    # The fold-in starts from the liked items only; every known item stays excluded.
    got = rec.recommend_history(user="u0", k=10)
    user = HistoryFoldIn(raw_vectors(rec), reg=rec.fold_in_reg)([[rec.items._pos[i] for i in planted]])[0]
    assert [r.item_id for r in got] == [i for i, _ in oracle(rec, user, set(planted + [1, 5, 9]))[:10]]
    # Explanations name liked items only.
    for r in rec.recommend("u0", 10, explain=True):
        assert {h["item_id"] for h in r.explanation["history"]} <= set(planted)
    # A directory written before liked items were stored reads every known item as liked.
    from safetensors.numpy import load_file, save_file
    path = tmp_path / "model" / "users.safetensors"
    arrays = load_file(str(path))
    assert set(arrays) == {"user_vectors", "known_indptr", "known_indices", "liked_indptr", "liked_indices"}
    shutil.copytree(tmp_path / "model", tmp_path / "old")
    save_file({k: v for k, v in arrays.items() if not k.startswith("liked")}, str(tmp_path / "old" / "users.safetensors"))
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    manifest["checksums"]["users.safetensors"] = sha256_file(tmp_path / "old" / "users.safetensors")
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    assert sorted(Recommender.load(tmp_path / "old", show_progress=False).liked_items("u0")) == sorted(planted + [1, 5, 9])
    # An item removed from the index leaves the liked items (it cannot be a history item any more).
    rec.items.remove([planted[0]])
    assert sorted(rec.liked_items("u0")) == sorted(planted[1:]) and planted[0] in rec.known_items("u0")
    assert len(rec.recommend_history(user="u0", k=5)) == 5


def test_serving_from_a_trained_directory_does_not_import_torch_geometric(trained):
    # Importing torch-geometric costs seconds per CLI call (fusion.propagation imports it on first use);
    # torch._dynamo 0.85 s (a random draw into a meta tensor imports it: the model is built on meta).
    code = (
        "import sys; from mmrec.recommender import Recommender\n"
        f"rec = Recommender.load({str(trained / 'model')!r}, show_progress=False)\n"
        "rec.recommend('u0', 3); rec.recommend_history([0, 4], 3); rec.similar(0, 3)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch_geometric', 'transformers')\n"
        "             or m.startswith('torch._dynamo')))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_recommend_many_is_recommend_for_each_user(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    users = ["u3", "u0", "u17", "u0", "u40"]  # any order, repeats allowed
    want = [rec.recommend(u, 7) for u in users]
    for batch_size in (1, 2, 1024):
        got = rec.recommend_many(users, 7, batch_size=batch_size)
        assert [[r.item_id for r in g] for g in got] == [[r.item_id for r in w] for w in want]
        # A batched product may round differently from a single one (1 float32 ulp).
        np.testing.assert_allclose([[r.score for r in g] for g in got], [[r.score for r in w] for w in want], rtol=1e-6)
    kept = rec.recommend_many(["u3"], 32, exclude_known=False)[0]
    assert len(kept) == 32 and set(rec.known_items("u3")) <= {r.item_id for r in kept}
    with pytest.raises(MMRecError, match="user 'nobody' is not known"):
        rec.recommend_many(["u0", "nobody"])
    for bad in (dict(batch_size=0), dict(k=0)):
        with pytest.raises(MMRecError, match=f"{next(iter(bad))} must be at least 1, got 0"):
            rec.recommend_many([], **bad)


def test_similar_many_is_similar_for_each_item_on_a_trained_directory(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    items = [3, 0, 17, 3, 31]  # any order, repeats allowed
    raw = raw_vectors(rec)  # [N, D] float64
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    for by, vecs in (("index", raw), ("cosine", unit)):  # the model's dot product, or the cosine
        want = [oracle_similar(rec, vecs, i)[:6] for i in items]
        for batch_size in (1, 2, 1024):
            got = rec.similar_many(items, 6, by=by, batch_size=batch_size)
            assert [[r.item_id for r in g] for g in got] == [[i for i, _ in w] for w in want]
            np.testing.assert_allclose([[r.score for r in g] for g in got], [[s for _, s in w] for w in want],
                                       rtol=1e-5, atol=1e-6)
    every = rec.similar_many(rec.items.ids, 4)
    assert len(every) == len(rec.items) and all(i not in {r.item_id for r in g} for i, g in zip(rec.items.ids, every))


@pytest.mark.parametrize("factory", ["HNSW8", "IVF4,Flat"])
def test_recommend_many_with_an_approximate_index_never_returns_a_known_item(tmp_path, factory):
    items = 32 if factory.startswith("HNSW") else 200  # IVF4 trains on at least 156 vectors
    inter, feats = write_planted(tmp_path, items=items)
    rec, _, _ = fit(inter, features={"content": feats}, config=TrainConfig(**FAST), split="random",
                    factory=factory, show_progress=False)
    users = rec.user_ids
    for k in (5, items - 6):  # a few, and all the rest (6 known each)
        for user, got in zip(users, rec.recommend_many(users, k, batch_size=16)):
            assert len(got) == k and not set(rec.known_items(user)) & {r.item_id for r in got}
    if factory.startswith("IVF"):  # a deeper fetch extends the same ranking of the probed lists
        want = [[r.item_id for r in rec.recommend(u, 5)] for u in users]
        assert [[r.item_id for r in g] for g in rec.recommend_many(users, 5, batch_size=16)] == want


def test_cli_recommend_for_several_users(trained, capsys, monkeypatch):
    rec = Recommender.load(trained / "model", show_progress=False)
    d = str(trained / "model")
    assert main(["recommend", "--index", d, "--user", "u1", "u2", "-k", "3", "--json", "-q"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["user_id"] for line in lines] == ["u1", "u2"]
    for line in lines:
        assert [r["item_id"] for r in line["results"]] == [r.item_id for r in rec.recommend(line["user_id"], 3)]
    assert main(["recommend", "--index", d, "--all-users", "-k", "2", "--json", "-q"]) == 0
    every = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["user_id"] for line in every] == rec.user_ids
    assert [[r["item_id"] for r in line["results"]] for line in every] == \
        [[r.item_id for r in g] for g in rec.recommend_many(rec.user_ids, 2)]
    monkeypatch.setattr("mmrec.cli.STREAM_BATCH", 5)  # printed 5 users at a time: the same lines
    assert main(["recommend", "--index", d, "--all-users", "-k", "2", "--json", "-q"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == every
    # --user given twice adds up (as --user u1 u2).
    assert main(["recommend", "--index", d, "--user", "u1", "--user", "u2", "-k", "3", "--json", "-q"]) == 0
    assert [json.loads(line)["user_id"] for line in capsys.readouterr().out.splitlines()] == ["u1", "u2"]
    assert main(["recommend", "--index", d, "--user", "u1", "u2", "-k", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("user u1\n") and "\nuser u2\n" in out
    for argv, message, status in [
        (["--all-users", "--explain"], "--explain-items and --diversity take one --user", 2),
        (["--user", "u1", "u2", "--history", "0"], "--explain-items and --diversity take one --user", 2),
        (["--user", "u1", "u2", "--explain-items", "2"], "--explain-items and --diversity take one --user", 2),
        (["--all-users", "--user", "u1"], "--all-users takes no --user or --history", 2),
        (["--user", "u1", "nobody"], "user 'nobody' is not known", 1),
        (["--user", "u1", "--explain-items", "2"], "--explain-items sets how many history items --explain names", 2),
    ]:
        assert main(["recommend", "--index", d, *argv, "-q"]) == status  # options that do not go together: 2
        assert message in capsys.readouterr().err


def test_user_ids_are_read_as_item_ids_are(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    assert rec.known_items(" u3 ") == rec.known_items("u3")  # surrounding spaces, as an item id's
    assert rec.recommend_many("u3", 3) == [rec.recommend("u3", 3)]  # one user, not "u" and "3"
    rows = rec.user_ids.index("u3")
    assert rec.user_index("u3") == rows
    with pytest.raises(MMRecError, match="True is not a user id"):
        rec.recommend(True)  # Python counts it as 1; no user is named True
    with pytest.raises(MMRecError, match="k must be a whole number of at least 1, got 2.5"):
        rec.recommend("u3", k=2.5, diversity=0.3)
    with pytest.raises(MMRecError, match="candidates must be at least 1, got -5"):
        rec.recommend("u3", k=3, diversity=0.3, candidates=-5)
    with pytest.raises(ConfigError, match="diversity weight must be a number in \\[0, 1\\], got None"):
        rec.recommend("u3", k=3, diversity=None)
    # None is no id: nothing excluded, and a known user's history alone.
    assert rec.recommend("u3", k=3, exclude=None) == rec.recommend("u3", k=3)
    assert rec.recommend_history(None, k=3, user="u3") == rec.recommend_history([], k=3, user="u3")
    # a 0-d array is its one id; a list, an array or a Series where one id goes says so (bare TypeErrors:
    # "unhashable type", "iteration over a 0-d array"); an int too long to write as text is no id
    import pandas as pd

    item = rec.items.ids[0]
    assert rec.recommend(np.array("u3"), 3) == rec.recommend("u3", 3)
    assert rec.similar(np.array(item), 3) == rec.similar(item, 3) and rec.explain(np.array(item)).item_id == item
    assert rec.recommend_history(np.array(item), 3) == rec.recommend_history([item], 3)
    assert rec.recommend("u3", 3, exclude=np.array(item)) == rec.recommend("u3", 3, exclude=[item])
    with pytest.raises(MMRecError, match="one user id was expected, got a Series: recommend_many takes several"):
        rec.recommend(pd.Series(["u3"]), 3)
    for bad, kind in (([item], "list"), (np.array([item]), "ndarray"), (pd.Series([item]), "Series")):
        with pytest.raises(UnknownIdError, match=f"one item id was expected, got a {kind}: "):
            rec.similar(bad, 3)
    with pytest.raises(UnknownIdError, match=r"an integer of about 5000 digits is not in this index \(32 items\)"):
        rec.similar(10**5000, 3)
    with pytest.raises(UnknownIdError, match=r"an integer of about 5000 digits is not known to this model"):
        rec.recommend(10**5000, 3)
    assert rec.recommend_history([10**5000, item], 3) == rec.recommend_history([item], 3)  # (str() of it: ValueError)


def test_a_content_index_has_no_users_and_says_so(trained, tmp_path):
    x = np.load(trained / "content.npy")
    ItemIndex.from_features(list(range(len(x))), {"content": x}, show_progress=False).save(tmp_path / "c")
    rec = Recommender.load(tmp_path / "c", show_progress=False)
    for call in (lambda: rec.known_items("u0"), lambda: rec.liked_items("u0"), lambda: rec.recommend("u0")):
        with pytest.raises(MMRecError, match="content index"):
            call()


def test_a_trained_index_in_memory_is_not_saved_without_its_model(tmp_path):
    inter, feats = write_planted(tmp_path)
    rec, _, _ = fit(inter, features={"content": feats}, config={**FAST, "epochs": 1}, split="random",
                    show_progress=False)  # a mapping of TrainConfig fields, as finetune takes
    assert rec.config.epochs == 1 and rec.config.dim == FAST["dim"]
    with pytest.raises(MMRecError, match="held in memory without the model's files: train with an output directory"):
        rec.items.save(tmp_path / "alone")
    assert not (tmp_path / "alone").exists()
    with pytest.raises(ConfigError, match=r"unknown training options \['epoch'\]"):
        fit(inter, features={"content": feats}, config={"epoch": 1}, show_progress=False)
    # a keyword fit does not take was dropped without a word where there is no catalog to read (features
    # alone, ID-only): a training setting given beside config, a misspelt option
    for given, said in (({"epochs": 1}, "fit() got an unexpected keyword argument 'epochs': a training setting, "
                                        "given in config (config={'epochs': ...})"),
                        ({"rating_treshold": 4}, "fit() got an unexpected keyword argument 'rating_treshold'"),
                        # the encoders take these too, but beside config they read as the training's
                        ({"device": "cpu"}, "fit() got an unexpected keyword argument 'device': a training setting, "
                                            "given in config (config={'device': ...})"),
                        ({"batch_size": 7}, "fit() got an unexpected keyword argument 'batch_size': a training "
                                            "setting, given in config (config={'batch_size': ...})")):
        for features in ({"content": feats}, None):
            with pytest.raises(TypeError) as e:
                fit(inter, features=features, config={**FAST, "epochs": 1}, show_progress=False, **given)
            assert str(e.value) == said
    from mmrec.pipeline import load_content

    content = load_content(None, {"content": feats}, show_progress=False)
    with pytest.raises(TypeError) as e:  # read already: the option was dropped
        fit(inter, content=content, config={**FAST, "epochs": 1}, show_progress=False, text_fields=["title"])
    assert str(e.value) == ("fit() got 'text_fields', which say how a catalog is read and encoded, with content "
                            "already loaded: give them to load_content")


def test_a_trained_directory_missing_a_model_file_is_named(trained, tmp_path):
    shutil.copytree(trained / "model", tmp_path / "model")
    (tmp_path / "model" / "users.json").unlink()
    with pytest.raises(ValueError, match="users.json"):  # IndexFormatError, as the CLI prints it
        Recommender.load(tmp_path / "model", show_progress=False)


def test_the_scores_are_the_dot_products_of_the_documented_vectors(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    vectors = rec.items.item_vectors()
    assert vectors.shape == (len(rec.items), rec.user_vectors.shape[1]) == (32, 16)
    for user in rec.user_ids[:5]:
        got = rec.recommend(user, 5)
        u = rec.user_vectors[rec.user_index(user)]
        want = vectors[[rec.items.ids.index(r.item_id) for r in got]] @ u
        np.testing.assert_allclose([r.score for r in got], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(rec.items.item_vectors([3, "0"]), vectors[[3, 0]])
    np.testing.assert_array_equal(rec.items.vector_of(3)[:, :-1] * rec.items.vectorizer.mips.max_norm, vectors[[3]])
