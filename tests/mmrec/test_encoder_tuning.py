"""Encoder fine-tuning (``finetune=top:N|full``): which weights train, what a step feeds the model,
the per-epoch refresh, best-state round trip, and a trained directory that queries with the tuned
encoders. Tiny random encoders; the packaged EfficientNet-Lite0 once for the bundled weights file."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from encoders.text import TextEncoder
from mmrec.config import TrainConfig
from mmrec.encoder_tuning import EncoderTuner
from mmrec.errors import ConfigError
from mmrec.item_index import Encoders
from mmrec.pipeline import fit, load_content
from mmrec.recommender import Recommender
from tests.mmrec.conftest import write_planted

FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, reg=1e-4)
WORDS = ["cat", "dog", "space", "war", "love", "city", "toy", "boy", "police", "night", "music", "house"]


def write_catalog(directory, image_paths, n: int = 24, image_every: int = 1):
    """``n`` items with two-word titles; images (copied next to the catalog) on every ``image_every``-th
    item, none on items 3, 7, 11, ...; item 5 has an image but no text."""
    for p in image_paths:
        shutil.copy(p, directory)
    names = [p.rsplit("/", 1)[1] for p in image_paths]
    rows = []
    for i in range(n):
        title = "" if i == 5 else f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]} film"
        image = names[i % len(names)] if i % image_every == 0 and i % 4 != 3 else ""
        rows.append({"item_id": i, "title": title, "image": image})
    path = directory / "items.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["item_id", "title", "image"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def content(tmp_path, tiny_bert_dir, tiny_vit_dir, image_paths):
    path = write_catalog(tmp_path, image_paths)
    return load_content(path, None, text_encoder=tiny_bert_dir, image_encoder=tiny_vit_dir, cache_dir=None,
                        show_progress=False)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**(FAST | {"epochs": 2} | kw))


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _names(model: torch.nn.Module, *modules: torch.nn.Module) -> set[str]:
    ids = {id(p) for m in modules for p in m.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_top1_trains_exactly_the_last_layer_and_what_follows(content):
    tuner = EncoderTuner(content, _cfg(finetune="top:1"), show_progress=False)
    assert repr(tuner) == "EncoderTuner('top:1', modalities=['text', 'image'], max_items=32)"
    bert = content.encoder_objects["text"].model
    # Mean pooling reads the last hidden states: nothing after the last layer (the pooler is unused).
    assert _trainable(bert) == _names(bert, bert.encoder.layer[-1])
    assert sum(p.numel() for p in bert.parameters() if p.requires_grad) == 8544  # 4*(32*32+32) + 2*(32*64) + 64 + 32 + 4*32
    vit = content.encoder_objects["image"].model.tower
    assert _trainable(vit) == _names(vit, vit.layers[-1], vit.layernorm, vit.pooler)
    assert len(_trainable(vit)) == 16 + 2 + 2
    groups = tuner.param_groups()
    assert [g["lr"] for g in groups] == [pytest.approx(0.05 * 0.1)] * 2
    assert [sum(p.numel() for p in g["params"]) for g in groups] == [8544, 8544 + 64 + 32 * 32 + 32]


def test_full_trains_every_used_parameter(content):
    EncoderTuner(content, _cfg(finetune="full"), show_progress=False)
    bert = content.encoder_objects["text"].model
    assert _trainable(bert) == {n for n, _ in bert.named_parameters() if not n.startswith("pooler.")}
    vit = content.encoder_objects["image"].model
    assert _trainable(vit) == {n for n, _ in vit.named_parameters()}  # saved with its pooler: used


def test_bad_modes_and_sources_are_config_errors(tmp_path, content):
    with pytest.raises(ConfigError, match="cannot fine-tune the top 3 layers, the text model has 2"):
        EncoderTuner(content, _cfg(finetune="top:3"), show_progress=False)
    for mode in ("top:0", "top:x", "partial", "top:"):
        with pytest.raises(ConfigError, match=f"finetune must be frozen, top:N .* got '{mode}'"):
            TrainConfig(finetune=mode)
    with pytest.raises(ConfigError, match="'frozen': there is nothing to fine-tune"):
        EncoderTuner(content, _cfg(), show_progress=False)
    inter, feats = write_planted(tmp_path)
    npy = load_content(None, {"content": feats}, show_progress=False)
    with pytest.raises(ConfigError, match=r"precomputed \.npy features \(content\) cannot be fine-tuned"):
        EncoderTuner(npy, _cfg(finetune="full"), show_progress=False)
    with pytest.raises(ConfigError, match="precomputed"):  # through fit, before any training
        fit(inter, features={"content": feats}, config=_cfg(finetune="top:1"), split="random", show_progress=False)


def test_step_features_rows_equal_encode_and_carry_gradients(content):
    enc = content.encoder_objects["text"]
    tuner = EncoderTuner(content, _cfg(finetune="top:1"), max_items=3, show_progress=False)
    n = len(content.catalog)
    features = {m: torch.zeros(n, x.shape[1]) for m, x in content.features.items()}  # stale rows stand out
    features["other"] = torch.ones(n, 2)
    items = np.array([0, 1, 2, 5, 9, 14, 20])  # item 5 has no text
    out = tuner.step_features(items, features)
    assert out["other"] is features["other"] and features["text"].abs().sum() == 0  # inputs untouched
    changed = np.flatnonzero(out["text"].detach().abs().sum(1).numpy())
    assert len(changed) == 3 and set(changed) <= {0, 1, 2, 9, 14, 20}
    texts = [content.catalog.texts[i] for i in changed]
    np.testing.assert_allclose(out["text"][changed].detach().numpy(), enc.encode(texts), atol=1e-6)
    np.testing.assert_allclose(out["text"][changed].detach().numpy(), content.features["text"][changed], atol=1e-6)
    images = np.flatnonzero(out["image"].detach().abs().sum(1).numpy())
    assert len(images) == 3 and content.present["image"][images].all() and set(images) <= set(items)
    (out["text"].sum() + out["image"].sum()).backward()
    bert = enc.model
    grads = {n: p.grad for n, p in bert.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in _trainable(bert))
    assert all(g is None for n, g in grads.items() if n not in _trainable(bert))
    # Seeded: a second tuner samples the same rows.
    again = EncoderTuner(content, _cfg(finetune="top:1"), max_items=3, show_progress=False)
    redo = again.step_features(items, {m: torch.zeros_like(x) for m, x in features.items()})
    np.testing.assert_array_equal(np.flatnonzero(redo["text"].detach().abs().sum(1).numpy()), changed)


def test_end_epoch_refreshes_features_in_place_and_state_round_trips(content):
    tuner = EncoderTuner(content, _cfg(finetune="top:1"), show_progress=False)
    features = {m: torch.from_numpy(x.copy()) for m, x in content.features.items()}
    before = {m: x.clone() for m, x in features.items()}
    state = {m: {k: v.clone() for k, v in s.items()} for m, s in tuner.state_dict().items()}
    with torch.no_grad():
        for ps in tuner.params.values():
            for p in ps.values():
                p.add_(0.05 * torch.randn_like(p))
    ptrs = {m: x.data_ptr() for m, x in features.items()}
    tuner.end_epoch(features)
    assert {m: x.data_ptr() for m, x in features.items()} == ptrs
    text_rows = np.flatnonzero(content.present["text"])
    want = content.encoder_objects["text"].encode([content.catalog.texts[i] for i in text_rows])
    np.testing.assert_allclose(features["text"][text_rows].numpy(), want, atol=1e-6)
    assert not np.allclose(features["text"][text_rows].numpy(), before["text"][text_rows].numpy(), atol=1e-3)
    assert features["text"][5].abs().sum() == 0  # no text: stays a zero row
    img_rows = np.flatnonzero(content.present["image"])
    want = content.encoder_objects["image"].encode_paths([content.catalog.images[i] for i in img_rows])
    np.testing.assert_allclose(features["image"][img_rows].numpy(), want, atol=1e-6)
    assert (features["image"][~torch.from_numpy(content.present["image"])] == 0).all()
    # Restoring the saved state brings the original features back.
    tuner.load_state_dict(state)
    tuner.end_epoch(features)
    for m in features:
        np.testing.assert_allclose(features[m].numpy(), before[m].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="does not match the tuned parameters"):
        tuner.load_state_dict({"text": state["text"]})


def test_fit_top1_saves_and_queries_with_the_tuned_encoders(tmp_path, content, tiny_bert_dir, tiny_vit_dir,
                                                             image_paths):
    inter, _ = write_planted(tmp_path, users=32, items=24, per_user=6)
    start = {m: {n: p.detach().clone() for n, p in e.model.named_parameters()}
             for m, e in content.encoder_objects.items()}
    cfg = _cfg(finetune="top:1")
    rec, result, _ = fit(inter, content=content, out=tmp_path / "model", config=cfg, split="random",
                         show_progress=False)
    assert len(result.history) == 2
    tuned = content.encoder_objects
    for m, e in tuned.items():  # trainable weights moved, frozen ones did not
        trainable = _trainable(e.model)
        for n, p in e.model.named_parameters():
            same = torch.equal(p.detach(), start[m][n])
            assert same != (n in trainable), (m, n)

    d = tmp_path / "model"
    manifest = json.loads((d / "manifest.json").read_text())
    text_spec, image_spec = manifest["encoders"]["text"], manifest["encoders"]["image"]
    assert text_spec["model"] == "encoders/text" and text_spec["bundled"] and text_spec["finetune"] == "top:1"
    assert image_spec["model"] == "encoders/image" and image_spec["bundled"]
    assert text_spec["tuned_from"]["model"] == str(tiny_bert_dir)
    assert (d / "encoders" / "text" / "config.json").is_file() and (d / "encoders" / "image" / "config.json").is_file()
    assert text_spec["identity"] != text_spec["tuned_from"]["identity"]

    back = Recommender.load(d, show_progress=False)
    query = "cat space film"
    loaded = back.items.encoders.get("text")
    q = loaded.encode([query])
    np.testing.assert_allclose(q, tuned["text"].encode([query]), atol=1e-6)
    assert not np.allclose(q, TextEncoder(tiny_bert_dir, show_progress=False).encode([query]), atol=1e-3)
    # The stored item features are the tuned encoder's, so queries and items share one space.
    np.testing.assert_allclose(back.items.features["text"][:5], tuned["text"].encode(content.catalog.texts[:5]),
                               atol=1e-6)
    got = back.search_text(query, 5)
    want = back.items._search_query(back.items.query_vector("text", tuned["text"].encode([query])), 5)
    assert [r.item_id for r in got] == [r.item_id for r in want]
    np.testing.assert_allclose([r.score for r in got], [r.score for r in want], rtol=1e-5)
    img = back.items.encoders.get("image").encode_paths(image_paths[:2])
    np.testing.assert_allclose(img, tuned["image"].encode_paths(image_paths[:2]), atol=1e-6)
    # The tuned encoders in memory answer to the saved copies' identities (their feature-cache
    # key), never to the pretrained encoders' (whose cached features they no longer produce).
    for m in ("text", "image"):
        assert tuned[m].identity == back.items.encoders.get(m).identity == manifest["encoders"][m]["identity"]
        assert tuned[m].cache_identity == getattr(back.items.encoders.get(m), "cache_identity", tuned[m].identity)
    assert tuned["text"].identity != TextEncoder(tiny_bert_dir, show_progress=False).identity


def test_a_tuned_encoder_in_memory_never_shares_the_pretrained_feature_cache(tmp_path, content, tiny_bert_dir):
    inter, _ = write_planted(tmp_path, users=32, items=24, per_user=6)
    pretrained = TextEncoder(tiny_bert_dir, show_progress=False)
    rec, _, _ = fit(inter, content=content, config=_cfg(finetune="top:1"), split="random", show_progress=False)
    tuned = rec.items.encoders.get("text")
    assert tuned.identity.startswith(pretrained.identity + ":tuned-") and tuned.cache_identity == tuned.identity
    # An item added with a cache: encoded by the tuned encoder, and the cache's pretrained
    # entries neither serve it nor receive its features.
    cache = tmp_path / "cache"
    new = tmp_path / "new.csv"
    new.write_text("item_id,title\n100,cat dog film\n")
    from mmrec.item_index import ItemIndex

    ItemIndex.build(new, text_encoder=tiny_bert_dir, image_encoder=None, cache_dir=cache, show_progress=False)
    assert rec.items.add(new, cache_dir=cache) == 1
    np.testing.assert_allclose(rec.items.features["text"][-1], tuned.encode(["cat dog film"])[0], atol=1e-6)
    fresh = ItemIndex.build(new, text_encoder=tiny_bert_dir, image_encoder=None, cache_dir=cache, show_progress=False)
    np.testing.assert_allclose(fresh.features["text"][0], pretrained.encode(["cat dog film"])[0], atol=1e-6)


def test_bundled_weights_file_of_efficientnet_round_trips(tmp_path, image_paths):
    path = write_catalog(tmp_path, image_paths[:3], n=3, image_every=1)  # every item has an image
    content = load_content(path, None, text_encoder="none", image_encoder="default", cache_dir=None,
                           show_progress=False)
    tuner = EncoderTuner(content, _cfg(finetune="top:1"), show_progress=False)
    net = content.encoder_objects["image"].model.net
    last = _names(net, net._blocks[-1])
    assert _trainable(net) == last | {"_conv_head.weight", "_bn1.weight", "_bn1.bias"} and len(last) == 9
    with torch.no_grad():
        for p in tuner.params["image"].values():
            p.mul_(1.05)
    specs = tuner.save(tmp_path / "model" / "encoders")
    spec = specs["image"]
    assert {k: spec[k] for k in ("model", "architecture", "weights", "bundled")} == {
        "model": "encoders/image", "architecture": "efficientnet-lite0", "weights": "weights.pt", "bundled": True}
    assert (tmp_path / "model" / "encoders" / "image" / "weights.pt").is_file()
    assert spec["tuned_from"]["model"] == "default" and spec["dim"] == 1280
    back = Encoders(specs, show_progress=False, root=tmp_path / "model").get("image")  # identity checked there
    np.testing.assert_allclose(back.encode_paths(image_paths[:2]),
                               content.encoder_objects["image"].encode_paths(image_paths[:2]), atol=1e-5)
    with pytest.raises(ConfigError, match="stored in the model directory, which is unknown"):
        Encoders(specs, show_progress=False).get("image")


@pytest.mark.parametrize("kind", ["bert", "clip"])
def test_top_layers_from_cached_states_equal_the_full_encoder_with_gradients(kind, tiny_bert_dir, tiny_clip_text_dir):
    texts = ["cat dog film", "space war love city toy boy police night music house", "", "dog"]
    full = TextEncoder(tiny_bert_dir if kind == "bert" else tiny_clip_text_dir, show_progress=False)
    fast = TextEncoder(tiny_bert_dir if kind == "bert" else tiny_clip_text_dir, show_progress=False)
    prefix = fast.prefix_states(texts, 1)
    assert [s.shape[0] for s in prefix.states] == [len(t) for t in prefix.ids]
    rows = [3, 1, 0]  # any subset, any order: padded to its own longest text
    params = [dict(enc.model.named_parameters()) for enc in (full, fast)]
    for enc in (full, fast):  # as top:1 fine-tuning sets them
        enc.model.requires_grad_(False)
        for p in enc.tunable_parameters(1):
            p.requires_grad_(True)
    want = full.embed_trainable([texts[i] for i in rows])
    got = fast.embed_from_prefix(prefix, rows)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    (want * torch.arange(want.numel()).view_as(want)).sum().backward()
    (got * torch.arange(got.numel()).view_as(got)).sum().backward()
    names = [n for n, p in params[0].items() if p.grad is not None]
    assert names and all(params[1][n].grad is not None for n in names)
    for n in names:
        torch.testing.assert_close(params[1][n].grad, params[0][n].grad, atol=1e-6, rtol=1e-4)
    # the layer list is whole again afterwards
    assert len(fast.blocks()) == len(full.blocks())
    with pytest.raises(ValueError, match="cannot start from the top 9 layers"):
        fast.prefix_states(texts, 9)
    with pytest.raises(ValueError, match=r"states would take \d+ MB \(limit 0 MB\)"):
        fast.prefix_states(texts, 1, max_bytes=0)
    np.testing.assert_allclose(fast.encode_from_prefix(prefix), full.encode(texts), atol=1e-6, rtol=1e-5)


def test_tuner_with_cached_frozen_layers_trains_exactly_as_without(content):
    cfg = _cfg(finetune="top:1", seed=3)
    runs = []
    for budget in (0, 1 << 30):
        fresh = load_content(content.catalog, None, loaded_encoders={
            m: (TextEncoder(content.encoders["text"]["model"], show_progress=False), content.encoders["text"])
            for m in ("text",)}, cache_dir=None, show_progress=False)
        tuner = EncoderTuner(fresh, cfg, show_progress=False, max_prefix_bytes=budget)
        assert ("text" in tuner.prefix) == (budget > 0)
        feats = {"text": torch.from_numpy(fresh.features["text"].copy())}
        items = np.arange(0, 24, 2)
        out = tuner.step_features(items, feats)
        loss = out["text"].pow(2).sum() + out["text"][:, 0].sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in tuner.params["text"].items() if p.grad is not None}
        with torch.no_grad():
            for p in tuner.params["text"].values():
                p.add_(0.01 * torch.ones_like(p))  # a step that changes the top layer
        tuner.end_epoch(feats)
        runs.append((out["text"].detach(), grads, feats["text"].clone()))
    (a, ga, fa), (b, gb, fb) = runs
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    assert ga.keys() == gb.keys() and ga
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(fb, fa, atol=1e-6, rtol=1e-5)  # the per-epoch refresh too


def test_cached_path_refuses_items_without_text_and_falls_back_when_a_model_cannot_run_from_states(
        content, monkeypatch):
    tuner = EncoderTuner(content, _cfg(finetune="top:1"), show_progress=False)
    assert "text" in tuner.prefix
    with pytest.raises(ValueError, match=r"items \[5\] have no text"):  # item 5 has an image but no text
        tuner.embed("text", np.array([4, 5]))

    def cannot(self, prefix, rows):  # as ELECTRA's embeddings projection fails on hidden-size states
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(TextEncoder, "embed_from_prefix", cannot)
    plain = EncoderTuner(content, _cfg(finetune="top:1"), show_progress=False)
    assert plain.prefix == {}
    got = plain.embed("text", np.array([0, 1]))
    assert got.shape == (2, content.features["text"].shape[1]) and got.requires_grad


def test_cached_path_is_checked_on_the_longest_text(tmp_path, tiny_bert_dir, monkeypatch):
    # A model whose cached path goes wrong only on long inputs must not be trusted: the check
    # before the cache is used covers the shortest and the longest text, not the first few.
    titles = [f"{WORDS[i]} film" for i in range(11)] + [" ".join(WORDS * 3)]  # the last is the longest
    (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"{i},{t}\n" for i, t in enumerate(titles)))
    long_text = load_content(tmp_path / "items.csv", None, text_encoder=tiny_bert_dir, image_encoder=None,
                             cache_dir=None, show_progress=False)
    assert "text" in EncoderTuner(long_text, _cfg(finetune="top:1"), show_progress=False).prefix
    real = TextEncoder.embed_from_prefix

    def wrong_when_long(self, prefix, rows):
        out = real(self, prefix, rows)
        longest = max(len(t) for t in prefix.ids)
        off = torch.tensor([float(len(prefix.ids[i]) == longest) for i in rows])  # [B]
        return out + off.unsqueeze(1).to(out)  # off by one in every coordinate of the longest text

    monkeypatch.setattr(TextEncoder, "embed_from_prefix", wrong_when_long)
    assert EncoderTuner(long_text, _cfg(finetune="top:1"), show_progress=False).prefix == {}


def test_a_seed_gives_the_same_model_whether_the_feature_cache_is_empty_or_full(tmp_path, tiny_bert_dir,
                                                                                 tiny_vit_dir, image_paths):
    # Encoding images on a cache miss draws from torch's generator (a DataLoader seeds its
    # workers from it): training must be seeded after the content is loaded.
    path = write_catalog(tmp_path, image_paths)
    inter, _ = write_planted(tmp_path, users=24, items=24)
    runs = []
    for _ in range(2):  # the first run fills the cache, the second reads it
        rec, _, test = fit(inter, catalog=path, config=_cfg(epochs=2), split="random", cache_dir=tmp_path / "cache",
                           text_encoder=tiny_bert_dir, image_encoder=tiny_vit_dir, show_progress=False)
        runs.append((rec.user_vectors.copy(), test))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
