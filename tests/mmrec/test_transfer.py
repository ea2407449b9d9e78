"""``mmrec finetune``: weights transfer, new items and users start from content, fine-tuning beats
its start and training from scratch on a planted catalog, every refusal has its message."""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from encoders.text import TextEncoder
from fusion.model import FusedGraphModel
from mmrec.cli import main
from mmrec.config import TrainConfig
from mmrec.errors import ConfigError, DataError, MMRecError
from mmrec.item_index import ItemIndex
from mmrec.pipeline import fit
from mmrec.recommender import Recommender
from mmrec.train import build_model, seed_everything
from mmrec.transfer import finetune, finetune_config, matching_users, transfer_weights
from tests.mmrec.conftest import write_planted

FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, reg=1e-4)
CLUSTERS, WIDTH, NOISE = 8, 32, 0.25


@pytest.fixture(scope="module")
def one_thread():
    """conftest's one-thread rule for module fixtures too (it is function-scoped, so set up after them)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_clustered(directory, name, centroids, items, users, per_user, seed):
    """Users of cluster c interact with random items of cluster c; an item's features are its
    cluster's centroid plus noise, so content tells the cluster only approximately."""
    rng = np.random.default_rng(seed)
    cluster = rng.permutation(np.arange(items) % len(centroids))
    lines = ["user_id\titem_id"]
    for u in range(users):
        for i in rng.choice(np.flatnonzero(cluster == u % len(centroids)), size=per_user, replace=False):
            lines.append(f"{name}{u}\t{i}")
    inter = directory / f"{name}.tsv"
    inter.write_text("\n".join(lines) + "\n")
    feats = centroids[cluster] + NOISE * rng.normal(size=(items, centroids.shape[1]))
    path = directory / f"{name}.npy"
    np.save(path, feats.astype(np.float32))
    return inter, path


@pytest.fixture(scope="module")
def planted(tmp_path_factory, one_thread):
    """Catalog A (480 items, 160 users x 8 interactions) trains the source; catalog B shares the
    content -> cluster structure (same centroids) but has other items and users, and only 3
    interactions per user, i.e. one for training after the 80/10/10 split.

    Why the comparison below is robust: with one training interaction per user, a model trained
    from scratch must learn both the content -> cluster map and every item from ~400 pairs, while
    the transferred model knows the map already (its items start in the right clusters). Over 4
    data seeds x 2 training seeds the fine-tuned best valid Recall@20 was >= 0.073 above its
    start and >= 0.157 above scratch (0.55-0.72 vs 0.31-0.42), and its test Recall@20 >= 0.119
    above scratch's (token ID mode). With the residual ID mode, now the default (data seed 2,
    training seed 0): start 0.5525, best 0.585, scratch 0.355; test 0.55 vs 0.335. The asserts
    leave room on each."""
    d = tmp_path_factory.mktemp("planted")
    centroids = np.random.default_rng(7).normal(size=(CLUSTERS, WIDTH)).astype(np.float32) / np.sqrt(WIDTH)
    a = write_clustered(d, "a", centroids, items=60 * CLUSTERS, users=20 * CLUSTERS, per_user=8, seed=1)
    b = write_clustered(d, "b", centroids, items=20 * CLUSTERS, users=50 * CLUSTERS, per_user=3, seed=2)
    # align_weight trains the content-only path that new items start from.
    cfg = TrainConfig(**FAST, epochs=12, patience=12, align_weight=1.0)
    fit(a[0], features={"content": a[1]}, out=d / "source", config=cfg, split="random", show_progress=False)
    return d, a, b


def test_finetune_improves_on_its_start_and_beats_training_from_scratch(planted, tmp_path):
    d, _, (b_inter, b_feat) = planted
    changes = {"epochs": 8, "patience": 8, "lr": 0.01}
    rec, result, test = finetune(d / "source", b_inter, features={"content": b_feat}, out=tmp_path / "ft",
                                 config=changes, split="random", show_progress=False)
    report = json.loads((tmp_path / "ft" / "train_report.json").read_text())
    start = report["start_valid"]["recall@20"]
    best = result.best_valid["recall@20"]
    # Same data, split, config and epoch budget, random start.
    cfg = dataclasses.replace(Recommender.load(d / "source", show_progress=False).config, **changes)
    _, scratch, scratch_test = fit(b_inter, features={"content": b_feat}, config=cfg, split="random",
                                   show_progress=False)
    assert start > 0.3  # transferred content alone already ranks (random: 20/160 = 0.125)
    assert best >= start + 0.02
    assert best >= scratch.best_valid["recall@20"] + 0.1
    assert test["recall@20"] >= scratch_test["recall@20"] + 0.05
    assert report["best_epoch"] == result.best_epoch and report["source"] == str(d / "source")
    # The written directory is an ordinary trained one, with the source's architecture.
    back = Recommender.load(tmp_path / "ft", show_progress=False)
    assert back.config == rec.config and back.config.lr == 0.01 and back.config.align_weight == 1.0
    assert back.model.modality_dims == {"content": WIDTH} and len(back.user_ids) == 50 * CLUSTERS
    for user in ("b0", "b9"):
        assert [r.item_id for r in back.recommend(user, 5)] == [r.item_id for r in rec.recommend(user, 5)]


def _two_modality_source() -> FusedGraphModel:
    torch.manual_seed(0)
    model = FusedGraphModel(5, 7, {"a": 3, "b": 2}, dim=8, num_layers=2, num_heads=2)
    for p in model.parameters():  # not the fresh initialisation: copies must be told apart from it
        p.data.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_transfer_weights_copies_weights_and_starts_items_from_content():
    source = _two_modality_source()
    cfg = TrainConfig(dim=8, layers=2, heads=2, id_mode="token")
    torch.manual_seed(1)
    target = build_model(cfg, 4, 6, {"a": 3, "b": 2})
    before_items = target.item_embedding.weight.detach().clone()
    before_users = target.user_embedding.weight.detach().clone()
    features = {"a": torch.randn(6, 3), "b": torch.randn(6, 2)}
    present = {"a": torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool),
               "b": torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)}  # item 4 has no modality
    transfer_weights(source, target, features, present, user_rows=np.array([-1, 3, -1, 0]))
    src_state, tgt_state = source.state_dict(), target.state_dict()
    for name, value in src_state.items():
        if not name.endswith("_embedding.weight"):
            assert torch.equal(tgt_state[name], value), name
    with torch.no_grad():
        proj_a = source.projections["a"](features["a"])  # [6, 8]
        proj_b = source.projections["b"](features["b"])  # [6, 8]
        items = target.item_embedding.weight
        start = torch.stack([(proj_a[0] + proj_b[0]) / 2, proj_a[1], proj_b[2], proj_a[3], before_items[4],
                             proj_b[5]])  # [6, 8] before the rescaling
        factor = 0.1 * np.sqrt(8) / float(start.norm(dim=1).mean())  # a fresh N(0, 0.1^2) start's mean norm
        torch.testing.assert_close(items, start * factor)
        torch.testing.assert_close(float(items.norm(dim=1).mean()), 0.1 * float(np.sqrt(8)), rtol=1e-5, atol=1e-6)
        # So an item with one modality starts in the direction the source gives it by content alone.
        users = target.user_embedding.weight
        torch.testing.assert_close(users[[0, 2]], before_users[[0, 2]] * factor)  # new users: random start
        torch.testing.assert_close(users[1], source.user_embedding.weight[3] * factor)
        torch.testing.assert_close(users[3], source.user_embedding.weight[0] * factor)
    with pytest.raises(ConfigError, match="does not match the source"):
        transfer_weights(source, build_model(cfg, 4, 6, {"a": 3}), {"a": features["a"]}, {"a": present["a"]})


def test_transfer_weights_residual_mode_keeps_fresh_item_embeddings():
    source = _two_modality_source()
    source.id_mode = "residual"
    torch.manual_seed(1)
    target = build_model(TrainConfig(dim=8, layers=2, heads=2, id_mode="residual"), 4, 6, {"a": 3, "b": 2})
    before = target.item_embedding.weight.detach().clone()
    features = {"a": torch.randn(6, 3), "b": torch.randn(6, 2)}
    present = {m: torch.ones(6, dtype=torch.bool) for m in features}
    transfer_weights(source, target, features, present)
    with torch.no_grad():
        # Content already enters through fuse(content); the ID part stays the fresh draw,
        # only brought to the fresh-start mean norm 0.1 * sqrt(D).
        factor = 0.1 * np.sqrt(8) / float(before.norm(dim=1).mean())
        torch.testing.assert_close(target.item_embedding.weight, before * factor)
        torch.testing.assert_close(target.projections["a"].lin1.weight, source.projections["a"].lin1.weight)


def test_matching_users_compares_ids_as_text():
    source = Recommender.__new__(Recommender)
    source.user_ids = ["7", 3, "u"]
    np.testing.assert_array_equal(matching_users(source, [3, "7", "x", "u"]), [1, 0, -1, 2])


def test_finetune_config_keeps_the_architecture():
    src = TrainConfig(**FAST, epochs=40)
    assert finetune_config(src) is src
    assert finetune_config(src, {"lr": 0.01}) == dataclasses.replace(src, lr=0.01)
    assert finetune_config(src, {"dim": 16, "epochs": 3}).epochs == 3  # equal to the source's: fine
    with pytest.raises(ConfigError, match=r"dim=32 \(source: 16\).*train from scratch"):
        finetune_config(src, {"dim": 32})
    with pytest.raises(ConfigError, match=r"use_id=False \(source: True\)"):
        finetune_config(src, TrainConfig(**(FAST | {"use_id": False})))
    with pytest.raises(ConfigError, match=r"id_mode='token' \(source: 'residual'\)"):
        finetune_config(src, {"id_mode": "token"})
    with pytest.raises(ConfigError, match=r"unknown training options \['nope'\]"):
        finetune_config(src, {"nope": 1})


# --------------------------------------------------------------------------- refusals and masks
@pytest.fixture(scope="module")
def small(tmp_path_factory, one_thread):
    """A tiny source with one 'content' modality of width 4, and a second planted catalog."""
    d = tmp_path_factory.mktemp("small")
    inter, feats = write_planted(d)
    fit(inter, features={"content": feats}, out=d / "source", config=TrainConfig(**FAST, epochs=1), split="random",
        show_progress=False)
    (d / "b").mkdir()
    b_inter, b_feats = write_planted(d / "b", users=20, items=24, seed=3)
    return d, b_inter, b_feats


def _save(d, name, array):
    np.save(d / name, np.asarray(array, np.float32))
    return d / name


def test_every_refusal_says_what_to_do(small, tmp_path):
    d, b_inter, b_feats = small
    x = np.load(b_feats)
    src = d / "source"
    quiet = dict(show_progress=False, split="random")

    # ignoring every modality the new data has: the option is named, not the data blamed
    with pytest.raises(ConfigError, match=r"none of the source model's modalities \['content'\] \(--ignore-modality left "
                                          r"out content\): nothing would carry over.*, and do not ignore it$"):
        finetune(src, b_inter, features={"content": b_feats}, ignore=["content"], **quiet)
    with pytest.raises(ConfigError, match=r"--ignore-modality audio: neither the source model \(modalities: content\) "
                                          r"nor the new data \(a catalog's text and image, --features: content\) "
                                          r"has it"):
        finetune(src, b_inter, features={"content": b_feats}, ignore=["audio"], **quiet)
    ItemIndex.from_features(list(range(len(x))), {"content": x}, show_progress=False).save(tmp_path / "content_index")
    with pytest.raises(ConfigError, match=r"content index .* not a trained model.*`mmrec train`"):
        finetune(tmp_path / "content_index", b_inter, features={"content": b_feats}, **quiet)

    inter_a, feats_a = write_planted(tmp_path)
    fit(inter_a, out=tmp_path / "id_only", config=TrainConfig(**FAST, epochs=1, use_content=False), split="random",
        show_progress=False)
    with pytest.raises(ConfigError, match=r"ID-only model .*nothing but its hyper-parameters.*config\.json"):
        finetune(tmp_path / "id_only", b_inter, features={"content": b_feats}, **quiet)

    with pytest.raises(ConfigError, match=r"--features has modalities \['extra'\] that the source model was never "
                                          r"trained with \(it has \['content'\]\): pass --ignore-modality extra"):
        finetune(src, b_inter, features={"content": b_feats, "extra": b_feats}, **quiet)

    narrow = _save(tmp_path, "narrow.npy", x[:, :3])
    with pytest.raises(ConfigError, match=r"'content' \(.*narrow\.npy\) has width 3, the source model expects 4\. "
                                          r"Compute them"):
        finetune(src, b_inter, features={"content": narrow}, **quiet)

    with pytest.raises(ConfigError, match=r"none of the source model's modalities \['content'\]"):
        finetune(src, b_inter, features={"content": b_feats}, ignore=["content"], **quiet)
    with pytest.raises(ConfigError, match=r"none of the source model's modalities \['content'\]"):
        finetune(src, b_inter, features={"content": b_feats}, ignore="content", **quiet)  # one name, not 7 letters
    with pytest.raises(ConfigError, match=r"unknown training options \['epoch'\]"):
        finetune(src, b_inter, features={"content": b_feats}, config={"epoch": 3}, **quiet)

    with pytest.raises(ConfigError, match=r"heads=4 \(source: 2\)"):
        finetune(src, b_inter, features={"content": b_feats}, config={"heads": 4}, **quiet)

    with pytest.raises(ConfigError, match="is the source directory"):
        finetune(src, b_inter, features={"content": b_feats}, out=src, overwrite=True, **quiet)

    catalog = tmp_path / "items.csv"
    with open(catalog, "w", newline="") as f:
        csv.writer(f).writerows([["item_id", "title"]] + [[i, f"item {i}"] for i in range(len(x))])
    with pytest.raises(ConfigError, match=r"the catalog .*items\.csv has modalities \['text'\] that the source "
                                          r"model was never trained with.*--ignore-modality text"):
        finetune(src, b_inter, catalog=catalog, features={"content": b_feats}, **quiet)
    # With the text ignored the catalog gives the new items their ids and display fields, as in `train`
    # with --features: its rows need no content of their own (an id column alone will do).
    for columns in ([["item_id", "title"]] + [[i, f"item {i}"] for i in range(len(x))],
                    [["item_id"]] + [[i] for i in range(len(x))]):
        with open(tmp_path / "ids.csv", "w", newline="") as f:
            csv.writer(f).writerows(columns)
        rec, _, _ = finetune(src, b_inter, catalog=tmp_path / "ids.csv", features={"content": b_feats}, ignore=["text"],
                             out=tmp_path / "ft_ids", overwrite=True, **quiet)
        assert rec.items.ids == list(range(len(x))) and rec.items.modalities == ["content"]
    assert rec.items.items[3]["fields"] == {} and Recommender.load(tmp_path / "ft_ids").items.ids == rec.items.ids

    fit(inter_a, features={"text": feats_a}, out=tmp_path / "npy_text", config=TrainConfig(**FAST, epochs=1),
        split="random", show_progress=False)
    with pytest.raises(ConfigError, match=r"'text' features were precomputed \(--features\), so its text encoder is "
                                          r"unknown: pass --features text=PATH\.npy"):
        finetune(tmp_path / "npy_text", b_inter, catalog=catalog, **quiet)
    # ... and with it, the .npy is the text (the catalog's title is not encoded: the source had no encoder).
    rec, _, _ = finetune(tmp_path / "npy_text", b_inter, catalog=catalog, features={"text": b_feats}, **quiet)
    np.testing.assert_array_equal(rec.items.features["text"], np.load(b_feats).astype(np.float32))

    fit(inter_a, features={"content": feats_a}, out=tmp_path / "no_id",
        config=TrainConfig(**FAST, epochs=1, use_id=False), split="random", show_progress=False)
    holes = x.copy()
    holes[[2, 5]] = 0.0  # an all-zero row is an absent modality
    with pytest.raises(ConfigError, match=r"2 new items have none of the modalities \['content'\] \(first: \[2, 5\]\)"
                                          r".*no ID embeddings"):
        finetune(tmp_path / "no_id", b_inter, features={"content": _save(tmp_path, "holes.npy", holes)}, **quiet)


def test_a_source_modality_missing_from_the_new_data_is_masked(small, tmp_path, caplog):
    d, b_inter, b_feats = small
    inter_a, feats_a = write_planted(tmp_path)
    x = np.load(feats_a)
    src_dir = tmp_path / "two"
    fit(inter_a, features={"content": feats_a, "extra": _save(tmp_path, "extra.npy", x[:, :2] + 1.0)}, out=src_dir,
        config=TrainConfig(**FAST, epochs=2), split="random", show_progress=False)
    with caplog.at_level(logging.WARNING, logger="mmrec.transfer"):
        rec, _, _ = finetune(src_dir, b_inter, features={"content": b_feats}, out=tmp_path / "ft",
                             config={"epochs": 2}, split="random", show_progress=False)
    assert "the new data has no extra: masked for every item" in caplog.text
    back = Recommender.load(tmp_path / "ft", show_progress=False)
    assert back.model.modality_dims == {"content": 4, "extra": 2}
    assert not back.items.present["extra"].any() and back.items.present["content"].all()
    assert (back.items.attention[:, 1] == 0).all()  # the masked token gets no attention
    # left out by --ignore-modality, it is said so (it said the new data had none, of a modality it had)
    caplog.clear()
    both = {"content": b_feats, "extra": _save(tmp_path, "b_extra.npy", np.load(b_feats)[:, :2] + 1.0)}
    with caplog.at_level(logging.INFO, logger="mmrec.transfer"):
        finetune(src_dir, b_inter, features=both, ignore=["extra"], config={"epochs": 1}, split="random",
                 show_progress=False)
    assert "--ignore-modality extra: masked for every item" in caplog.text and "the new data has no" not in caplog.text


def _rated(path, out):
    """``path``'s interactions with a rating column: every fourth row rated 2, the rest 5."""
    rows = path.read_text().splitlines()
    out.write_text("\n".join([rows[0] + "\trating", *(f"{r}\t{5 if k % 4 else 2}" for k, r in enumerate(rows[1:]))]))
    return out


def test_a_source_rating_threshold_is_not_inherited_but_named(small, tmp_path, caplog):
    d, b_inter, b_feats = small
    inter, feats = write_planted(tmp_path)
    fit(_rated(inter, tmp_path / "a.tsv"), features={"content": feats}, out=tmp_path / "src",
        config=TrainConfig(**FAST, epochs=1), split="random", rating_threshold=4, show_progress=False)
    new = _rated(b_inter, tmp_path / "b.tsv")
    for threshold, warned in ((None, True), (3.0, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mmrec.transfer"):
            rec, _, _ = finetune(tmp_path / "src", new, features={"content": b_feats}, config={"epochs": 1},
                                 split="random", rating_threshold=threshold, show_progress=False)
        assert rec.rating_threshold == threshold
        assert ("the source model was trained with rating threshold 4; the new interactions have none, so every "
                "row is a positive (give --rating-threshold to apply one)" in caplog.text) == warned


def test_keep_users_starts_known_users_from_their_source_embedding(small, tmp_path, caplog):
    d, _, _ = small
    source = Recommender.load(d / "source", show_progress=False)
    inter, feats = write_planted(tmp_path, users=12, items=16, seed=5)  # users u0..u11: known to the source
    seen = {}

    def record(keep):
        rec, _, _ = finetune(source, inter, features={"content": feats}, config={"epochs": 1, "lr": 1e-9},
                             split="random", show_progress=False, keep_users=keep)
        seen[keep] = rec.model.user_embedding.weight.detach()
        return rec

    with caplog.at_level("WARNING", logger="mmrec.transfer"):
        rec = record(True)
    assert "12 of 12 users keep their source embedding, matched by id (pass --no-keep-users" in caplog.text
    rows = [source.user_index(u) for u in rec.user_ids]
    # lr 1e-9: one epoch of Adam moves a weight by at most ~1e-9 per step.
    src = source.model.user_embedding.weight[rows].detach()
    factor = float(seen[True].norm() / src.norm())  # the start is rescaled as a whole (transfer_weights)
    torch.testing.assert_close(seen[True], src * factor, atol=1e-6, rtol=0)
    fresh = record(False)
    assert not torch.allclose(seen[False], seen[True], atol=1e-3)

    def mean_cosine(a, b):  # row i of one against row i of the other
        n = min(len(a), len(b))
        return float(torch.nn.functional.cosine_similarity(a[:n], b[:n], dim=1).mean())

    # Fresh rows are fresh: not the draws the (inherited) seed gave the source model, whose
    # trained rows resemble them when training moved them little, so that new user i started
    # near the source's user i (another person). A catalog of the source's size draws them all.
    (tmp_path / "same").mkdir()
    same, same_feats = write_planted(tmp_path / "same", users=48, items=32, seed=7)
    fresh, _, _ = finetune(source, same, features={"content": same_feats}, config={"epochs": 1, "lr": 1e-9},
                           split="random", show_progress=False, keep_users=False)
    seed_everything(source.config.seed)
    start = build_model(source.config, len(source.user_ids), len(source.items), {"content": 4})
    for table in ("user_embedding", "item_embedding"):
        got, drawn = (getattr(m, table).weight.detach() for m in (fresh.model, start))
        assert got.shape == drawn.shape and abs(mean_cosine(got, drawn)) < 0.3


def test_a_user_with_no_training_row_who_keeps_a_source_embedding_is_not_called_chance(small, tmp_path, caplog):
    d, _, _ = small
    inter, feats = write_planted(tmp_path, users=12, items=16, seed=5)  # users 0..11: known to the source
    rows = inter.read_text().splitlines()
    split = [("test" if r.startswith("u0\t") else "valid" if k % 5 == 0 else "train") for k, r in enumerate(rows[1:])]
    (tmp_path / "given.tsv").write_text("\n".join([rows[0] + "\tsplit"] + [f"{r}\t{s}" for r, s in
                                                                           zip(rows[1:], split)]) + "\n")
    for keep in (True, False):
        caplog.clear()
        with caplog.at_level("INFO", logger="mmrec.pipeline"):
            finetune(d / "source", tmp_path / "given.tsv", features={"content": feats}, config={"epochs": 1},
                     show_progress=False, keep_users=keep)
        # it said "their vectors stay as drawn, so their recommendations are chance" of a kept user too
        kept = "1 of 12 users have no training interaction (every row of theirs is a validation or test row, one " \
               "below the rating threshold, or one of an item --cold-start held out) and keep their source embedding"
        assert (kept in caplog.text) == keep and ("stay as drawn" in caplog.text) == (not keep)
    # a user the source never trained either keeps a random start: still listed, and warned about
    fit(tmp_path / "given.tsv", features={"content": feats}, out=tmp_path / "src2", config=TrainConfig(**FAST, epochs=1),
        show_progress=False)
    assert Recommender.load(tmp_path / "src2", show_progress=False).untrained_users == ["u0"]
    again, _, _ = finetune(tmp_path / "src2", tmp_path / "given.tsv", features={"content": feats}, config={"epochs": 1},
                           out=tmp_path / "ft2", show_progress=False)
    assert again.untrained_users == Recommender.load(tmp_path / "ft2", show_progress=False).untrained_users == ["u0"]


def test_transfer_weights_draws_fresh_embeddings_from_a_salted_seed():
    source = _two_modality_source()
    source.id_mode = "residual"
    for seed in (0, 1):
        torch.manual_seed(seed)  # as fit builds the target: under the (inherited) seed
        target = build_model(TrainConfig(dim=8, layers=2, heads=2, id_mode="residual"), 4, 6, {"a": 3, "b": 2})
        drawn = target.item_embedding.weight.detach().clone()
        features = {"a": torch.randn(6, 3), "b": torch.randn(6, 2)}
        present = {m: torch.ones(6, dtype=torch.bool) for m in features}
        transfer_weights(source, target, features, present, seed=seed)
        got = target.item_embedding.weight.detach()
        cos = torch.nn.functional.cosine_similarity(got, drawn, dim=1)
        assert cos.abs().max() < 0.99  # not the draw the seed gave
        again = build_model(TrainConfig(dim=8, layers=2, heads=2, id_mode="residual"), 4, 6, {"a": 3, "b": 2})
        transfer_weights(source, again, features, present, seed=seed)
        torch.testing.assert_close(again.item_embedding.weight, got, rtol=0, atol=0)  # reproducible for a seed


# ---------------------------------------------------------------------------------- encoders, CLI
def _catalog(path, ids, words, image: str | None = None):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title"] + (["image"] if image else []))
        for i, item in enumerate(ids):
            w.writerow([item, f"{words[i % len(words)]} {words[(i * 3) % len(words)]} film"] + ([image] if image else []))
    return path


def _catalog_interactions(path, ids, users, per_user, seed):
    rng = np.random.default_rng(seed)
    lines = ["user_id\titem_id"] + [f"{u}\t{ids[i]}" for u in users
                                    for i in rng.choice(len(ids), size=per_user, replace=False)]
    path.write_text("\n".join(lines) + "\n")
    return path


WORDS = ["cat", "dog", "space", "war", "love", "city", "toy", "boy", "police", "night"]


def _source_with_pictures(tmp_path, tiny_bert_dir, image_paths, image_encoder, **fit_options):
    """A source model trained on 20 items whose catalog has an image column (one picture, pic.jpg)."""
    shutil.copy(image_paths[0], tmp_path / "pic.jpg")
    a_ids = [f"a{i}" for i in range(20)]
    a_cat = _catalog(tmp_path / "a.csv", a_ids, WORDS, image="pic.jpg")
    a_inter = _catalog_interactions(tmp_path / "a.tsv", a_ids, [f"u{i}" for i in range(12)], 6, seed=0)
    fit(a_inter, catalog=a_cat, out=tmp_path / "source", text_encoder=tiny_bert_dir, image_encoder=image_encoder,
        cache_dir=None, config=TrainConfig(**FAST, epochs=1), split="random", show_progress=False, **fit_options)
    return tmp_path / "source"


def _new_catalog(tmp_path, image=None, extra_row=None):
    """The new catalog b.csv (16 items, ``image`` in every row's image column when given, then
    ``extra_row`` as file row 17) and its interactions b.tsv (the 16 items only)."""
    b_ids = [f"new-{i}" for i in range(16)]
    b_cat = _catalog(tmp_path / "b.csv", b_ids, WORDS[::-1], image=image)
    if extra_row:
        with open(b_cat, "a") as f:
            f.write(extra_row + "\n")
    return b_cat, _catalog_interactions(tmp_path / "b.tsv", b_ids, [f"v{i}" for i in range(10)], 5, seed=1)


def test_finetune_from_tuned_encoders_encodes_with_them_and_carries_them(tmp_path, tiny_bert_dir, image_paths):
    a_ids = [f"a{i}" for i in range(20)]
    a_cat = _catalog(tmp_path / "a.csv", a_ids, WORDS)
    a_inter = _catalog_interactions(tmp_path / "a.tsv", a_ids, [f"u{i}" for i in range(12)], 6, seed=0)
    fit(a_inter, catalog=a_cat, out=tmp_path / "source", text_encoder=tiny_bert_dir, cache_dir=None,
        config=TrainConfig(**FAST, epochs=1, finetune="top:1"), split="random", show_progress=False)
    spec = json.loads((tmp_path / "source" / "manifest.json").read_text())["encoders"]["text"]
    assert spec["bundled"] and spec["model"] == "encoders/text"

    b_ids = [f"new-{i}" for i in range(16)]
    shutil.copy(image_paths[0], tmp_path / "pic.jpg")
    b_cat = _catalog(tmp_path / "b.csv", b_ids, WORDS[::-1], image="pic.jpg")
    b_inter = _catalog_interactions(tmp_path / "b.tsv", b_ids, [f"v{i}" for i in range(10)], 5, seed=1)
    with pytest.raises(ConfigError, match=r"\['image'\] that the source model was never trained with"):
        finetune(tmp_path / "source", b_inter, catalog=b_cat, split="random", show_progress=False)
    rec, _, _ = finetune(tmp_path / "source", b_inter, catalog=b_cat, out=tmp_path / "ft", ignore=["image"],
                         config={"finetune": "frozen", "epochs": 1}, split="random", show_progress=False)
    tuned = TextEncoder(tmp_path / "source" / "encoders" / "text", show_progress=False)
    texts = [f"{w1} {w2} film" for w1, w2 in ((WORDS[::-1][i % 10], WORDS[::-1][(i * 3) % 10]) for i in range(16))]
    np.testing.assert_allclose(rec.items.features["text"], tuned.encode(texts), atol=1e-5)
    # kept in memory (out=None), it queries with the source's stored encoder too (it said "stored in the model
    # directory, which is unknown"), and is itself a source for another fine-tune
    mem, _, _ = finetune(tmp_path / "source", b_inter, catalog=b_cat, ignore=["image"],
                         config={"finetune": "frozen", "epochs": 1}, split="random", show_progress=False)
    np.testing.assert_allclose(mem.items.encoders.get("text").encode(texts), tuned.encode(texts), atol=1e-6)
    assert [r.item_id for r in mem.search_text("space war", 3)] == [r.item_id for r in rec.search_text("space war", 3)]
    again, _, _ = finetune(mem, b_inter, catalog=b_cat, ignore=["image"], config={"epochs": 1}, split="random",
                           show_progress=False)
    np.testing.assert_allclose(again.items.features["text"], rec.items.features["text"], atol=1e-5)
    shutil.rmtree(tmp_path / "source")  # the new directory stands alone
    back = Recommender.load(tmp_path / "ft", show_progress=False)
    assert back.items.manifest["encoders"]["text"] == spec
    assert back.items.modalities == ["text"]
    assert (tmp_path / "ft" / "encoders" / "text" / "config.json").is_file()
    assert back.items.encoders.get("text").identity == spec["identity"]
    assert len(back.search_text("space war", 3)) == 3


def test_cli_finetune_end_to_end(small, tmp_path, capsys):
    d, b_inter, b_feats = small
    out = tmp_path / "ft"
    code = main(["finetune", "--from", str(d / "source"), "--features", f"content={b_feats}", "--interactions",
                 str(b_inter), "--out", str(out), "--epochs", "2", "--lr", "0.01", "--split", "random", "--json", "-q"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(printed)
    assert set(summary) >= {"start_valid", "valid", "test", "best_epoch"} and summary["start_valid"]["recall@20"] > 0
    back = Recommender.load(out, show_progress=False)
    source = Recommender.load(d / "source", show_progress=False).config
    # Options given override; the rest come from the source (batch_size 64, not TrainConfig's 2048).
    assert back.config == dataclasses.replace(source, epochs=2, lr=0.01)
    assert len(back.recommend("u1", 3)) == 3
    code = main(["finetune", "--from", str(d / "source"), "--features", f"content={b_feats}", "--interactions",
                 str(b_inter), "--out", str(tmp_path / "bad"), "--dim", "32", "-q"])
    _, err = capsys.readouterr()
    assert code == 1 and "error: fine-tuning keeps the source model's architecture, but dim=32 (source: 16)" in err
    assert not (tmp_path / "bad").exists()


def test_a_new_catalog_without_the_source_image_column_masks_images(tmp_path, tiny_bert_dir, tiny_vit_dir,
                                                                     image_paths, caplog):
    # The README: a source modality the new data lacks is masked for every item. The source's
    # image field is a default here, not a demand: a catalog without that column is text-only.
    _source_with_pictures(tmp_path, tiny_bert_dir, image_paths, tiny_vit_dir)
    b_cat, b_inter = _new_catalog(tmp_path)  # item_id, title: no image column
    rec, _, _ = finetune(tmp_path / "source", b_inter, catalog=b_cat, out=tmp_path / "ft",
                         config={"epochs": 1}, split="random", show_progress=False)
    assert sorted(rec.items.modalities) == ["image", "text"] and not rec.items.present["image"].any()
    assert rec.items.present["text"].all()
    # Items added to the fine-tuned model later get no image either, though their file has one:
    # none of its items has one (the README: a modality left out stays out).
    ft = Recommender.load(tmp_path / "ft", show_progress=False)
    assert ft.items.manifest["masked"] == ["image"]
    c_cat = _catalog(tmp_path / "c.csv", ["c0", "c1"], WORDS, image="pic.jpg")
    assert ft.items.add(c_cat) == 2 and not ft.items.present["image"][-2:].any()
    assert (ft.items.attention[-2:, ft.items.manifest["tokens"].index("image")] == 0).all()
    assert Recommender.load(tmp_path / "ft", show_progress=False).items.manifest["masked"] == ["image"]
    info = Recommender.load(tmp_path / "ft", show_progress=False).info()
    assert info["modalities"]["image"]["masked"] and not info["modalities"]["text"]["masked"]
    # index add on the source takes the same text-only file; an image field asked for is still checked
    source = Recommender.load(tmp_path / "source", show_progress=False)
    assert source.items.add(b_cat) == 16 and not source.items.present["image"][-16:].any()
    # ... and an image-only file, with a word on the text it lacks (a row without an image is then an error)
    (tmp_path / "img.csv").write_text("item_id,image\nz0,pic.jpg\nz1,pic.jpg\n")
    with caplog.at_level(logging.WARNING, logger="mmrec.catalog"):
        assert source.items.add(tmp_path / "img.csv") == 2 and not source.items.present["text"][-2:].any()
    assert "img.csv has none of the text columns (title) that the index or model it extends reads" in caplog.text
    with pytest.raises(DataError, match=r"field 'picture': image column not found"):
        finetune(tmp_path / "source", b_inter, catalog=b_cat, image_field="picture", split="random",
                 show_progress=False)
    # The catalog's text and a text .npy: refused, as `train` refuses it, not one of them dropped.
    np.save(tmp_path / "t.npy", np.ones((16, source.items.features["text"].shape[1]), np.float32))
    with pytest.raises(ConfigError, match=r"modalities \['text'\] come both from the catalog .*b\.csv \(encoded "
                                          r"with the source model's encoder\) and from --features"):
        finetune(tmp_path / "source", b_inter, catalog=b_cat, features={"text": tmp_path / "t.npy"}, split="random",
                 show_progress=False)


def test_index_add_is_quiet_when_asked(tmp_path, tiny_bert_dir, tiny_vit_dir, image_paths, capfd):
    shutil.copy(image_paths[0], tmp_path / "pic.jpg")
    cat = _catalog(tmp_path / "a.csv", [f"a{i}" for i in range(6)], ["cat", "dog"], image="pic.jpg")
    ItemIndex.build(cat, tmp_path / "idx", text_encoder=tiny_bert_dir, image_encoder=tiny_vit_dir, show_progress=False)
    new = _catalog(tmp_path / "b.csv", ["b0", "b1"], ["war", "toy"], image="pic.jpg")
    capfd.readouterr()
    assert ItemIndex.load(tmp_path / "idx", show_progress=False).add(new) == 2
    assert capfd.readouterr().err == ""  # no image-check (or any) progress bar


def test_fine_tuning_keeps_the_transferred_start_when_no_epoch_beats_it(small, tmp_path, monkeypatch):
    import copy

    from mmrec.train import Trainer

    d, b_inter, b_feats = small
    # Validation says the start (0.9) beats the one epoch (0.5): the start's weights must be kept.
    scores, start_weights = iter([0.9, 0.5]), []

    def validate(self, split="valid"):
        if not start_weights:
            start_weights.append(copy.deepcopy(self.model.state_dict()))
        r = next(scores)
        return {"recall@10": r, "recall@20": r, "ndcg@10": r, "ndcg@20": r}

    monkeypatch.setattr(Trainer, "validate", validate)
    rec, result, _ = finetune(d / "source", b_inter, features={"content": b_feats}, out=tmp_path / "ft",
                              config={"epochs": 1}, split="random", show_progress=False)
    assert result.history[0]["valid_recall@20"] == 0.5
    assert result.best_epoch == 0 and result.best_valid["recall@20"] == 0.9
    for name, value in rec.model.state_dict().items():
        torch.testing.assert_close(value, start_weights[0][name], rtol=0, atol=0)


def test_what_describes_the_source_data_is_not_inherited_and_the_source_is_always_reported(small, tmp_path, caplog):
    d, b_inter, b_feats = small
    inter_a, feats_a = write_planted(tmp_path)
    fit(inter_a, features={"content": feats_a}, out=tmp_path / "cold", split="random", show_progress=False,
        config=TrainConfig(**FAST, epochs=1, cold_start=0.25))
    with caplog.at_level(logging.INFO, logger="mmrec.transfer"):
        rec, _, _ = finetune(tmp_path / "cold", b_inter, features={"content": b_feats}, config={"epochs": 1},
                             split="random", show_progress=False)
    assert rec.config.cold_start == 0.0 and rec.cold_items == []  # every new item is trained on
    assert "the source model held 0.25 of its items out of training" in caplog.text
    asked, _, _ = finetune(tmp_path / "cold", b_inter, features={"content": b_feats},
                           config={"epochs": 1, "cold_start": 0.25}, split="random", show_progress=False)
    assert asked.config.cold_start == 0.25 and len(asked.cold_items) == 6  # 25% of 24
    # A split without validation rows: no start to validate, but the source is named all the same.
    rows = b_inter.read_text().splitlines()
    (tmp_path / "no_valid.tsv").write_text("\n".join([rows[0] + "\tsplit"] + [
        f"{r}\t{'test' if k % 5 == 0 else 'train'}" for k, r in enumerate(rows[1:])]) + "\n")
    finetune(d / "source", tmp_path / "no_valid.tsv", features={"content": b_feats}, out=tmp_path / "ft",
             config={"epochs": 1}, show_progress=False)
    report = json.loads((tmp_path / "ft" / "train_report.json").read_text())
    assert report["source"] == str(d / "source") and "start_valid" not in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_an_inherited_device_this_machine_lacks_says_where_it_came_from(small):
    d, b_inter, b_feats = small
    source = Recommender.load(d / "source", show_progress=False)
    source.config = dataclasses.replace(source.config, device="cuda")  # as trained on a GPU machine
    with pytest.raises(ConfigError, match=r"sees no CUDA GPU.*\(the device comes from the source's config.json: "
                                          r"--device cpu overrides it\)"):
        finetune(source, b_inter, features={"content": b_feats}, split="random", show_progress=False)
    rec, _, _ = finetune(source, b_inter, features={"content": b_feats}, config={"device": "cpu", "epochs": 1},
                         split="random", show_progress=False)
    assert rec.config.device == "cpu"


def test_finetune_refuses_what_the_interaction_header_refuses_before_encoding(small, monkeypatch):
    import mmrec.transfer

    d, b_inter, b_feats = small
    monkeypatch.setattr(mmrec.transfer, "source_content", lambda *a, **k: pytest.fail("encoded before refusing"))
    with pytest.raises(ConfigError, match="interactions.tsv: a temporal split .* needs a timestamp column"):
        finetune(d / "source", b_inter, features={"content": b_feats}, split="temporal", show_progress=False)
    with pytest.raises(ConfigError, match="factory 'bogus'"):
        finetune(d / "source", b_inter, features={"content": b_feats}, factory="bogus", show_progress=False)
    monkeypatch.undo()
    # Features of the wrong width are named from their header, before any encoding.
    monkeypatch.setattr(mmrec.transfer, "load_content", lambda *a, **k: pytest.fail("encoded before refusing"))
    np.save(d / "wide.npy", np.ones((24, 9), np.float32))
    with pytest.raises(ConfigError, match=r"'content' \(.*wide\.npy\) has width 9, the source model expects 4"):
        finetune(d / "source", b_inter, features={"content": d / "wide.npy"}, split="random", show_progress=False)


def test_an_inherited_setting_that_clashes_says_where_it_came_from(small):
    d, b_inter, b_feats = small
    src = Recommender.load(d / "source", show_progress=False)
    src.config = dataclasses.replace(src.config, ema=0.9)
    with pytest.raises(ConfigError, match=r"ema averages .*not 'top:1' \(--ema 0\.9 from the source's config\.json: "
                                          r"give another value to override it\)"):
        finetune(src, b_inter, features={"content": b_feats}, config={"finetune": "top:1"}, show_progress=False)


def test_no_user_kept_is_said_too(small, tmp_path, caplog):
    d, _, _ = small
    inter, feats = write_planted(tmp_path, users=12, items=16, seed=5)
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join([lines[0]] + ["v" + line[1:] for line in lines[1:]]) + "\n")  # users v0..v11: new
    with caplog.at_level("INFO", logger="mmrec.transfer"):
        finetune(d / "source", inter, features={"content": feats}, config={"epochs": 1}, split="random",
                 show_progress=False)
    assert "0 of 12 users keep their source embedding: no user id of the new data is the source's" in caplog.text
    assert "matched by id (pass --no-keep-users" not in caplog.text


def test_an_in_memory_source_with_tuned_encoders_is_refused_frozen_and_carried_when_tuned(tmp_path, tiny_bert_dir):
    # Its tuned encoder lives only in memory: a frozen fine-tune encoded with it but recorded the
    # untuned one, so the new model's queries used another encoder than its features came from.
    a_ids, b_ids = [f"a{i}" for i in range(20)], [f"new-{i}" for i in range(16)]
    a_cat = _catalog(tmp_path / "a.csv", a_ids, WORDS)
    a_inter = _catalog_interactions(tmp_path / "a.tsv", a_ids, [f"u{i}" for i in range(12)], 6, seed=0)
    src, _, _ = fit(a_inter, catalog=a_cat, out=None, text_encoder=tiny_bert_dir, cache_dir=None, split="random",
                    config=TrainConfig(**(FAST | {"lr": 0.5}), epochs=1, finetune="top:1"), show_progress=False)
    b_cat = _catalog(tmp_path / "b.csv", b_ids, WORDS[::-1])
    b_inter = _catalog_interactions(tmp_path / "b.tsv", b_ids, [f"v{i}" for i in range(10)], 5, seed=1)
    with pytest.raises(ConfigError, match=r"tuned its text encoder in memory .* train the source with out=DIR"):
        finetune(src, b_inter, catalog=b_cat, out=tmp_path / "ft", config={"finetune": "frozen", "epochs": 1},
                 split="random", show_progress=False)
    assert not (tmp_path / "ft").exists()
    # Tuned again here, the encoder that made the features is the one saved and queried.
    rec, _, _ = finetune(src, b_inter, catalog=b_cat, out=tmp_path / "ft", config={"epochs": 1}, split="random",
                         show_progress=False)
    texts = [it["fields"]["title"] for it in rec.items.items]
    for r in (rec, Recommender.load(tmp_path / "ft", show_progress=False)):
        np.testing.assert_allclose(r.items.encoders.get("text").encode(texts), r.items.features["text"], atol=1e-5)


def test_an_inherited_encoder_mode_and_a_cache_inside_the_source_are_refused_by_name(tmp_path, tiny_bert_dir):
    a_ids, b_ids = [f"a{i}" for i in range(20)], [f"new-{i}" for i in range(16)]
    a_inter = _catalog_interactions(tmp_path / "a.tsv", a_ids, [f"u{i}" for i in range(12)], 6, seed=0)
    fit(a_inter, catalog=_catalog(tmp_path / "a.csv", a_ids, WORDS), out=tmp_path / "src", text_encoder=tiny_bert_dir,
        cache_dir=None, split="random", config=TrainConfig(**FAST, epochs=1, finetune="top:1"), show_progress=False)
    b_cat = _catalog(tmp_path / "b.csv", b_ids, WORDS[::-1])
    b_inter = _catalog_interactions(tmp_path / "b.tsv", b_ids, [f"v{i}" for i in range(10)], 5, seed=1)
    # a feature cache inside the source: its folder there blocked every later change of the source
    with pytest.raises(MMRecError, match=r"the feature cache .*src.* is inside the index directory"):
        finetune(tmp_path / "src", b_inter, catalog=b_cat, out=tmp_path / "ft", cache_dir=tmp_path / "src" / "c",
                 config={"epochs": 1}, split="random", show_progress=False)
    assert not (tmp_path / "src" / "c").exists() and not (tmp_path / "ft").exists()
    # precomputed text features cannot take the source's top:1, which the user never gave
    (tmp_path / "ids.csv").write_text("item_id\n" + "".join(f"{i}\n" for i in b_ids))
    text = _save(tmp_path, "b_text.npy", np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32))
    with pytest.raises(ConfigError, match=r"finetune 'top:1' needs features computed by mmrec's encoders.*\(--finetune "
                                          r"top:1 comes from the source's config\.json: --finetune frozen overrides it\)"):
        finetune(tmp_path / "src", b_inter, catalog=tmp_path / "ids.csv", features={"text": text}, out=tmp_path / "ft",
                 config={"epochs": 1}, split="random", show_progress=False)
    with pytest.raises(ConfigError, match=r"precomputed \.npy features \(text\) cannot be fine-tuned$"):  # asked for
        finetune(tmp_path / "src", b_inter, catalog=tmp_path / "ids.csv", features={"text": text}, out=tmp_path / "ft",
                 config={"epochs": 1, "finetune": "top:1"}, split="random", show_progress=False)


def test_an_inherited_encoder_mode_with_the_encoded_modality_absent_says_so(tmp_path, tiny_bert_dir):
    # The source's text is absent from the new data (masked), its tuning inherited: the refusal called
    # text a precomputed .npy feature.
    a_ids, b_ids = [f"a{i}" for i in range(20)], [f"new-{i}" for i in range(16)]
    a_inter = _catalog_interactions(tmp_path / "a.tsv", a_ids, [f"u{i}" for i in range(12)], 6, seed=0)
    rng = np.random.default_rng(0)
    fit(a_inter, catalog=_catalog(tmp_path / "a.csv", a_ids, WORDS), out=tmp_path / "src", text_encoder=tiny_bert_dir,
        features={"feat": _save(tmp_path, "a.npy", rng.normal(size=(20, 4)).astype(np.float32))}, cache_dir=None,
        split="random", config=TrainConfig(**FAST, epochs=1, finetune="top:1"), show_progress=False)
    b_inter = _catalog_interactions(tmp_path / "b.tsv", b_ids, [f"v{i}" for i in range(10)], 5, seed=1)
    (tmp_path / "ids.csv").write_text("item_id\n" + "".join(f"{i}\n" for i in b_ids))
    with pytest.raises(ConfigError, match=r"precomputed \.npy features \(feat\) cannot be fine-tuned, and the new data "
                                          r"has no text to encode \(masked for every item\) \(--finetune top:1 comes"):
        finetune(tmp_path / "src", b_inter, catalog=tmp_path / "ids.csv", out=tmp_path / "ft", config={"epochs": 1},
                 features={"feat": _save(tmp_path, "b.npy", rng.normal(size=(16, 4)).astype(np.float32))},
                 split="random", show_progress=False)


def test_finetune_skips_invalid_rows_as_train_does_and_records_it(tmp_path, tiny_bert_dir, caplog, capsys):
    from mmrec.pipeline import evaluate_directory

    a_ids, b_ids = [f"a{i}" for i in range(20)], [f"new-{i}" for i in range(16)]
    a_inter = _catalog_interactions(tmp_path / "a.tsv", a_ids, [f"u{i}" for i in range(12)], 6, seed=0)
    fit(a_inter, catalog=_catalog(tmp_path / "a.csv", a_ids, WORDS), out=tmp_path / "source", cache_dir=None,
        text_encoder=tiny_bert_dir, config=TrainConfig(**FAST, epochs=1), split="random", show_progress=False)
    _catalog(tmp_path / "b.csv", b_ids, WORDS[::-1])
    with open(tmp_path / "b.csv", "a") as f:
        f.write("bad-1,\n")  # no text: an invalid row, whose interactions must go too
    b_inter = _catalog_interactions(tmp_path / "b.tsv", b_ids + ["bad-1"], [f"v{i}" for i in range(10)], 6, seed=1)
    with pytest.raises(DataError, match=r"row 17: no text in title"):
        finetune(tmp_path / "source", b_inter, catalog=tmp_path / "b.csv", split="random", show_progress=False)
    assert main(["finetune", "--from", str(tmp_path / "source"), "--catalog", str(tmp_path / "b.csv"),
                 "--interactions", str(b_inter), "--out", str(tmp_path / "ft"), "--epochs", "1", "--split", "random",
                 "--skip-invalid", "-q"]) == 0
    assert f"(skipped catalog rows and left-out images listed in {tmp_path / 'ft' / 'skipped.jsonl'})" in \
        capsys.readouterr().out
    back = Recommender.load(tmp_path / "ft", show_progress=False)
    assert back.skip_invalid and back.skipped_items == ["bad-1"] and "bad-1" not in back.items.ids
    report = json.loads((tmp_path / "ft" / "train_report.json").read_text())
    assert report["data"]["unknown_items"] == sum(line.endswith("\tbad-1") for line in b_inter.read_text().splitlines())
    assert evaluate_directory(back, b_inter, split="test")["rows_invalid_skipped"] == report["data"]["unknown_items"]
    # A larger learning rate than the source's is warned about (it can leave the transferred start).
    with caplog.at_level("WARNING", logger="mmrec.transfer"):
        finetune(tmp_path / "source", b_inter, catalog=tmp_path / "b.csv", split="random", show_progress=False,
                 skip_invalid=True, config={"lr": FAST["lr"] * 10, "epochs": 1})
    assert f"fine-tuning at lr {FAST['lr'] * 10:g}, above the source model's {FAST['lr']:g}" in caplog.text


def test_a_source_that_encoded_none_of_its_catalog_text_leaves_the_new_catalog_text_out(tmp_path, caplog):
    # A source trained on a catalog with --text-encoder none and --features refused that same catalog
    # ("has modalities ['text'] that the source model was never trained with").
    inter, feats = write_planted(tmp_path, users=12, items=16, seed=5)
    with open(tmp_path / "items.csv", "w", newline="") as f:
        csv.writer(f).writerows([["item_id", "title"]] + [[i, f"item {i}"] for i in range(16)])
    quiet = {"show_progress": False}
    fit(inter, catalog=tmp_path / "items.csv", features={"content": feats}, text_encoder=None,
        out=tmp_path / "src", config=TrainConfig(**FAST, epochs=1), **quiet)
    with caplog.at_level("INFO", logger="mmrec.transfer"):
        rec, _, _ = finetune(tmp_path / "src", inter, catalog=tmp_path / "items.csv", features={"content": feats},
                             config={"epochs": 1}, **quiet)
    assert "trained without its catalog's text (encoder none)" in caplog.text
    assert list(rec.model.modality_dims) == ["content"] and rec.items.fields(3)["title"] == "item 3"
    # A source that read no catalog still refuses one with text: it may be a modality the user wants learned.
    fit(inter, features={"content": feats}, out=tmp_path / "bare", config=TrainConfig(**FAST, epochs=1), **quiet)
    with pytest.raises(ConfigError, match=r"\['text'\] that the source model was never trained with"):
        finetune(tmp_path / "bare", inter, catalog=tmp_path / "items.csv", features={"content": feats}, **quiet)


def test_a_source_that_encoded_none_of_its_catalog_images_checks_rows_for_text(tmp_path, tiny_bert_dir, image_paths,
                                                                               caplog):
    # A source trained with --image-encoder none on a catalog with an image column: the new catalog's
    # images are left out, so a row with an image and no text has no content, and is refused as
    # `train --image-encoder none` refuses it (it was accepted, then trained as an item with nothing).
    _source_with_pictures(tmp_path, tiny_bert_dir, image_paths, None)
    b_cat, b_inter = _new_catalog(tmp_path, image="pic.jpg", extra_row="pic-only,,pic.jpg")  # file row 17
    with pytest.raises(DataError, match=r"row 17: no text in title"):
        fit(b_inter, catalog=b_cat, text_encoder=tiny_bert_dir, image_encoder=None, cache_dir=None,
            config=TrainConfig(**FAST, epochs=1), split="random", show_progress=False)
    with pytest.raises(DataError, match=r"row 17: no text in title"):
        finetune(tmp_path / "source", b_inter, catalog=b_cat, config={"epochs": 1}, split="random",
                 show_progress=False)
    with caplog.at_level(logging.INFO, logger="mmrec.transfer"):
        rec, _, _ = finetune(tmp_path / "source", b_inter, catalog=b_cat, config={"epochs": 1}, split="random",
                             skip_invalid=True, show_progress=False)
    assert rec.skipped_items == ["pic-only"] and list(rec.model.modality_dims) == ["text"]
    assert "trained without its catalog's image (encoder none): the new catalog's image is not encoded either" \
        in caplog.text


def test_a_modality_features_supply_never_opens_the_new_catalogs_images(tmp_path, tiny_bert_dir, image_paths):
    # A source trained on a catalog with an image column, --image-encoder none and --features image=...:
    # fine-tuning with --features image=... takes the image vectors from the .npy, as `train` does, so the
    # new catalog's image cells are not opened (a missing file stopped finetune, and train accepted it).
    rng = np.random.default_rng(0)
    np.save(tmp_path / "fa.npy", rng.normal(size=(20, 6)).astype(np.float32))
    _source_with_pictures(tmp_path, tiny_bert_dir, image_paths, None, features={"image": tmp_path / "fa.npy"})
    # file row 17: its image is never read
    b_cat, b_inter = _new_catalog(tmp_path, image="pic.jpg", extra_row="bad-pic,war,missing.jpg")
    np.save(tmp_path / "fb.npy", rng.normal(size=(17, 6)).astype(np.float32))
    trained, _, _ = fit(b_inter, catalog=b_cat, out=tmp_path / "direct", text_encoder=tiny_bert_dir,
                        image_encoder=None, features={"image": tmp_path / "fb.npy"}, cache_dir=None,
                        config=TrainConfig(**FAST, epochs=1), split="random", show_progress=False)
    rec, _, _ = finetune(tmp_path / "source", b_inter, catalog=b_cat, features={"image": tmp_path / "fb.npy"},
                         config={"epochs": 1}, split="random", show_progress=False)
    assert sorted(rec.model.modality_dims) == sorted(trained.model.modality_dims) == ["image", "text"]
    assert "bad-pic" in rec.items.ids and "bad-pic" in trained.items.ids


def test_an_item_with_nothing_to_place_it_by_is_named_with_its_feature_file(tmp_path):
    # finetune's error named the file "None" (its content reaches fit without the file names)
    inter, feats = write_planted(tmp_path, users=16, items=12, per_user=4)
    fit(inter, features={"content": feats}, out=tmp_path / "m", config=TrainConfig(**FAST, epochs=1),
        split="random", show_progress=False)
    x = np.load(feats)
    np.save(tmp_path / "g.npy", np.concatenate([x, np.zeros((1, x.shape[1]), np.float32)]))  # item 12: no content
    with pytest.raises(DataError, match=rf"^{tmp_path / 'g.npy'}: item 12 has no content \(every modality missing: "
                                        r"content\) and no training interaction"):
        finetune(tmp_path / "m", inter, features={"content": tmp_path / "g.npy"}, out=tmp_path / "ft",
                 config={"epochs": 1}, split="random", show_progress=False)
    assert not (tmp_path / "ft").exists()
