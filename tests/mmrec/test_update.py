"""``index update``: items changed in place equal a build of the changed catalog; only changed
content is encoded; trained vectors are kept; a refused update changes nothing."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mmrec.config import TrainConfig
from mmrec.errors import DataError
from mmrec.item_index import ItemIndex
from mmrec.pipeline import fit
from tests.mmrec.conftest import write_planted, write_rows

TITLES = ["cat film", "dog story", "space war", "love city", "toy boy", "police night"]
FAST = dict(dim=16, layers=2, heads=2, lr=0.05, batch_size=128, epochs=6, patience=6, reg=1e-4)


@pytest.fixture
def shop(tmp_path, image_paths):
    for p in image_paths:
        shutil.copy(p, tmp_path)
    names = [p.rsplit("/", 1)[1] for p in image_paths]
    rows = [{"item_id": f"i{k}", "title": t, "price": str(10 + k), "image": names[k % len(names)]}
            for k, t in enumerate(TITLES)]
    write_rows(tmp_path / "all.csv", rows, ["item_id", "title", "price", "image"])
    return tmp_path, rows, names


def build(path, out, tiny_bert_dir, tiny_vit_dir):
    # centre off: an item's vector then depends on its own content only, so a build of the changed
    # catalog is the exact oracle of an update
    return ItemIndex.build(path, out, text_encoder=tiny_bert_dir, image_encoder=tiny_vit_dir, factory="Flat",
                           show_progress=False, overwrite=True, center=False, text_fields=["title"])


def test_update_equals_a_build_of_the_changed_catalog(shop, tiny_bert_dir, tiny_vit_dir):
    d, rows, names = shop
    build(d / "all.csv", d / "idx", tiny_bert_dir, tiny_vit_dir)
    idx = ItemIndex.load(d / "idx", show_progress=False)
    before = idx.vectors.copy()
    # i1: new title (price kept: the file has no price column); i3: the same title (unchanged);
    # i4: another image, its text as it was.
    write_rows(d / "change.csv", [{"item_id": "i1", "title": "dog story remastered", "image": names[1]},
                                  {"item_id": "i3", "title": "love city", "image": names[3 % len(names)]},
                                  {"item_id": "i4", "title": "toy boy", "image": names[(4 + 1) % len(names)]}],
               ["item_id", "title", "image"])
    assert idx.update(d / "change.csv") == {"updated": 2, "unchanged": 1, "content": 2, "moved": 2, "added": 0,
                                            "removed": 0, "skipped": 0}
    rows[1]["title"] = "dog story remastered"
    rows[4]["image"] = names[(4 + 1) % len(names)]
    write_rows(d / "changed_all.csv", rows, ["item_id", "title", "price", "image"])
    oracle = build(d / "changed_all.csv", d / "oracle", tiny_bert_dir, tiny_vit_dir)
    back = ItemIndex.load(d / "idx", show_progress=False)  # saved in place
    for got in (idx, back):
        assert got.ids == oracle.ids
        # The changed rows were encoded in another batch than the oracle's, so float32 sums differ in the
        # last bits (on one CPU, an element of the 390 by 1.3e-6); the untouched rows keep their bits.
        np.testing.assert_allclose(got.vectors, oracle.vectors, atol=1e-5)
        np.testing.assert_array_equal(got.vectors[[0, 2, 3, 5]], before[[0, 2, 3, 5]])  # untouched rows: the same bits
        for m in ("text", "image"):
            np.testing.assert_allclose(got.features[m], oracle.features[m], atol=1e-6)
        assert [it["hashes"] for it in got.items] == [it["hashes"] for it in oracle.items]
        assert [it["fields"] for it in got.items] == [it["fields"] for it in oracle.items]
        assert got.items[1]["fields"] == {"title": "dog story remastered", "price": "11", "image": names[1]}
        for k in range(len(rows)):
            a, b = got.similar(f"i{k}", 5), oracle.similar(f"i{k}", 5)
            assert [x.item_id for x in a] == [x.item_id for x in b]
            np.testing.assert_allclose([x.score for x in a], [x.score for x in b], atol=1e-5)


def test_a_fields_only_update_encodes_nothing_and_where_sees_it(shop, tiny_bert_dir, tiny_vit_dir, monkeypatch):
    d, rows, _ = shop
    idx = build(d / "all.csv", d / "idx", tiny_bert_dir, tiny_vit_dir)
    idx = ItemIndex.load(d / "idx", show_progress=False)
    assert idx.matching(["price<12"]) == ["i0", "i1"]  # the display-field cache is filled here
    vectors = idx.vectors.copy()

    def refuse(*args, **kwargs):
        raise AssertionError("nothing should be encoded")

    monkeypatch.setattr("mmrec.item_index.encode_catalog", refuse)
    (d / "prices.csv").write_text("item_id,price\ni5,3\ni0,\n")
    assert idx.update(d / "prices.csv") == {"updated": 2, "unchanged": 0, "content": 0, "moved": 0, "added": 0,
                                            "removed": 0, "skipped": 0}
    # The same again changes nothing, and writes nothing (a server would reload for nothing).
    manifest = (d / "idx" / "manifest.json").read_bytes()
    assert idx.update(d / "prices.csv")["unchanged"] == 2
    assert (d / "idx" / "manifest.json").read_bytes() == manifest
    assert idx.matching(["price<12"]) == ["i1", "i5"]  # i0's price is now blank: no number
    back = ItemIndex.load(d / "idx", show_progress=False)
    np.testing.assert_array_equal(back.vectors, vectors)
    assert back.items[5]["fields"] == {"title": "police night", "price": "3", "image": rows[5]["image"]}
    assert back.items[0]["fields"]["price"] == "" and back.matching(["price<12"]) == ["i1", "i5"]


def test_refused_updates_change_nothing_and_skips_are_listed(shop, tiny_bert_dir, tiny_vit_dir):
    d, rows, names = shop
    build(d / "all.csv", d / "idx", tiny_bert_dir, tiny_vit_dir)
    idx = ItemIndex.load(d / "idx", show_progress=False)
    manifest = (d / "idx" / "manifest.json").read_bytes()
    (d / "unknown.csv").write_text("item_id,price\ni2,99\nx9,1\n")
    with pytest.raises(DataError, match=r"row 2, field 'item_id': id 'x9' is not in the index \(mmrec index add "
                                        r"adds new items, as --add-new here does\)"):
        idx.update(d / "unknown.csv")
    (d / "empty.csv").write_text("item_id,title,image\ni2,,\n")
    with pytest.raises(DataError, match=r"row 1: item 'i2' would be left with none of the index's modalities "
                                        r"\(text, image\)"):
        idx.update(d / "empty.csv")
    (d / "bad_image.csv").write_text("item_id,title,image\ni2,space war,missing.jpg\n")
    with pytest.raises(DataError, match=r"row 1, field 'image'"):
        idx.update(d / "bad_image.csv")
    assert (d / "idx" / "manifest.json").read_bytes() == manifest
    assert idx.items[2]["fields"]["price"] == "12"
    # Skipped: the unknown id, listed in skipped.jsonl; the rest lands.
    assert idx.update(d / "unknown.csv", skip_invalid=True) == {"updated": 1, "unchanged": 0, "content": 0, "moved": 0,
                                                                "added": 0, "removed": 0, "skipped": 1}
    skipped = [json.loads(line) for line in (d / "idx" / "skipped.jsonl").read_text().splitlines()]
    assert [(s["row"], s["item_id"], s["field"]) for s in skipped] == [(2, "x9", "item_id")]
    # A new row with no content: refused by row, or skipped, as index add skips it.
    (d / "bare.csv").write_text("item_id,price\ni2,50\nx7,1\n")
    manifest = (d / "idx" / "manifest.json").read_bytes()
    with pytest.raises(DataError, match=r"row 2: id 'x7' is not in the index, and the row has none of its "
                                        r"modalities \(text, image\) to add it by"):
        idx.update(d / "bare.csv", add_new=True)
    assert (d / "idx" / "manifest.json").read_bytes() == manifest
    assert idx.update(d / "bare.csv", add_new=True, skip_invalid=True) == {"updated": 1, "unchanged": 0, "content": 0,
                                                                            "moved": 0, "added": 0, "removed": 0,
                                                                            "skipped": 1}
    skipped = [json.loads(line) for line in (d / "idx" / "skipped.jsonl").read_text().splitlines()]
    assert [(s["row"], s["item_id"]) for s in skipped] == [(2, "x9"), (2, "x7")]
    # A blank image cell takes the image away (the text stays); --add-new adds the unknown id.
    (d / "more.csv").write_text(f"item_id,title,image\ni2,space war,\nx9,new toy,{names[0]}\n")
    assert idx.update(d / "more.csv", add_new=True) == {"updated": 1, "unchanged": 0, "content": 1, "moved": 1,
                                                        "added": 1, "removed": 0, "skipped": 0}
    back = ItemIndex.load(d / "idx", show_progress=False)
    assert back.ids[-1] == "x9" and not back.present["image"][2] and back.present["text"][2]
    assert "image" not in back.items[2]["hashes"] and back.items[2]["fields"]["image"] == ""
    assert back.similar("x9", 1)[0].item_id != "x9"


def test_trained_items_keep_their_vectors_and_content_path_items_move(tmp_path, capsys):
    from mmrec.cli import main
    from mmrec.recommender import Recommender

    inter, feats = write_planted(tmp_path, users=64, items=128, per_user=12)
    fit(inter, features={"content": feats}, out=tmp_path / "m", config=TrainConfig(**FAST, cold_start=0.25),
        split="random", show_progress=False)
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    ids = rec.items.ids
    cold, warm = rec.cold_items[0], ids[int(np.flatnonzero(rec.items.pool)[0])]
    x = np.load(feats)
    new = x[[warm, cold]][::-1] + 0.0  # each takes the other's content
    np.save(tmp_path / "new.npy", new)
    # The cold item is placed as index add would place it after the change: borrowing from the
    # trained items' new content (the warm item's among them).
    after = rec.items.features["content"].copy()
    after[[rec.items._pos[warm], rec.items._pos[cold]]] = new
    want_cold = rec.items.vectorizer.item_vectors({"content": new[1:]}, {"content": np.ones(1, bool)},
                                                  rec.items._neighbour_pool({"content": after}))[0]
    warm_vector = rec.items.vector_of(warm).copy()
    shutil.copytree(tmp_path / "m", tmp_path / "two_steps")
    (tmp_path / "change.csv").write_text(f"item_id\n{warm}\n{cold}\n")
    assert main(["index", "update", "--index", str(tmp_path / "m"), "--catalog", str(tmp_path / "change.csv"),
                 "--features", f"content={tmp_path / 'new.npy'}", "-q"]) == 0
    assert capsys.readouterr().out == (f"updated 2 items (2 with new content, 1 of them keeping trained vectors), 0 "
                                       f"unchanged in "
                                       f"{tmp_path / 'm'}: 128 items\n")
    back = Recommender.load(tmp_path / "m", show_progress=False)
    assert back.info()["placed_since_build"] == 1  # the cold item, placed again from the catalog means of training
    assert main(["index", "info", "--index", str(tmp_path / "m")]) == 0
    assert ("  centring: the catalog means of the training; 1 item placed since by index add / update (train again "
            "to take them anew)") in capsys.readouterr().out
    np.testing.assert_array_equal(back.items.vector_of(warm)[0], warm_vector[0])
    np.testing.assert_allclose(back.items.vector_of(cold)[0], want_cold, rtol=1e-6, atol=1e-7)
    for item, row in ((warm, new[0]), (cold, new[1])):
        np.testing.assert_array_equal(back.items.features["content"][back.items._pos[item]], row)
    # The FAISS index serves the moved vector: searched by it, the item is its own best match.
    assert back.items.search_vectors(want_cold[None], k=1)[0][0].item_id == cold
    # One file or two, the same vectors: the warm item first, then the cold one, then a new item
    # (--add-new) placed as index add places it.
    steps = Recommender.load(tmp_path / "two_steps", show_progress=False).items
    for k, item in enumerate((warm, cold)):
        (tmp_path / f"step{k}.csv").write_text(f"item_id\n{item}\n")
        np.save(tmp_path / f"step{k}.npy", new[k : k + 1])
        steps.update(tmp_path / f"step{k}.csv", features={"content": tmp_path / f"step{k}.npy"})
    np.testing.assert_array_equal(steps.vectors, back.items.vectors)
    (tmp_path / "plus.csv").write_text(f"item_id\n{warm}\n500\n")
    np.save(tmp_path / "plus.npy", np.concatenate([new[:1], x[:1]]))
    assert back.items.update(tmp_path / "plus.csv", features={"content": tmp_path / "plus.npy"}, add_new=True) == \
        {"updated": 0, "unchanged": 1, "content": 0, "moved": 0, "added": 1, "removed": 0, "skipped": 0}
    (tmp_path / "n.csv").write_text("item_id\n500\n")
    np.save(tmp_path / "n.npy", x[:1])
    steps.add(tmp_path / "n.csv", features={"content": tmp_path / "n.npy"})
    np.testing.assert_array_equal(steps.vectors, back.items.vectors)
    # With --remove-missing, a removed trained item is not borrowed from: as removing it first.
    gone = next(i for i in back.items.ids if i not in (warm, cold, 500) and back.items.pool[back.items._pos[i]])
    listed = [i for i in back.items.ids if i != gone]
    (tmp_path / "sync.csv").write_text("item_id\n" + "".join(f"{i}\n" for i in listed))
    rows = back.items.features["content"][[back.items._pos[i] for i in listed]].copy()
    rows[listed.index(cold)] = x[gone]  # the cold item takes the removed item's content
    np.save(tmp_path / "sync.npy", rows)
    assert back.items.update(tmp_path / "sync.csv", features={"content": tmp_path / "sync.npy"},
                             remove_missing=True)["removed"] == 1
    steps.remove([gone])
    (tmp_path / "c.csv").write_text(f"item_id\n{cold}\n")
    np.save(tmp_path / "c.npy", x[[gone]])
    steps.update(tmp_path / "c.csv", features={"content": tmp_path / "c.npy"})
    assert steps.ids == back.items.ids
    np.testing.assert_array_equal(steps.vectors, back.items.vectors)


def test_catalog_items_without_a_training_interaction_keep_their_vectors_too(tmp_path):
    # They were sent down the new-item path by a content edit: 5 such items went from 0 to 107 of 300 top-10 slots
    from mmrec.recommender import Recommender

    inter, feats = write_planted(tmp_path, users=32, items=40, per_user=6)
    x = np.load(feats)
    np.save(feats, np.concatenate([x, x[:4] + 0.01]))  # items 40-43: in the catalog, in no interaction
    fit(inter, features={"content": feats}, out=tmp_path / "m", config=TrainConfig(**FAST), split="random",
        show_progress=False)
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    rows = [rec.items._pos[i] for i in (40, 41)]
    assert rec.items.kept.all() and not rec.items.pool[rows].any()  # trained vectors, borrowed from by none
    before = rec.items.vectors[rows].copy()
    (tmp_path / "edit.csv").write_text("item_id\n40\n41\n")
    np.save(tmp_path / "edit.npy", 1.01 * x[:2])
    assert rec.items.update(tmp_path / "edit.csv", features={"content": tmp_path / "edit.npy"}) == {
        "updated": 2, "unchanged": 0, "content": 2, "moved": 0, "added": 0, "removed": 0, "skipped": 0}
    back = Recommender.load(tmp_path / "m", show_progress=False).items
    np.testing.assert_array_equal(back.vectors[rows], before)  # the vector validation scored
    np.testing.assert_array_equal(back.features["content"][rows], 1.01 * x[:2])  # the new content, stored
    # an item added since is placed again by a content edit, as before
    (tmp_path / "new.csv").write_text("item_id\n900\n")
    np.save(tmp_path / "new.npy", x[:1])
    back.add(tmp_path / "new.csv", features={"content": tmp_path / "new.npy"})
    assert back.kept.tolist() == [True] * 44 + [False]
    (tmp_path / "e2.csv").write_text("item_id\n900\n")
    np.save(tmp_path / "e2.npy", x[1:2])
    assert back.update(tmp_path / "e2.csv", features={"content": tmp_path / "e2.npy"})["moved"] == 1
    back.remove([40])
    assert Recommender.load(tmp_path / "m", show_progress=False).items.kept.tolist() == [True] * 43 + [False]


def test_an_id_only_model_updates_display_fields_and_refuses_new_items_by_row(tmp_path):
    # update refused any change ("has no content modality"), so --where price=... could not follow the prices
    from mmrec.recommender import Recommender

    inter, _ = write_planted(tmp_path, users=16, items=12, per_user=4)
    (tmp_path / "c.csv").write_text("item_id,title,price\n" + "".join(f"{i},film {i},{i}\n" for i in range(12)))
    fit(inter, catalog=tmp_path / "c.csv", out=tmp_path / "m", config=TrainConfig(**FAST, use_content=False),
        split="random", show_progress=False)
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    vectors = rec.items.vectors.copy()
    (tmp_path / "p.csv").write_text("item_id,price\n3,99\n")
    assert rec.items.update(tmp_path / "p.csv") == {"updated": 1, "unchanged": 0, "content": 0, "moved": 0,
                                                    "added": 0, "removed": 0, "skipped": 0}
    back = Recommender.load(tmp_path / "m", show_progress=False)
    assert back.items.matching(["price=99"]) == [3] and back.items.items[back.items._pos[3]]["fields"] == {
        "title": "film 3", "price": "99"}
    np.testing.assert_array_equal(back.items.vectors, vectors)
    (tmp_path / "n.csv").write_text("item_id,price\n3,98\n77,1\n")
    with pytest.raises(DataError, match="row 2, field 'item_id': id '77' is not in the index, and this ID-only model "
                                        "has no content to place a new item by: train again with it"):
        back.items.update(tmp_path / "n.csv", add_new=True)
    assert back.items.update(tmp_path / "n.csv", add_new=True, skip_invalid=True)["skipped"] == 1
    assert back.items.matching(["price=98"]) == [3] and 77 not in back.items
    from mmrec.errors import MMRecError

    with pytest.raises(MMRecError, match="has no content modality"):
        back.items.add(tmp_path / "n.csv")


def test_a_zero_padded_row_skipped_on_an_integer_index_still_names_its_item(tmp_path):
    # '03' is skipped (an integer id keeps no leading zero), and --remove-missing then removed item 3
    idx = ItemIndex.from_features([1, 2, 3], {"f": np.eye(3, dtype=np.float32)}, records=[{"p": "a"}] * 3,
                                  factory="Flat", show_progress=False)
    (tmp_path / "export.csv").write_text("item_id,p\n1,b\n03,c\n")
    assert idx.update(tmp_path / "export.csv", remove_missing=True, skip_invalid=True) == {
        "updated": 1, "unchanged": 0, "content": 0, "moved": 0, "added": 0, "removed": 1, "skipped": 1}
    assert idx.ids == [1, 3] and idx.items[1]["fields"] == {"p": "a"}  # item 3 kept as it was; item 2 removed


def test_a_loaded_catalog_with_its_own_skipped_rows_takes_features_as_add_does(tmp_path):
    from mmrec.catalog import load_catalog

    x = np.eye(4, dtype=np.float32)
    idx = ItemIndex.from_features(["a", "b", "c", "d"], {"f": x}, records=[{"title": t} for t in "abcd"],
                                  factory="Flat", show_progress=False)
    (tmp_path / "c.csv").write_text("item_id,title\na,first\n,no id\nb,second\n")
    cat = load_catalog(tmp_path / "c.csv", text_fields=["title"], skip_invalid=True, show_progress=False)
    np.save(tmp_path / "c.npy", x[[1, 0]])  # one row per item of the loaded catalog: a and b swap vectors
    assert idx.update(cat, features={"f": tmp_path / "c.npy"}) == {"updated": 2, "unchanged": 0, "content": 2,
                                                                   "moved": 2, "added": 0, "removed": 0, "skipped": 0}
    assert [r.item_id for r in idx.search_vectors(idx.vectors[[0]], k=1)[0]] == ["a"]
    np.testing.assert_array_equal(idx.features["f"][:2], x[[1, 0]])
    assert [it["fields"]["title"] for it in idx.items] == ["first", "second", "c", "d"]


def test_a_full_export_syncs_the_index(shop, tiny_bert_dir, tiny_vit_dir, monkeypatch, capsys):
    # --add-new --remove-missing: the index ends up holding the export's items, as a build of the
    # export would, encoding only what is new or changed.
    d, rows, names = shop
    build(d / "all.csv", d / "idx", tiny_bert_dir, tiny_vit_dir)
    idx = ItemIndex.load(d / "idx", show_progress=False)
    export = [dict(r) for r in rows if r["item_id"] not in ("i2", "i4")]  # two items gone
    export[0]["price"] = "99"  # a price change
    export[1]["title"] = "dog story remastered"  # new content
    export.append({"item_id": "n1", "title": "new boots", "price": "5", "image": names[0]})  # a new item
    export.append({"item_id": "n2", "title": "bad picture", "price": "5", "image": "gone.png"})  # invalid row
    export.insert(0, {"item_id": "i3", "title": "love city", "price": "13", "image": "missing.png"})  # invalid: i3 stays
    export = [r for k, r in enumerate(export) if not (r["item_id"] == "i3" and k > 0)]
    write_rows(d / "export.csv", export, ["item_id", "title", "price", "image"])
    with pytest.raises(DataError, match=r"row 1, field 'image'"):
        idx.update(d / "export.csv", add_new=True, remove_missing=True)
    # A dry run counts the same changes by content hashes, encoding and writing nothing.
    from mmrec.cli import main

    manifest = (d / "idx" / "manifest.json").read_bytes()
    with monkeypatch.context() as m:
        m.setattr("mmrec.item_index.encode_catalog", lambda *a, **k: pytest.fail("nothing should be encoded"))
        assert idx.update(d / "export.csv", add_new=True, remove_missing=True, skip_invalid=True, dry_run=True) == \
            {"updated": 2, "unchanged": 1, "content": 1, "moved": 1, "added": 1, "removed": 2, "skipped": 2}
        assert main(["index", "update", "--index", str(d / "idx"), "--catalog", str(d / "export.csv"), "--add-new",
                     "--remove-missing", "--skip-invalid", "--dry-run", "-q"]) == 0
    assert capsys.readouterr().out == (f"would update 2 items (1 with new content), 1 unchanged, add 1 item, remove 2 "
                                       f"items, skip 2 invalid rows in "
                                       f"{d / 'idx'}: 5 items (nothing was written)\n")
    assert (d / "idx" / "manifest.json").read_bytes() == manifest and len(idx) == 6
    assert idx.update(d / "export.csv", add_new=True, remove_missing=True, skip_invalid=True) == \
        {"updated": 2, "unchanged": 1, "content": 1, "moved": 1, "added": 1, "removed": 2, "skipped": 2}
    kept = [r for r in export if r["item_id"] not in ("n2", "i3")]
    oracle_rows = [rows[3]] + kept  # i3 as it was (its new row was invalid)
    oracle_rows = sorted(oracle_rows, key=lambda r: ["i0", "i1", "i3", "i5", "n1"].index(r["item_id"]))
    write_rows(d / "oracle.csv", oracle_rows, ["item_id", "title", "price", "image"])
    oracle = build(d / "oracle.csv", d / "oracle", tiny_bert_dir, tiny_vit_dir)
    back = ItemIndex.load(d / "idx", show_progress=False)
    assert back.ids == oracle.ids == ["i0", "i1", "i3", "i5", "n1"]
    np.testing.assert_allclose(back.vectors, oracle.vectors, atol=1e-6)
    assert [it["fields"] for it in back.items] == [it["fields"] for it in oracle.items]
    assert sorted(back.index.ids) == sorted(oracle.ids)
    # A file with no valid row names nothing: refused, not read as "remove every item".
    (d / "other.csv").write_text("item_id,price\nzz,1\n")
    with pytest.raises(DataError, match="no valid rows left"):
        back.update(d / "other.csv", remove_missing=True, skip_invalid=True)
    assert len(ItemIndex.load(d / "idx", show_progress=False)) == 5


def test_json_rows_change_their_own_keys_and_a_failed_change_restores_everything(shop, tiny_bert_dir, tiny_vit_dir,
                                                                                  monkeypatch):
    d, rows, names = shop
    build(d / "all.csv", d / "idx", tiny_bert_dir, tiny_vit_dir)
    idx = ItemIndex.load(d / "idx", show_progress=False)
    vectors = idx.vectors.copy()
    lines = [{"item_id": "i0", "price": "1"}, {"item_id": "i1", "title": "dog story two"},
             {"item_id": "i3", "title": "x", "price": "5", "image": "missing.png"}]  # invalid: skipped
    (d / "u.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert idx.update(d / "u.jsonl", skip_invalid=True) == {"updated": 2, "unchanged": 0, "content": 1, "moved": 1,
                                                            "added": 0, "removed": 0, "skipped": 1}
    assert idx.items[0]["fields"] == {"title": "cat film", "price": "1", "image": rows[0]["image"]}
    # a new item from a JSON row gets every column of the file, as index add gives it
    (d / "n.jsonl").write_text('{"item_id": "n1", "title": "new boots"}\n{"item_id": "i0", "price": "2"}\n')
    assert idx.update(d / "n.jsonl", add_new=True)["added"] == 1
    assert idx.items[-1]["fields"] == {"title": "new boots", "price": ""}
    assert idx.items[0]["fields"]["image"] == rows[0]["image"]
    idx.remove(["n1"])
    assert idx.items[1]["fields"] == {"title": "dog story two", "price": "11", "image": rows[1]["image"]}
    np.testing.assert_array_equal(idx.vectors[[0, 2, 3, 4, 5]], vectors[[0, 2, 3, 4, 5]])
    assert idx.present["image"].all()
    # A failure after the checks, before the save: the directory and the object as they were.
    before = {"ids": list(idx.ids), "vectors": idx.vectors.copy(), "fields": [it["fields"] for it in idx.items],
              "faiss": sorted(idx.index.ids)}
    manifest = (d / "idx" / "manifest.json").read_bytes()
    write_rows(d / "sync.csv", [{"item_id": "i0", "title": "cat film again"}, {"item_id": "n1", "title": "new"}],
               ["item_id", "title"])

    def fail(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(ItemIndex, "_drop", fail)
    with pytest.raises(OSError, match="disk gone"):
        idx.update(d / "sync.csv", add_new=True, remove_missing=True)
    assert (d / "idx" / "manifest.json").read_bytes() == manifest
    assert {"ids": list(idx.ids), "vectors": idx.vectors, "fields": [it["fields"] for it in idx.items],
            "faiss": sorted(idx.index.ids)} == before | {"vectors": idx.vectors}
    np.testing.assert_array_equal(idx.vectors, before["vectors"])
    monkeypatch.undo()
    assert [r.item_id for r in idx.similar("i0", 3)] == [r.item_id for r in ItemIndex.load(d / "idx").similar("i0", 3)]


def test_an_index_built_with_mask_bad_images_keeps_masking_them(shop, tiny_bert_dir, tiny_vit_dir):
    d, rows, names = shop
    rows[2]["image"] = "broken.png"
    (d / "broken.png").write_bytes(b"not a png")
    write_rows(d / "masked.csv", rows, ["item_id", "title", "price", "image"])
    ItemIndex.build(d / "masked.csv", d / "idx", text_encoder=tiny_bert_dir, image_encoder=tiny_vit_dir,
                    factory="Flat", show_progress=False, center=False, text_fields=["title"], mask_bad_images=True)
    idx = ItemIndex.load(d / "idx", show_progress=False)
    assert idx.manifest["mask_bad_images"] is True and not idx.present["image"][2]
    from mmrec.recommender import Recommender

    assert Recommender.load(d / "idx", show_progress=False).info()["catalog"] == {
        "text_fields": ["title"], "image_field": "image", "mask_bad_images": True}
    # The nightly export still has the broken picture: masked again without being asked, as at build.
    rows[0]["price"] = "1"
    write_rows(d / "night.csv", rows, ["item_id", "title", "price", "image"])
    assert idx.update(d / "night.csv")["updated"] == 1
    with pytest.raises(DataError, match=r"row 3, field 'image'"):  # an option given here wins
        idx.update(d / "night.csv", mask_bad_images=False)
    (d / "new.csv").write_text(f"item_id,title,image\nn1,new boots,broken.png\n")
    assert idx.add(d / "new.csv") == 1 and not idx.present["image"][-1]
    # An export read from another folder (a wrong --image-root): every image missing. The items keep
    # their stored pictures, and vectors, instead of losing them all.
    (d / "elsewhere").mkdir()
    write_rows(d / "elsewhere" / "night.csv", rows, ["item_id", "title", "price", "image"])
    vectors, present = idx.vectors.copy(), idx.present["image"].copy()
    assert idx.update(d / "elsewhere" / "night.csv") == {"updated": 0, "unchanged": 6, "content": 0, "moved": 0,
                                                         "added": 0, "removed": 0, "skipped": 0}
    np.testing.assert_array_equal(idx.vectors, vectors)
    np.testing.assert_array_equal(idx.present["image"], present)
    assert [it["fields"]["image"] for it in idx.items[:6]] == [r["image"] for r in rows]
    # nothing changed, so only skipped.jsonl was written: this night's six masked images are listed, five
    # keeping their stored pictures and i2's, which never had one, left out (it said "keeps" for i2 too)
    listed = [json.loads(line) for line in (d / "idx" / "skipped.jsonl").read_text().splitlines()]
    night = [r for r in listed if "elsewhere" in r["message"]]
    assert sorted((r["item_id"], "keeps its stored image" in r["message"]) for r in night) == [
        ("i0", True), ("i1", True), ("i2", False), ("i3", True), ("i4", True), ("i5", True)]
    # the column options given by hand change nothing of that (they made every image failing an error)
    assert idx.update(d / "elsewhere" / "night.csv", text_fields=["title"], image_field="image")["unchanged"] == 6
    rows[1]["price"] = "7"
    write_rows(d / "elsewhere" / "night.csv", rows, ["item_id", "title", "price", "image"])
    assert idx.update(d / "elsewhere" / "night.csv")["updated"] == 1
    listed = [json.loads(line) for line in (d / "idx" / "skipped.jsonl").read_text().splitlines()]
    # this night's five (i2 had no stored picture to keep, on either night: one record of its problem a night)
    assert sum("the item keeps its stored image (--mask-bad-images)" in r["message"] for r in listed) == 5
    from mmrec.cli import main

    assert main(["index", "update", "--index", str(d / "idx"), "--catalog", str(d / "elsewhere" / "night.csv"),
                 "--no-mask-bad-images", "-q"]) == 1  # told not to mask: refused, every row named

    # A model trained from such a catalog remembers it too.
    lines = ["user_id\titem_id"] + [f"u{u}\ti{(u + k) % 6}" for u in range(12) for k in range(3)]
    (d / "inter.tsv").write_text("\n".join(lines) + "\n")
    config = TrainConfig(dim=8, layers=1, heads=1, lr=0.05, batch_size=64, epochs=1, patience=1)
    fit(d / "inter.tsv", catalog=d / "masked.csv", out=d / "m", config=config, split="random", show_progress=False,
        text_encoder=tiny_bert_dir, image_encoder=tiny_vit_dir, text_fields=["title"], mask_bad_images=True)
    from mmrec.recommender import Recommender

    trained = Recommender.load(d / "m", show_progress=False).items
    assert trained.manifest["mask_bad_images"] is True
    assert trained.add(d / "new.csv") == 1 and not trained.present["image"][-1]


def test_an_update_decodes_only_the_images_the_index_does_not_hold(shop, tiny_bert_dir, tiny_vit_dir, monkeypatch):
    from PIL import Image

    import encoders.image

    d, rows, names = shop
    build(d / "all.csv", d / "idx", tiny_bert_dir, tiny_vit_dir)
    idx = ItemIndex.load(d / "idx", show_progress=False)
    checked = []
    real = encoders.image.check_image
    monkeypatch.setattr(encoders.image, "check_image", lambda path: checked.append(path.rsplit("/", 1)[1]) or real(path))
    # Every image as stored, one of them under another name (the same bytes): none is decoded again.
    shutil.copy(d / rows[0]["image"], d / "copy_of_0.jpg")
    rows[2]["image"], rows[1]["price"] = "copy_of_0.jpg", "7"
    write_rows(d / "night.csv", rows, ["item_id", "title", "price", "image"])
    assert idx.update(d / "night.csv")["updated"] == 2 and checked == []
    # A new picture and a broken one are decoded, and the broken one is refused by its row as before.
    Image.fromarray(np.full((20, 20, 3), 9, np.uint8)).save(d / "new.png")
    (d / "broken.jpg").write_bytes((d / rows[0]["image"]).read_bytes()[:40])  # a cut-off copy: other bytes
    rows[3]["image"], rows[4]["image"] = "new.png", "broken.jpg"
    write_rows(d / "night.csv", rows, ["item_id", "title", "price", "image"])
    with pytest.raises(DataError, match=r"row 5, field 'image'.*broken\.jpg"):
        idx.update(d / "night.csv")
    assert sorted(checked) == ["broken.jpg", "new.png"]


def test_the_same_bad_row_of_nightly_files_is_listed_once_with_its_latest_file(shop, tiny_bert_dir, tiny_vit_dir):
    # ... while every row one command skipped is listed: id 7 at rows 1, 3 and 5 skips rows 3 and 5
    from mmrec.catalog import load_catalog

    (shop[0] / "dup.csv").write_text("item_id,title\n7,a\n8,b\n7,c\n9,d\n7,e\n")
    cat = load_catalog(shop[0] / "dup.csv", skip_invalid=True, show_progress=False)
    ItemIndex.from_features(cat.item_ids, {"text": np.eye(3, dtype=np.float32)}, factory="Flat",
                            show_progress=False).save(shop[0] / "dup_idx", skipped=cat)
    assert [json.loads(line)["row"] for line in (shop[0] / "dup_idx" / "skipped.jsonl").read_text().splitlines()] == \
        [3, 5]

    d, rows, _ = shop
    build(d / "all.csv", d / "idx", tiny_bert_dir, tiny_vit_dir)
    idx = ItemIndex.load(d / "idx", show_progress=False)
    for night, price in (("2026-11-30", "5"), ("2026-12-01", "6")):
        nightly = [{"item_id": "i1", "price": price}, {"item_id": "zz", "price": "1"}, {"item_id": "", "price": "2"}]
        write_rows(d / f"prices-{night}.csv", nightly, ["item_id", "price"])
        assert idx.update(d / f"prices-{night}.csv", skip_invalid=True)["skipped"] == 2
    listed = [json.loads(line) for line in (d / "idx" / "skipped.jsonl").read_text().splitlines()]
    # zz, unknown both nights: once, as last seen; the id-less row: once a file (no item to say it is the same)
    assert [(r["item_id"], r["row"], r["file"].rsplit("-", 1)[1]) for r in listed] == \
        [(None, 3, "30.csv"), ("zz", 2, "01.csv"), (None, 3, "01.csv")]
    # The same file again changes nothing and writes nothing but the report (the manifest is untouched:
    # a server does not reload); a new bad row is listed.
    manifest = (d / "idx" / "manifest.json").read_bytes()
    write_rows(d / "prices-2026-12-02.csv", [{"item_id": "i1", "price": "6"}, {"item_id": "yy", "price": "1"}],
               ["item_id", "price"])
    assert idx.update(d / "prices-2026-12-02.csv", skip_invalid=True)["updated"] == 0
    assert (d / "idx" / "manifest.json").read_bytes() == manifest
    listed = [json.loads(line) for line in (d / "idx" / "skipped.jsonl").read_text().splitlines()]
    assert [r["item_id"] for r in listed] == [None, "zz", None, "yy"]
    # The report keeps its mode, and a write that fails leaves no file behind, in the directory or beside it.
    (d / "idx" / "skipped.jsonl").chmod(0o640)
    write_rows(d / "prices-2026-12-03.csv", [{"item_id": "i1", "price": "6"}, {"item_id": "xx", "price": "1"}],
               ["item_id", "price"])
    idx.update(d / "prices-2026-12-03.csv", skip_invalid=True)
    assert (d / "idx" / "skipped.jsonl").stat().st_mode & 0o777 == 0o640
    before = sorted(p.name for p in d.iterdir()), sorted(p.name for p in (d / "idx").iterdir())
    report = (d / "idx" / "skipped.jsonl").read_bytes()

    def fail(*args):
        raise OSError("disk full")

    import os as os_module

    real_replace = os_module.replace
    os_module.replace = fail
    try:
        with pytest.raises(OSError, match="disk full"):
            idx.update(d / "prices-2026-12-02.csv", skip_invalid=True)
    finally:
        os_module.replace = real_replace
    assert (sorted(p.name for p in d.iterdir()), sorted(p.name for p in (d / "idx").iterdir())) == before
    assert (d / "idx" / "skipped.jsonl").read_bytes() == report
    assert not [p for p in (d / "idx").iterdir() if p.name.endswith(".tmp")]
    # Through a symlink, the report's temp file goes beside the directory the link points to.
    (d / "link").symlink_to(d / "idx")
    linked = ItemIndex.load(d / "link", show_progress=False)
    write_rows(d / "prices-2026-12-04.csv", [{"item_id": "i1", "price": "6"}, {"item_id": "ww", "price": "1"}],
               ["item_id", "price"])
    assert linked.update(d / "prices-2026-12-04.csv", skip_invalid=True)["updated"] == 0
    assert (d / "link").is_symlink() and "ww" in (d / "idx" / "skipped.jsonl").read_text()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    idx = ItemIndex.load(d / "idx", show_progress=False)
    # An index in memory lists the same problem once too, when it is saved.
    memory = ItemIndex.from_features(idx.ids, dict(idx.features), records=[it["fields"] for it in idx.items],
                                     factory="Flat", show_progress=False)
    for night in ("2026-11-30", "2026-12-01"):
        memory.update(d / f"prices-{night}.csv", skip_invalid=True)
    memory.save(d / "memory")
    listed = [json.loads(line) for line in (d / "memory" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["item_id"], r["file"].rsplit("-", 1)[1]) for r in listed] == [(None, "30.csv"), ("zz", "01.csv"),
                                                                            (None, "01.csv")]
    assert ItemIndex.load(d / "idx", show_progress=False).items == idx.items  # still loads, checksums and all


def test_rows_in_memory_update_and_add_as_a_file_does(shop, tiny_bert_dir, tiny_vit_dir, monkeypatch):
    import pandas as pd

    d, rows, names = shop
    build(d / "all.csv", d / "idx", tiny_bert_dir, tiny_vit_dir)
    idx = ItemIndex.load(d / "idx", show_progress=False)
    vectors = idx.vectors.copy()
    monkeypatch.setattr("mmrec.item_index.encode_catalog", lambda *a, **k: pytest.fail("nothing should be encoded"))
    # a DataFrame of prices (numpy numbers, a missing cell) changes prices only, as a file of item_id,price does
    prices = pd.DataFrame({"item_id": ["i1", "i2"], "price": [7.5, None]})
    assert idx.update(prices) == {"updated": 2, "unchanged": 0, "content": 0, "moved": 0, "added": 0, "removed": 0,
                                  "skipped": 0}
    assert idx.items[1]["fields"] == {"title": "dog story", "price": "7.5", "image": names[1]}
    assert idx.items[2]["fields"]["price"] == ""
    np.testing.assert_array_equal(idx.vectors, vectors)
    # a list of dicts: each row's own keys (i3 changes its price, i4 its title: that one is encoded)
    monkeypatch.undo()
    assert idx.update([{"item_id": "i3", "price": 1}, {"item_id": "i4", "title": "toy boy two"}])["content"] == 1
    assert idx.items[3]["fields"]["price"] == "1" and idx.items[4]["fields"]["title"] == "toy boy two"
    with pytest.raises(DataError, match=r"<records>: row 1, field 'item_id': id 'zz' is not in the index"):
        idx.update([{"item_id": "zz", "price": 1}])
    assert idx.add([{"item_id": "n1", "title": "new boots", "price": 5}]) == 1 and idx.ids[-1] == "n1"
    back = ItemIndex.load(d / "idx", show_progress=False)
    assert back.items == idx.items
    # any iterable of dicts; anything else is named
    assert idx.update(r for r in [{"item_id": "i3", "price": 2}])["updated"] == 1
    from mmrec.errors import ConfigError

    for bad, what in (({"item_id": ["i1"], "price": [1]}, "got dict"), ([("i1", 1)], "got list of tuple"), (5, "got int")):
        with pytest.raises(ConfigError, match=rf"a catalog is a file path or rows in memory \(dicts: .*\), {what}"):
            idx.update(bad)


def test_dataframe_cells_are_plain_values(tmp_path):
    import pandas as pd

    from mmrec.catalog import load_catalog

    # pd.read_parquet gives list cells as numpy arrays, and NaT / NA for missing values
    pd.DataFrame({"item_id": [1, 2], "title": ["x dog", "y cat"], "genres": [["Comedy", "Drama"], []]}).to_parquet(
        tmp_path / "g.parquet")
    frame = pd.read_parquet(tmp_path / "g.parquet")
    assert load_catalog(frame, show_progress=False).texts == load_catalog(tmp_path / "g.parquet",
                                                                          show_progress=False).texts == [
        "x dog. Comedy, Drama", "y cat"]
    frame = pd.DataFrame({"item_id": [1, 2], "title": ["a", "b"], "when": pd.to_datetime(["2020-01-02", None]),
                          "n": pd.array([1, None], dtype="Int64")})
    cat = load_catalog(frame, text_fields=["title"], show_progress=False)
    assert cat.records == [{"title": "a", "when": "2020-01-02 00:00:00", "n": "1"}, {"title": "b", "when": "", "n": ""}]
    # an integer column with a gap, which pandas holds as float64, reads as whole numbers (was "1995.0"), as a
    # CSV's does; a float column stays as pandas gives it, with a gap or without
    frame = pd.DataFrame({"item_id": [1, 2, 3], "title": ["a", "b", "c"], "year": [1995, None, 2001],
                          "price": [2.5, None, 3.0], "weight": [20.0, 15.0, 1.0]})
    assert frame["year"].dtype == "float64"
    huge = pd.DataFrame({"item_id": [1, 2], "title": ["a", "b"], "n": [1e22, None]})  # past 2**53: no exact integer
    assert load_catalog(huge, text_fields=["title"], show_progress=False).records[0]["n"] == "1e+22"
    cat = load_catalog(frame, text_fields=["title"], show_progress=False)
    assert [(r["year"], r["price"], r["weight"]) for r in cat.records] == [("1995", "2.5", "20.0"), ("", "", "15.0"),
                                                                           ("2001", "3.0", "1.0")]
    csv_path = tmp_path / "y.csv"
    csv_path.write_text("item_id,title,year\n1,a,1995\n2,b,\n3,c,2001\n")
    assert [r["year"] for r in load_catalog(csv_path, text_fields=["title"], show_progress=False).records] == \
        [r["year"] for r in cat.records]
    # a struct cell (a dict holding an array) reads as the file's JSON text
    pd.DataFrame({"item_id": [1, 2], "title": ["a", "b"], "meta": [{"tags": ["x", "y"], "n": 1}, {"tags": [], "n": 2}]}
                 ).to_parquet(tmp_path / "s.parquet")
    assert load_catalog(pd.read_parquet(tmp_path / "s.parquet"), text_fields=["title"], show_progress=False).records == \
        load_catalog(tmp_path / "s.parquet", text_fields=["title"], show_progress=False).records == [
        {"title": "a", "meta": '{"tags": ["x", "y"], "n": 1}'}, {"title": "b", "meta": '{"tags": [], "n": 2}'}]
    from mmrec.errors import ConfigError

    with pytest.raises(ConfigError, match="this is a loaded Catalog: pass it to ItemIndex.build / add / update"):
        load_catalog(cat)
