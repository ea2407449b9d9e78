"""Explanations: attention weights, history contributions, per-modality neighbours, CLI output."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mmrec.cli import main
from mmrec.config import TrainConfig
from mmrec.errors import ConfigError, MMRecError
from mmrec.explain import (
    attention_weights,
    display_name,
    explain_item,
    explain_recommendations,
    modality_neighbours,
    title_field,
    why_line,
)
from mmrec.item_index import ItemIndex
from mmrec.pipeline import fit
from mmrec.recommender import Recommender
from tests.mmrec.conftest import write_planted

FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=64, epochs=3, patience=3, reg=1e-4, seed=0)
NO_TEXT = 5  # the planted item whose text is removed in the trained model


def hand_built() -> ItemIndex:
    """Four items, text and image, weights text 3 : image 1; "n" has no image, "t" no text."""
    text = np.array([[1, 0], [1, 0], [0.6, 0.8], [0, 0]], np.float32)
    image = np.array([[1, 0], [0, 1], [0, 0], [0, 1]], np.float32)
    present = {"text": np.array([True, True, True, False]), "image": np.array([True, True, False, True])}
    records = [{"title": f"Item {i}"} for i in "xynt"]
    return ItemIndex.from_features(["x", "y", "n", "t"], {"text": text, "image": image}, present, records,
                                   factory="Flat", weights={"text": 3.0, "image": 1.0}, show_progress=False)


def brute_cosine_ranking(x: np.ndarray, has: np.ndarray, row: int) -> list[tuple[int, float]]:
    """Every other item with the modality, by cosine to ``row``, computed pair by pair in Python."""
    def cos(a, b):
        a, b = [float(v) for v in a], [float(v) for v in b]
        return sum(p * q for p, q in zip(a, b)) / math.sqrt(sum(p * p for p in a) * sum(q * q for q in b))

    pairs = [(j, cos(x[row], x[j])) for j in range(len(x)) if has[j] and j != row]
    return sorted(pairs, key=lambda p: -p[1])


# --- content index -------------------------------------------------------------------------
def test_attention_weights_are_the_fixed_shares_and_zero_for_a_removed_modality():
    idx = hand_built()
    assert attention_weights(idx, "x") == {"text": 0.75, "image": 0.25}
    assert attention_weights(idx, "n") == {"text": 1.0, "image": 0.0}
    got = attention_weights(idx, "t")  # its text removed
    assert got == {"text": 0.0, "image": 1.0} and got["text"] == 0.0


def test_similar_explanations_give_attention_and_per_modality_cosines():
    rec = Recommender(hand_built())
    res = rec.similar("x", k=3, explain=True)
    assert [r.item_id for r in res] == ["y", "n", "t"]  # 0.75 * 1 ; 0.75 * 0.6 ; 0.25 * 0
    got = {r.item_id: r.explanation for r in res}
    assert got["y"] == {"attention": {"text": 0.75, "image": 0.25}, "modality_similarity": {"text": 1.0, "image": 0.0}}
    assert got["n"] == {"attention": {"text": 1.0, "image": 0.0}, "modality_similarity": {"text": 0.6}}
    assert got["t"] == {"attention": {"text": 0.0, "image": 1.0}, "modality_similarity": {"image": 0.0}}
    assert res[0].to_dict()["explanation"] == got["y"]
    assert "explanation" not in rec.similar("x", k=1)[0].to_dict()  # only when asked for
    assert why_line(got["n"]) == "text 1.00, image 0.00; text sim 0.60"


def test_why_line_for_a_recommendation():
    e = {"attention": {"text": 0.62, "id": 0.38},
         "history": [{"item_id": 1, "name": "Heat (1995)", "similarity": 2.0},
                     {"item_id": 2, "name": "Speed (1994)", "similarity": 1.0}]}
    assert why_line(e) == "text 0.62, id 0.38; like your 'Heat (1995)', 'Speed (1994)'"
    assert why_line({"attention": {"id": 1.0}, "history": []}) == "id 1.00; no item of your history is alike"


def test_per_modality_neighbours_equal_a_brute_force_cosine_ranking():
    rng = np.random.default_rng(3)
    n = 14
    feats = {"text": rng.normal(size=(n, 6)).astype(np.float32), "image": rng.normal(size=(n, 4)).astype(np.float32)}
    present = {"text": np.ones(n, bool), "image": rng.random(n) > 0.3}
    present["image"][0] = False
    idx = ItemIndex.from_features([f"i{j}" for j in range(n)], feats, present, factory="Flat", show_progress=False)
    for row in range(n):
        e = explain_item(idx, f"i{row}", k=4)
        assert list(e.neighbours) == ["text", "image", "fused"]
        for m in ("text", "image"):
            if not present[m][row]:
                assert e.neighbours[m] is None
                continue
            want = brute_cosine_ranking(feats[m], present[m], row)[:4]
            assert [r.item_id for r in e.neighbours[m]] == [f"i{j}" for j, _ in want]
            np.testing.assert_allclose([r.score for r in e.neighbours[m]], [c for _, c in want], atol=1e-6)
        fused = idx.similar(f"i{row}", 4)
        assert [(r.item_id, r.score) for r in e.neighbours["fused"]] == [(r.item_id, r.score) for r in fused]
    assert explain_item(idx, "i0", k=2).to_dict()["neighbours"]["image"] is None
    assert len(modality_neighbours(idx, "i1", "text", k=100)) == n - 1  # every other item has text


def test_on_a_centred_index_explanations_use_the_same_centred_cosines_as_the_scores():
    rng = np.random.default_rng(4)
    n = 70
    feats = {"text": (rng.normal(size=(n, 5)) + 3.0).astype(np.float32),
             "image": (rng.normal(size=(n, 4)) + 2.0).astype(np.float32)}
    present = {"text": np.ones(n, bool), "image": rng.random(n) > 0.2}
    idx = ItemIndex.from_features([f"i{j}" for j in range(n)], feats, present, factory="Flat", show_progress=False)
    assert sorted(idx.centers) == ["image", "text"]
    centred = {m: feats[m] - feats[m][present[m]].mean(0) for m in feats}
    # The index's score of a pair is the equal-weight sum of the per-modality cosines explained.
    for r in Recommender(idx).similar("i2", k=6, explain=True):
        sims = r.explanation["modality_similarity"]
        assert r.score == pytest.approx(0.5 * sum(sims.values()), abs=2e-4)  # explanations are rounded
    for m in ("text", "image"):
        want = brute_cosine_ranking(centred[m], present[m], 2)[:4]
        got = modality_neighbours(idx, "i2", m, k=4)
        assert [r.item_id for r in got] == [f"i{j}" for j, _ in want]
        np.testing.assert_allclose([r.score for r in got], [c for _, c in want], atol=1e-5)


def test_content_index_errors():
    idx = hand_built()
    rec = Recommender(idx)
    with pytest.raises(MMRecError, match="item 'nope' is not in this index"):
        explain_item(idx, "nope")
    with pytest.raises(MMRecError, match="item 'nope' is not in this index"):
        rec.similar("nope", explain=True)
    with pytest.raises(MMRecError, match="k must be at least 1, got 0"):
        explain_item(idx, "x", k=0)
    with pytest.raises(MMRecError, match="this index has no audio modality"):
        modality_neighbours(idx, "x", "audio")
    with pytest.raises(MMRecError, match="content index, not a trained model"):
        explain_recommendations(rec, "u1", [])


def test_cli_similar_and_explain_on_a_content_index(tmp_path, capsys):
    hand_built().save(tmp_path / "idx")
    d = str(tmp_path / "idx")
    assert main(["similar", "--index", d, "--item", "x", "-k", "2", "--explain", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0] == {"item_id": "y", "score": pytest.approx(0.75, abs=1e-6), "title": "Item y",
                      "explanation": {"attention": {"text": 0.75, "image": 0.25},
                                      "modality_similarity": {"text": 1.0, "image": 0.0}}}
    assert main(["similar", "--index", d, "--item", "x", "-k", "2", "--explain", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 2 * 2
    assert lines[1].split()[2] == "y"
    assert lines[2] == "      why: text 0.75, image 0.25; text sim 1.00, image sim 0.00"
    assert lines[4] == "      why: text 1.00, image 0.00; text sim 0.60"

    assert main(["explain", "--index", d, "--item", "t", "-k", "2", "--json", "-q"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["item_id"] == "t" and e["title"] == "Item t" and e["attention"] == {"text": 0.0, "image": 1.0}
    assert e["neighbours"]["text"] is None
    assert [r["item_id"] for r in e["neighbours"]["image"]] == ["y", "x"]  # cos 1, then 0
    assert main(["explain", "--index", d, "--item", "t", "-k", "2", "-q"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("item t  Item t\nattention: text 0.00, image 1.00\n")  # no text_fields, a title field
    assert "text only:\n  (this item has no text)\n" in text and "image only:" in text and "fused (the index):" in text

    code = main(["recommend", "--index", d, "--user", "u1", "--explain", "-q"])
    assert code == 1 and "content index, not a trained model" in capsys.readouterr().err
    for who in (["--all-users"], ["--user", "u1", "u2"]):  # not an empty export, nor "user 'u1' is not known"
        code = main(["recommend", "--index", d, *who, "--json", "-q"])
        out, err = capsys.readouterr()
        assert code == 1 and out == "" and "content index, not a trained model" in err
    code = main(["explain", "--index", d, "--item", "zzz", "-q"])
    assert code == 1 and "item 'zzz' is not in this index" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused by the option parser, before the index is opened
        main(["explain", "--index", d, "--item", "x", "-k", "0", "-q"])
    assert "argument -k: must be at least 1, got 0" in capsys.readouterr().err


# --- trained model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model over planted data with a text and an image modality; item NO_TEXT has no text."""
    d = tmp_path_factory.mktemp("explain")
    inter, content = write_planted(d)
    text = np.load(content)
    text[NO_TEXT] = 0.0  # zero rows are absent (present = False)
    image = text[:, ::-1] + np.random.default_rng(1).normal(0, 0.05, text.shape).astype(np.float32)
    np.save(d / "text.npy", text)
    np.save(d / "image.npy", image)
    fit(inter, features={"text": d / "text.npy", "image": d / "image.npy"}, out=d / "model",
        config=TrainConfig(**FAST), split="random", show_progress=False)
    return d


def test_trained_attention_of_an_item_without_text_is_exactly_zero(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    assert rec.items.manifest["tokens"] == ["text", "image", "id"]
    row = rec.items._pos[NO_TEXT]
    assert not rec.items.present["text"][row]
    assert rec.items.attention[row, 0] == 0.0  # the fusion masks it: not merely small
    got = attention_weights(rec.items, NO_TEXT)
    assert got["text"] == 0.0 and got["image"] > 0 and got["id"] > 0
    assert all(attention_weights(rec.items, i)["text"] > 0 for i in range(32) if i != NO_TEXT)
    # The content-only path of items added later masks it the same way (and the id token too).
    x = {"text": np.zeros((1, 4), np.float32), "image": np.ones((1, 4), np.float32)}
    w = rec.items.vectorizer.attention(x, {"text": np.array([False]), "image": np.array([True])})
    assert w[0].tolist() == [0.0, 1.0, 0.0]


def test_recommendation_explanations_name_the_users_most_similar_history_items(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    raw = rec.items.vectorizer.mips.original(rec.items.vectors).astype(np.float64)  # what the model scores
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)  # its direction: by cosine, not by the dot product
    for user in ("u0", "u1", "u7", "u30"):
        known = rec.known_items(user)
        for exclude_known in (True, False):
            res = rec.recommend(user, 8, exclude_known=exclude_known, explain=True)
            for r in res:
                e = r.explanation
                assert e["attention"] == attention_weights(rec.items, r.item_id)
                names = [h["item_id"] for h in e["history"]]
                assert set(names) <= set(known) and r.item_id not in names
                i = rec.items._pos[r.item_id]
                brute = sorted(((float(np.dot(unit[rec.items._pos[h]], unit[i])), h) for h in known if h != r.item_id),
                               key=lambda p: -p[0])
                want = [(h, s) for s, h in brute if s > 0][:3]
                assert names == [h for h, _ in want]
                np.testing.assert_allclose([h["similarity"] for h in e["history"]], [s for _, s in want], atol=1e-4)
                assert [h["name"] for h in e["history"]] == [str(h) for h in names]  # no titles: the id
    assert any(r.explanation["history"] for r in rec.recommend("u0", 8, explain=True))
    assert all(len(r.explanation["history"]) <= 1 for r in rec.recommend("u0", 8, explain=True, history=1))
    plain = rec.recommend("u0", 8)
    assert [(r.item_id, r.score) for r in plain] == [(r.item_id, r.score) for r in rec.recommend("u0", 8, explain=True)]
    assert all(r.explanation is None for r in plain)


def test_trained_errors(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    with pytest.raises(MMRecError, match="user 'nobody' is not known to this model"):
        rec.recommend("nobody", 3, explain=True)
    with pytest.raises(MMRecError, match="the number of history items to name must be at least 1, got 0"):
        rec.recommend("u0", 3, explain=True, history=0)
    with pytest.raises(MMRecError, match="item '999' is not in this index"):
        rec.explain(999)


def test_cli_recommend_similar_and_explain_on_a_trained_directory(trained, capsys):
    d = str(trained / "model")
    assert main(["recommend", "--index", d, "--user", "u3", "-k", "4", "--explain", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    rec = Recommender.load(d, show_progress=False)
    want = rec.recommend("u3", 4, explain=True)
    assert [r["item_id"] for r in out] == [r.item_id for r in want]
    assert [r["explanation"] for r in out] == [r.explanation for r in want]
    assert list(out[0]["explanation"]["attention"]) == ["text", "image", "id"]
    assert main(["recommend", "--index", d, "--user", "u3", "-k", "4", "--explain", "--explain-items", "2", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 2 * 4
    for r, line in zip(rec.recommend("u3", 4, explain=True, history=2), lines[2::2]):
        assert line == f"      why: {why_line(r.explanation)}" and "like your '" in line

    assert main(["similar", "--index", d, "--item", str(NO_TEXT), "-k", "3", "--explain", "--json", "-q"]) == 0
    for r in json.loads(capsys.readouterr().out):
        assert "text" not in r["explanation"]["modality_similarity"]  # the query item has no text
        assert set(r["explanation"]["modality_similarity"]) == {"image"}

    assert main(["explain", "--index", d, "--item", str(NO_TEXT), "-k", "3", "--json", "-q"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["attention"]["text"] == 0.0 and e["neighbours"]["text"] is None
    assert [r["item_id"] for r in e["neighbours"]["fused"]] == [r.item_id for r in rec.similar(NO_TEXT, 3)]
    assert len(e["neighbours"]["image"]) == 3
    code = main(["recommend", "--index", d, "--user", "nobody", "--explain", "-q"])
    assert code == 1 and "user 'nobody' is not known" in capsys.readouterr().err


def test_diversified_recommendations(trained, capsys):
    from mmrec.diversity import mmr_rerank

    d = str(trained / "model")
    rec = Recommender.load(d, show_progress=False)
    plain = rec.recommend("u3", 6)
    same = rec.recommend("u3", 6, diversity=0.0, candidates=20)
    assert [(r.item_id, r.score) for r in same] == [(r.item_id, r.score) for r in plain]

    pool = rec.recommend("u3", 20)  # the candidates of k = 6 with candidates=20
    vecs = rec.items.vectorizer.mips.original(rec.items.vectors[[rec.items._pos[r.item_id] for r in pool]])
    got = rec.recommend("u3", 6, diversity=0.6, candidates=20)
    want = [pool[i] for i in mmr_rerank(np.array([r.score for r in pool]), vecs, 6, 0.6)]
    assert [(r.item_id, r.score) for r in got] == [(r.item_id, r.score) for r in want]
    assert got[0].item_id == plain[0].item_id and not set(r.item_id for r in got) & set(rec.known_items("u3"))

    def spread(results):  # mean 1 - cosine over the list's pairs (diversity@K)
        v = rec.items.vectorizer.mips.original(rec.items.vectors[[rec.items._pos[r.item_id] for r in results]])
        u = v / np.linalg.norm(v, axis=1, keepdims=True)
        s = u @ u.T
        return float((1 - s[np.triu_indices(len(u), 1)]).mean())

    assert spread(got) > spread(plain)

    assert main(["recommend", "--index", d, "--user", "u3", "-k", "6", "--diversity", "0.6", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["item_id"] for r in out] == [r.item_id for r in rec.recommend("u3", 6, diversity=0.6)]
    for bad in ("1.5", "nan", "-0.1"):  # refused by the option parser, naming the option, before the model loads
        with pytest.raises(SystemExit) as exit_:
            main(["recommend", "--index", d, "--user", "u3", "--diversity", bad, "-q"])
        assert exit_.value.code == 2 and "argument --diversity: " in capsys.readouterr().err


def test_similar_by_cosine_is_the_exact_cosine_ranking(trained, capsys):
    d = str(trained / "model")
    rec = Recommender.load(d, show_progress=False)
    raw = rec.items.vectorizer.mips.original(rec.items.vectors)
    row = rec.items._pos[3]
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    sims = unit @ unit[row]
    order = [i for i in np.argsort(-sims, kind="stable") if i != row][:5]
    got = rec.similar(3, 5, by="cosine")
    assert [r.item_id for r in got] == [rec.items.items[i]["item_id"] for i in order]
    np.testing.assert_allclose([r.score for r in got], sims[order], rtol=1e-5, atol=1e-6)
    assert 3 not in [r.item_id for r in rec.similar(3, len(rec.items), by="cosine")]
    assert len(rec.similar(3, len(rec.items), by="cosine")) == len(rec.items) - 1
    assert [r.item_id for r in rec.similar(3, 5)] == [r.item_id for r in rec.similar(3, 5, by="index")]
    with pytest.raises(ConfigError, match="by must be 'index' or 'cosine'"):
        rec.similar(3, 5, by="dot")
    assert main(["similar", "--index", d, "--item", "3", "-k", "5", "--by", "cosine", "--json", "-q"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == [r.item_id for r in got]


def test_ids_of_other_types_resolve_to_the_stored_id_and_true_is_no_item(trained):
    rec = Recommender.load(trained / "model", show_progress=False)
    for given in (np.int64(3), 3, "3", np.int32(3)):
        got = rec.items.resolve_id(given)
        assert got == 3 and type(got) is int
    assert type(rec.explain(np.int64(3)).item_id) is int
    history = [h["item_id"] for r in rec.recommend_history(np.array([3, 7]), 5, explain=True)
               for h in r.explanation["history"]]
    assert history and all(type(h) is int for h in history)
    json.dumps([r.to_dict() for r in rec.recommend_history(np.array([3, 7]), 5, explain=True)])  # plain JSON types
    for flag in (True, np.bool_(True)):
        with pytest.raises(MMRecError, match=r"True is not an item id"):
            rec.similar(flag)


def test_items_are_named_by_their_title_field_whatever_the_text_fields():
    records = [{"title": f"Film {i}", "genres": g} for i, g in enumerate(["Comedy", "Horror", "Drama"])]
    idx = ItemIndex.from_features(["a", "b", "c"], {"text": np.eye(3, dtype=np.float32)}, records=records,
                                  factory="Flat", show_progress=False, text_fields=["genres"])
    assert title_field(idx) == "title" and display_name(idx, "b") == "Film 1"
    plain = ItemIndex.from_features(["a", "b", "c"], {"text": np.eye(3, dtype=np.float32)},
                                    records=[{"genres": r["genres"]} for r in records], factory="Flat",
                                    show_progress=False, text_fields=["genres"])
    assert title_field(plain) == "genres" and display_name(plain, "b") == "Horror"


def test_a_modality_named_fused_keeps_its_neighbours_beside_the_index_ones(capsys, tmp_path):
    # Explanations list the index's own neighbours under "fused": a modality of that name keeps
    # its list, and the index's goes under "fused (index)".
    x = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
    y = np.array([[0, 1], [1, 0], [0, 1]], np.float32)
    idx = ItemIndex.from_features(["a", "b", "c"], {"fused": x, "other": y}, factory="Flat", show_progress=False,
                                  center=False)
    e = explain_item(idx, "a", k=2)
    assert list(e.neighbours) == ["fused", "other", "fused (index)"]
    assert [r.item_id for r in e.neighbours["fused"]] == ["b", "c"]  # the modality's own cosine ranking
    assert [r.item_id for r in e.neighbours["fused (index)"]] == [r.item_id for r in idx.similar("a", 2)]
    idx.save(tmp_path / "idx")
    assert main(["explain", "--index", str(tmp_path / "idx"), "--item", "a", "-k", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "\nfused only:\n" in out and "\nfused (the index):\n" in out


def test_per_modality_neighbours_follow_items_added_and_removed():
    # The unit rows are kept between calls: an add or a remove must still show in the next answer.
    rng = np.random.default_rng(5)
    feats = {"text": rng.normal(size=(10, 4)).astype(np.float32)}
    idx = ItemIndex.from_features([f"i{j}" for j in range(10)], feats, factory="Flat", show_progress=False)
    first = [r.item_id for r in modality_neighbours(idx, "i0", "text", k=3)]
    twin = feats["text"][:1] * 2  # the same direction as i0, before centring moved it a little
    idx.add_features(["twin"], {"text": twin}, {"text": np.ones(1, bool)}, save=False)
    after = modality_neighbours(idx, "i0", "text", k=3)
    assert len(idx) == 11 and "twin" in [r.item_id for r in after] and after != first
    idx.remove(["twin"])  # (in memory: no directory to save)
    assert [r.item_id for r in modality_neighbours(idx, "i0", "text", k=3)] == first


def test_a_user_with_no_liked_item_left_is_said_so(trained, tmp_path, caplog):
    import shutil

    shutil.copytree(trained / "model", tmp_path / "model")
    rec = Recommender.load(tmp_path / "model", show_progress=False)
    rec.items.remove(rec.liked_items("u3"))
    with caplog.at_level("WARNING", logger="mmrec.explain"):
        res = rec.recommend("u3", 3, explain=True)
    assert all(r.explanation["history"] == [] for r in res)
    assert "user 'u3' has no liked item left in the index" in caplog.text
