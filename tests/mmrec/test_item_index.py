from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

import index as index_pkg
from mmrec.errors import ConfigError, DataError, MMRecError, UnknownIdError
from mmrec.item_index import ItemIndex

# Five items in 3-d whose cosine similarities to item "a" are known exactly:
# a=(1,0,0); b at 10 deg, c at 45 deg, d at 90 deg, e at 180 deg from a.
ANGLES = {"a": 0.0, "b": 10.0, "c": 45.0, "d": 90.0, "e": 180.0}


def five_items(ids=("a", "b", "c", "d", "e")) -> ItemIndex:
    rad = np.deg2rad(list(ANGLES.values()))
    text = np.stack([np.cos(rad), np.sin(rad), np.zeros(5)], 1).astype(np.float32) * 3.0  # scale is irrelevant
    records = [{"title": f"item {i}"} for i in ids]
    return ItemIndex.from_features(list(ids), {"text": text}, records=records, factory="Flat", show_progress=False)


def test_similar_order_and_scores_are_exact():
    idx = five_items()
    res = idx.similar("a", k=4)
    assert [r.item_id for r in res] == ["b", "c", "d", "e"]  # "a" itself excluded
    np.testing.assert_allclose(
        [r.score for r in res], np.cos(np.deg2rad([10, 45, 90, 180])), atol=1e-6
    )
    assert res[0].to_dict() == {"item_id": "b", "score": pytest.approx(np.cos(np.deg2rad(10)), abs=1e-6),
                                "title": "item b"}


def test_integer_ids_and_command_line_spelling():
    idx = five_items(ids=(10, 20, 30, 40, 50))
    assert [r.item_id for r in idx.similar("10", k=2)] == [20, 30]  # "10" as typed finds int 10
    with pytest.raises(MMRecError, match="item '99' is not in this index"):
        idx.similar(99)


def test_two_modalities_and_missing_image():
    text = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    image = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    idx = ItemIndex.from_features(
        ["x", "y", "z"], {"text": text, "image": image}, present={"image": np.array([True, True, False])},
        factory="Flat", show_progress=False,
    )
    res = {r.item_id: r.score for r in idx.similar("x", k=2)}
    # x,y: text cos 1, image cos 0 -> mean 0.5; z has no image: only its text (cos 0) counts.
    assert res["y"] == pytest.approx(0.5, abs=1e-6)
    assert res["z"] == pytest.approx(0.0, abs=1e-6)
    # Explanations: each item's share of the fixed combination (z has no image).
    assert idx.manifest["tokens"] == ["text", "image"]
    np.testing.assert_allclose(idx.attention, [[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])


def test_a_query_in_a_modality_of_weight_zero_is_refused_clearly():
    text = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    image = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    idx = ItemIndex.from_features(["x", "y", "z"], {"text": text, "image": image}, weights={"text": 1.0, "image": 0.0},
                                  factory="Flat", show_progress=False)
    assert [r.item_id for r in idx._search_query(idx.query_vector("text", np.array([1.0, 0.0])), 1)] == ["x"]
    with pytest.raises(MMRecError, match="built with image weight 0 .*build it again with a positive image weight"):
        idx.query_vector("image", np.array([1.0, 0.0]))


def test_add_remove_then_search(tmp_path):
    idx = five_items()
    idx.save(tmp_path / "idx")
    idx = ItemIndex.load(tmp_path / "idx", show_progress=False)
    assert idx.remove(["b", "d", "b"]) == 2  # an id given twice is one item removed
    assert len(idx) == 3 and "b" not in idx
    assert [r.item_id for r in idx.similar("a", k=5)] == ["c", "e"]
    with pytest.raises(MMRecError, match="not in this index: zz; nothing was removed"):
        idx.remove(["zz"])
    reloaded = ItemIndex.load(tmp_path / "idx")  # remove() saved in place
    assert [r.item_id for r in reloaded.similar("a", k=5)] == ["c", "e"]


def test_save_load_round_trip(tmp_path):
    idx = five_items()
    idx.save(tmp_path / "idx")
    back = ItemIndex.load(tmp_path / "idx")
    for q in ANGLES:
        a, b = idx.similar(q, k=4), back.similar(q, k=4)
        assert [r.item_id for r in a] == [r.item_id for r in b]
        np.testing.assert_array_equal([r.score for r in a], [r.score for r in b])
    np.testing.assert_array_equal(idx.vectors, back.vectors)
    assert back.vectors.dtype == np.float32
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["count"] == 5 and manifest["factory"] == "Flat"
    assert manifest["dim"] == 3 + 1  # the MIPS coordinate (index/mips.py)
    assert set(manifest["checksums"]) >= {"index.faiss", "ids.json", "items.jsonl", "features.safetensors"}


def test_display_fields_with_line_separators_and_any_script_survive_save_load(tmp_path):
    # items.jsonl is written unescaped (ensure_ascii=False) and read in one parse split on "\n":
    # U+2028 / U+0085 / a form feed inside a field must not split an item.
    fields = [{"title": "a\u2028b"}, {"title": "c\x85d\x0ce"}, {"title": "Amélie ☃ 東京", "note": "x\ny"}]
    idx = ItemIndex.from_features(["p", "q", "r"], {"text": np.eye(3, dtype=np.float32)}, records=fields,
                                  factory="Flat", show_progress=False)
    idx.save(tmp_path / "idx")
    back = ItemIndex.load(tmp_path / "idx", show_progress=False)
    assert [it["fields"] for it in back.items] == fields and [it["item_id"] for it in back.items] == ["p", "q", "r"]


def test_tampered_directory_is_refused(tmp_path):
    five_items().save(tmp_path / "idx")
    with open(tmp_path / "idx" / "items.jsonl", "a") as f:
        f.write("\n")
    with pytest.raises(Exception, match="items.jsonl"):
        ItemIndex.load(tmp_path / "idx")


def test_crash_mid_save_leaves_nothing(tmp_path, monkeypatch):
    idx = five_items()

    def boom(self, directory):
        (directory / "index.faiss").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_pkg.FaissIndex, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        idx.save(tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_leaves_the_manifest_in_memory_as_it_was(tmp_path, monkeypatch):
    # A trained save's writer points the manifest's encoder entries at the tuned copies it writes
    # (Recommender.attach_files); when the save then fails, memory must not name missing files.
    idx = five_items()
    before = copy.deepcopy(idx.manifest)

    def attach(tmp):
        idx.manifest["encoders"]["text"] = {"model": "encoders/text", "bundled": True}
        return []

    def boom(self, directory):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_pkg.FaissIndex, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        idx.save(tmp_path / "idx", attach=attach)
    assert idx.manifest == before and idx.encoders.spec == before["encoders"]
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_what_mmrec_wrote(tmp_path, monkeypatch):
    from mmrec.item_index import check_out

    idx = five_items()
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    with pytest.raises(MMRecError, match=r"notes is not an index or model directory \(no mmrec manifest.json\)"):
        idx.save(mine, overwrite=True)
    assert (mine / "thesis.txt").read_text() == "years of work" and sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(MMRecError, match="exists and is not a directory"):
        idx.save(tmp_path / "file")
    # An empty directory, or an index, is replaced.
    (tmp_path / "empty").mkdir()
    idx.save(tmp_path / "empty")
    idx.save(tmp_path / "empty", overwrite=True)
    assert len(ItemIndex.load(tmp_path / "empty")) == 5
    with pytest.raises(MMRecError, match=r"already exists: --overwrite \(overwrite=True in Python\) replaces it"):
        check_out(tmp_path / "empty", overwrite=False)
    # What --overwrite would not replace is never answered with "--overwrite replaces it".
    with pytest.raises(MMRecError, match="notes is not an index or model directory"):
        check_out(mine, overwrite=False)
    with pytest.raises(MMRecError, match=r"file exists and is not a directory: choose another --out"):
        check_out(tmp_path / "file", overwrite=False)
    (tmp_path / "empty" / "catalog.csv").write_text("item_id\n1\n")  # an index holding a file of yours
    with pytest.raises(MMRecError, match=r"empty holds files mmrec did not write \(catalog.csv\)"):
        check_out(tmp_path / "empty", overwrite=False)
    (tmp_path / "empty" / "catalog.csv").unlink()
    with pytest.raises(MMRecError, match=r"holds the input"):  # fine-tuning from the directory it would replace
        check_out(tmp_path / "empty", overwrite=False, inputs=[tmp_path / "empty"])
    (tmp_path / "empty" / "sub").mkdir()  # an existing folder inside an index: --overwrite would not help
    with pytest.raises(MMRecError, match=r"is inside the index or model directory"):
        check_out(tmp_path / "empty" / "sub", overwrite=False)
    (tmp_path / "empty" / "sub").rmdir()
    # Below a file nothing can be created: refused before any work, not after encoding or training.
    for below in (tmp_path / "file" / "idx", tmp_path / "file" / "a" / "b"):
        with pytest.raises(MMRecError, match=rf"--out {below} cannot be created: {tmp_path / 'file'} is not a directory"):
            check_out(below, overwrite=False)
    check_out(tmp_path / "new" / "a" / "b", overwrite=False)  # missing parents are fine: they are made
    # A symlinked --out is written beside its target: that folder is the one tried.
    (tmp_path / "real").mkdir()
    idx.save(tmp_path / "real" / "idx")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "link").symlink_to(tmp_path / "real" / "idx", target_is_directory=True)
    tried = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: tried.append(Path(kw["dir"])) or real_mkdtemp(**kw))
    check_out(tmp_path / "plain" / "link", overwrite=True)
    assert tried == [(tmp_path / "real").resolve()]
    shutil.rmtree(tmp_path / "plain")
    shutil.rmtree(tmp_path / "real")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "notes"]  # the probe left nothing


def test_an_output_holding_an_input_is_refused(tmp_path):
    from mmrec.item_index import check_out

    five_items().save(tmp_path / "idx")
    for given in (tmp_path / "idx" / "catalog.csv", str(tmp_path / "idx"), tmp_path / "idx" / "img"):
        with pytest.raises(MMRecError, match="holds the input .*: writing it would delete that input"):
            check_out(tmp_path / "idx", True, [None, given])
    check_out(tmp_path / "idx", True, [tmp_path / "elsewhere.csv", tmp_path / "idx2" / "x.csv", object()])
    # Anything else in an index directory would be lost with it: refused, whatever the inputs.
    (tmp_path / "idx" / "catalog.csv").write_text("item_id,title\n1,a\n")
    with pytest.raises(MMRecError, match=r"holds files mmrec did not write \(catalog.csv\)"):
        check_out(tmp_path / "idx", True)


def test_saving_in_place_never_drops_a_users_files(tmp_path):
    idx = five_items()
    idx.save(tmp_path / "idx")
    idx = ItemIndex.load(tmp_path / "idx", show_progress=False)
    (tmp_path / "idx" / "pics").mkdir()
    (tmp_path / "idx" / "new.csv").write_text("item_id,title\n9,x\n")
    for change in (lambda: idx.remove(["a"]), lambda: idx.add(tmp_path / "idx" / "new.csv")):
        with pytest.raises(MMRecError, match=r"holds files mmrec did not write \(new.csv, pics\): .*move them out"):
            change()
    assert len(ItemIndex.load(tmp_path / "idx")) == 5 and (tmp_path / "idx" / "pics").is_dir()


def test_a_file_of_yours_inside_a_folder_mmrec_wrote_is_never_dropped(tmp_path):
    from mmrec.item_index import check_rewrite

    d = tmp_path / "model"
    for name in ("manifest.json", "index.faiss", "encoders/text/model.safetensors", "encoders/text/config.json"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("x")
    manifest = {"checksums": {"index.faiss": "0"},
                "attachments": ["encoders/text/model.safetensors", "encoders/text/config.json"]}
    check_rewrite(d, manifest, "rewrite it")  # only what mmrec wrote: nothing to lose
    (d / "encoders" / "mynotes.txt").write_text("mine")
    (d / "encoders" / "text" / "README.local").write_text("mine")
    (d / "encoders" / "old" / "deep").mkdir(parents=True)
    with pytest.raises(MMRecError, match=r"holds files mmrec did not write \(encoders/mynotes.txt, encoders/old, "
                                         r"encoders/text/README.local\)"):
        check_rewrite(d, manifest, "rewrite it")


def test_the_current_directory_is_never_an_output(tmp_path, monkeypatch):
    from mmrec.item_index import check_out

    five_items().save(tmp_path / "idx")
    monkeypatch.chdir(tmp_path / "idx")
    for out in (".", tmp_path / "idx", tmp_path):
        with pytest.raises(MMRecError, match="is the current directory or holds it"):
            check_out(out, True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    check_out(tmp_path / "work" / "below", True)
    # Inside an index, a new directory would block index add / remove there: refused.
    for below in (tmp_path / "idx" / "below", tmp_path / "idx" / "a" / "b"):
        with pytest.raises(MMRecError, match=rf"--out {below} is inside the index or model directory {tmp_path / 'idx'}"):
            check_out(below, False)


def test_an_index_opened_through_a_symlink_stays_behind_it(tmp_path):
    five_items().save(tmp_path / "v1")
    (tmp_path / "current").symlink_to(tmp_path / "v1", target_is_directory=True)
    idx = ItemIndex.load(tmp_path / "current", show_progress=False)
    assert idx.remove(["a"]) == 1
    assert (tmp_path / "current").is_symlink() and (tmp_path / "current").resolve() == (tmp_path / "v1").resolve()
    assert len(ItemIndex.load(tmp_path / "v1")) == 4 and len(ItemIndex.load(tmp_path / "current")) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1"]  # no stray old copy or link


def centred_catalog(n: int = 80, seed: int = 0) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``n`` items whose text vectors share one strong direction (as encoder outputs do), and
    images for every other item (``n / 2`` of them: both modalities are centred for n >= 64)."""
    rng = np.random.default_rng(seed)
    text = (rng.normal(size=(n, 6)) + np.array([4.0, 0, 0, 0, 0, 0])).astype(np.float32)
    image = rng.normal(size=(n, 3)).astype(np.float32) + 1.0
    present = {"text": np.ones(n, bool), "image": np.arange(n) % 2 == 0}
    return [f"i{k}" for k in range(n)], {"text": text, "image": image}, present


def test_similarity_is_measured_from_the_catalog_means_and_survives_save_load_and_add(tmp_path):
    ids, feats, present = centred_catalog()
    idx = ItemIndex.from_features(ids[:-1], {m: x[:-1] for m, x in feats.items()},
                                  {m: p[:-1] for m, p in present.items()}, factory="Flat", show_progress=False)
    mean = {m: feats[m][:-1][present[m][:-1]].mean(0) for m in feats}
    assert idx.manifest["centered"] == ["text", "image"]
    np.testing.assert_allclose(idx.centers["text"], mean["text"], rtol=1e-6)
    np.testing.assert_allclose(idx.centers["image"], mean["image"], rtol=1e-6)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def oracle(a, b):  # the equal-weight mean of the centred cosines over the modalities both have
        return sum(0.5 * float(unit(feats[m][a] - mean[m]) @ unit(feats[m][b] - mean[m]))
                   for m in feats if present[m][a] and present[m][b])

    res = idx.similar("i0", k=78)
    want = sorted(((oracle(0, b), f"i{b}") for b in range(1, 79)), reverse=True)
    assert [r.item_id for r in res] == [i for _, i in want]
    np.testing.assert_allclose([r.score for r in res], [s for s, _ in want], atol=1e-5)
    # A text query scores the centred text cosine; the plain cosine would rank the items otherwise.
    q = feats["text"][5] + np.float32(0.3)
    hits = idx._search_query(idx.query_vector("text", q), 79)
    cos = {f"i{b}": float(unit(q - mean["text"]) @ unit(feats["text"][b] - mean["text"])) for b in range(79)}
    assert [r.item_id for r in hits] == sorted(cos, key=cos.get, reverse=True)
    np.testing.assert_allclose([r.score for r in hits], sorted(cos.values(), reverse=True), atol=1e-5)
    with pytest.raises(MMRecError, match="text query vector less the catalog's mean is zero"):
        idx.query_vector("text", idx.centers["text"])
    plain = ItemIndex.from_features(ids[:-1], {m: x[:-1] for m, x in feats.items()},
                                    {m: p[:-1] for m, p in present.items()}, factory="Flat", center=False)
    assert plain.manifest["centered"] == [] and plain.centers == {}
    assert [r.item_id for r in plain._search_query(plain.query_vector("text", q), 79)] != [r.item_id for r in hits]

    # Saved and loaded: same means, same answers; an added item is centred by the stored means
    # (the index does not move when it grows), so it gets the vector a build would have given it.
    idx.save(tmp_path / "idx")
    back = ItemIndex.load(tmp_path / "idx")
    assert back.manifest["format_version"] == 2
    np.testing.assert_array_equal(back.centers["text"], idx.centers["text"])
    assert [(r.item_id, r.score) for r in back.similar("i3", k=10)] == [(r.item_id, r.score) for r in idx.similar("i3", k=10)]
    back.add_features([ids[-1]], {m: x[-1:] for m, x in feats.items()}, {m: p[-1:] for m, p in present.items()})
    np.testing.assert_array_equal(ItemIndex.load(tmp_path / "idx").centers["text"], idx.centers["text"])
    np.testing.assert_allclose(back.similar("i79", k=1)[0].score,
                               max(oracle(79, b) for b in range(79)), atol=1e-5)


def test_a_format_1_directory_keeps_the_plain_cosine(tmp_path):
    # Directories written before centring have neither 'centered' nor centre tensors: they load
    # and answer as they always did.
    ids, feats, present = centred_catalog()
    ItemIndex.from_features(ids, feats, present, factory="Flat", center=False).save(tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del manifest["centered"]
    manifest["format_version"] = 1
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    old = ItemIndex.load(tmp_path / "old")
    assert old.centers == {}
    fresh = ItemIndex.from_features(ids, feats, present, factory="Flat", center=False)
    assert [(r.item_id, r.score) for r in old.similar("i1", k=5)] == [(r.item_id, r.score) for r in fresh.similar("i1", k=5)]


def test_similar_many_is_similar_for_each_item_and_keeps_ties_in_index_order(monkeypatch):
    # b, c and d point the same way: ties, which both paths must break by index order.
    vecs = np.array([[1, 0, 0], [1, 1, 0], [2, 2, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], np.float32)
    ids = ["a", "b", "c", "d", "e", "f"]
    idx = ItemIndex.from_features(ids, {"text": vecs}, factory="Flat", show_progress=False)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    for k in (1, 2, 5, 9):
        for batch_size in (1, 4, 1024):
            got = idx.similar_many(ids, k, by="cosine", batch_size=batch_size)
            for row, results in enumerate(got):
                sims = (unit.astype(np.float64) @ unit[row]).round(6)  # the exact ranking, ties made exact
                want = [i for i in np.argsort(-sims, kind="stable") if i != row][:k]
                assert [r.item_id for r in results] == [ids[i] for i in want]
                np.testing.assert_allclose([r.score for r in results], sims[want], atol=1e-6)
            # The index's own ranking: the exact inner product of the combined vectors (FAISS may
            # order b, c, d, tied to the last float32 digit, either way).
            raw = idx.vectorizer.mips.original(idx.vectors).astype(np.float64)
            for row, results in enumerate(idx.similar_many(ids, k, batch_size=batch_size)):
                scores = raw @ raw[row]
                want = np.sort(np.delete(scores, row))[::-1][:k]
                np.testing.assert_allclose([r.score for r in results], want, atol=1e-6)
                np.testing.assert_allclose([scores[ids.index(r.item_id)] for r in results], want, atol=1e-6)
                assert ids[row] not in {r.item_id for r in results}
    assert [r.item_id for r in idx.similar_many(["a"], 2, by="cosine")[0]] == ["b", "c"]  # b, c, d tie: b, c
    # A score matrix capped at 6 scores: one item a batch, the same answers.
    monkeypatch.setattr("mmrec.item_index.COSINE_BATCH_SCORES", 6)
    assert idx.similar_many(ids, 3, by="cosine") == [idx.similar(i, 3, by="cosine") for i in ids]
    assert idx.similar_many([], 3) == [] and idx.ids == ids
    with pytest.raises(MMRecError, match="item 'zz' is not in this index"):
        idx.similar_many(["a", "zz"])
    for bad in (dict(k=0), dict(batch_size=0)):
        with pytest.raises(MMRecError, match=f"{next(iter(bad))} must be at least 1, got 0"):
            idx.similar_many(["a"], **bad)
    with pytest.raises(ConfigError, match="by must be 'index' or 'cosine'"):
        idx.similar_many(["a"], by="dot")


def test_similar_many_on_a_one_item_index_returns_nothing():
    idx = ItemIndex.from_features(["solo"], {"text": np.ones((1, 3), np.float32)}, factory="Flat",
                                  show_progress=False)
    assert idx.similar_many(["solo"], 5) == [[]] and idx.similar_many(["solo"], 5, by="cosine") == [[]]


def test_a_catalog_column_named_like_a_result_key_never_replaces_it():
    from mmrec.explain import explain_item

    idx = ItemIndex.from_features(["x", "y"], {"text": np.array([[1, 0], [1, 1]], np.float32)},
                                  records=[{"score": "great", "attention": "a"}, {"score": "bad", "attention": "b"}],
                                  factory="Flat", show_progress=False)
    got = idx.similar("x", k=1)[0].to_dict()
    assert got["item_id"] == "y" and isinstance(got["score"], float) and got["catalog.score"] == "bad"
    assert got["attention"] == "b"  # not a key of a result: kept as it is
    shown = explain_item(idx, "x", 1).to_dict()
    assert shown["catalog.attention"] == "a" and shown["attention"] == {"text": 1.0} and shown["score"] == "great"


def test_a_pq_factory_the_catalog_cannot_train_is_refused_before_encoding(tmp_path, tiny_bert_dir, monkeypatch):
    import mmrec.pipeline as pipeline  # (imported first: it binds encode_catalog, the name patched)

    def encode(*args, **kwargs):
        raise AssertionError("encoded before the factory was checked")

    monkeypatch.setattr(pipeline, "encode_catalog", encode)
    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n2,robot dog\n3,cooking show\n")
    # Any width takes PQ codes (33 = 32 text dimensions + the MIPS coordinate is padded: FaissIndex),
    # but three items train no 256-centroid codebook.
    with pytest.raises(ConfigError, match=r"factory 'IVF1,PQ2' needs .*PQ codebooks need 9984 rows"):
        ItemIndex.build(tmp_path / "items.csv", text_encoder=tiny_bert_dir, image_encoder=None, factory="IVF1,PQ2",
                        show_progress=False)


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])
def test_a_failed_save_leaves_memory_as_the_directory_is(tmp_path, monkeypatch, factory):
    feats = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    ItemIndex.from_features([f"i{j}" for j in range(12)], {"text": feats}, records=[{"g": "x"}] * 12,
                            factory=factory, show_progress=False).save(tmp_path / "idx")
    idx = ItemIndex.load(tmp_path / "idx", show_progress=False)
    want = [[(r.item_id, r.score) for r in idx.similar(i, 5)] for i in idx.ids]
    ids, vectors, matching = idx.ids, idx.vectors.copy(), idx.matching({"g": "x"})
    if factory == "HNSW8":  # a setting held in memory, for the next write (it was read back from the disk: 256)
        idx.index.ef_search = 40

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ItemIndex, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        idx.remove(["i3", "i4"])
    with pytest.raises(OSError, match="No space left"):
        idx.add_features(["new"], {"text": feats[:1]}, {"text": np.ones(1, bool)}, [{"g": "x"}])
    assert idx.ids == ids and len(idx.index) == 12 and idx.matching({"g": "x"}) == matching
    assert factory == "Flat" or idx.index.ef_search == 40
    np.testing.assert_array_equal(idx.vectors, vectors)
    assert [[(r.item_id, r.score) for r in idx.similar(i, 5)] for i in idx.ids] == want
    monkeypatch.undo()
    assert idx.remove(["i3"]) == 1 and ItemIndex.load(tmp_path / "idx", show_progress=False).ids == idx.ids


def test_a_second_writer_is_refused_not_silently_lost_and_readers_get_one_version(tmp_path, monkeypatch):
    import mmrec.item_index as item_index

    five_items().save(tmp_path / "idx")
    first = ItemIndex.load(tmp_path / "idx", show_progress=False)
    second = ItemIndex.load(tmp_path / "idx", show_progress=False)
    extra = {"text": np.array([[1.0, 1.0, 0.0]], np.float32)}
    present = {"text": np.array([True])}
    first.add_features(["f"], extra, present, records=[{"title": "item f"}])
    with pytest.raises(MMRecError, match="was rewritten by another command since it was loaded: nothing was changed"):
        second.add_features(["g"], extra, present, records=[{"title": "item g"}])
    assert len(second) == 5 and "g" not in second  # untouched, as the directory
    # Refused inside the save instead (a writer that got in between the check and the lock): the FAISS
    # index is put back as well, so the object still answers as before.
    monkeypatch.setattr(second, "_check_in_place", lambda: None)
    with pytest.raises(MMRecError, match="was rewritten by another command since it was loaded"):
        second.add_features(["g"], extra, present, records=[{"title": "item g"}])
    assert sorted(second.index.ids) == ["a", "b", "c", "d", "e"] and second.ids == ["a", "b", "c", "d", "e"]
    assert [r.item_id for r in second.similar("a", k=4)] == ["b", "c", "d", "e"]
    monkeypatch.undo()
    assert ItemIndex.load(tmp_path / "idx").ids == ["a", "b", "c", "d", "e", "f"]
    # An update refused so (its moved item re-added to the FAISS index under its new vector): the FAISS
    # index holds the stored vector again (it kept the refused one, ranking the item by content it never got)
    feats = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    (tmp_path / "items.csv").write_text("item_id\n" + "".join(f"{i}\n" for i in range(8)))
    np.save(tmp_path / "f.npy", feats)
    ItemIndex.build(tmp_path / "items.csv", tmp_path / "upd", features={"f": tmp_path / "f.npy"}, text_encoder="none",
                    image_encoder="none", factory="Flat", show_progress=False)
    stale, other = (ItemIndex.load(tmp_path / "upd", show_progress=False) for _ in range(2))
    want = [[(r.item_id, r.score) for r in stale.similar(i, 7)] for i in range(8)]
    (tmp_path / "u.csv").write_text("item_id\n5\n")
    np.save(tmp_path / "u.npy", -feats[5:6])
    monkeypatch.setattr(stale, "_check_in_place", lambda write=True: None)
    other.remove([7])  # another command rewrites the directory before the update's save
    with pytest.raises(MMRecError, match="was rewritten by another command since it was loaded"):
        stale.update(tmp_path / "u.csv", features={"f": tmp_path / "u.npy"})
    assert [[(r.item_id, r.score) for r in stale.similar(i, 7)] for i in range(8)] == want
    # A reader between two writes reads again: never the FAISS index of one version beside the items of another.
    real, calls = item_index.FaissIndex.load, []

    def load_then_rewrite(directory):
        got = real(directory)
        if not calls:
            calls.append(directory)
            first.remove(["a"])  # another command publishes a new version meanwhile
        return got

    monkeypatch.setattr(item_index.FaissIndex, "load", staticmethod(load_then_rewrite))
    back = ItemIndex.load(tmp_path / "idx", show_progress=False)
    assert back.ids == ["b", "c", "d", "e", "f"] and len(back.index) == 5 and len(calls) == 1
    # A write stopped between its two renames is named with the way back.
    (tmp_path / "idx").rename(tmp_path / ".idx.old-123abc")
    with pytest.raises(MMRecError, match=r"idx: no such index directory; an interrupted write left the previous "
                                         r"version at .*\.idx\.old-123abc: `mv "):
        ItemIndex.load(tmp_path / "idx")
    (tmp_path / ".idx.old-123abc").rename(tmp_path / ".v[1].old-9f")  # a name glob would read as a pattern
    with pytest.raises(MMRecError, match=r"v\[1\]: no such index directory; an interrupted write left .*\.v\[1\]\.old-9f"):
        ItemIndex.load(tmp_path / "v[1]")
    # Two left, the newer one half deleted (a removal cut short, then a kill between the renames): the whole one
    # is named (the newest by mtime was named, and `mv` of it gave "file 'items.jsonl' ... is missing")
    import os
    import shutil

    shutil.copytree(tmp_path / ".v[1].old-9f", tmp_path / ".v[1].old-aa")
    (tmp_path / ".v[1].old-aa" / "items.jsonl").unlink()
    os.utime(tmp_path / ".v[1].old-9f", ns=(10**18, 10**18))
    os.utime(tmp_path / ".v[1].old-aa", ns=(2 * 10**18, 2 * 10**18))
    with pytest.raises(MMRecError, match=r"left the previous version at .*\.v\[1\]\.old-9f: `mv "):
        ItemIndex.load(tmp_path / "v[1]")
    shutil.rmtree(tmp_path / ".v[1].old-9f")
    with pytest.raises(MMRecError, match=r"an interrupted write left .*\.v\[1\]\.old-aa, none of them whole"):
        ItemIndex.load(tmp_path / "v[1]")
    # through a link, the folder replaced is the one it points to, and its previous version lies beside it
    (tmp_path / "store").mkdir()
    five_items().save(tmp_path / "store" / ".v1.old-bb")
    (tmp_path / "current").symlink_to(tmp_path / "store" / "v1")
    with pytest.raises(MMRecError, match=r"current: no such index directory; an interrupted write left the previous "
                                         r"version at .*store/\.v1\.old-bb: `mv \S+ \S+store/v1` puts it back"):
        ItemIndex.load(tmp_path / "current")


def test_the_version_a_save_remembers_is_its_own_not_a_later_writers(tmp_path, monkeypatch):
    import index.persist as persist

    five_items().save(tmp_path / "idx")
    a = ItemIndex.load(tmp_path / "idx", show_progress=False)
    real, done = persist._publish, []

    def publish_then_another_writer(*args, **kwargs):
        real(*args, **kwargs)
        if not done:  # right after a's version is in place, another command writes a newer one
            done.append(1)
            ItemIndex.load(tmp_path / "idx", show_progress=False).remove(["e"])

    monkeypatch.setattr(persist, "_publish", publish_then_another_writer)
    a.remove(["d"])
    monkeypatch.undo()
    assert ItemIndex.load(tmp_path / "idx").ids == ["a", "b", "c"]
    with pytest.raises(MMRecError, match="was rewritten by another command since it was loaded"):
        a.remove(["a"])  # a holds "e", which the other command removed: its save would bring it back
    assert ItemIndex.load(tmp_path / "idx").ids == ["a", "b", "c"]


def test_saving_elsewhere_copies_the_model_files_of_its_own_version_only(tmp_path):
    five_items().save(tmp_path / "idx", attach=lambda tmp: (tmp / "model.bin").write_text("v1") and ["model.bin"])
    a = ItemIndex.load(tmp_path / "idx", show_progress=False, trained=True)
    five_items().save(tmp_path / "idx", overwrite=True,
                      attach=lambda tmp: (tmp / "model.bin").write_text("v2") and ["model.bin"])  # train --overwrite
    with pytest.raises(MMRecError, match="was rewritten by another command since it was loaded"):
        a.save(tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    b = ItemIndex.load(tmp_path / "idx", show_progress=False, trained=True)
    b.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "model.bin").read_text() == "v2"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("modalities"), r"field\(s\) 'modalities' missing"),
    (lambda m: m.pop("checksums"), r"field\(s\) 'checksums' missing"),
    (lambda m: m["checksums"].pop("items.jsonl"), r"'checksums' does not list items.jsonl"),
    (lambda m: m["checksums"].update({"../outside": "0" * 64}), r"'../outside' in 'checksums' is not a file of"),
])
def test_an_edited_manifest_is_refused_by_name_not_loaded_unverified(tmp_path, edit, message):
    ids, feats, present = centred_catalog(n=12)
    ItemIndex.from_features(ids, feats, present, factory="Flat").save(tmp_path / "idx")
    (tmp_path / "outside").write_text("not the index's")
    path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(index_pkg.IndexFormatError, match=message):
        ItemIndex.load(tmp_path / "idx")


def test_numpy_ids_are_stored_as_plain_ids_and_the_index_saves(tmp_path):
    ids, feats, present = centred_catalog(n=12)
    numbered = ItemIndex.from_features(np.arange(12), feats, present, factory="Flat", show_progress=False)
    numbered.add_features(np.array([100, 101]), {m: x[:2] for m, x in feats.items()},
                          {m: p[:2] for m, p in present.items()}, save=False)
    assert all(type(i) is int for i in numbered.ids) and numbered.ids[-2:] == [100, 101]
    numbered.save(tmp_path / "idx")  # items.jsonl takes them as JSON
    back = ItemIndex.load(tmp_path / "idx", show_progress=False)
    assert back.ids == numbered.ids
    named = ItemIndex.from_features(np.array(ids), feats, present, factory="Flat", show_progress=False)
    assert all(type(i) is str for i in named.ids)


def test_remove_takes_one_id_as_one_id_and_a_generator_whole(tmp_path):
    idx = five_items(ids=(1, 2, 12, 4, 5))
    idx.save(tmp_path / "idx")
    idx = ItemIndex.load(tmp_path / "idx", show_progress=False)
    assert idx.similar_many("12", 2) == [idx.similar(12, 2)]  # one list, for item 12
    assert idx.remove("12") == 1  # item 12, not the items 1 and 2
    assert idx.remove(np.int64(4)) == 1
    assert idx.remove(x for x in [5]) == 1  # read once: not used up by the check for unknown ids
    assert idx.remove([]) == 0
    assert ItemIndex.load(tmp_path / "idx").ids == [1, 2]


def test_an_id_too_long_for_an_integer_is_no_id_of_the_index():
    # a 5,000-digit id raised ValueError (Python's 4,300-digit limit on reading an int): a 500 from serve
    from mmrec.ids import normalize_ids

    long_id = "1" * 5000
    assert normalize_ids(["7", long_id]) == ["7", long_id] and normalize_ids(["7", "1" * 4000]) == [7, int("1" * 4000)]
    idx = ItemIndex.from_features([1, 2, 3], {"f": np.eye(3, dtype=np.float32)}, show_progress=False)
    assert long_id not in idx and [r.item_id for r in idx.similar(1, k=2, exclude=[long_id])] == [2, 3]
    with pytest.raises(UnknownIdError, match="is not in this index"):
        idx.similar(long_id, k=1)


def test_an_index_from_features_refuses_ids_of_two_types():
    # [1, "1"] was saved and loaded, and the string then shadowed the int: item 1 unreachable from the CLI
    with pytest.raises(MMRecError, match=r"item ids are all int or all str, got int \(2\) and str \('01'\): make "
                                         r"them one type"):
        ItemIndex.from_features([1, "1", "01", 2], {"f": np.eye(4, dtype=np.float32)}, show_progress=False)
    assert ItemIndex.from_features([np.int64(1), 2], {"f": np.eye(2, dtype=np.float32)}, show_progress=False).ids == [1, 2]


def test_add_features_refuses_an_id_the_index_has_or_of_another_type():
    idx = five_items(ids=(10, 20, 30, 40, 50))
    one = {"text": np.ones((1, 3), np.float32)}, {"text": np.ones(1, bool)}

    def two_of():
        return {"text": np.ones((2, 3), np.float32)}, {"text": np.ones(2, bool)}

    with pytest.raises(MMRecError, match="10 already in the index; nothing was added"):
        idx.add_features([np.int64(10)], *one, save=False)
    with pytest.raises(MMRecError, match=r"integer item ids; new ids \['x9', '07'\] are not integers"):
        idx.add_features(["x9", "07"], *two_of(), save=False)
    with pytest.raises(MMRecError, match="10 already in the index"):
        idx.add_features(["10"], *one, save=False)  # "10" is item 10, as index add reads a catalog's "10"
    idx.add_features(["7"], *one, save=False)
    assert idx.ids[-1] == 7 and type(idx.ids[-1]) is int and idx.similar("7", 1)[0].item_id != 7
    two = {"text": np.ones((2, 3), np.float32)}, {"text": np.ones(2, bool)}
    with pytest.raises(MMRecError, match="60 given twice"):
        idx.add_features([60, 60], *two, save=False)
    assert len(idx) == 6
    idx.add_features([np.int64(60)], *one, save=False)
    assert idx.ids[-1] == 60 and type(idx.ids[-1]) is int


@pytest.mark.parametrize("k", [True, 2.0, None, "3", 0, -1])
def test_k_must_be_a_whole_number_of_at_least_one(k):
    idx = five_items()
    for call in (lambda: idx.similar("a", k=k), lambda: idx.similar("a", k=k, by="cosine"),
                 lambda: idx.similar_many(["a"], k=k), lambda: idx.search_vectors(idx.vectors[:1], k=k)):
        with pytest.raises(MMRecError, match="k must be"):
            call()
    assert len(idx.similar("a", k=np.int64(2))) == 2


def test_a_content_index_refuses_the_modality_names_a_model_does(tmp_path):
    np.save(tmp_path / "f.npy", np.eye(4, dtype=np.float32))
    for name in ("id", "a.b"):  # 'id' read as the ID token in explanations ("id only:")
        with pytest.raises(ConfigError, match=f"features {name}=.*f.npy: modality name '{name}' is not allowed"):
            ItemIndex.build(None, tmp_path / "out", features={name: tmp_path / "f.npy"}, show_progress=False)
        assert not (tmp_path / "out").exists()
    assert len(ItemIndex.build(None, tmp_path / "out", features={"a_b": tmp_path / "f.npy"}, show_progress=False)) == 4


def test_a_cache_inside_the_index_is_refused_by_add_and_update_before_encoding(tmp_path):
    # the cache was created in the index by the encoding, then the save refused the folder, and every
    # later change with it ("holds files mmrec did not write (cache)")
    np.save(tmp_path / "f.npy", np.eye(4, dtype=np.float32))
    idx = ItemIndex.build(None, tmp_path / "idx", features={"f": tmp_path / "f.npy"}, show_progress=False)
    (tmp_path / "new.csv").write_text("item_id\n9\n")
    np.save(tmp_path / "n.npy", np.ones((1, 4), np.float32))
    before = sorted(p.name for p in (tmp_path / "idx").iterdir())
    for call in (lambda c: idx.add(tmp_path / "new.csv", features={"f": tmp_path / "n.npy"}, cache_dir=c),
                 lambda c: idx.update(tmp_path / "new.csv", features={"f": tmp_path / "n.npy"}, cache_dir=c,
                                      add_new=True)):
        for cache in (tmp_path / "idx" / "cache", tmp_path / "idx"):
            with pytest.raises(MMRecError, match=f"the feature cache {cache} is inside the index directory "):
                call(cache)
            assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == before and len(idx) == 4
    assert idx.add(tmp_path / "new.csv", features={"f": tmp_path / "n.npy"}, cache_dir=tmp_path / "cache") == 1


def test_every_item_without_content_is_counted(tmp_path):
    np.save(tmp_path / "zero.npy", np.zeros((30, 4), np.float32))
    with pytest.raises(DataError) as e:
        ItemIndex.build(None, tmp_path / "out", features={"x": tmp_path / "zero.npy"}, show_progress=False)
    text = str(e.value)
    assert text.startswith("--features: 30 problem(s)") and text.endswith("... and 10 more")
    assert "row 1: item 0 has no content" in text and not (tmp_path / "out").exists()


def test_an_item_equal_to_the_catalog_mean_is_refused_by_name(tmp_path):
    rng = np.random.default_rng(0)
    d = rng.integers(-3, 4, (16, 4)).astype(np.float32)
    v = np.array([1, 2, 3, 4], np.float32)
    x = np.concatenate([v[None], v + d, v - d])  # row 0 is the mean of all rows: centred, it is zero
    np.save(tmp_path / "sym.npy", x)
    with pytest.raises(DataError, match=r"sym\.npy: row 1: item 0: its features equal the catalog mean in every modality"):
        ItemIndex.build(None, tmp_path / "out", features={"x": tmp_path / "sym.npy"}, show_progress=False)
    assert not (tmp_path / "out").exists()
    idx = ItemIndex.build(None, tmp_path / "out", features={"x": tmp_path / "sym.npy"}, center=False,
                          show_progress=False)  # the plain cosine: row 0 has a direction
    assert len(idx.similar(0, k=3)) == 3
    built = ItemIndex.from_features(list(range(1, 33)), {"x": x[1:]}, show_progress=False)
    with pytest.raises(DataError, match=r"new items: item 99: its features equal the catalog mean"):
        built.add_features([99], {"x": built.centers["x"][None]}, {"x": np.ones(1, bool)}, save=False)
    assert len(built) == 32
    # index add from a catalog names the row too
    np.save(tmp_path / "rest.npy", x[1:])
    on_disk = ItemIndex.build(None, tmp_path / "disk", features={"x": tmp_path / "rest.npy"}, show_progress=False)
    np.testing.assert_array_equal(on_disk.centers["x"], v)
    np.save(tmp_path / "new.npy", np.stack([v + 5, v]).astype(np.float32))
    (tmp_path / "new.csv").write_text("item_id\n100\n101\n")
    with pytest.raises(DataError, match=r"new\.csv: row 2: item 101: its features equal the catalog mean"):
        on_disk.add(tmp_path / "new.csv", features={"x": tmp_path / "new.npy"})
    assert len(ItemIndex.load(tmp_path / "disk")) == 32


def test_index_add_reads_integer_ids_beside_text_ones_by_row(tmp_path, tiny_bert_dir):
    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n2,robot dog\n3,cooking show\n")
    idx = ItemIndex.build(tmp_path / "items.csv", tmp_path / "idx", text_encoder=tiny_bert_dir, image_encoder=None,
                          show_progress=False)
    (tmp_path / "new.csv").write_text("item_id,title\n50,fine film\nx9,other film\n3,again\n0702,zero\n")
    with pytest.raises(DataError) as e:  # (read as text: "50", beside "x9")
        idx.add(tmp_path / "new.csv")
    assert str(e.value).splitlines()[1:] == [
        f"  {tmp_path / 'new.csv'}: row 2, field 'item_id': id 'x9' is not a whole number, as every id of the index is",
        f"  {tmp_path / 'new.csv'}: row 3, field 'item_id': id '3' is already in the index",
        f"  {tmp_path / 'new.csv'}: row 4, field 'item_id': id '0702' has a leading zero: the index's ids are whole "
        "numbers, which cannot keep one"]
    assert idx.add(tmp_path / "new.csv", skip_invalid=True) == 1
    again = ItemIndex.load(tmp_path / "idx")
    assert again.ids == [1, 2, 3, 50]
    skipped = [json.loads(line) for line in (tmp_path / "idx" / "skipped.jsonl").read_text().splitlines()]
    assert [(s["row"], s["item_id"]) for s in skipped] == [(2, "x9"), (3, "3"), (4, "0702")]


def test_an_encoder_that_is_not_the_index_s_is_refused_at_every_query(tmp_path, tiny_bert_dir):
    # it was kept before its identity was checked: the first query refused, the next ones used it (a server)
    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n2,robot dog\n")
    ItemIndex.build(tmp_path / "items.csv", tmp_path / "idx", text_encoder=tiny_bert_dir, image_encoder=None,
                    show_progress=False)
    idx = ItemIndex.load(tmp_path / "idx", show_progress=False)
    idx.encoders.spec["text"]["identity"] = "not-this-one"
    for _ in range(2):
        with pytest.raises(ConfigError, match="is not the one this index was built with"):
            idx.search_text("space", k=1)


def test_a_cache_directory_that_cannot_be_written_is_refused_before_encoding(tmp_path, tiny_bert_dir, monkeypatch):
    import encoders.cache

    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n2,robot dog\n")
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(encoders.cache, "FeatureCache", lambda *a: pytest.fail("reached the encoding"))
    for cache, why in ((tmp_path / "afile", "is a file, not a directory"),
                       (tmp_path / "afile" / "sub", f"cannot be made: {tmp_path / 'afile'} is a file")):
        with pytest.raises(ConfigError, match=f"feature cache {cache} {why}"):
            ItemIndex.build(tmp_path / "items.csv", text_encoder=tiny_bert_dir, image_encoder=None, cache_dir=cache,
                            show_progress=False)


def test_a_cache_that_cannot_be_written_is_read_and_warned_about(tmp_path, tiny_bert_dir, monkeypatch, caplog):
    # it was refused before any work, README's word being a warning: a cache shared read-only could not be read
    import encoders.cache
    import mmrec.item_index

    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n2,robot dog\n")
    first = ItemIndex.build(tmp_path / "items.csv", text_encoder=tiny_bert_dir, image_encoder=None,
                            cache_dir=tmp_path / "cache", show_progress=False)
    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n2,robot dog\n3,new film\n")
    monkeypatch.setattr(mmrec.item_index.os, "access", lambda *a: False)  # (root may write anywhere: as a user)

    def put(self, *a):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(encoders.cache.FeatureCache, "put", put)
    with caplog.at_level("WARNING"):
        again = ItemIndex.build(tmp_path / "items.csv", text_encoder=tiny_bert_dir, image_encoder=None,
                                cache_dir=tmp_path / "cache", show_progress=False)
    assert f"feature cache {tmp_path / 'cache'} is not writable: the vectors it holds are used" in caplog.text
    assert "cannot write to" in caplog.text  # the new item's vector, encoded and not kept
    np.testing.assert_array_equal(again.features["text"][:2], first.features["text"])
    assert len(again) == 3


def _content_oracle(index, text: str, k: int, leave_out=()) -> list[tuple[object, float]]:
    """The items by the centred cosine of their text features with the query, exactly."""
    q = index.encoders.get("text").encode([text])[0].astype(np.float64) - index.centers["text"]
    x = index.features["text"].astype(np.float64) - index.centers["text"]
    cos = x @ q / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    order = [i for i in np.argsort(-cos, kind="stable") if index.ids[i] not in leave_out]
    return [(index.ids[i], float(cos[i])) for i in order[:k]]


def test_search_by_content_ranks_by_the_items_own_text_on_content_and_trained_directories(tmp_path, tiny_bert_dir):
    from mmrec.config import TrainConfig
    from mmrec.pipeline import fit
    from mmrec.recommender import Recommender

    words = ["space", "alien", "war", "robot", "dog", "cooking", "show", "station", "film", "night"]
    titles = ["space alien war", "robot dog", "cooking show", "space station", "dog show", "alien cooking",
              "war film", "robot war"] + [f"{words[i % 10]} {words[(3 * i + 1) % 10]} {i}" for i in range(32)]
    (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"{i},{t}\n" for i, t in enumerate(titles)))
    idx = ItemIndex.build(tmp_path / "items.csv", text_encoder=tiny_bert_dir, image_encoder=None, show_progress=False)
    for text in ("space", "dog show"):  # one modality: the index's own ranking is this cosine
        by_index, by_content = idx.search_text(text, 5), idx.search_text(text, 5, by="content")
        assert [r.item_id for r in by_content] == [i for i, _ in _content_oracle(idx, text, 5)]
        # (the same scores; items whose titles differ by a number alone may swap places within a float32 digit)
        np.testing.assert_allclose([r.score for r in by_index], [r.score for r in by_content], atol=1e-5)
        np.testing.assert_allclose([r.score for r in by_content], [s for _, s in _content_oracle(idx, text, 5)],
                                   atol=1e-5)
    rng = np.random.default_rng(0)
    lines = ["user_id\titem_id"] + [f"u{u}\t{i}" for u in range(30) for i in rng.choice(40, 6, replace=False)]
    (tmp_path / "inter.tsv").write_text("\n".join(lines) + "\n")
    fit(tmp_path / "inter.tsv", catalog=tmp_path / "items.csv", out=tmp_path / "m", text_encoder=tiny_bert_dir,
        image_encoder=None, cache_dir=None, config=TrainConfig(epochs=1, dim=8, heads=2), split="random",
        show_progress=False)
    rec = Recommender.load(tmp_path / "m", show_progress=False)
    got = rec.search_texts(["space", "robot"], 3, by="content", exclude=[3])
    for text, results in zip(["space", "robot"], got):
        want = _content_oracle(rec.items, text, 3, leave_out={3})
        assert [r.item_id for r in results] == [i for i, _ in want]
        np.testing.assert_allclose([r.score for r in results], [s for _, s in want], atol=1e-5)
    assert [r.item_id for r in rec.search_text("space", 8, by="content", only=[0, 1])] in ([0, 1], [1, 0])
    assert "text" in rec.items.centers  # 40 items: measured from the catalog mean, as the oracle is
    with pytest.raises(ConfigError, match="by must be 'index' or 'content', got 'cosine'"):
        rec.search_text("space", 3, by="cosine")


def test_skipped_rows_of_every_command_stay_listed(tmp_path, tiny_bert_dir):
    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n1,twice\n2,robot dog\n3,cooking show\n")
    idx = ItemIndex.build(tmp_path / "items.csv", tmp_path / "idx", text_encoder=tiny_bert_dir, image_encoder=None,
                          skip_invalid=True, show_progress=False)

    def listed():
        lines = (tmp_path / "idx" / "skipped.jsonl").read_text().splitlines()
        return [(Path(r["file"]).name, r["row"], r["item_id"]) for r in map(json.loads, lines)]

    assert listed() == [("items.csv", 2, "1")]
    idx.remove([3])  # rewrites the directory: the list stays
    assert listed() == [("items.csv", 2, "1")]
    (tmp_path / "new.csv").write_text("item_id,title\n2,again\n7,new film\n")
    assert idx.add(tmp_path / "new.csv", skip_invalid=True) == 1
    assert listed() == [("items.csv", 2, "1"), ("new.csv", 1, "2")]
    fresh = ItemIndex.build(tmp_path / "new.csv", tmp_path / "idx", text_encoder=tiny_bert_dir, image_encoder=None,
                            overwrite=True, show_progress=False)  # a new build starts the list anew: none skipped
    assert len(fresh) == 2 and not (tmp_path / "idx" / "skipped.jsonl").exists()


def test_skips_of_an_index_built_in_memory_are_written_at_its_first_save(tmp_path, tiny_bert_dir):
    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n1,twice\n2,robot dog\n3,cooking show\n")
    idx = ItemIndex.build(tmp_path / "items.csv", text_encoder=tiny_bert_dir, image_encoder=None, skip_invalid=True,
                          show_progress=False)  # no directory yet
    (tmp_path / "new.csv").write_text("item_id,title\n2,again\n7,new film\n")
    assert idx.add(tmp_path / "new.csv", skip_invalid=True) == 1
    idx.save(tmp_path / "idx")
    lines = (tmp_path / "idx" / "skipped.jsonl").read_text().splitlines()
    assert [(Path(r["file"]).name, r["row"]) for r in map(json.loads, lines)] == [("items.csv", 2), ("new.csv", 1)]
    # A report, not checksummed: pruned by hand, the directory still loads, and the next write keeps what is left.
    (tmp_path / "idx" / "skipped.jsonl").write_text(lines[1] + "\nnot json\n")
    again = ItemIndex.load(tmp_path / "idx", show_progress=False)
    again.remove([7])
    assert [json.loads(x)["row"] for x in (tmp_path / "idx" / "skipped.jsonl").read_text().splitlines()] == [1]
    (tmp_path / "idx" / "skipped.jsonl").unlink()
    assert len(ItemIndex.load(tmp_path / "idx", show_progress=False)) == 3


def test_search_by_content_in_a_modality_no_item_has_says_so():
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    idx = ItemIndex.from_features(list(range(40)), {"x": x, "y": np.zeros((40, 3), np.float32)},
                                  present={"y": np.zeros(40, bool)}, show_progress=False)
    with pytest.raises(MMRecError, match="no item of this index has y features to compare the query with"):
        idx._search_content("y", np.ones((1, 3), np.float32), 3)
    assert len(idx._search_content("x", x[:1], 3)[0]) == 3


def test_a_catalog_given_to_save_as_well_is_listed_once_and_old_checksummed_reports_may_go(tmp_path, tiny_bert_dir):
    from mmrec.catalog import load_catalog

    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n1,twice\n2,robot dog\n3,cooking show\n")
    cat = load_catalog(tmp_path / "items.csv", skip_invalid=True, show_progress=False)
    idx = ItemIndex.build(cat, text_encoder=tiny_bert_dir, image_encoder=None, show_progress=False)
    idx.save(tmp_path / "a", skipped=cat)  # pending from build and given again: once
    idx.save(tmp_path / "b", skipped=cat)  # a's list and the catalog again: once
    for d in ("a", "b"):
        assert [json.loads(x)["row"] for x in (tmp_path / d / "skipped.jsonl").read_text().splitlines()] == [2]
    # A directory written before the report left the checksums lists it: pruned, it still loads.
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["checksums"]["skipped.jsonl"] = "0" * 64
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    assert len(ItemIndex.load(tmp_path / "a", show_progress=False)) == 3
    (tmp_path / "a" / "skipped.jsonl").unlink()
    assert len(ItemIndex.load(tmp_path / "a", show_progress=False)) == 3


def test_search_by_content_on_an_empty_index_answers_nothing(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    idx = ItemIndex.from_features(list(range(40)), {"x": x}, show_progress=False)
    idx.remove(list(range(40)))
    assert idx._search_content("x", x[:1], 3) == [[]]


def test_a_relative_encoder_path_is_kept_absolute(tmp_path, tiny_bert_dir, monkeypatch):
    from mmrec.item_index import ItemIndex

    # kept as typed, "models/bert" only worked from the directory the index was built in
    shutil.copytree(tiny_bert_dir, tmp_path / "work" / "models" / "bert")
    (tmp_path / "work" / "items.csv").write_text("item_id,title\n1,the cat sat\n2,a dog\n3,space war\n")
    monkeypatch.chdir(tmp_path / "work")
    ItemIndex.build("items.csv", "idx", text_encoder="models/bert", image_encoder="none", show_progress=False)
    spec = json.loads((tmp_path / "work" / "idx" / "manifest.json").read_text())["encoders"]["text"]
    assert spec["model"] == str((tmp_path / "work" / "models" / "bert").resolve())
    # a torchvision name stays a name though a folder of that name is there (it was made a path, which then
    # loaded as a model directory: "weights= applies to torchvision ... models, not to a model directory")
    from mmrec.item_index import local_path

    (tmp_path / "work" / "resnet18").mkdir()
    assert local_path("resnet18", ("default", "resnet18")) == "resnet18"
    assert local_path("resnet18") == str((tmp_path / "work" / "resnet18").resolve())
    assert local_path("default") == "default" and local_path("org/model") == "org/model"
    monkeypatch.chdir(tmp_path)
    index = ItemIndex.load(tmp_path / "work" / "idx")
    assert [r.item_id for r in index.search_text("cat", k=3)] == [r.item_id for r in
                                                                  ItemIndex.load("work/idx").search_text("cat", k=3)]


def test_a_catalog_score_column_is_renamed_around_every_key_it_could_overwrite():
    from mmrec.item_index import Result, shown_fields

    # a catalog with score and catalog.score columns lost its score: both became "catalog.score"
    fields = {"title": "banana bread", "score": "4", "catalog.score": "Y"}
    assert shown_fields(fields, ("score",)) == {"title": "banana bread", "catalog.catalog.score": "4",
                                                 "catalog.score": "Y"}
    assert Result(2, 0.5, fields).to_dict() == {"item_id": 2, "score": 0.5, "title": "banana bread",
                                                "catalog.catalog.score": "4", "catalog.score": "Y"}
    assert shown_fields({"score": "4"}, ("score",)) == {"catalog.score": "4"}


def test_a_torchvision_image_encoder_stays_a_name_beside_a_folder_of_that_name(tmp_path, image_paths,
                                                                             resnet18_weights, monkeypatch):
    from mmrec.item_index import ItemIndex

    # the manifest held /.../resnet18 (the folder), and search --image then refused: "weights= applies to
    # torchvision and EfficientNet-Lite0 models, not to a model directory"
    (tmp_path / "resnet18").mkdir()
    shutil.copy(resnet18_weights, tmp_path / "resnet18" / "w.pth")
    shutil.copy(image_paths[0], tmp_path / "a.jpg")
    shutil.copy(image_paths[4], tmp_path / "b.jpg")
    (tmp_path / "items.csv").write_text("item_id,image\n1,a.jpg\n2,b.jpg\n")
    monkeypatch.chdir(tmp_path)
    ItemIndex.build("items.csv", "idx", text_encoder="none", image_encoder="resnet18",
                    image_weights="resnet18/w.pth", show_progress=False)
    spec = json.loads((tmp_path / "idx" / "manifest.json").read_text())["encoders"]["image"]
    assert spec["model"] == "resnet18" and spec["weights"] == str((tmp_path / "resnet18" / "w.pth").resolve())
    assert [r.item_id for r in ItemIndex.load("idx").search_image(tmp_path / "a.jpg", k=1)] == [1]


def test_an_index_whose_folder_cannot_be_written_is_refused_before_any_encoding(tmp_path, monkeypatch):
    import tempfile as tempfile_mod

    from mmrec.item_index import ItemIndex

    rng = np.random.default_rng(0)
    ItemIndex.from_features([1, 2, 3], {"f": rng.normal(size=(3, 4)).astype(np.float32)},
                           show_progress=False).save(tmp_path / "idx")
    index = ItemIndex.load(tmp_path / "idx", show_progress=False)

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile_mod, "mkdtemp", read_only)
    with pytest.raises(MMRecError, match=rf"{tmp_path / 'idx'} cannot be rewritten \(nothing was changed\): nothing can "
                                         rf"be written in {tmp_path} \(Read-only file system\)"):
        index.remove([2])
    assert len(ItemIndex.load(tmp_path / "idx", show_progress=False)) == 3


def test_another_users_index_in_a_sticky_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    import os
    import stat

    from mmrec.item_index import ItemIndex

    # the probe passed there, and the rewrite failed at its rename ("Operation not permitted"), after the encoding
    shared = tmp_path / "shared"
    shared.mkdir()
    rng = np.random.default_rng(0)
    ItemIndex.from_features([1, 2, 3], {"f": rng.normal(size=(3, 4)).astype(np.float32)},
                           show_progress=False).save(shared / "idx")
    index = ItemIndex.load(shared / "idx", show_progress=False)
    os.chmod(shared, shared.stat().st_mode | stat.S_ISVTX)
    owner = (shared / "idx").stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # another user, neither root nor the owner
    with pytest.raises(MMRecError, match=r"idx cannot be rewritten \(nothing was changed\): it belongs to another "
                                         r"user, in .*shared, where only a folder's owner may move it"):
        index.remove([2])
    # a dry run writes nothing: it is not refused (it was, by this check and by an unwritable folder's)
    (tmp_path / "upd.csv").write_text("item_id\n1\n")
    np.save(tmp_path / "upd.npy", rng.normal(size=(1, 4)).astype(np.float32))
    index.update(tmp_path / "upd.csv", features={"f": tmp_path / "upd.npy"}, dry_run=True)
    # replacing it with a new build is refused before any work too (it failed at the rename, after the encoding)
    from mmrec.item_index import check_out

    with pytest.raises(MMRecError, match=r"--out .*idx cannot be replaced: it belongs to another user"):
        check_out(shared / "idx", overwrite=True)
    os.chmod(shared, shared.stat().st_mode & ~stat.S_ISVTX)  # without the sticky bit: renaming is the folder's business
    assert index.remove([2]) == 1


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])
def test_an_item_update_moves_keeps_its_place_among_equal_scores(tmp_path, factory):
    # an update re-added the item under a new, last FAISS label: among equal scores it ranked after
    # items it precedes in the index, unlike --by cosine, evaluate and the same index after a rebuild
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    x[6] = x[7]
    (tmp_path / "items.csv").write_text("item_id\n" + "".join(f"{i}\n" for i in range(50)))
    np.save(tmp_path / "f.npy", x)
    idx = ItemIndex.build(tmp_path / "items.csv", tmp_path / "idx", features={"f": tmp_path / "f.npy"},
                          text_encoder="none", image_encoder="none", factory=factory, show_progress=False)
    (tmp_path / "u.csv").write_text("item_id\n5\n")
    np.save(tmp_path / "u.npy", x[7:8])
    idx.update(tmp_path / "u.csv", features={"f": tmp_path / "u.npy"})

    def twins(index):
        return [r.item_id for r in index.similar(0, 50) if r.item_id in (5, 6, 7)]

    assert twins(idx) == [5, 6, 7] == [r.item_id for r in idx.similar(0, 50, by="cosine") if r.item_id in (5, 6, 7)]
    assert twins(ItemIndex.load(tmp_path / "idx", show_progress=False)) == [5, 6, 7]


def test_an_encoder_moved_away_since_the_build_is_named_without_a_download_hint(tmp_path, tiny_bert_dir):
    # the saved spec holds the encoder's absolute path; once moved, the message advised --allow-download, a flag
    # of index build and train only, which would not have found the moved directory either
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    (tmp_path / "items.csv").write_text("item_id,title\n1,space alien\n2,robot dog\n")
    ItemIndex.build(tmp_path / "items.csv", tmp_path / "idx", text_encoder=model, image_encoder=None,
                    show_progress=False)
    model.rename(tmp_path / "elsewhere")
    idx = ItemIndex.load(tmp_path / "idx", show_progress=False)
    with pytest.raises(ConfigError) as e:
        idx.search_text("space", k=1)
    assert str(e.value) == (
        f"the text encoder this index was built with, {str(model)!r}, is no longer there (moved or deleted): put "
        "it back at that path, or encode the catalog again with another (`mmrec index build`, or `mmrec train` "
        "for a trained directory; `index rebuild` encodes nothing)")
    assert "allow" not in str(e.value)
