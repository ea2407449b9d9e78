from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from index.persist import sha256_file
from mmrec.config import TrainConfig
from mmrec.errors import ConfigError, DataError, MMRecError
from mmrec.interactions import load_interactions
from mmrec.pipeline import evaluate_directory, fit
from mmrec.recommender import Recommender
from mmrec.split import ensure_split
from mmrec.train import NegativeSampler, Trainer, TrainData, build_model
from tests.mmrec.conftest import write_planted

FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, epochs=15, patience=15, reg=1e-4)


def test_negative_sampler_never_returns_a_positive():
    pos = sp.csr_matrix(np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 1], [1, 0, 1, 0, 1]], dtype=np.float32))
    neg = NegativeSampler(pos, seed=0)(np.array([0, 1, 2] * 200), 3)  # [600, 3]
    users = np.array([0, 1, 2] * 200)
    assert neg.shape == (600, 3)
    assert not pos[np.repeat(users, 3), neg.ravel()].any()
    assert set(neg[users == 0].ravel()) == {3, 4}  # every allowed item is reachable
    with pytest.raises(MMRecError, match=r"1 user\(s\) \('ann'\) interacted with every item in the training split: "
                                         r"no negative item exists.*leave them out of the interactions$"):
        NegativeSampler(sp.csr_matrix(np.ones((1, 3), np.float32)), seed=0, user_ids=["ann"])
    # Items are counted, not values summed: ratings, or an entry stored twice, still leave item 3.
    rated = sp.csr_matrix((np.array([5.0, 4.0, 1.0, 1.0]), (np.zeros(4, int), np.array([0, 1, 2, 2]))), shape=(1, 4))
    assert set(NegativeSampler(rated, seed=0)(np.zeros(50, int), 1).ravel()) == {3}
    with pytest.raises(MMRecError, match=r"\(#0\) interacted with every item training may draw \(not those held "
                                         r"out\).*--cold-start"):  # among the candidates: 0 and 1 are known
        NegativeSampler(rated, seed=0, candidates=np.array([True, True, False, False]))


def _trainer(inter_path, seed=0, **cfg):
    inter = ensure_split(load_interactions(inter_path), "random", seed=0)
    c = TrainConfig(use_content=False, seed=seed, **(FAST | cfg))
    torch.manual_seed(seed)
    model = build_model(c, inter.num_users, inter.num_items, {})
    return Trainer(model, TrainData(inter), c, show_progress=False), inter


def test_training_is_deterministic_for_a_seed(tmp_path):
    inter_path, _ = write_planted(tmp_path)
    runs = []
    for _ in range(2):
        tr, _ = _trainer(inter_path, epochs=3)
        tr.fit()
        runs.append([t.numpy() for t in tr.vectors()[:2]])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_edge_dropout_trains_on_pruned_graphs_and_validates_on_the_full_one(tmp_path):
    inter_path, _ = write_planted(tmp_path)
    runs = []
    for drop in (0.3, 0.3, 0.0):
        tr, _ = _trainer(inter_path, epochs=2, edge_dropout=drop)
        tr.fit()
        runs.append((tr, [t.numpy() for t in tr.vectors()[:2]]))
    (pruned, a), (_, b), (_, full) = runs
    np.testing.assert_array_equal(a[0], b[0])  # deterministic for a seed
    assert not np.allclose(a[0], full[0])  # the pruned graphs changed training
    half = pruned.edge_index.size(1) // 2
    assert pruned.epoch_graph.size(1) == 2 * (half - round(0.3 * half))
    users, items, _ = pruned.model(pruned.features, pruned.present, pruned.edge_index)
    np.testing.assert_array_equal(a[0], users.detach().numpy())  # vectors() uses every edge
    np.testing.assert_array_equal(a[1], items.detach().numpy())


def test_a_one_column_modality_trains_and_present_defaults_to_every_item(tmp_path):
    inter_path, feats = write_planted(tmp_path)
    inter = ensure_split(load_interactions(inter_path), "random", seed=0)
    price = torch.from_numpy(np.load(feats)[:, :1].copy())  # one column: no LayerNorm over it
    cfg = TrainConfig(**(FAST | {"epochs": 2}))
    model = build_model(cfg, inter.num_users, inter.num_items, {"price": 1})
    assert "norm" not in dict(model.projections["price"].named_children())
    tr = Trainer(model, TrainData(inter, {"price": price}), cfg, show_progress=False)  # no present: all have it
    assert tr.present["price"].all() and len(tr.present["price"]) == inter.num_items
    tr.fit()
    users, items, _ = tr.vectors()
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    np.save(tmp_path / "price.npy", price.numpy())
    rec, _, _ = fit(inter_path, features={"price": tmp_path / "price.npy"}, out=tmp_path / "model", config=cfg,
                    split="random", show_progress=False)
    back = Recommender.load(tmp_path / "model", show_progress=False)
    assert [r.item_id for r in back.recommend("u0", 5)] == [r.item_id for r in rec.recommend("u0", 5)]


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_the_content_side_learns_at_its_fraction_of_the_learning_rate(tmp_path, scale):
    inter_path, feats = write_planted(tmp_path)
    inter = ensure_split(load_interactions(inter_path), "random", seed=0)
    cfg = TrainConfig(**(FAST | {"lr": 0.01, "content_lr_scale": scale, "modality_dropout": 0.0}))
    torch.manual_seed(0)
    model = build_model(cfg, inter.num_users, inter.num_items, {"f": 4})
    tr = Trainer(model, TrainData(inter, {"f": torch.from_numpy(np.load(feats))}), cfg, show_progress=False)
    assert [g["lr"] for g in tr.optimizer.param_groups] == [0.01, pytest.approx(0.01 * scale)]
    embeddings = {"user_embedding.weight", "item_embedding.weight"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tr.step(np.array([0, 1, 2]), np.array([3, 4, 5]))
    # Adam's first step moves each parameter with a gradient by lr * g / (|g| + eps), about its lr.
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    assert max(moved[n] for n in embeddings) == pytest.approx(0.01, rel=1e-3)
    assert max(v for n, v in moved.items() if n not in embeddings) == pytest.approx(0.01 * scale, rel=1e-3)
    assert sum(len(g["params"]) for g in tr.optimizer.param_groups) == len(before)  # every parameter once


def test_a_one_column_modality_takes_no_part_in_the_item_graph(tmp_path, caplog):
    # A price has no direction: every two items' cosine is +-1, so its "neighbours" were the
    # first items the top-k met. The graph is the other modalities' alone, and says so.
    from fusion.item_graph import knn_item_graph

    inter_path, feats = write_planted(tmp_path)
    inter = ensure_split(load_interactions(inter_path), "random", seed=0)
    f = torch.from_numpy(np.load(feats))
    price = torch.arange(1, inter.num_items + 1, dtype=torch.float32)[:, None]
    cfg = TrainConfig(**(FAST | {"item_graph_k": 3}))
    for features, graph in (({"f": f, "price": price}, knn_item_graph({"f": f}, None, 3).dense()), ({"price": price}, None)):
        model = build_model(cfg, inter.num_users, inter.num_items, {m: x.size(1) for m, x in features.items()})
        caplog.clear()
        with caplog.at_level("WARNING", logger="mmrec.train"):
            tr = Trainer(model, TrainData(inter, features), cfg, show_progress=False)
        assert "item_graph_k=3: 'price' has one column, whose cosine ranks no neighbours: the item graph " + (
            "uses 'f' alone" if graph is not None else "is not built") in caplog.text
        if graph is None:
            assert tr.item_graph is None
        else:
            torch.testing.assert_close(tr.item_graph.dense(), graph, rtol=0, atol=0)


def test_content_options_asked_of_a_model_without_content_are_a_warning_not_silence(tmp_path, caplog):
    inter_path, feats = write_planted(tmp_path)
    with caplog.at_level("WARNING", logger="mmrec.train"):
        tr, _ = _trainer(inter_path, epochs=1, item_graph_k=4)
    assert tr.item_graph is None
    assert "item_graph_k=4" in caplog.text and "has none" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmrec.train"):
        tr, _ = _trainer(inter_path, epochs=1, content_lr_scale=0.1)
    assert [g["lr"] for g in tr.optimizer.param_groups] == [FAST["lr"]]
    assert "content_lr_scale=0.1 sets the learning rate of content projections, and this model has none" in caplog.text
    # the other content options (they changed nothing, silently), only where they differ from the defaults
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmrec.train"):
        _trainer(inter_path, epochs=1, align_weight=0.5, cold_neighbours=3)
        _trainer(inter_path, epochs=1, dropout=0.2)
        _trainer(inter_path, epochs=1, align_weight=0.1, modality_dropout=0.1)  # the defaults: nothing said
    assert [r.getMessage() for r in caplog.records] == [
        "align_weight=0.5, cold_neighbours=3 act on items' content, and this model has none (ID embeddings only): "
        "trained as without them",
        "dropout=0.2 acts on items' content, and this model has none (ID embeddings only): trained as without it"]
    with pytest.raises(ConfigError, match="finetune 'full' tunes the catalog's text and image encoders, and this "
                                          "model has no content"):  # (recorded in config.json, changing nothing)
        fit(inter_path, config=TrainConfig(**FAST, finetune="full"), split="random", show_progress=False)
    import mmrec.pipeline

    with pytest.MonkeyPatch.context() as mp:  # with use_content off: refused before the content is read
        mp.setattr(mmrec.pipeline, "load_content", lambda *a, **k: pytest.fail("read the content first"))
        with pytest.raises(ConfigError, match="finetune 'top:1' tunes .* and use_content is off"):
            fit(inter_path, features={"content": feats}, split="random", show_progress=False,
                config=TrainConfig(**(FAST | {"use_content": False, "finetune": "top:1"})))
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmrec.train"):
        fit(inter_path, features={"content": feats}, config=TrainConfig(**(FAST | {"epochs": 1}), use_id=False,
                                                                        id_dropout=0.5), split="random",
            show_progress=False)
    assert "id_dropout=0.5 masks the ID token, and use_id is off (no ID token): trained as without it" in caplog.text


@pytest.mark.parametrize("reg_form", ["squared", "norm"])
def test_step_loss_is_bpr_plus_the_chosen_regulariser(tmp_path, reg_form):
    inter_path, _ = write_planted(tmp_path)
    tr, _ = _trainer(inter_path, reg=0.5, reg_form=reg_form, id_init="xavier")
    users, pos, neg = np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([[6], [7], [8]])
    tr.sampler = lambda u, s: neg  # fixed negatives: the loss is known in closed form
    with torch.no_grad():
        u_vecs, i_vecs, _ = tr.forward()
        margin = (u_vecs[users] * (i_vecs[pos] - i_vecs[neg[:, 0]])).sum(-1)
        bpr = -torch.nn.functional.logsigmoid(margin).mean()
        rows = [tr.model.user_embedding.weight[users], tr.model.item_embedding.weight[pos],
                tr.model.item_embedding.weight[neg[:, 0]]]
        if reg_form == "norm":  # MMRec's EmbLoss: sum of Frobenius norms / B
            penalty = sum(r.norm() for r in rows) / 3
        else:  # LightGCN's: sum of squares / 2 / B
            penalty = sum(r.pow(2).sum() for r in rows) / 2 / 3
    assert tr.step(users, pos) == pytest.approx(float(bpr + 0.5 * penalty), rel=1e-5)


def test_training_config_errors():
    for bad, match in (({"reg_form": "l1"}, "reg_form must be"), ({"id_init": "zeros"}, "id_init must be"),
                       ({"edge_dropout": 1.0}, "edge_dropout must lie"),
                       ({"lr": -1.0}, "lr must be a positive finite number, got -1.0"),
                       ({"lr": float("nan")}, "lr must be a positive finite number, got nan"),
                       ({"reg": -0.1}, "reg must be a finite number >= 0"),
                       # inf failed after the encoding (NaN scores; a diverged first epoch)
                       ({"lr": float("inf")}, "lr must be a positive finite number, got inf"),
                       ({"content_gain": float("inf")}, "content_gain must be a positive finite number, got inf"),
                       ({"reg": float("inf")}, "reg must be a finite number >= 0, got inf"),
                       ({"temperature": 0.0}, "temperature must be a positive finite number"),
                       ({"modality_dropout": 1.0}, r"modality_dropout must lie in \[0, 1\)"),
                       ({"patience": 0}, "patience must be positive"),
                       ({"projection_hidden": -1}, "projection_hidden must be >= 0"),
                       ({"content_lr_scale": 0.0}, "content_lr_scale must be a positive finite number, got 0.0"),
                       ({"ema": 1.0}, r"ema must lie in \[0, 1\)"), ({"ema": -0.1}, r"ema must lie in \[0, 1\)"),
                       ({"ema": 0.9, "finetune": "top:1"}, "use it with finetune frozen, not 'top:1'"),
                       # a value of the wrong type is named (epochs=2.5 failed deep inside training, True trained 1)
                       ({"epochs": 2.5}, r"epochs must be a whole number, got 2.5 \(float\)"),
                       ({"epochs": True}, r"epochs must be a whole number, got True \(bool\)"),
                       ({"dim": "32"}, r"dim must be a whole number, got '32' \(str\)"),
                       ({"lr": "x"}, r"lr must be a number, got 'x' \(str\)"),
                       ({"use_id": "yes"}, r"use_id must be True or False, got 'yes' \(str\)"),
                       ({"loss": None}, r"loss must be text, got None")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)
    # what older versions saved (whole floats in int fields, 0 / 1 for booleans) still loads
    old = TrainConfig(patience=5.0, item_graph_k=np.float64(0.0), use_id=1, use_content=0, epochs=3)
    assert (old.patience, old.item_graph_k, old.use_id, old.use_content) == (5, 0, True, False)
    assert type(old.patience) is int and type(old.use_id) is bool
    with pytest.raises(ConfigError, match=r"use_id must be True or False, got 2"):
        TrainConfig(use_id=2)
    # heads split the content's attention: an ID-only model (mmrec train without a catalog) has none to split
    with pytest.raises(ConfigError, match=r"^heads \(4\) must divide dim \(30\)$"):
        TrainConfig(dim=30)
    assert TrainConfig(dim=30, use_content=False).dim == 30
    # numpy numbers from a grid are taken, as Python's own
    config = TrainConfig(epochs=np.int64(3), lr=1, use_id=np.bool_(True))
    assert (config.epochs, config.lr, config.use_id) == (3, 1.0, True)
    assert (type(config.epochs), type(config.lr), type(config.use_id)) == (int, float, bool)


def test_ema_averages_every_step_and_validation_sees_the_average(tmp_path):
    inter_path, _ = write_planted(tmp_path)
    tr, _ = _trainer(inter_path, ema=0.75)
    start = [p.detach().clone() for p in tr.trained]
    tr.step(np.array([0, 1, 2]), np.array([3, 4, 5]))
    after_one = [p.detach().clone() for p in tr.trained]
    tr.step(np.array([3, 4]), np.array([6, 7]))
    now = [p.detach().clone() for p in tr.trained]
    assert len(tr.average) == len(start) == len(list(tr.model.parameters()))
    for a, s0, s1, s2 in zip(tr.average, start, after_one, now):
        # two steps of avg <- 0.75 avg + 0.25 w, from the starting weights
        torch.testing.assert_close(a, 0.75 * (0.75 * s0 + 0.25 * s1) + 0.25 * s2, rtol=0, atol=1e-7)
    assert not torch.equal(tr.average[0], now[0])
    with tr.averaged():
        for p, a in zip(tr.trained, tr.average):
            assert torch.equal(p, a)
        inside = [t.clone() for t in tr.vectors()[:2]]
    for p, w in zip(tr.trained, now):  # the trained weights come back, exactly
        assert torch.equal(p, w)
    with pytest.raises(RuntimeError, match="boom"), tr.averaged():
        raise RuntimeError("boom")
    for p, w in zip(tr.trained, now):  # ... also when the block raises
        assert torch.equal(p, w)
    # the vectors validated inside are those of a model holding the average
    tr2, _ = _trainer(inter_path)
    with torch.no_grad():
        for p, a in zip(tr2.trained, tr.average):
            p.copy_(a)
    torch.testing.assert_close(inside[1], tr2.vectors()[1], rtol=0, atol=0)


def test_ema_fit_keeps_the_averaged_weights_of_the_best_epoch(tmp_path):
    inter_path, _ = write_planted(tmp_path)
    tr, _ = _trainer(inter_path, ema=0.9, epochs=6, patience=6)
    result = tr.fit()
    # the model ends holding the weights whose validation chose the best epoch
    assert tr.validate("valid") == result.best_valid
    plain, _ = _trainer(inter_path, epochs=6, patience=6)
    plain_result = plain.fit()
    assert [h["loss"] for h in result.history] == [h["loss"] for h in plain_result.history]  # same steps
    assert result.best_valid != plain_result.best_valid  # judged on other weights
    # without a validation split the model ends holding the average
    tr, _ = _trainer(inter_path, ema=0.9, epochs=2)
    tr.data.inter.split[:] = 0  # every row train: nothing to validate on
    tr.fit()
    for p, a in zip(tr.trained, tr.average):
        assert torch.equal(p, a)


def test_ema_averages_from_the_weights_fit_starts_from(tmp_path):
    # mmrec finetune loads the source's weights after the Trainer is built: the average must
    # start from those, not from the random weights the model was built with.
    inter_path, _ = write_planted(tmp_path)
    tr, _ = _trainer(inter_path, ema=0.9, epochs=1, lr=1e-9)
    tr.data.inter.split[:] = 0  # no validation: the model ends holding the average
    with torch.no_grad():
        for p in tr.trained:
            p.mul_(3.0).add_(0.5)  # "transferred" weights
    start = [p.detach().clone() for p in tr.trained]
    tr.fit()
    for p, s0 in zip(tr.trained, start):  # lr 1e-9: the weights, and so their average, barely move
        torch.testing.assert_close(p, s0, atol=1e-6, rtol=0)


def test_planted_clusters_are_learned(tmp_path):
    inter_path, _ = write_planted(tmp_path)
    tr, inter = _trainer(inter_path)
    result = tr.fit()
    # Each user has ~5 unseen items of its own cluster among 32 items (about 27 after masking):
    # a random ranking puts about 20/27 of them in the top 20 only at recall ~0.74 and ~0.37 at
    # top 10; learned clusters put the held-out item in the top 10 nearly always.
    assert result.best_valid["recall@10"] >= 0.9
    assert result.best_epoch >= 1 and len(result.history) >= result.best_epoch


def test_fit_save_load_recommend_and_evaluate(tmp_path):
    inter_path, feats = write_planted(tmp_path)
    cfg = TrainConfig(**FAST, seed=1)
    rec, result, test = fit(inter_path, features={"content": feats}, out=tmp_path / "model", config=cfg,
                            split="random", show_progress=False)
    assert set(test) >= {"recall@20", "ndcg@20", "precision@10", "hit@10", "mrr@10"}
    back = Recommender.load(tmp_path / "model", show_progress=False)
    assert back.trained and back.items.manifest["kind"] == "trained"
    assert back.items.manifest["tokens"] == ["content", "id"]
    np.testing.assert_array_equal(back.items.attention, rec.items.attention)
    np.testing.assert_allclose(back.items.attention.sum(1), 1.0, atol=1e-6)
    for user in ("u0", "u5", "u17"):
        a, b = rec.recommend(user, 8), back.recommend(user, 8)
        assert [r.item_id for r in a] == [r.item_id for r in b]
        np.testing.assert_array_equal([r.score for r in a], [r.score for r in b])
        known = set(back.known_items(user))
        assert len(a) == 8 and not known & {r.item_id for r in a}
    # The directory re-evaluates to the metrics the run reported.
    again = evaluate_directory(back, inter_path, split="test")
    for key in ("recall@20", "ndcg@20", "recall@10"):
        assert again[key] == pytest.approx(test[key], abs=1e-6)
    # A split with no rows is named, with the file and what each split holds.
    rows = inter_path.read_text().splitlines()
    (tmp_path / "no_valid.tsv").write_text("\n".join([rows[0] + "\tsplit"] + [f"{r}\t{'test' if k % 5 else 'train'}"
                                                                            for k, r in enumerate(rows[1:])]) + "\n")
    n = len(rows) - 1
    with pytest.raises(MMRecError, match=rf"no_valid.tsv: no valid rows to evaluate \(rows by split, after the skips "
                                         rf"above: train {(n + 4) // 5}, valid 0, test {n - (n + 4) // 5}\); choose another --split"):
        evaluate_directory(back, tmp_path / "no_valid.tsv", split="valid", how="given")


def test_an_ema_model_saves_the_averaged_weights_validation_chose(tmp_path):
    inter_path, feats = write_planted(tmp_path)
    cfg = TrainConfig(**(FAST | {"epochs": 6}), ema=0.9, seed=1)
    _, result, _ = fit(inter_path, features={"content": feats}, out=tmp_path / "model", config=cfg,
                       split="random", show_progress=False)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["config"]["ema"] == 0.9
    back = Recommender.load(tmp_path / "model", show_progress=False)
    again = evaluate_directory(back, inter_path, split="valid")
    for key in ("recall@20", "ndcg@20", "recall@10"):
        assert again[key] == pytest.approx(result.best_valid[key], abs=1e-6)


def test_evaluate_rebuilds_the_training_split_rule_and_threshold(tmp_path):
    # Planted rows rated 5 with timestamps, plus cross-cluster rows rated 1 that a threshold of 4
    # drops: evaluation must re-apply the temporal rule and the threshold it was trained with.
    inter_path, feats = write_planted(tmp_path)
    rows = inter_path.read_text().splitlines()[1:]
    lines = ["user_id\titem_id\trating\ttimestamp"]
    lines += [f"{r}\t5\t{1000 + 7 * k % 101}" for k, r in enumerate(rows)]
    lines += [f"u{u}\t{(u + 1) % 4 + 4 * (u % 7)}\t1\t{2000 + u}" for u in range(0, 48, 3)]
    inter_path.write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(**(FAST | {"epochs": 4}))
    _, _, test = fit(inter_path, features={"content": feats}, out=tmp_path / "model", config=cfg,
                     split="temporal", rating_threshold=4, show_progress=False)
    back = Recommender.load(tmp_path / "model", show_progress=False)
    assert (back.split_rule, back.rating_threshold) == ("temporal", 4)
    again = evaluate_directory(back, inter_path, split="test")
    for key in ("recall@20", "ndcg@20", "recall@10"):
        assert again[key] == pytest.approx(test[key], abs=1e-6)
    assert evaluate_directory(back, inter_path, split="test", how="temporal") == again
    assert evaluate_directory(back, inter_path, split="test", how="random") != again


def test_evaluate_reads_an_id_only_models_file_again_with_an_item_rated_only_below_the_threshold(tmp_path):
    # Without a catalog the model's items are those rated at or above the threshold: item 999, rated
    # only below it, is no item of the model, and its row is below the threshold at evaluation too.
    inter_path, feats = write_planted(tmp_path)
    rows = inter_path.read_text().splitlines()
    inter_path.write_text("\n".join([rows[0] + "\trating"] + [f"{r}\t5" for r in rows[1:]] + ["u3\t999\t1"]) + "\n")
    _, _, test = fit(inter_path, out=tmp_path / "model", config=TrainConfig(**(FAST | {"epochs": 2, "use_content": False})),
                     split="random", rating_threshold=3, show_progress=False)
    back = Recommender.load(tmp_path / "model", show_progress=False)
    assert 999 not in back.items.ids and "999" not in back.items.ids and back.items_from_interactions
    again = evaluate_directory(back, inter_path, split="test")
    assert "rows_invalid_skipped" not in again
    for key in ("recall@20", "ndcg@20", "recall@10"):
        assert again[key] == pytest.approx(test[key], abs=1e-6)
    # With items from feature files (or a catalog), an unknown id is a typo, whatever its rating.
    (tmp_path / "clean.tsv").write_text("\n".join(inter_path.read_text().splitlines()[:-1]) + "\n")
    fit(tmp_path / "clean.tsv", features={"content": feats}, out=tmp_path / "npy",
        config=TrainConfig(**(FAST | {"epochs": 1})), split="random", rating_threshold=3, show_progress=False)
    npy = Recommender.load(tmp_path / "npy", show_progress=False)
    assert not npy.items_from_interactions
    with pytest.raises(DataError, match=r"row \d+, field 'item_id': unknown item id '999'"):
        evaluate_directory(npy, inter_path, split="test")


def test_evaluate_splits_as_training_did_after_index_remove_and_beside_other_users_rows(tmp_path, monkeypatch):
    inter_path, feats = write_planted(tmp_path)
    fit(inter_path, features={"content": feats}, out=tmp_path / "model", config=TrainConfig(**(FAST | {"epochs": 2})),
        split="random", show_progress=False)
    rec = Recommender.load(tmp_path / "model", show_progress=False)
    plain = evaluate_directory(rec, inter_path)
    # A row of a user the model never saw, first in the file: skipped, and nothing else moves.
    rows = inter_path.read_text().splitlines()
    (tmp_path / "more.tsv").write_text("\n".join([rows[0], "stranger\t3", *rows[1:]]) + "\n")
    more = evaluate_directory(rec, tmp_path / "more.tsv")
    assert more == plain | {"users_skipped": 1, "users_unknown": 1}
    # After `index remove`, the evaluated pairs are the training split's less the removed item's.
    training = ensure_split(load_interactions(inter_path), "random", rec.config.seed)
    want = {(training.user_ids[u], training.item_ids[i]) for u, i in
            zip(training.users[training.split == 2], training.items[training.split == 2]) if training.item_ids[i] != 0}
    rec.items.remove([0])
    seen = {}

    def spy(score, inter, **kwargs):
        seen["pairs"] = {(inter.user_ids[u], inter.item_ids[i]) for u, i in
                         zip(inter.users[inter.split == 2], inter.items[inter.split == 2])}
        return {}

    monkeypatch.setattr("mmrec.pipeline.evaluate", spy)
    got = evaluate_directory(Recommender.load(tmp_path / "model", show_progress=False), inter_path)
    assert seen["pairs"] == want and got["rows_skipped"] == int((training.items == training.item_ids.index(0)).sum())
    assert got["users_skipped"] == got["users_only_removed_items"] == 0
    # A stranger whose only row is a removed item is skipped once, as a user left with no rows.
    monkeypatch.undo()
    (tmp_path / "stranger.tsv").write_text("\n".join([rows[0], "stranger\t0", *rows[1:]]) + "\n")
    got = evaluate_directory(Recommender.load(tmp_path / "model", show_progress=False), tmp_path / "stranger.tsv")
    assert (got["users_skipped"], got["users_only_removed_items"], got["users_unknown"]) == (1, 1, 0)


def test_a_directory_from_before_the_pair_keys_is_evaluated_on_its_row_keyed_split(tmp_path, monkeypatch):
    inter_path, feats = write_planted(tmp_path)
    fit(inter_path, features={"content": feats}, out=tmp_path / "model", config=TrainConfig(**(FAST | {"epochs": 1})),
        split="random", show_progress=False)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config.pop("split_keys") == "pairs"
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))  # as an older directory wrote it
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    manifest["checksums"]["config.json"] = sha256_file(tmp_path / "model" / "config.json")
    (tmp_path / "model" / "manifest.json").write_text(json.dumps(manifest))
    old = Recommender.load(tmp_path / "model", show_progress=False)
    assert old.split_keys == "rows"
    seen = {}
    monkeypatch.setattr("mmrec.pipeline.evaluate", lambda score, inter, **kw: seen.update(split=inter.split) or {})
    evaluate_directory(old, inter_path)
    want = ensure_split(load_interactions(inter_path), "random", old.config.seed, keys="rows")
    np.testing.assert_array_equal(seen["split"], want.split)


def test_train_report_is_checksummed_and_kept_by_remove(tmp_path):
    inter_path, feats = write_planted(tmp_path)
    fit(inter_path, features={"content": feats}, out=tmp_path / "model",
        config=TrainConfig(**(FAST | {"epochs": 2})), split="random", show_progress=False)
    report = (tmp_path / "model" / "train_report.json").read_text()
    rec = Recommender.load(tmp_path / "model", show_progress=False)
    assert "train_report.json" in rec.items.manifest["attachments"]
    assert "train_report.json" in rec.items.manifest["checksums"]
    rec.items.remove([0])  # rewrites the directory
    assert (tmp_path / "model" / "train_report.json").read_text() == report
    assert len(Recommender.load(tmp_path / "model", show_progress=False).items) == 31  # checksums verified


def test_recommend_excludes_known_items_with_an_approximate_index(tmp_path):
    inter_path, feats = write_planted(tmp_path)
    rec, _, _ = fit(inter_path, features={"content": feats}, config=TrainConfig(**(FAST | {"epochs": 3})),
                    split="random", factory="HNSW8", show_progress=False)
    assert rec.items.index.factory == "HNSW8"
    total = len(rec.items)
    for user in rec.user_ids:
        known = set(rec.known_items(user))
        got = rec.recommend(user, total - len(known))  # ask for every item that remains
        assert len(got) == total - len(known)
        assert not known & {r.item_id for r in got}


def test_scores_equal_the_model_dot_products(tmp_path):
    inter_path, feats = write_planted(tmp_path)
    rec, _, _ = fit(inter_path, features={"content": feats}, config=TrainConfig(**(FAST | {"epochs": 2})),
                    split="random", show_progress=False)
    row = rec.user_index("u3")
    item_raw = rec.items.vectorizer.mips.original(rec.items.vectors)  # [N, D]
    for r in rec.recommend("u3", 5):
        i = rec.items._pos[r.item_id]
        assert r.score == pytest.approx(float(rec.user_vectors[row] @ item_raw[i]), rel=1e-4, abs=1e-5)


def test_text_queries_on_a_trained_index_rank_by_cosine(tmp_path, tiny_bert_dir):
    import csv

    inter, _ = write_planted(tmp_path, users=32, items=24, per_user=6)
    with open(tmp_path / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title"])
        w.writerows((i, f"{['cat', 'dog', 'space', 'war'][i % 4]} film {i}") for i in range(24))
    rec, _, _ = fit(inter, catalog=tmp_path / "items.csv", text_encoder=tiny_bert_dir, cache_dir=None,
                    config=TrainConfig(**(FAST | {"epochs": 2})), split="random", show_progress=False)
    got = rec.search_text("space war", k=24)
    q = rec.items.vectorizer.content_vectors({"text": rec.items.encoders.get("text").encode(["space war"])},
                                             {"text": np.ones(1, bool)})[0]
    raw = rec.items.vectorizer.mips.original(rec.items.vectors)
    cos = raw @ q / (np.linalg.norm(raw, axis=1) * np.linalg.norm(q))
    expected = [rec.items.items[i]["item_id"] for i in np.argsort(-cos, kind="stable")]
    assert [r.item_id for r in got] == expected
    np.testing.assert_allclose([r.score for r in got], np.sort(cos)[::-1], rtol=1e-5, atol=1e-6)


def test_every_feature_file_error_names_the_file_and_modality(tmp_path):
    from mmrec.pipeline import load_npy_features

    def fails(x, match, rows=None):
        path = tmp_path / "f.npy"
        if isinstance(x, bytes):
            path.write_bytes(x)
        else:
            np.save(path, x, allow_pickle=True)
        with pytest.raises(DataError, match=match) as e:
            load_npy_features({"audio": path}, rows)
        assert "f.npy" in str(e.value)

    fails(b"hello\n", r"feature file for modality 'audio' is not a numeric \.npy array")
    fails(np.array([{"a": 1}, None], dtype=object), r"modality 'audio' is not a numeric \.npy array")
    fails(np.array([["a", "b"]]), r"modality 'audio' holds dtype <U1, not real numbers")
    fails(np.ones((2, 2), np.complex64), r"modality 'audio' holds dtype complex64, not real numbers")  # not cut to .real
    fails(np.zeros(3, np.float32), r"features must be 2-d \[items, width\], got shape \(3,\)")
    fails(np.zeros((3, 2), np.float32), "3 rows, but the catalog has 4 items", rows=4)
    fails(np.zeros((3, 2), "m8[s]"), r"modality 'audio' holds dtype timedelta64\[s\], not real numbers")  # (numpy: a number)
    fails(np.zeros((0, 8), np.float32), r"modality 'audio' is empty: shape \(0, 8\)")  # (it built an empty index)
    fails(np.zeros((4, 0), np.float32), r"modality 'audio' is empty: shape \(4, 0\)", rows=4)  # ("no content" a row)
    bad = np.zeros((3, 2), np.float32)
    bad[1, 0] = np.nan
    fails(bad, "row 2: non-finite feature value")
    huge = np.zeros((3, 2), np.float64)
    huge[2, 1] = 1e300  # finite in float64, inf once stored as float32
    fails(huge, r"row 3: non-finite feature value \(or one beyond float32's range")
    huge[2, 1] = 3e19  # finite in float32, its square not: training diverged on NaN, "lower the learning rate"
    fails(huge, r"row 3: feature values too large: the row's squared length passes float32's range \(3\.4e38\)")
    with pytest.raises(DataError, match="feature file for modality 'audio' not found"):
        load_npy_features({"audio": tmp_path / "missing.npy"}, None)
    np.save(tmp_path / "ok.npy", np.ones((2, 3), np.int64))
    got = load_npy_features({"audio": tmp_path / "ok.npy"}, 2)["audio"]
    assert got.dtype == np.float32 and got.tolist() == [[1.0] * 3] * 2


def test_feature_files_are_checked_before_the_catalog_is_encoded(tmp_path, monkeypatch):
    # A wrong row count was found after the text encoder had encoded the whole catalog.
    import mmrec.pipeline as pipeline

    (tmp_path / "items.csv").write_text("item_id,title\n1,a\n2,b\n3,c\n")
    np.save(tmp_path / "f.npy", np.ones((4, 2), np.float32))
    np.save(tmp_path / "g.npy", np.ones((3, 2), np.float32))

    def no_encoders(*args, **kwargs):
        raise AssertionError("encoders loaded before the feature files were checked")

    monkeypatch.setattr(pipeline, "catalog_encoders", no_encoders)
    with pytest.raises(DataError, match=r"f\.npy: 4 rows, but the catalog has 3 items"):
        pipeline.load_content(tmp_path / "items.csv", {"audio": tmp_path / "f.npy"}, show_progress=False)
    # without a catalog, files that disagree are named with their counts
    with pytest.raises(ConfigError, match=r"feature files have different row counts, one row an item: "
                                          r".*f\.npy \(audio\): 4, .*g\.npy \(image\): 3$"):
        pipeline.load_content(None, {"audio": tmp_path / "f.npy", "image": tmp_path / "g.npy"}, show_progress=False)


def test_a_modality_from_both_catalog_and_features_says_how_to_choose(tmp_path):
    from mmrec.pipeline import load_content

    (tmp_path / "items.csv").write_text("item_id,title\n1,A film\n2,Another film\n")
    np.save(tmp_path / "text.npy", np.ones((2, 4), np.float32))
    with pytest.raises(ConfigError, match=r"modalities \['text'\] come both from the catalog and from --features: "
                                          r"rename the features .* or turn the catalog's encoder off \(--text-encoder none"):
        load_content(tmp_path / "items.csv", {"text": tmp_path / "text.npy"}, show_progress=False)
    # The suggested fix works: the catalog's text encoder off, the given text features used.
    content = load_content(tmp_path / "items.csv", {"text": tmp_path / "text.npy"}, text_encoder="none",
                           show_progress=False)
    np.testing.assert_array_equal(content.features["text"], np.ones((2, 4), np.float32))


def test_image_features_given_with_the_image_encoder_off_never_open_the_images(tmp_path):
    from mmrec.pipeline import load_content

    (tmp_path / "items.csv").write_text("item_id,title,image\n1,A film,/nonexist/0.png\n2,Another,/nonexist/1.png\n")
    np.save(tmp_path / "image.npy", np.ones((2, 4), np.float32))
    content = load_content(tmp_path / "items.csv", {"image": tmp_path / "image.npy"}, text_encoder="none",
                           image_encoder="none", show_progress=False)
    np.testing.assert_array_equal(content.features["image"], np.ones((2, 4), np.float32))


def test_config_accepts_exactly_the_values_the_model_accepts():
    # mmrec.config repeats fusion's value lists (so the CLI needs no torch import): they must agree.
    import fusion.model
    from mmrec import config

    assert config.ID_MODES == fusion.model.ID_MODES and config.ID_INITS == fusion.model.ID_INITS
    for mode in config.ID_MODES:
        TrainConfig(id_mode=mode)
    with pytest.raises(ConfigError, match="id_mode must be token or residual"):
        TrainConfig(id_mode="concat")
    import mmrec.metrics

    assert config.EVAL_MASKS == mmrec.metrics.MASKS


def test_closed_config_values_are_argparse_choices(capsys):
    # A value outside them is a malformed command line (status 2, argparse's message), as --help shows them.
    from mmrec.cli import build_parser

    parser = build_parser()
    for option, good in (("--loss", "softmax"), ("--id-mode", "token"), ("--reg-form", "norm"), ("--id-init", "xavier"),
                         ("--mask", "train")):
        args = parser.parse_args(["train", "--interactions", "i.tsv", "--out", "o", option, good])
        assert getattr(args, option[2:].replace("-", "_")) == good
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["train", "--interactions", "i.tsv", "--out", "o", option, "bogus"])
        assert e.value.code == 2 and f"argument {option}: invalid choice: 'bogus'" in capsys.readouterr().err
    args = parser.parse_args(["train", "--interactions", "i.tsv", "--out", "o", "--finetune", "top:2"])  # open form
    assert args.finetune == "top:2"
    for command in (["index", "build", "--catalog", "c.csv", "--out", "o"], ["train", "--interactions", "i.tsv", "--out", "o"]):
        with pytest.raises(SystemExit) as e:  # which of the two would win is a guess: refused
            parser.parse_args([*command, "--cache-dir", "c", "--no-cache"])
        assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # finetune's options come from the same fields
        parser.parse_args(["finetune", "--from", "m", "--interactions", "i.tsv", "--out", "o", "--loss", "bogus"])
    assert "argument --loss: invalid choice: 'bogus'" in capsys.readouterr().err


def test_validation_never_ranks_items_held_out_of_training(monkeypatch):
    from mmrec.interactions import Interactions

    # One user: trained on item 0, validated on item 1; item 2 is held out (not a negative).
    inter = Interactions(["u"], [0, 1, 2, 3], np.array([0, 0]), np.array([0, 1]), split=np.array([0, 1], np.int8))
    cfg = TrainConfig(dim=2, heads=1, layers=1, use_content=False)
    data = TrainData(inter, negatives=np.array([True, True, False, True]))
    trainer = Trainer(build_model(cfg, 1, 4, {}), data, cfg, show_progress=False)
    users = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0], [0.1, 0.0]])  # the held-out item scores highest
    monkeypatch.setattr(trainer, "vectors", lambda: (users, items, None))
    got = trainer.validate()
    assert got["ndcg@10"] == pytest.approx(1.0) and got["recall@10"] == 1.0  # item 1 ranked first
    data.negatives = None  # every item a candidate: item 2 takes rank 1, item 1 rank 2
    assert trainer.validate()["ndcg@10"] == pytest.approx(1.0 / np.log2(3))


def test_train_skip_invalid_leaves_bad_catalog_rows_and_their_interactions_out(tmp_path, tiny_bert_dir, capsys):
    from mmrec.cli import main

    inter_path, _ = write_planted(tmp_path)
    rows = inter_path.read_text().splitlines()
    # Item 5 has no text (invalid with a text encoder only); one interaction row has no item.
    catalog = ["item_id,title"] + [f"{i},{'' if i == 5 else f'item number {i}'}" for i in range(32)]
    (tmp_path / "items.csv").write_text("\n".join(catalog) + "\n")
    (tmp_path / "inter.tsv").write_text("\n".join([*rows, "u1\t"]) + "\n")
    argv = ["train", "--catalog", str(tmp_path / "items.csv"), "--interactions", str(tmp_path / "inter.tsv"),
            "--text-encoder", str(tiny_bert_dir), "--image-encoder", "none", "--no-cache", "--epochs", "1",
            "--dim", "8", "--layers", "1", "--split", "random", "-q"]
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 1
    assert "items.csv: row 6: no text in title" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert main([*argv, "--out", str(tmp_path / "m"), "--skip-invalid", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["out"] == str(tmp_path / "m")
    # evaluate on the same file drops the same rows before rebuilding the split: the same metrics.
    assert main(["evaluate", "--index", str(tmp_path / "m"), "--interactions", str(tmp_path / "inter.tsv"),
                 "--json", "-q"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert {k: evaluated[k] for k in trained["test"]} == trained["test"]
    assert evaluated["rows_invalid_skipped"] == 1 + sum(1 for r in rows[1:] if r.split("\t")[1] == "5")
    assert main(["evaluate", "--index", str(tmp_path / "m"), "--interactions", str(tmp_path / "inter.tsv"), "-q"]) == 0
    assert (f"  skipped: {evaluated['rows_invalid_skipped']} invalid rows (the model was trained with --skip-invalid)"
            in capsys.readouterr().out)  # (a warning alone said it, which -q hides)
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    assert len(rec.items) == 31 and 5 not in rec.items
    skipped = [json.loads(line) for line in (tmp_path / "m" / "skipped.jsonl").read_text().splitlines()]
    assert [(s["row"], s["item_id"]) for s in skipped] == [(6, "5")] and "no text in title" in skipped[0]["message"]
    data = json.loads((tmp_path / "m" / "train_report.json").read_text())["data"]
    item5_rows = sum(1 for r in rows[1:] if r.split("\t")[1] == "5")
    assert data["unknown_items"] == item5_rows and data["invalid"] == 1
    with pytest.raises(ConfigError, match="--skip-invalid cannot be used with --features beside a catalog"):
        fit(tmp_path / "inter.tsv", catalog=tmp_path / "items.csv", features={"x": tmp_path / "x.npy"},
            skip_invalid=True, show_progress=False)


def test_train_takes_the_text_encoders_options(tmp_path, tiny_bert_dir, capsys):
    from encoders.text import TextEncoder
    from mmrec.cli import main

    write_planted(tmp_path)
    texts = [f"item number {i} with a longer title than four tokens" for i in range(32)]
    (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)))
    argv = ["train", "--catalog", str(tmp_path / "items.csv"), "--interactions", str(tmp_path / "interactions.tsv"),
            "--image-encoder", "none", "--no-cache", "--epochs", "1", "--dim", "8", "--layers", "1",
            "--split", "random", "-q"]
    assert main([*argv, "--text-encoder", str(tiny_bert_dir), "--max-length", "4", "--out", str(tmp_path / "m")]) == 0
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["encoders"]["text"]["max_length"] == 4
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    want = TextEncoder(tiny_bert_dir, max_length=4, show_progress=False).encode(texts)
    got = rec.items.features["text"][[rec.items.ids.index(i) for i in range(32)]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # A hub name is refused unless --allow-download says otherwise, and nothing is left behind.
    assert main([*argv, "--text-encoder", "some-org/some-model", "--out", str(tmp_path / "hub")]) == 1
    assert "downloads are off" in capsys.readouterr().err and not (tmp_path / "hub").exists()


@pytest.mark.parametrize("id_mode", ["residual", "token"])
def test_items_without_content_train_on_their_edges_and_without_edges_are_refused(tmp_path, id_mode):
    inter, feats = write_planted(tmp_path)
    f = np.load(feats)
    f[3] = 0.0  # item 3: every modality missing, but users interacted with it
    np.save(tmp_path / "warm.npy", f)
    cfg = TrainConfig(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, epochs=2, id_mode=id_mode, align_weight=0.5)
    rec, _, _ = fit(inter, features={"text": tmp_path / "warm.npy"}, config=cfg, split="random", show_progress=False)
    assert 3 in rec.items and np.all(np.isfinite(rec.items.vectors))
    assert np.any(rec.items.vectors[rec.items._pos[3]][:-1])  # its trained vector, not a zero one
    # Item 32: no content and no interaction, nothing to place it by: refused, naming it and the file.
    np.save(tmp_path / "orphan.npy", np.vstack([np.load(feats), np.zeros((1, f.shape[1]), np.float32)]))
    with pytest.raises(DataError, match=r"orphan\.npy: item 32 has no content \(every modality missing: text\) "
                                        r"and no training interaction"):
        fit(inter, features={"text": tmp_path / "orphan.npy"}, config=cfg, split="random", show_progress=False)


def test_a_pq_factory_the_items_cannot_train_is_refused_before_training(tmp_path, monkeypatch):
    inter, feats = write_planted(tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the factory was checked")

    monkeypatch.setattr(Trainer, "fit", no_training)
    # dim 16: index vectors are 17 wide (the MIPS coordinate), padded for PQ2; 40 items train no codebook
    with pytest.raises(ConfigError, match=r"factory 'IVF1,PQ2' needs .*PQ codebooks need 9984 rows"):
        fit(inter, features={"content": feats}, config=TrainConfig(dim=16, layers=1, heads=2, epochs=1),
            factory="IVF1,PQ2", split="random", show_progress=False)
    # the check before encoding knows the form alone: it spoke of a catalog of 1073741824 items
    with pytest.raises(ConfigError, match=r"factory 'IVF4096,Flat' needs at least 159744 training vectors "
                                          r"\(39 per centroid\); got 32 \(catalog 32, train_size 100000\)"):
        fit(inter, features={"content": feats}, config=TrainConfig(dim=16, layers=1, heads=2, epochs=1),
            factory="IVF4096,Flat", split="random", show_progress=False)


def test_auto_split_records_the_rule_it_resolved_to_and_evaluate_keeps_it(tmp_path):
    # Trained on a file without a split column (auto: random), evaluated on the same rows with a
    # split column: the model's random split is rebuilt, not the file's (which auto would read).
    inter_path, feats = write_planted(tmp_path)
    cfg = TrainConfig(**(FAST | {"epochs": 2}))
    _, _, test = fit(inter_path, features={"content": feats}, out=tmp_path / "model", config=cfg, split="auto",
                     show_progress=False)
    back = Recommender.load(tmp_path / "model", show_progress=False)
    assert back.split_rule == "random"
    rows = inter_path.read_text().splitlines()
    labelled = tmp_path / "labelled.tsv"
    labelled.write_text("\n".join([rows[0] + "\tsplit"] + [f"{r}\t{('train', 'test')[k % 2]}"
                                                          for k, r in enumerate(rows[1:])]) + "\n")
    again = evaluate_directory(back, labelled, split="test")
    assert again["recall@20"] == pytest.approx(test["recall@20"], abs=1e-6)
    # And a model trained on the given split refuses a file without one, instead of a random split.
    _, _, _ = fit(labelled, features={"content": feats}, out=tmp_path / "given", config=cfg, show_progress=False)
    given = Recommender.load(tmp_path / "given", show_progress=False)
    assert given.split_rule == "given"
    with pytest.raises(MMRecError, match=r"interactions.tsv has no split column, and the model was trained on the "
                                         r"split its training file gave"):
        evaluate_directory(given, inter_path)
    assert evaluate_directory(given, inter_path, how="random")["num_users"] > 0


def test_every_evaluation_after_training_scores_users_in_the_configured_batches(tmp_path, monkeypatch):
    import mmrec.coldstart
    import mmrec.foldin
    import mmrec.pipeline

    inter_path, feats = write_planted(tmp_path)
    sizes: list[tuple[str, int]] = []
    for module in (mmrec.pipeline, mmrec.foldin, mmrec.coldstart):
        def spy(score, *args, _inner=module.evaluate, _name=module.__name__, **kwargs):
            sizes.append((_name, kwargs.get("batch_size")))
            return _inner(score, *args, **kwargs)
        monkeypatch.setattr(module, "evaluate", spy)
    cfg = TrainConfig(**(FAST | {"epochs": 2}), eval_batch_size=4, cold_start=0.2)
    fit(inter_path, features={"content": feats}, out=tmp_path / "model", config=cfg, split="random",
        show_progress=False)
    assert sorted(set(sizes)) == [("mmrec.coldstart", 4), ("mmrec.foldin", 4), ("mmrec.pipeline", 4)]
    back = Recommender.load(tmp_path / "model", show_progress=False)
    sizes.clear()
    evaluate_directory(back, inter_path)
    evaluate_directory(back, inter_path, cold_start=True, batch_size=3)
    assert sizes == [("mmrec.pipeline", 4), ("mmrec.coldstart", 3)]


def test_a_content_only_model_names_an_item_without_content_before_training(tmp_path):
    inter_path, feats = write_planted(tmp_path)
    x = np.load(feats)
    x[5] = 0  # an all-zero row is a missing modality
    np.save(feats, x)
    cfg = TrainConfig(**(FAST | {"epochs": 2}), use_id=False)
    with pytest.raises(DataError, match=r"item 5 has no content .* and the model has no ID embeddings \(use_id off\)"):
        fit(inter_path, features={"content": feats}, config=cfg, split="random", show_progress=False)


def test_a_seed_numpy_cannot_take_is_a_config_error():
    for seed in (-1, 2**32):
        with pytest.raises(ConfigError, match=r"seed must lie in \[0, 2\*\*32\)"):
            TrainConfig(seed=seed)
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_training_without_validation_rows_says_so(tmp_path, caplog):
    inter_path, feats = write_planted(tmp_path)
    rows = inter_path.read_text().splitlines()
    (tmp_path / "no_valid.tsv").write_text("\n".join([rows[0] + "\tsplit"] + [f"{r}\t{'test' if k % 5 else 'train'}"
                                                                            for k, r in enumerate(rows[1:])]) + "\n")
    with caplog.at_level("WARNING", logger="mmrec.train"):
        _, result, _ = fit(tmp_path / "no_valid.tsv", features={"content": feats}, config=TrainConfig(**(FAST | {"epochs": 3})),
                           show_progress=False)
    assert "no validation interactions (the file's split column has no 'valid' rows)" in caplog.text
    assert "every one of the 3 epochs runs" in caplog.text  # (it said to give a split column, which was given)
    assert result.best_epoch == len(result.history) == 3


def test_a_factory_refused_under_cold_start_counts_the_items_left(tmp_path):
    inter_path, feats = write_planted(tmp_path)
    with pytest.raises(ConfigError, match=r"\(the 8 items left to index after --cold-start held 24 of the 32 out\)"):
        fit(inter_path, features={"content": feats}, config=TrainConfig(**FAST, cold_start=0.75), factory="IVF4,Flat",
            split="random", show_progress=False)


def test_what_the_interaction_header_refuses_is_refused_before_the_catalog_is_encoded(tmp_path, monkeypatch):
    import mmrec.pipeline

    inter_path, feats = write_planted(tmp_path)  # user_id, item_id: no rating, timestamp or split column
    monkeypatch.setattr(mmrec.pipeline, "load_content", lambda *a, **k: pytest.fail("encoded before refusing"))
    for options, message in (({"split": "temporal"}, "interactions.tsv: a temporal split .* needs a timestamp column"),
                             ({"split": "given"}, "interactions.tsv: the given split .* needs a split column"),
                             ({"rating_threshold": 4.0}, "rating_threshold is set but the file has no rating column")):
        with pytest.raises(MMRecError, match=message):
            fit(inter_path, features={"content": feats}, config=TrainConfig(**FAST), show_progress=False, **options)
    with pytest.raises(DataError, match=r"missing.tsv: file not found"):
        fit(tmp_path / "missing.tsv", features={"content": feats}, config=TrainConfig(**FAST), show_progress=False)


@pytest.mark.parametrize("good_epochs", [2, 0])
def test_a_diverged_run_keeps_its_best_weights_or_says_what_to_do(tmp_path, monkeypatch, caplog, good_epochs):
    inter_path, feats = write_planted(tmp_path)
    real, calls = Trainer.step, []

    def step(self, users, pos):  # the loss turns NaN after `good_epochs` epochs, as at a too-high --lr
        calls.append(1)
        loss = real(self, users, pos)
        per_epoch = -(-len(self.train_users) // self.cfg.batch_size)
        return float("nan") if len(calls) > good_epochs * per_epoch else loss

    monkeypatch.setattr(Trainer, "step", step)
    config = TrainConfig(**(FAST | {"epochs": 6, "patience": 6}))
    if not good_epochs:
        with pytest.raises(MMRecError, match=r"training diverged at epoch 1 \(loss nan\), before any validated state "
                                             r"to keep: lower the learning rate \(--lr, now 0\.05\)"):
            fit(inter_path, features={"content": feats}, out=tmp_path / "m", config=config, split="random",
                show_progress=False)
        assert not (tmp_path / "m").exists()
        return
    with caplog.at_level("WARNING", logger="mmrec.train"):
        rec, result, _ = fit(inter_path, features={"content": feats}, out=tmp_path / "m", config=config,
                             split="random", show_progress=False)
    assert "training diverged at epoch 3 (loss nan): stopped, keeping the best weights so far" in caplog.text
    assert len(result.history) == 3 and result.best_epoch in (1, 2)
    # the report stays JSON (it held NaN, which a strict parser refuses), the epoch marked
    report = json.loads((tmp_path / "m" / "train_report.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in train_report.json"))
    assert [(row["epoch"], row["loss"], row.get("diverged")) for row in report["history"]][2:] == [(3, None, True)]
    assert np.isfinite(rec.items.vectors).all() and np.isfinite(rec.user_vectors).all()


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_a_run_without_validation_that_diverges_keeps_its_last_finite_epoch(tmp_path, monkeypatch, caplog, ema):
    # with no validation rows there was no validated state, so a divergence at a late epoch lost every epoch
    inter_path, feats = write_planted(tmp_path)
    lines = inter_path.read_text().splitlines()
    given = tmp_path / "given.tsv"  # train and test rows only
    given.write_text("\n".join([lines[0] + "\tsplit"] + [f"{line}\t{'test' if n % 5 == 0 else 'train'}"
                                                          for n, line in enumerate(lines[1:])]) + "\n")
    config = TrainConfig(**(FAST | {"epochs": 6, "patience": 6, "ema": ema}))
    two, _, _ = fit(given, features={"content": feats}, config=dataclasses.replace(config, epochs=2),
                    show_progress=False)
    real, calls = Trainer.step, []

    def step(self, users, pos):  # the loss turns NaN in epoch 3
        calls.append(1)
        loss = real(self, users, pos)
        return float("nan") if len(calls) > 2 * -(-len(self.train_users) // self.cfg.batch_size) else loss

    monkeypatch.setattr(Trainer, "step", step)
    with caplog.at_level("WARNING", logger="mmrec.train"):
        rec, result, _ = fit(given, features={"content": feats}, config=config, show_progress=False)
    assert "training diverged at epoch 3 (loss nan): stopped, keeping the last finite weights so far (epoch 2)" \
        in caplog.text
    assert result.best_epoch == 2 and len(result.history) == 3
    assert np.array_equal(rec.items.vectors, two.items.vectors) and np.array_equal(rec.user_vectors, two.user_vectors)
    calls.clear()
    monkeypatch.setattr(Trainer, "step", lambda self, users, pos: calls.append(1) or float("nan"))
    with pytest.raises(MMRecError, match=r"^training diverged at epoch 1 \(loss nan\), before a finite epoch to keep"):
        fit(given, features={"content": feats}, config=config, show_progress=False)


def test_weights_gone_nan_behind_a_finite_loss_are_divergence_too(tmp_path, monkeypatch, caplog):
    # The loss is each step's before its update: an epoch's last step (the only one on small data) left
    # NaN weights behind a finite loss, and validation failed ("score_fn returned NaN scores"), the best lost.
    inter_path, feats = write_planted(tmp_path)
    real, calls = Trainer.step, []

    def step(self, users, pos):
        loss = real(self, users, pos)
        calls.append(1)
        if len(calls) == 3 * -(-len(self.train_users) // self.cfg.batch_size):  # the last step of epoch 3
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(Trainer, "step", step)
    with caplog.at_level("WARNING", logger="mmrec.train"):
        rec, result, _ = fit(inter_path, features={"content": feats}, out=tmp_path / "m", split="random",
                             config=TrainConfig(**(FAST | {"epochs": 6, "patience": 6})), show_progress=False)
    assert "training diverged at epoch 3 (loss " in caplog.text and len(result.history) == 3
    assert result.best_epoch in (1, 2) and np.isfinite(rec.items.vectors).all()


def test_weights_so_large_that_scores_overflow_are_divergence_too(tmp_path):
    # finite weights (an lr of 1e30, one step an epoch) failed with a ValueError: "score_fn returned NaN scores"
    # at validation, or "max_norm must be a positive finite number, got inf" from the index code at the end
    inter_path, _ = write_planted(tmp_path)
    with pytest.raises(MMRecError, match=r"^training diverged.*lower the learning rate \(--lr, now 1e\+30\)"):
        fit(inter_path, out=tmp_path / "m", config=TrainConfig(**(FAST | {"lr": 1e30, "batch_size": 4096})),
            split="random", show_progress=False)
    assert not (tmp_path / "m").exists()
    from mmrec.metrics import NonFiniteScores

    real, calls = Trainer.validate, []

    def validate(self, split):  # scores that overflow at the third validation: divergence, the best kept
        calls.append(1)
        if len(calls) == 3:
            raise NonFiniteScores("score_fn returned NaN scores")
        return real(self, split)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "validate", validate)
        _, result, _ = fit(inter_path, config=TrainConfig(**(FAST | {"epochs": 6, "patience": 6})), split="random",
                           show_progress=False)
    assert len(result.history) == 3 and result.best_epoch in (1, 2)


def test_no_training_row_is_an_error_saying_why(tmp_path):
    (tmp_path / "i.tsv").write_text("user_id\titem_id\tsplit\nu1\t1\tvalid\nu1\t2\ttest\nu2\t1\ttest\n")
    with pytest.raises(MMRecError, match=r"^no training interactions: the split left no row in 'train' \(a split "
                                         r"column without train rows"):  # (was a bare ValueError)
        fit(tmp_path / "i.tsv", out=tmp_path / "m", config=TrainConfig(**FAST), split="given", show_progress=False)
    assert not (tmp_path / "m").exists()


def test_users_without_training_rows_are_warned_about(tmp_path, caplog):
    # A given split whose user "late" has only a test row: the model never trains that user's vector.
    inter, feats = write_planted(tmp_path, users=16, items=16, per_user=4)
    header, *lines = inter.read_text().splitlines()
    rows = [f"{line}\t{'test' if k % 4 == 3 else 'train'}" for k, line in enumerate(lines)]
    (tmp_path / "split.tsv").write_text("\n".join([header + "\tsplit", *rows, "late\t3\ttest"]) + "\n")
    config = TrainConfig(dim=8, layers=1, heads=1, lr=0.05, batch_size=64, epochs=1, patience=1)
    with caplog.at_level("WARNING", logger="mmrec.pipeline"):
        fit(tmp_path / "split.tsv", features={"content": feats}, out=tmp_path / "m", config=config, split="given",
            show_progress=False)
    assert "1 of 17 users have no training interaction (every row of theirs is a validation or test row" in caplog.text
    # and recommending for that user says so, after a reload too (it answered silently, by the random start)
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmrec.recommender"):
        rec.recommend("u1", 3)
        assert not caplog.records
        rec.recommend("late", 3)
    assert rec.untrained_users == ["late"] and caplog.records[0].getMessage() == (
        "user(s) 'late' had no training interaction: their vectors are the random start they were given, so these "
        "recommendations are chance; recommend --history (recommend_history([], user=...)) places a user by "
        "their items")
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmrec.recommender"):
        rec.recommend("late", 3)  # once a user and object (a server logged it at every request)
    assert not caplog.records
    fresh = Recommender.load(tmp_path / "m", show_progress=False)
    with caplog.at_level("WARNING", logger="mmrec.recommender"):
        fresh.recommend_many(["u1", "late", "late"], 3)  # the batch path said nothing
    assert "user(s) 'late' had no training interaction" in caplog.text  # (named once, not once a row)
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmrec.pipeline"):
        fit(inter, features={"content": feats}, out=tmp_path / "m2", config=config, split="random",
            show_progress=False)
    assert "no training interaction" not in caplog.text


def test_the_popularity_ranking_is_reported_beside_the_model_and_a_model_below_it_is_warned_about(tmp_path, caplog):
    # On very sparse data a trained model scored 0.145 test Recall@20 where ranking by popularity scored 0.206,
    # and nothing said so. Here every user likes items 0-2 (one each in train, valid and test) and one item of
    # their own: popularity is hard to beat
    rng = np.random.default_rng(3)
    rows = ["user_id\titem_id\tsplit"]
    for u in range(30):
        rows += [f"u{u}\t{(u + j) % 3}\t{split}" for j, split in enumerate(("test", "valid", "train"))]
        rows.append(f"u{u}\t{3 + rng.integers(0, 27)}\ttrain")
    (tmp_path / "inter.tsv").write_text("\n".join(rows) + "\n")
    feats = rng.normal(size=(30, 4)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    with caplog.at_level("WARNING", logger="mmrec.pipeline"):
        rec, result, test = fit(tmp_path / "inter.tsv", features={"f": tmp_path / "f.npy"}, out=tmp_path / "m",
                                config=TrainConfig(**(FAST | {"epochs": 1, "lr": 1e-9})), show_progress=False)
    # popularity's lists: items 0-2 have 10 training rows each, the others 1-3; with a user's train (and valid)
    # items masked, the test item is the most popular left -> recall@10 = 1; the valid item one of the two
    assert result.popularity["test"]["recall@10"] == 1.0 and result.popularity["test"]["ndcg@10"] == 1.0
    report = json.loads((tmp_path / "m" / "train_report.json").read_text())
    assert report["popularity"] == result.popularity and report["popularity"]["valid"]["recall@20"] == 1.0
    assert "is below the popularity ranking's 1.0000" in caplog.text


def test_the_epoch_bar_counts_the_epoch_early_stopping_ends(tmp_path, capsys):
    inter_path, _ = write_planted(tmp_path)
    tr, _ = _trainer(inter_path, epochs=40, patience=1, lr=0.5)  # a high rate: validation soon stops improving
    tr.show_progress = True
    result = tr.fit()
    ran = len(result.history)
    assert ran < 40
    final = capsys.readouterr().err.rsplit("\r", 1)[-1]
    assert f" {ran}/40 " in final, final  # (iterating the bar left it at ran - 1)
