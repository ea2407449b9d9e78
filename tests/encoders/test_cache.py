from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import encoders.cache as cache_mod
from encoders.cache import FeatureCache, content_hash, encode_with_cache, file_hash, fingerprint_files

ENC = "text:toy@0123456789abcdef:pool=mean:max_length=8"


class CountingEncoder:
    """A deterministic content -> vector function (seeded by the content) that records its calls."""

    def __init__(self, dim: int = 6) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def vector(self, content: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(content.encode()).digest()[:4], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def __call__(self, contents: list[str]) -> np.ndarray:
        self.calls.append(list(contents))
        return np.stack([self.vector(c) for c in contents]) if contents else np.zeros((0, self.dim), np.float32)


def _catalog(n: int) -> tuple[list[int], list[str]]:
    return list(range(1000, 1000 + n)), [f"description of item {i}" for i in range(n)]


def test_hashes_known_values(tmp_path):
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc"), FIPS 180-2
    assert content_hash("abc") == content_hash(b"abc") == abc
    (tmp_path / "f.bin").write_bytes(b"abc")
    assert file_hash(tmp_path / "f.bin") == abc
    big = os.urandom((1 << 20) + 17)  # crosses the 1 MiB read chunk
    (tmp_path / "big.bin").write_bytes(big)
    assert file_hash(tmp_path / "big.bin") == hashlib.sha256(big).hexdigest()
    with pytest.raises(TypeError, match="expects str or bytes, got int"):
        content_hash(3)


def test_fingerprint_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"weights")
    (tmp_path / "b.bin").write_bytes(b"weights")
    assert fingerprint_files([tmp_path / "a" / "w.bin"], names=False) == fingerprint_files([tmp_path / "b.bin"], names=False)
    assert fingerprint_files([tmp_path / "a" / "w.bin"]) != fingerprint_files([tmp_path / "b.bin"])
    before = fingerprint_files([tmp_path / "b.bin"])
    (tmp_path / "b.bin").write_bytes(b"weightz")  # same size, new content
    assert fingerprint_files([tmp_path / "b.bin"]) != before


def test_put_get_roundtrip_and_partial_hits(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    assert cache.get(ENC, [(1, "h1")]) == (None, [0])  # empty cache: no directory yet
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    cache.put(ENC, [(1, "h1"), ("b", "h2"), (3, "h3")], vecs)
    got, missing = cache.get(ENC, [(3, "h3"), (9, "h9"), (1, "h1"), ("b", "h2")])
    assert missing == [1] and got.dtype == np.float32 and got.shape == (4, 4)
    np.testing.assert_array_equal(got, np.stack([vecs[2], np.zeros(4, np.float32), vecs[0], vecs[1]]))
    assert cache.get(ENC, [(1, "other-hash"), (2, "h1")]) == (None, [0, 1])  # both parts of the key matter
    hit, missing = cache.get(ENC, [("1", "h1")])  # ids compare as str(item_id)
    assert missing == [] and np.array_equal(hit[0], vecs[0])
    assert len(cache) == 3


def test_reopen_other_encoder_and_newest_wins(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put(ENC, [(1, "h")], np.ones((1, 3), np.float32))
    cache.put(ENC, [(1, "h")], np.full((1, 3), 2.0, np.float32))  # same key again: the newer shard wins
    reopened = FeatureCache(tmp_path)
    got, missing = reopened.get(ENC, [(1, "h")])
    assert missing == [] and got.tolist() == [[2.0, 2.0, 2.0]]
    assert reopened.get(ENC + "-other", [(1, "h")]) == (None, [0])
    # A second instance sees shards committed by the first after it was opened.
    cache.put(ENC, [(2, "h")], np.full((1, 3), 5.0, np.float32))
    assert reopened.get(ENC, [(2, "h")])[1] == []


def test_put_validates_shapes(tmp_path):
    cache = FeatureCache(tmp_path)
    with pytest.raises(ValueError, match=r"expected vectors of shape \[2, D\], got \[3, 4\]"):
        cache.put(ENC, [(1, "a"), (2, "b")], np.zeros((3, 4)))
    cache.put(ENC, [(1, "a")], np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"has 4-d vectors .* got 5-d"):
        cache.put(ENC, [(2, "b")], np.zeros((1, 5)))
    # a meta.json with no shard yet (another writer's, before its first shard) is not rewritten for another width
    other = FeatureCache(tmp_path / "other")
    other.put(ENC, [(1, "a")], np.zeros((1, 4)))
    store = next(p for p in (tmp_path / "other").iterdir() if p.is_dir())
    for shard in store.glob("shard-*"):
        shard.unlink()
    with pytest.raises(ValueError, match=r"has 4-d vectors .* got 5-d"):
        FeatureCache(tmp_path / "other").put(ENC, [(2, "b")], np.zeros((1, 5)))


def _encoded_catalog(n):
    """ids, texts, their hashes, a counting encoder with no calls yet, and every text's vector."""
    ids, texts = _catalog(n)
    enc = CountingEncoder()
    oracle = enc(texts)
    enc.calls.clear()
    return ids, texts, [content_hash(t) for t in texts], enc, oracle


def test_encode_with_cache_encodes_only_changes(tmp_path):
    ids, texts, hashes, enc, oracle = _encoded_catalog(50)

    vecs, n = encode_with_cache(enc, ENC, ids, texts, hashes, FeatureCache(tmp_path))
    assert n == 50 and len(enc.calls) == 1
    np.testing.assert_array_equal(vecs, oracle)

    vecs, n = encode_with_cache(enc, ENC, ids, texts, hashes, FeatureCache(tmp_path))  # reopened
    assert n == 0 and len(enc.calls) == 1  # not called at all
    np.testing.assert_array_equal(vecs, oracle)

    edited = [3, 7, 11, 19, 20, 28, 33, 40, 41, 49]
    texts2 = [t + " (edited)" if i in edited else t for i, t in enumerate(texts)]
    vecs, n = encode_with_cache(enc, ENC, ids, texts2, [content_hash(t) for t in texts2], FeatureCache(tmp_path))
    assert n == 10 and enc.calls[-1] == [texts2[i] for i in edited]  # one call, exactly the edits, in order
    np.testing.assert_array_equal(vecs, np.stack([enc.vector(t) for t in texts2]))

    vecs, n = encode_with_cache(enc, ENC + "-v2", ids, texts2, [content_hash(t) for t in texts2], FeatureCache(tmp_path))
    assert n == 50  # another encoder identity shares nothing
    vecs, n = encode_with_cache(enc, ENC, ids, texts, hashes, None)
    assert n == 50
    with pytest.raises(ValueError, match="50 item ids, 49 contents and 50 hashes must match"):
        encode_with_cache(enc, ENC, ids, texts[:-1], hashes, None)


def test_encode_with_cache_of_nothing_is_an_empty_matrix_with_or_without_a_cache(tmp_path):
    def encode(texts):
        return np.zeros((len(texts), 3), np.float32)

    for cache in (None, FeatureCache(tmp_path)):
        vectors, encoded = encode_with_cache(encode, ENC, [], [], [], cache)
        assert vectors.shape == (0, 3) and vectors.dtype == np.float32 and encoded == 0


def test_encode_with_cache_keeps_finished_chunks_when_encoding_fails(tmp_path):
    ids, texts, hashes, enc, oracle = _encoded_catalog(50)

    def crashing(batch):
        if len(enc.calls) == 2:  # the third chunk dies (e.g. Ctrl-C, out of memory)
            raise KeyboardInterrupt
        return enc(batch)

    with pytest.raises(KeyboardInterrupt):
        encode_with_cache(crashing, ENC, ids, texts, hashes, FeatureCache(tmp_path), chunk_size=20)
    assert enc.calls == [texts[:20], texts[20:40]]
    vecs, n = encode_with_cache(enc, ENC, ids, texts, hashes, FeatureCache(tmp_path), chunk_size=20)
    assert n == 10 and enc.calls[-1] == texts[40:]  # only the lost chunk is encoded again
    np.testing.assert_array_equal(vecs, oracle)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        encode_with_cache(enc, ENC, ids, texts, hashes, FeatureCache(tmp_path), chunk_size=0)


def test_a_cache_that_cannot_be_written_leaves_the_encoding_whole(tmp_path, monkeypatch, caplog):
    ids, texts, hashes, enc, oracle = _encoded_catalog(50)
    cache, puts = FeatureCache(tmp_path), []

    def full_disk(*args):
        puts.append(args)
        raise OSError(28, "No space left on device")  # (numpy's own words were "115200 requested and 50144 written")

    monkeypatch.setattr(cache, "put", full_disk)
    with caplog.at_level("WARNING", logger="encoders.cache"):
        vecs, n = encode_with_cache(enc, ENC, ids, texts, hashes, cache, chunk_size=20)
    assert n == 50 and len(puts) == 1 and len(enc.calls) == 3  # tried once, then no more
    np.testing.assert_array_equal(vecs, oracle)
    assert f"feature cache: cannot write to {tmp_path} (No space left on device): going on without caching" in caplog.text


def test_a_killed_writers_temporary_files_are_deleted_once_a_day_old(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put(ENC, [(1, "a")], np.ones((1, 2), np.float32))
    store = next(p for p in tmp_path.iterdir() if p.is_dir())
    old, fresh = store / ".tmp-shard-000000000009-deadbeef.vec.npy", store / ".tmp-meta-12345678"
    for path in (old, fresh):
        path.write_bytes(b"x" * 100)
    os.utime(old, (0, os.path.getmtime(old) - cache_mod.STALE_SECONDS - 60))  # (they stayed for good)
    cache.put(ENC, [(2, "b")], np.ones((1, 2), np.float32))
    assert not old.exists() and fresh.exists()  # another process's write in progress is left alone
    assert cache.get(ENC, [(1, "a"), (2, "b")])[1] == []


def test_interrupted_put_leaves_cache_usable(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    cache.put(ENC, [(1, "a")], np.ones((1, 2), np.float32))
    real_replace = os.replace

    def crash_on_commit(src, dst):
        if str(dst).endswith(".keys.npz"):
            raise KeyboardInterrupt  # as if the process died between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", crash_on_commit)
    with pytest.raises(KeyboardInterrupt):
        cache.put(ENC, [(2, "b"), (3, "c")], np.zeros((2, 2), np.float32))
    monkeypatch.setattr(cache_mod.os, "replace", real_replace)

    store_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert not [p for p in store_dir.iterdir() if p.name.startswith(".tmp-")]  # temp files cleaned up
    orphans = [p for p in store_dir.iterdir() if p.name.endswith(".vec.npy")]
    assert len(orphans) == 2  # the committed shard and the uncommitted vectors
    (store_dir / "shard-000000000009-deadbeef.keys.npz").write_bytes(b"garbage")  # a corrupt commit marker
    (store_dir / "shard-000000000010-deadbeef.keys.npz").write_bytes(b"")  # emptied, and cut short: damaged
    committed = next(p for p in store_dir.iterdir() if p.name.endswith(".keys.npz") and "deadbeef" not in p.name)
    (store_dir / "shard-000000000011-deadbeef.keys.npz").write_bytes(committed.read_bytes()[:-40])

    fresh = FeatureCache(tmp_path)
    got, missing = fresh.get(ENC, [(1, "a"), (2, "b"), (3, "c")])
    assert missing == [1, 2] and got[0].tolist() == [1.0, 1.0]
    fresh.put(ENC, [(2, "b"), (3, "c")], np.full((2, 2), 3.0, np.float32))
    assert FeatureCache(tmp_path).get(ENC, [(2, "b"), (3, "c")])[1] == []


def test_digest_collision_is_a_miss_not_a_wrong_vector(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "_key64", lambda item_id, chash: 42)  # every key collides
    cache = FeatureCache(tmp_path)
    cache.put(ENC, [(1, "a")], np.ones((1, 2), np.float32))
    assert cache.get(ENC, [(2, "b")]) == (None, [0])
    assert cache.get(ENC, [(1, "a")])[1] == []


def test_many_shards_and_compact(tmp_path):
    rng = np.random.default_rng(0)
    n, dim = 20_000, 8
    ids = [f"item-{i}" for i in range(n)]
    hashes = [content_hash(s) for s in ids]
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    cache = FeatureCache(tmp_path)
    for start in range(0, n, 5000):  # four puts, four shards
        cache.put(ENC, list(zip(ids, hashes))[start : start + 5000], vecs[start : start + 5000])
    pick = rng.choice(n, 500, replace=False)
    got, missing = cache.get(ENC, [(ids[i], hashes[i]) for i in pick])
    assert missing == []
    np.testing.assert_array_equal(got, vecs[pick])

    assert cache.compact(ENC) == n
    store_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(list(store_dir.glob("*.keys.npz"))) == 1 and len(list(store_dir.glob("*.vec.npy"))) == 1
    got, missing = FeatureCache(tmp_path).get(ENC, [(ids[i], hashes[i]) for i in pick])
    assert missing == []
    np.testing.assert_array_equal(got, vecs[pick])


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors through /proc")
def test_reading_many_shards_leaves_no_file_open(tmp_path):
    # A cache grows a shard per write; a map kept open per shard read ran out of descriptors at
    # about a thousand shards (the usual limit), failing every build that read the cache.
    cache = FeatureCache(tmp_path)
    for i in range(300):
        cache.put(ENC, [(i, "h")], np.full((1, 4), i, np.float32))
    reader = FeatureCache(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    got, missing = reader.get(ENC, [(i, "h") for i in range(300)])
    assert missing == [] and got[:, 0].tolist() == list(range(300))
    assert len(os.listdir("/proc/self/fd")) == before
    assert reader.compact(ENC) == 300 and len(os.listdir("/proc/self/fd")) == before


def test_a_shard_compacted_away_by_another_process_after_it_was_listed_gives_misses(tmp_path, monkeypatch):
    writer = FeatureCache(tmp_path)
    for i in range(3):
        writer.put(ENC, [(i, "h")], np.full((1, 4), i, np.float32))
    reader = FeatureCache(tmp_path)
    assert reader.get(ENC, [(0, "h")])[1] == []  # the reader has listed the three shards
    # Another process merges them and deletes them between the reader's listing and its read.
    monkeypatch.setattr(reader._stores[ENC], "refresh", lambda: None)  # (the reader's listing, as it was)
    assert FeatureCache(tmp_path).compact(ENC) == 3
    got, missing = reader.get(ENC, [(0, "h"), (2, "h")])  # misses to encode again, not an error
    assert missing == [0, 1] and got is None
    assert FeatureCache(tmp_path).get(ENC, [(0, "h"), (2, "h")])[0][:, 0].tolist() == [0.0, 2.0]


def test_a_key_file_damaged_anywhere_gives_misses_never_an_error_or_a_wrong_vector(tmp_path):
    vecs = np.arange(6, dtype=np.float32).reshape(3, 2)
    keys = [(1, "a"), (2, "b"), (3, "c")]
    FeatureCache(tmp_path / "clean").put(ENC, keys, vecs)
    store = next(p for p in (tmp_path / "clean").iterdir() if p.is_dir())
    key_file = next(store.glob("*.keys.npz"))
    data = key_file.read_bytes()
    for at in range(0, len(data), 5):  # one flipped byte at a time, in a fresh copy of the cache
        broken = bytearray(data)
        broken[at] ^= 0xFF
        key_file.write_bytes(bytes(broken))
        got, missing = FeatureCache(tmp_path / "clean").get(ENC, keys)
        found = [r for r in range(3) if r not in missing]
        assert got is None or np.array_equal(got[found], vecs[found]), at
    key_file.write_bytes(data)
    assert FeatureCache(tmp_path / "clean").get(ENC, keys)[1] == []
    # compact() reads them as get() does: what it cannot read is left out, never an error (it raised BadZipFile)
    import shutil

    FeatureCache(tmp_path / "clean").put(ENC, [(4, "d")], vecs[:1] + 10)  # a second shard: compact has work
    for at in range(0, len(data), 25):
        shutil.rmtree(tmp_path / "try", ignore_errors=True)
        shutil.copytree(tmp_path / "clean", tmp_path / "try")
        broken = bytearray(data)
        broken[at] ^= 0xFF
        (tmp_path / "try" / store.name / key_file.name).write_bytes(bytes(broken))
        FeatureCache(tmp_path / "try").compact(ENC)
        got, missing = FeatureCache(tmp_path / "try").get(ENC, keys + [(4, "d")])
        found = [r for r in range(4) if r not in missing]
        assert 3 not in missing and np.array_equal(got[found], np.concatenate([vecs, vecs[:1] + 10])[found]), at


def test_a_vector_damaged_on_disk_is_a_miss_never_a_wrong_vector(tmp_path, caplog):
    # four bytes changed in a shard's vectors were used as they were: the skewed catalog mean ruined every similarity
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(40, 8)).astype(np.float32)
    keys = [(i, f"h{i}") for i in range(40)]
    FeatureCache(tmp_path).put(ENC, keys, vecs)
    vec_file = next(tmp_path.rglob("*.vec.npy"))
    data = vec_file.read_bytes()
    header = len(data) - vecs.nbytes
    for row, word, patch in ((0, 0, b"\x7f\x7f\x7f\x7f"), (17, 5, b"\x00\x00\xc0\x7f"), (39, 7, b"\x01\x00\x00\x00")):
        broken = bytearray(data)
        at = header + (row * 8 + word) * 4
        broken[at : at + 4] = patch  # a huge number, a NaN, a denormal in place of the float
        vec_file.write_bytes(bytes(broken))
        caplog.clear()
        got, missing = FeatureCache(tmp_path).get(ENC, keys)
        assert missing == [row] and np.array_equal(np.delete(got, row, 0), np.delete(vecs, row, 0))
        assert "feature cache: 1 damaged vector(s) in" in caplog.text
        cache = FeatureCache(tmp_path)  # compacting leaves it out, rather than giving it a digest of its own
        cache.put(ENC, [(99, "x")], vecs[:1])
        cache.compact(ENC)
        assert FeatureCache(tmp_path).get(ENC, keys)[1] == [row]
        FeatureCache(tmp_path).put(ENC, keys, vecs)  # encoded again
        vec_file = max(tmp_path.rglob("*.vec.npy"))
        data = vec_file.read_bytes()
        header = len(data) - vecs.nbytes
    # a shard written before digests is checked for being finite
    old = tmp_path / "old"
    FeatureCache(old).put(ENC, keys[:2], vecs[:2])
    key_file, vec_file = next(old.rglob("*.keys.npz")), next(old.rglob("*.vec.npy"))
    with np.load(key_file) as z:
        columns = {k: z[k] for k in z.files if k != "digest"}
    with open(key_file, "wb") as f:
        np.savez(f, **columns)
    np.save(vec_file, np.array([[np.nan] * 8, vecs[1]], np.float32))
    got, missing = FeatureCache(old).get(ENC, keys[:2])
    assert missing == [0] and np.array_equal(got[1], vecs[1])


def test_row_digest_sees_a_change_in_any_word():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    d = cache_mod.row_digest(x)
    assert d.dtype == np.uint64 and len(set(d.tolist())) == 50
    for r, c in ((0, 0), (10, 15), (49, 7)):
        y = x.copy()
        y.view(np.uint32)[r, c] ^= 1  # one bit of one word
        assert (cache_mod.row_digest(y) != d).tolist() == [i == r for i in range(50)]


@pytest.mark.parametrize("damage", ["truncated", "deleted", "no dim", "wrong dim"])
def test_a_damaged_or_missing_meta_file_gives_misses_and_the_next_put_repairs_it(tmp_path, damage, caplog):
    vecs = np.arange(6, dtype=np.float32).reshape(3, 2)
    keys = [(1, "a"), (2, "b"), (3, "c")]
    FeatureCache(tmp_path).put(ENC, keys, vecs)
    meta = next(p for p in tmp_path.iterdir() if p.is_dir()) / "meta.json"
    if damage == "truncated":
        meta.write_text(meta.read_text()[:7])
    elif damage == "deleted":
        meta.unlink()
    elif damage == "no dim":
        meta.write_text('{"encoder_id": "%s"}' % ENC)
    else:  # JSON still, one digit flipped: every get failed ("could not be broadcast") until the folder was deleted
        meta.write_text('{"encoder_id": "%s", "dim": 3, "dtype": "float32"}' % ENC)
    cache = FeatureCache(tmp_path)
    assert cache.get(ENC, keys) == (None, [0, 1, 2]) and len(cache) == 0  # misses, not an error
    if damage == "wrong dim":
        assert "where meta.json says 3 wide" in caplog.text
    elif damage != "deleted":
        assert "feature cache: unreadable" in caplog.text
    cache.put(ENC, keys[:1], vecs[:1])  # rewrites the meta file: every shard is readable again
    got, missing = FeatureCache(tmp_path).get(ENC, keys)
    assert missing == [] and np.array_equal(got, vecs)
