from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mmrec.coldstart import cold_part, hold_out_items, warm_part
from mmrec.config import TrainConfig
from mmrec.errors import ConfigError, DataError
from mmrec.interactions import Interactions, load_interactions
from mmrec.pipeline import evaluate_directory, fit
from mmrec.split import ensure_split
from tests.mmrec.conftest import write_planted

FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=128, epochs=12, patience=12, reg=1e-4)


def tiny() -> Interactions:
    # users 0,1; items 0..3; split: 0 train, 1 valid, 2 test
    return Interactions([0, 1], ["a", "b", "c", "d"], users=[0, 0, 0, 1, 1, 1], items=[0, 1, 2, 0, 3, 1],
                        split=[0, 1, 2, 0, 0, 2])


def test_warm_and_cold_parts_are_exact():
    inter, cold = tiny(), np.array([False, True, False, False])
    w = warm_part(inter, cold)
    assert w.items.tolist() == [0, 2, 0, 3] and w.split.tolist() == [0, 2, 0, 0]
    c = cold_part(inter, cold)
    # every cold row becomes test; warm train rows stay (history); warm valid/test rows go
    assert list(zip(c.users.tolist(), c.items.tolist(), c.split.tolist())) == [(0, 0, 0), (0, 1, 2), (1, 0, 0),
                                                                               (1, 3, 0), (1, 1, 2)]


def test_hold_out_items_is_seeded_and_sized():
    inter = Interactions(list(range(3)), list(range(10)), users=[0, 1, 2] * 3, items=[0, 1, 2, 3, 4, 5, 6, 7, 8])
    a, b = hold_out_items(inter, 0.25, seed=3), hold_out_items(inter, 0.25, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 2 and not a[9]  # round(0.25 * 9) of the 9 items with interactions; item 9 has none
    with pytest.raises(ConfigError, match=r"must lie in \(0, 1\)"):
        hold_out_items(inter, 1.0)
    with pytest.raises(ConfigError, match="leaves 0 of 9 items with interactions cold"):
        hold_out_items(inter, 0.01)


def test_only_items_with_content_are_held_out(tmp_path):
    inter, feats = write_planted(tmp_path, users=48, items=32, per_user=8)
    x = np.load(feats)
    x[5] = 0  # item 5 has interactions but no content: nothing to rank it by once held out
    np.save(feats, x)
    loaded = ensure_split(load_interactions(inter), "random", seed=0)
    eligible = np.abs(x).sum(axis=1) > 0
    for seed in range(20):
        held = hold_out_items(loaded, 0.2, seed, eligible)
        assert not held[5] and held.sum() == round(0.2 * eligible.sum())
    everything = hold_out_items(loaded, 0.2, 3)  # with every item eligible: the draw it always was
    assert np.array_equal(everything, hold_out_items(loaded, 0.2, 3, np.ones(32, bool)))
    for seed in (3, 4):  # trained whichever the seed (some drew item 5 and failed, naming it as without edges)
        rec, _, test = fit(inter, features={"content": feats}, config=TrainConfig(**FAST, cold_start=0.2, seed=seed),
                           split="random", show_progress=False)
        assert 5 not in rec.cold_items and len(rec.cold_items) == round(0.2 * 31)


def test_cold_items_are_ranked_from_content(tmp_path):
    inter, feats = write_planted(tmp_path, users=64, items=128, per_user=12)
    rec, result, test = fit(inter, features={"content": feats}, config=TrainConfig(**FAST, cold_start=0.25),
                            split="random", show_progress=False)
    cold = test["cold"]
    # 32 cold items, 8 per cluster; a user's cold truth lies in its own cluster, so content that encodes the
    # cluster puts all of it in the top 10 (random ranking: recall@10 ~ 10/32).
    assert cold["recall@10"] >= 0.9, cold
    assert cold["num_users"] >= 40
    assert len(rec.items) == 128 and "recall@20" in test
    # Coverage among the 32 items that could be listed (all, as a user's own cluster fills its top 10
    # and there are 4 clusters of 8); no novelty: cold items have no training rows, so it is constant.
    assert cold["coverage@20"] == 1.0 and "novelty@20" not in cold
    assert test["coverage@20"] <= 1.0 and test["coverage@20"] > 96 / 128  # among the 96 warm items
    # Cold rows are the content path blended with their warm neighbours, scaled, within the MIPS
    # norm bound (none shrunk): what `index add` gives them against the warm items.
    vec, idx = rec.items.vectorizer, rec.items
    rows = [idx._pos[i] for i in rec.cold_items]
    warm = np.setdiff1d(np.arange(len(idx.items)), rows)
    pool = ({"content": idx.features["content"][warm]}, {"content": idx.present["content"][warm]},
            vec.mips.original(idx.vectors[warm]))
    raw = vec.content_vectors({"content": np.load(feats)[np.asarray(rec.cold_items, int)]}, {"content": np.ones(32, bool)},
                              pool)
    got = vec.mips.original(idx.vectors[rows])
    # Same path (near-tied 10th neighbours may differ with float rounding: compare directions)...
    cos = (got * raw).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(raw, axis=1)
    assert cos.min() > 0.99, cos.min()
    # ... and no row was shrunk to the norm bound.
    assert np.linalg.norm(got, axis=1).max() < 0.999 * vec.mips.max_norm
    assert vec.neighbours == 10 and vec.neighbour_weight == 0.5
    # `evaluate` on the same file reproduces the training report: the warm items' test rows,
    # ranked by the index's vectors among the warm items (held-out items are evaluated apart:
    # neither truth nor candidates, or one a user did have would count as a miss).
    again = evaluate_directory(rec, inter)
    assert again["rows_of_held_out_items"] > 0
    # Users the model does not know are counted, one whose rows are all held-out items too (it went
    # uncounted, and its rows counted as held-out rows).
    warm = next(i for i in range(128) if i not in set(rec.cold_items))
    extra = [f"new1\t{rec.cold_items[0]}", f"new1\t{rec.cold_items[1]}", f"new2\t{rec.cold_items[0]}", f"new2\t{warm}"]
    (tmp_path / "more.tsv").write_text(inter.read_text() + "\n".join(extra) + "\n")
    more = evaluate_directory(rec, tmp_path / "more.tsv")
    assert (more["users_unknown"], more["users_skipped"]) == (2, 2)
    assert more["rows_of_held_out_items"] == again["rows_of_held_out_items"]
    assert {k: again[k] for k in test if k != "cold"} == {k: v for k, v in test.items() if k != "cold"}
    from mmrec.interactions import load_interactions
    from mmrec.metrics import evaluate
    from mmrec.split import ensure_split

    ids = [it["item_id"] for it in idx.items]
    loaded = ensure_split(load_interactions(inter, item_ids=ids), "random", TrainConfig().seed)
    held = np.isin(np.array(ids, dtype=object), np.array(rec.cold_items, dtype=object))
    item_vecs = torch.from_numpy(vec.mips.original(idx.vectors))
    user_rows = np.array([rec._user_pos_str[str(u)] for u in loaded.user_ids])

    def warm_only(users):
        s = torch.from_numpy(rec.user_vectors[user_rows[users]]) @ item_vecs.T
        s[:, torch.from_numpy(held)] = float("-inf")
        return s

    oracle = evaluate(warm_only, warm_part(loaded, held), split="test", mask="all")
    assert test["recall@20"] == pytest.approx(oracle["recall@20"], abs=1e-9)
    assert test["ndcg@20"] == pytest.approx(oracle["ndcg@20"], abs=1e-9)
    # Validation ranked the same candidates (held-out items left out), so `evaluate --split valid`
    # reproduces the report's validation metrics of the kept epoch.
    valid_again = evaluate_directory(rec, inter, split="valid")
    for key in ("recall@10", "recall@20", "ndcg@20"):
        assert valid_again[key] == pytest.approx(result.best_valid[key], abs=1e-9)
    cold_again = evaluate_directory(rec, inter, cold_start=True)
    assert {k: cold_again[k] for k in cold} == cold
    with pytest.raises(ConfigError, match="split and mask do not apply"):
        evaluate_directory(rec, inter, cold_start=True, split="test")


def write_catalog(path, ids, titles):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title"])
        w.writerows(zip(ids, titles))


def test_index_add_equals_embedding_at_build_time(tmp_path, tiny_bert_dir):
    inter, _ = write_planted(tmp_path, users=32, items=24, per_user=6)
    words = ["cat", "dog", "space", "war", "love", "city", "toy", "boy", "police", "night", "music", "house"]
    ids = list(range(24))
    titles = [f"{words[i % 12]} {words[(i * 5) % 12]} film" for i in ids]
    write_catalog(tmp_path / "items.csv", ids, titles)
    rec, _, _ = fit(inter, catalog=tmp_path / "items.csv", out=tmp_path / "model", text_encoder=tiny_bert_dir,
                    config=TrainConfig(**(FAST | {"epochs": 2}), cold_start=0.25), split="random", cache_dir=None,
                    show_progress=False)
    from mmrec.recommender import Recommender

    back = Recommender.load(tmp_path / "model", show_progress=False)
    cold_ids = back.cold_items
    assert len(cold_ids) == 6 and [it["item_id"] for it in back.items.items[-6:]] == cold_ids  # added last
    before = {i: back.items.vector_of(i).copy() for i in cold_ids}
    back.items.remove(cold_ids)
    write_catalog(tmp_path / "cold.csv", cold_ids, [titles[i] for i in cold_ids])
    assert back.items.add(tmp_path / "cold.csv") == 6  # `mmrec index add` on a trained directory
    for i in cold_ids:
        np.testing.assert_allclose(back.items.vector_of(i), before[i], rtol=1e-5, atol=1e-6)
        assert back.items.attention[back.items._pos[i], -1] == 0.0  # no ID token for an added item
    again = Recommender.load(tmp_path / "model", show_progress=False)
    assert [r.item_id for r in again.similar(cold_ids[0], 5)] == [r.item_id for r in back.similar(cold_ids[0], 5)]


def test_cli_train_and_evaluate_cold_start(tmp_path, capsys):
    import json

    from mmrec.cli import main

    inter, feats = write_planted(tmp_path, users=64, items=128, per_user=12)
    args = ["train", "--interactions", str(inter), "--features", f"content={feats}", "--out", str(tmp_path / "m"),
            "--split", "random", "--cold-start", "0.25", "--json", "-q"]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    assert main(args) == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--index", str(tmp_path / "m"), "--interactions", str(inter), "--cold-start",
                 "--batch-size", "5", "--json", "-q"]) == 0  # batches change nothing
    again = json.loads(capsys.readouterr().out)
    assert again["cold_start"] is True and "split" not in again and "mask" not in again  # neither applies
    for key in ("recall@10", "recall@20", "ndcg@20"):
        assert again[key] == pytest.approx(trained["test"]["cold"][key], abs=1e-6)
    # without --cold-start, the held-out items' rows are left out, and the table says so (only --json did)
    assert main(["evaluate", "--index", str(tmp_path / "m"), "--interactions", str(inter), "--json", "-q"]) == 0
    held = json.loads(capsys.readouterr().out)["rows_of_held_out_items"]
    assert main(["evaluate", "--index", str(tmp_path / "m"), "--interactions", str(inter), "-q"]) == 0
    assert f"  left out: {held} rows of the items training held out (evaluated apart: --cold-start)\n" in \
        capsys.readouterr().out
    # The held-out items' rows of every split are ranked: a --split or --mask would be ignored, so
    # either is a malformed command line (exit 2), before the directory is read.
    for extra in (["--split", "valid"], ["--mask", "train"]):
        assert main(["evaluate", "--index", str(tmp_path / "nowhere"), "--interactions", str(inter), "--cold-start",
                     *extra, "-q"]) == 2
        assert "--split and --mask do not apply" in capsys.readouterr().err
    m2 = tmp_path / "m2"
    assert main(["train", "--interactions", str(inter), "--features", f"content={feats}", "--out", str(m2),
                 "--split", "random", "--epochs", "1", "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--index", str(m2), "--interactions", str(inter), "--cold-start", "-q"]) == 1
    assert "trained without held-out items" in capsys.readouterr().err
    # every held-out item removed since: said so (it was "ValueError: no user has a truth item")
    from mmrec.recommender import Recommender

    rec = Recommender.load(tmp_path / "m", show_progress=False)
    held = list(rec.cold_items)
    rec.items.remove(held)
    assert main(["evaluate", "--index", str(tmp_path / "m"), "--interactions", str(inter), "--cold-start", "-q"]) == 1
    assert f"none of the {len(held)} items training held out is in the index any more (index remove): nothing to " \
           "evaluate with --cold-start" in capsys.readouterr().err


def test_item_graph_leaves_held_out_items_out_and_cold_items_still_rank(tmp_path, monkeypatch):
    import mmrec.train as train_module

    inter, feats = write_planted(tmp_path, users=64, items=128, per_user=12)
    seen = {}
    original = train_module.Trainer.__init__

    def spy(self, model, data, cfg, **kw):
        original(self, model, data, cfg, **kw)
        seen["graph"], seen["negatives"] = self.item_graph, data.negatives

    monkeypatch.setattr(train_module.Trainer, "__init__", spy)
    rec, _, test = fit(inter, features={"content": feats},
                       config=TrainConfig(**FAST, cold_start=0.25, item_graph_k=4), split="random", show_progress=False)
    dense = seen["graph"].dense()
    held = torch.from_numpy(~seen["negatives"])
    assert int(held.sum()) == 32
    assert dense[held].abs().sum() == 0 and dense[:, held].abs().sum() == 0  # neither rows nor neighbours
    torch.testing.assert_close(dense[~held].sum(dim=1), torch.ones(96))  # each warm row averages 4 neighbours
    assert test["cold"]["recall@10"] >= 0.9, test["cold"]


def test_content_scale_matches_scores_over_training_pairs_and_falls_back_to_norms():
    from fusion.model import FusedGraphModel
    from mmrec.pipeline import content_scale

    torch.manual_seed(0)
    model = FusedGraphModel(3, 4, {"t": 2}, dim=4, num_heads=2, id_mode="residual")
    feats = {"t": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]], np.float32)}
    present = {"t": np.ones(4, bool)}
    trained = np.array([True, True, True, False])
    with torch.no_grad():
        c = model.eval().content_only({"t": torch.from_numpy(feats["t"])}).numpy()  # [4, 4]
    rng = np.random.default_rng(0)
    users = rng.normal(size=(3, 4)).astype(np.float32)
    items = c * np.array([[2.0], [3.0], [5.0], [7.0]], np.float32)  # trained vectors: content times a per-item factor
    pu, pi = np.array([0, 1, 2, 0, 1]), np.array([0, 0, 1, 2, 3])  # item 3 is untrained: its pair is ignored
    num = sum(float(users[u] @ items[i]) for u, i in zip(pu[:4], pi[:4]))
    den = sum(float(users[u] @ c[i]) for u, i in zip(pu[:4], pi[:4]))
    got = content_scale(model, feats, present, items, trained, 3, users, (pu, pi))
    assert num > 0 and den > 0  # this draw: the score-matched branch is taken
    assert got == pytest.approx(num / den, rel=1e-5)
    norm = np.median(np.linalg.norm(items[:3], axis=1)) / np.median(np.linalg.norm(c[:3], axis=1))
    assert content_scale(model, feats, present, items, trained, 3) == pytest.approx(norm, rel=1e-5)
    # A pair sum that is not positive falls back to the norms; no modality or no trained item to 1/(L+1).
    assert content_scale(model, feats, present, items, trained, 3, -users, (pu, pi)) == pytest.approx(norm, rel=1e-5)
    assert content_scale(model, {}, {}, items, trained, 3) == 0.25
    assert content_scale(model, feats, present, items, np.zeros(4, bool), 3) == 0.25


def test_neighbour_mean_and_blend_exact_values():
    from mmrec.coldstart import blend_with_neighbours, neighbour_mean

    pool_f = {"t": np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], np.float32)}
    pool_p = {"t": np.ones(4, bool)}
    pool_v = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]], np.float32)
    new = {"t": np.array([[1.0, 0.05], [0.05, 1.0]], np.float32)}
    got = neighbour_mean(new, {"t": np.ones(2, bool)}, pool_f, pool_p, pool_v, k=2)
    np.testing.assert_allclose(got, [[2.0, 0.0], [0.0, 3.0]])  # means of pool rows {0, 1} and {2, 3}
    # Leave-one-out on the pool itself: row 0 may not pick itself, so {1, 3} (cos 0.99 and 0.11).
    loo = neighbour_mean(pool_f, pool_p, pool_f, pool_p, pool_v, k=2, exclude=np.arange(4))
    np.testing.assert_allclose(loo[0], (pool_v[1] + pool_v[3]) / 2)
    # Blend: weight x |n| x unit(c) + (1 - weight) x n; a row without neighbours keeps c.
    c = np.array([[0.0, 10.0], [5.0, 0.0]], np.float32)
    n = np.array([[2.0, 0.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(blend_with_neighbours(c, n, 0.25), [[1.5, 0.5], [5.0, 0.0]])


def test_neighbour_mean_breaks_a_tie_at_the_kth_place_by_pool_order():
    from mmrec.coldstart import neighbour_mean

    # A query with modality b only: 2 of 20 pool items have b, the other 18 tie at cosine 0, and
    # k = 5 takes the first 3 of them (the partition took rows 0, 2, 3: not pool order).
    rng = np.random.default_rng(0)
    pool_f = {"a": rng.normal(size=(20, 3)).astype(np.float32), "b": np.zeros((20, 2), np.float32)}
    pool_f["b"][[7, 15]] = [[1.0, 0.2], [0.8, 0.5]]
    pool_p = {"a": np.ones(20, bool), "b": np.isin(np.arange(20), [7, 15])}
    pool_v = (2.0 ** np.arange(20))[:, None].astype(np.float32)  # [20, 1]: each mean names its rows
    new = {"a": np.zeros((1, 3), np.float32), "b": np.array([[1.0, 0.3]], np.float32)}
    got = neighbour_mean(new, {"a": np.zeros(1, bool), "b": np.ones(1, bool)}, pool_f, pool_p, pool_v, k=5)
    np.testing.assert_array_equal(got, pool_v[[7, 15, 0, 1, 2]].mean(axis=0, keepdims=True))


def test_neighbour_mean_measured_from_the_catalog_mean_picks_another_neighbour():
    from mmrec.coldstart import neighbour_mean

    # Query (1, 1); pool a = (1, 0.2), b = (0.5, 1). Plain cosine: b (0.949 > 0.832). From the
    # mean (1, 0) the query is (0, 1), a is (0, 0.2) (cosine 1) and b is (-0.5, 1) (0.894): a.
    pool_f = {"t": np.array([[1.0, 0.2], [0.5, 1.0]], np.float32)}
    pool_v = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    new, has = {"t": np.array([[1.0, 1.0]], np.float32)}, {"t": np.ones(1, bool)}
    plain = neighbour_mean(new, has, pool_f, {"t": np.ones(2, bool)}, pool_v, k=1)
    centred = neighbour_mean(new, has, pool_f, {"t": np.ones(2, bool)}, pool_v, k=1,
                             centers={"t": np.array([1.0, 0.0], np.float32)})
    np.testing.assert_array_equal(plain, [[0.0, 1.0]])
    np.testing.assert_array_equal(centred, [[1.0, 0.0]])
    # A query at the mean has no direction: every pool item is as near, so it borrows from them all (it took the
    # first k in index order); left out of its own pool, from the others
    pool_f = {"t": np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], np.float32)}
    pool_v = np.array([[1.0, 0.0], [0.0, 3.0], [4.0, 4.0]], np.float32)
    at_mean = {"t": np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)}
    got = neighbour_mean(at_mean, {"t": np.ones(2, bool)}, pool_f, {"t": np.ones(3, bool)}, pool_v, k=1,
                         exclude=np.array([-1, 2]), centers={"t": np.array([1.0, 1.0], np.float32)})
    np.testing.assert_allclose(got, [[5 / 3, 7 / 3], [0.5, 1.5]])


def test_a_trained_directory_keeps_the_catalog_means_its_new_items_are_placed_by(tmp_path):
    from fusion.fixed import modality_centers
    from mmrec.recommender import Recommender

    inter, feats = write_planted(tmp_path, users=64, items=128, per_user=12)
    fit(inter, features={"content": feats}, out=tmp_path / "m", config=TrainConfig(**FAST, cold_start=0.25),
        split="random", show_progress=False)
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    want = modality_centers({"content": np.load(feats)})["content"]  # every catalog item, cold ones too
    np.testing.assert_allclose(rec.items.centers["content"], want, rtol=1e-6)
    np.testing.assert_array_equal(rec.items.vectorizer.centers["content"], rec.items.centers["content"])
    assert rec.items.manifest["centered"] == ["content"]
    # Items added later borrow, as the held-out items did at training time, only from the items
    # trained on interactions: not from the held-out items nor from any item added since.
    from mmrec.interactions import load_interactions
    from mmrec.split import ensure_split

    ids = [it["item_id"] for it in rec.items.items]
    loaded = ensure_split(load_interactions(inter, item_ids=ids), "random", TrainConfig().seed)
    held = np.isin(np.array(ids, dtype=object), np.array(rec.cold_items, dtype=object))
    train = loaded.split_mask("train") & ~held[loaded.items]
    trained = np.bincount(loaded.items[train], minlength=len(ids)) > 0  # held-out items have no edge
    assert held.sum() == 32 and not trained[held].any()
    np.testing.assert_array_equal(rec.items.pool, trained)
    assert len(rec.items._neighbour_pool()[2]) == trained.sum()
    rec.items.add_features([500], {"content": np.load(feats)[:1]}, {"content": np.ones(1, bool)})
    back = Recommender.load(tmp_path / "m", show_progress=False)
    assert len(back.items) == 129 and back.items.pool.sum() == trained.sum() and not back.items.pool[-1]
    first_trained = ids[int(np.flatnonzero(trained)[0])]
    back.items.remove([rec.cold_items[0], first_trained])
    assert len(back.items.pool) == 127 and back.items.pool.sum() == trained.sum() - 1


def test_a_catalog_item_without_training_edges_is_served_as_the_model_validated_it(tmp_path):
    # Item 128 is in the catalog but only in test rows: no training edge. The index must serve it
    # with the vector validation scored (its content through the trained projections, no graph:
    # the layer mean x0 / (L + 1)), not through the calibrated cold path of genuinely new items,
    # which ranked such unpopular items into a third of the top-20 slots.
    from mmrec.recommender import Recommender

    inter, feats = write_planted(tmp_path, users=64, items=128, per_user=12)
    header, *lines = inter.read_text().splitlines()
    rows = [f"{line}\t{'valid' if k % 10 == 0 else 'test' if k % 10 == 1 else 'train'}" for k, line in enumerate(lines)]
    rows += ["u0\t128\ttest", "u4\t128\ttest"]
    (tmp_path / "split.tsv").write_text("\n".join([header + "\tsplit", *rows]) + "\n")
    x = np.load(feats)
    np.save(tmp_path / "content129.npy", np.concatenate([x, x[:1] + 0.01]))
    config = TrainConfig(**FAST)
    fit(tmp_path / "split.tsv", features={"content": tmp_path / "content129.npy"}, out=tmp_path / "m", config=config,
        split="given", show_progress=False)
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    served = rec.items.vectorizer.mips.original(rec.items.vector_of(128))[0]
    with torch.no_grad():
        x0 = rec.model.content_only({"content": torch.from_numpy(np.load(tmp_path / "content129.npy")[128:])})[0]
    np.testing.assert_allclose(served, x0.numpy() / (config.layers + 1), rtol=1e-5, atol=1e-6)
    cold_path = rec.items.vectorizer.content_vectors({"content": np.load(tmp_path / "content129.npy")[128:]},
                                                      {"content": np.ones(1, bool)})[0]
    assert np.linalg.norm(served) < 0.5 * np.linalg.norm(cold_path)


def test_neighbour_mean_skips_items_without_any_modality():
    from mmrec.coldstart import neighbour_mean

    pool_f = {"t": np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 0.0], [0.1, 0.9]], np.float32)}
    pool_p = {"t": np.array([True, True, False, True])}  # pool row 2 has no content: nobody's neighbour
    pool_v = np.array([[1.0, 0.0], [3.0, 0.0], [100.0, 100.0], [0.0, 4.0]], np.float32)
    new = {"t": np.array([[1.0, 0.05], [0.0, 0.0], [0.05, 1.0]], np.float32)}
    got = neighbour_mean(new, {"t": np.array([True, False, True])}, pool_f, pool_p, pool_v, k=2)
    # Row 1 has no content: no neighbours (zero); rows 0 and 2 pick among pool rows 0, 1, 3 only.
    np.testing.assert_allclose(got, [[2.0, 0.0], [0.0, 0.0], [1.5, 2.0]])
    # Leave-one-out over that pool: exclusions are pool rows, whatever rows lack content.
    loo = neighbour_mean(pool_f, pool_p, pool_f, pool_p, pool_v, k=2, exclude=np.arange(4))
    np.testing.assert_allclose(loo, [[1.5, 2.0], [0.5, 2.0], [0.0, 0.0], [2.0, 0.0]])
    # No item with content on either side: all zeros, no error.
    none = {"t": np.zeros(2, bool)}
    np.testing.assert_array_equal(neighbour_mean({"t": new["t"][:2]}, none, pool_f, pool_p, pool_v, k=2), 0.0)
    # Marked present with an all-zero row (the Python API allows it): no content either, on both sides
    # (a ValueError from combine_modalities before).
    flagged = {"t": np.ones(3, bool)}
    np.testing.assert_allclose(neighbour_mean(new, flagged, pool_f, {"t": np.ones(4, bool)}, pool_v, k=2), got)


def test_training_with_a_content_less_item_and_cold_neighbours(tmp_path):
    # An all-zero feature row is an item without that modality; with only one modality it has
    # none at all. Training (calibrated with content neighbours by default) must still finish.
    inter, feats = write_planted(tmp_path, users=48, items=32)
    x = np.load(feats)
    x[3] = 0.0
    x[5] = 0.0
    np.save(feats, x)
    assert TrainConfig().cold_neighbours > 0
    rec, result, test = fit(inter, features={"content": feats}, out=tmp_path / "m", config=TrainConfig(**FAST),
                            split="random", show_progress=False)
    assert result.best_epoch >= 0 and 0.0 <= test["recall@20"] <= 1.0
    user = rec.user_ids[0]
    assert len(rec.recommend(user, 5)) == 5
    # The directory is a trained one: ItemIndex alone would score it without its model.
    from mmrec.errors import MMRecError
    from mmrec.item_index import ItemIndex
    from mmrec.recommender import Recommender

    with pytest.raises(MMRecError, match="is a trained directory: .* open it with mmrec.recommender.Recommender.load"):
        ItemIndex.load(tmp_path / "m")
    assert Recommender.load(tmp_path / "m", show_progress=False).trained


def test_index_add_with_precomputed_features_and_evaluate_after_remove(tmp_path, capsys):
    from mmrec.cli import main
    from mmrec.errors import ConfigError, MMRecError
    from mmrec.pipeline import evaluate_directory
    from mmrec.recommender import Recommender

    inter, feats = write_planted(tmp_path, users=64, items=128, per_user=12)
    fit(inter, features={"content": feats}, out=tmp_path / "m", config=TrainConfig(**FAST, cold_start=0.25),
        split="random", show_progress=False)
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    cold = list(rec.cold_items)
    before = {i: rec.items.vector_of(i).copy() for i in cold}
    with pytest.raises(ConfigError, match=r"no text modality \(encoded: none; precomputed features: content\)"):
        rec.search_text("anything")
    full = evaluate_directory(rec, inter)
    assert full["rows_skipped"] == 0 and 0.0 < full["diversity@10"] <= 2.0

    # Removed items' rows are skipped (counted), not an error: the directory can still be evaluated.
    rec.items.remove(cold)
    rows_of_cold = sum(1 for line in inter.read_text().splitlines()[1:] if int(line.split("\t")[1]) in set(cold))
    got = evaluate_directory(rec, inter)
    assert got["rows_skipped"] == rows_of_cold > 0 and got["num_users"] > 0
    assert got["users_skipped"] == got["users_unknown"] == got["users_only_removed_items"] == 0
    # An item the model never knew is not a removed one: an error naming the row (a typo, another catalog).
    header, *lines = inter.read_text().splitlines()
    (tmp_path / "typo.tsv").write_text("\n".join([header, *lines[:3], "u0\t9999", *lines[3:]]) + "\n")
    with pytest.raises(DataError, match=r"row 4, field 'item_id': unknown item id '9999': not in the index nor "
                                        r"among the items the model was trained on"):
        evaluate_directory(rec, tmp_path / "typo.tsv")
    # A known user whose every row is a removed item drops out of the evaluation and is counted.
    header, *lines = inter.read_text().splitlines()
    user = next(line.split("\t")[0] for line in lines if int(line.split("\t")[1]) in set(cold))
    kept = [ln for ln in lines if ln.split("\t")[0] != user or int(ln.split("\t")[1]) in set(cold)]
    (tmp_path / "emptied.tsv").write_text("\n".join([header, *kept]) + "\n")
    got = evaluate_directory(rec, tmp_path / "emptied.tsv", how="random")
    assert (got["users_skipped"], got["users_unknown"], got["users_only_removed_items"]) == (1, 0, 1)
    capsys.readouterr()
    assert main(["evaluate", "--index", str(tmp_path / "m"), "--interactions", str(tmp_path / "emptied.tsv"),
                 "--split-rule", "random"]) == 0
    assert f"skipped: {got['rows_skipped']} rows of items not in the index; 1 users (0 unknown to the model, " \
           "1 with only such rows)" in capsys.readouterr().out

    # Adding them back through the CLI with their feature rows gives the vectors they had (up to
    # near-tied 10th content neighbours among the planted clusters: compare directions and norms).
    (tmp_path / "cold.csv").write_text("item_id\n" + "".join(f"{i}\n" for i in cold))
    np.save(tmp_path / "cold.npy", np.load(feats)[np.asarray(cold, int)])
    with pytest.raises(ConfigError, match=r"features other are not precomputed modalities"):
        rec.items.add(tmp_path / "cold.csv", features={"other": tmp_path / "cold.npy"})
    with pytest.raises(DataError, match=rf"row 1: id '{cold[0]}' is not in the index, and the row has none of its "
                                        r"modalities \(content\) to add it by \(pass --features for content\)"):
        rec.items.add(tmp_path / "cold.csv")  # refused by row, before anything is encoded
    with pytest.raises(DataError, match=r"no valid rows left"):  # skipped, every one
        rec.items.add(tmp_path / "cold.csv", skip_invalid=True)
    (tmp_path / "dup.csv").write_text("item_id\n" + "".join(f"{i}\n" for i in cold + cold[:1]))
    with pytest.raises(MMRecError, match=r"row 33 was skipped \(--skip-invalid\), so the --features rows no longer line up"):
        rec.items.add(tmp_path / "dup.csv", features={"content": tmp_path / "cold.npy"}, skip_invalid=True)
    assert len(rec.items) == 128 - len(cold)  # the failed adds changed nothing
    assert main(["index", "add", "--index", str(tmp_path / "m"), "--catalog", str(tmp_path / "cold.csv"),
                 "--features", f"content={tmp_path / 'cold.npy'}", "-q"]) == 0
    capsys.readouterr()
    back = Recommender.load(tmp_path / "m", show_progress=False)
    assert len(back.items) == 128
    got, want = np.concatenate([back.items.vector_of(i) for i in cold]), np.concatenate([before[i] for i in cold])
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.999, cos.min()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(want, axis=1), rtol=1e-2)


def test_fit_refuses_an_out_that_holds_its_inputs(tmp_path):
    from mmrec.errors import MMRecError

    data = tmp_path / "data"
    data.mkdir()
    inter, feats = write_planted(data, users=16, items=8)
    with pytest.raises(MMRecError, match="is not an index or model directory"):
        fit(inter, features={"content": feats}, out=data, overwrite=True, config=TrainConfig(**FAST), show_progress=False)
    fit(inter, features={"content": feats}, out=tmp_path / "model", config=TrainConfig(**FAST), show_progress=False)
    with pytest.raises(MMRecError, match="holds the input"):  # an earlier model's directory as --out
        fit(tmp_path / "model" / "new.tsv", features={"content": feats}, out=tmp_path / "model", overwrite=True,
            config=TrainConfig(**FAST), show_progress=False)
    assert inter.exists() and (tmp_path / "model" / "manifest.json").exists()


def test_an_id_only_model_refuses_new_items_with_the_reason(tmp_path):
    from mmrec.errors import MMRecError
    from mmrec.recommender import Recommender

    inter, _ = write_planted(tmp_path, users=16, items=8)
    fit(inter, out=tmp_path / "m", config=TrainConfig(**FAST, use_content=False), show_progress=False)
    (tmp_path / "new.csv").write_text("item_id,title\n100,A new film\n101,Another\n")
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    with pytest.raises(MMRecError, match=r"has no content modality \(an ID-only model\): .*train again"):
        rec.items.add(tmp_path / "new.csv")
    assert len(Recommender.load(tmp_path / "m", show_progress=False).items) == 8


def test_held_out_items_are_not_counted_as_learned_from_content(tmp_path, caplog):
    inter, feats = write_planted(tmp_path, users=64, items=32, per_user=8)  # every item in 16 users' lists
    with caplog.at_level("INFO", logger="mmrec.pipeline"):
        fit(inter, features={"content": feats}, config=TrainConfig(**(FAST | {"epochs": 1}), cold_start=0.25),
            split="random", show_progress=False)
    assert "8 of 32 items held out of training" in caplog.text
    assert "learned from content alone" not in caplog.text  # held out: not trained at all


def test_untrained_items_can_be_indexed_as_index_add_places_new_items(tmp_path):
    from mmrec.recommender import Recommender

    # Catalog items with no training interaction kept the vectors training left them, which users rank low (on
    # sparse data they took 15 of 18,860 top-20 slots; removed and added again with index add, 509)
    inter, feats = write_planted(tmp_path, users=32, items=24, per_user=6)
    x = np.load(feats)
    rows = inter.read_text().splitlines()
    unused = {3, 10}
    (tmp_path / "some.tsv").write_text("\n".join([rows[0]] + [r for r in rows[1:] if int(r.split("\t")[1]) not in unused])
                                       + "\n")
    config = TrainConfig(**(FAST | {"epochs": 2}), untrained_via_content=True)
    rec, _, _ = fit(tmp_path / "some.tsv", features={"content": feats}, catalog=None, out=tmp_path / "m", config=config,
                    split="random", show_progress=False)
    back = Recommender.load(tmp_path / "m", show_progress=False)
    assert back.config.untrained_via_content
    before = {i: back.items.vector_of(i).copy() for i in unused}
    back.items.remove(sorted(unused))
    np.save(tmp_path / "unused.npy", x[sorted(unused)])
    (tmp_path / "unused.csv").write_text("item_id\n" + "".join(f"{i}\n" for i in sorted(unused)))
    assert back.items.add(tmp_path / "unused.csv", features={"content": tmp_path / "unused.npy"}) == 2
    for i in unused:  # the same vector as index add gives them
        np.testing.assert_allclose(back.items.vector_of(i), before[i], rtol=1e-5, atol=1e-6)
    plain, _, _ = fit(tmp_path / "some.tsv", features={"content": feats}, out=None, split="random", show_progress=False,
                      config=TrainConfig(**(FAST | {"epochs": 2})))
    assert not any(np.allclose(plain.items.vector_of(i), before[i], atol=1e-3) for i in unused)  # (off by default)


def test_untrained_via_content_reports_validation_as_served(tmp_path):
    import json

    from mmrec.recommender import Recommender

    # The report's (and the popularity check's) validation was that of the training vectors, while the
    # index serves the untrained items through the content path: `evaluate --split valid` disagreed.
    inter, feats = write_planted(tmp_path, users=32, items=24, per_user=6)
    rows = inter.read_text().splitlines()
    (tmp_path / "some.tsv").write_text("\n".join([rows[0]] + [r for r in rows[1:] if int(r.split("\t")[1]) not in {3, 10}])
                                       + "\n")
    config = TrainConfig(**(FAST | {"epochs": 2}), untrained_via_content=True)
    rec, result, _ = fit(tmp_path / "some.tsv", features={"content": feats}, out=tmp_path / "m", config=config,
                         split="random", show_progress=False)
    report = json.loads((tmp_path / "m" / "train_report.json").read_text())
    served = evaluate_directory(Recommender.load(tmp_path / "m", show_progress=False), tmp_path / "some.tsv",
                                split="valid")
    for key in ("recall@10", "recall@20", "ndcg@20"):
        assert report["valid"][key] == pytest.approx(served[key], abs=1e-9) == result.best_valid[key]
    assert report["valid_trained"] == result.trained_valid != result.best_valid
    plain, plain_result, _ = fit(tmp_path / "some.tsv", features={"content": feats}, out=tmp_path / "p",
                                 config=TrainConfig(**(FAST | {"epochs": 2})), split="random", show_progress=False)
    assert plain_result.trained_valid is None and "valid_trained" not in json.loads(
        (tmp_path / "p" / "train_report.json").read_text())
    assert plain_result.best_valid == result.trained_valid  # the same training, seeded alike


def test_untrained_via_content_needs_content(tmp_path, capsys):
    inter, feats = write_planted(tmp_path, users=16, items=8)
    for kwargs, match in (({"features": {"content": feats}, "config": {"use_content": False}}, "use_content is off"),
                          ({"config": {}}, "the items have none")):
        with pytest.raises(ConfigError, match=match):
            fit(inter, config=TrainConfig(**FAST, untrained_via_content=True, **kwargs.pop("config")), show_progress=False,
                **kwargs)
    # On the command line without --catalog or --features: said so (use_content was turned off for the
    # user, who never set it), a malformed command line.
    from mmrec.cli import main

    assert main(["train", "--interactions", str(inter), "--out", str(tmp_path / "m"), "--untrained-via-content"]) == 2
    assert "error: --untrained-via-content places items by their content: give --catalog or --features" in \
        capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    # Content turned off by the user, with or without --features: the two options contradict each other.
    for more in ([], ["--features", f"content={feats}"]):
        assert main(["train", "--interactions", str(inter), "--out", str(tmp_path / "m"), "--untrained-via-content",
                     "--no-use-content", *more]) == 2
        assert ("error: untrained_via_content places items by their content, and use_content is off: leave one of "
                "the two out") in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_one_item_to_borrow_from_gives_content_path_vectors_its_scale(tmp_path):
    from mmrec.recommender import Recommender

    # With one trained item, leave-one-out calibration left it no neighbour: the scale was measured on the
    # bare content path and applied to vectors blended with that item, hundreds of times too long.
    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32))
    lines = ["user_id\titem_id\tsplit"] + [f"{u}\t0\ttrain" for u in range(4)] + ["0\t1\tvalid", "1\t2\ttest"]
    (tmp_path / "one.tsv").write_text("\n".join(lines) + "\n")
    fit(tmp_path / "one.tsv", features={"content": tmp_path / "f.npy"}, out=tmp_path / "m", show_progress=False,
        config=TrainConfig(dim=8, heads=2, epochs=5, untrained_via_content=True))
    back = Recommender.load(tmp_path / "m", show_progress=False)
    assert back.items.ids == list(range(8))
    norms = np.linalg.norm(back.items.vectorizer.mips.original(back.items.vectors), axis=1)  # [8] as scored
    assert norms[1:].max() < 3 * norms[0], norms  # (they were 10-14 times item 0's)
