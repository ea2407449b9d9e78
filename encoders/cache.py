"""On-disk feature cache: vectors keyed by (encoder identity, item id, content hash).

Re-running an encoder over a catalog should only encode what changed. The cache stores each
vector under the encoder's ``identity`` string (model + weight fingerprint + preprocessing), the
item id and a sha256 of the item's content (the text, or the image file's bytes), so an edited
description, a replaced image or a different model is a miss, and everything else is a hit.

Layout (sized for catalogs of ~1M items; never one file per item)::

    root/
      <sha256(encoder identity)[:24]>/
        meta.json                              {"encoder_id": ..., "dim": D, "dtype": "float32"}
        shard-<seq>-<random>.vec.npy           [n, D] float32, memory-mapped on read
        shard-<seq>-<random>.keys.npz          key64 [n] uint64, item_id [n] str, content_hash [n] str,
                                               digest [n] uint64 (each vector's, :func:`row_digest`)

Every :meth:`FeatureCache.put` appends one shard. A shard is written to temporary files which
are fsync'ed and renamed into place, vectors first and the key file last: the key file is the
commit marker, so an interrupted put leaves either nothing or an orphan ``.vec.npy`` that
readers ignore (and temporary ``.tmp-*`` files, which a later put deletes once a day old). Readers load only the small ``key64`` column of each shard (a 64-bit digest of
item id and content hash) into one sorted array -- 24 bytes per item with its shard and row --
and read the vectors of a hit from the shard, memory-mapped for that read; the stored item id and
hash of every hit are compared too, so a digest collision can only cause a miss, never a wrong
vector (those strings are kept once read, about 280 bytes per item of a shard a lookup touched). When the same key is
put twice the newest shard wins. :meth:`FeatureCache.compact` rewrites many small shards into
one. Every vector read is checked against the digest its shard stores (a shard written before
digests: against being finite): a vector damaged on disk is a miss, encoded again, with a warning
(a flipped byte in one vector skewed the catalog mean, and every similarity with it, silently).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Union

import numpy as np

logger = logging.getLogger(__name__)

ItemId = Union[str, int]  # the catalog's own item id (same alias as mmrec.typing, which encoders may not import)

_SHARD_RE = re.compile(r"^shard-(\d{12})-([0-9a-f]{8})\.keys\.npz$")
_CHUNK = 1 << 20


def content_hash(content: str | bytes) -> str:
    """sha256 hex digest of a text (UTF-8) or of raw bytes."""
    if isinstance(content, str):
        content = content.encode("utf-8")
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise TypeError(f"content_hash expects str or bytes, got {type(content).__name__}")
    return hashlib.sha256(content).hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes (read in 1 MiB chunks); the content hash of an image."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def fingerprint_files(paths: Sequence[str | os.PathLike], names: bool = True) -> str:
    """sha256 over the sizes and contents (and names) of some files: a model's fingerprint.

    Reading every byte is the honest choice (a fine-tuned model may differ anywhere); file
    digests are memoised per process by (path, size, mtime) so reloading a model is cheap.
    The directory part of each path is left out, so a copied model keeps its fingerprint.

    Args:
        paths: the files.
        names: include file names (default True: in a model directory a file's name is its
            role); ``False`` for a lone weights file, whose name does not matter.
    """
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        st = p.stat()
        memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _FINGERPRINTS:
            _FINGERPRINTS[memo] = file_hash(p)
        name = p.name if names else ""
        h.update(f"{name}\x00{st.st_size}\x00{_FINGERPRINTS[memo]}\n".encode("utf-8"))
    return h.hexdigest()


def row_digest(vectors: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each row's float32 bytes: the sum of its 32-bit words times fixed odd
    multipliers, modulo 2**64 (a change to any one word changes it). Vectorised: about as fast as
    reading the rows.

    Shapes: vectors (N, D) -> (N,) uint64
    """
    words = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)  # [N, D]
    multipliers = np.random.default_rng(words.shape[1]).integers(1, 2**63, size=words.shape[1], dtype=np.uint64) | 1
    out = np.empty(len(words), dtype=np.uint64)
    step = max(1, (1 << 22) // max(words.shape[1], 1))  # 32 MB of 64-bit words at a time
    for a in range(0, len(words), step):  # (uint64 wraps around: the modulus)
        out[a : a + step] = (words[a : a + step].astype(np.uint64) * multipliers).sum(axis=1, dtype=np.uint64)
    return out


def _key64(item_id: ItemId, chash: str) -> int:
    digest = hashlib.blake2b(f"{item_id}\x00{chash}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _fsync_write(path: Path, write: Callable[[object], None]) -> None:
    """Write through ``write(fileobj)`` to ``path`` and fsync it (the caller renames it into place)."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


STALE_SECONDS = 24 * 3600  # a temporary file this old is no write in progress: its writer was killed


def _remove_stale_temporaries(directory: Path, names: Sequence[str]) -> None:
    """Delete the ``.tmp-*`` files a killed writer left (up to a whole shard each, kept for good
    otherwise); a day old at least, so that another process's write in progress is left alone."""
    now = time.time()
    for name in names:
        if name.startswith(".tmp-"):
            path = directory / name
            try:
                if now - path.stat().st_mtime > STALE_SECONDS:
                    path.unlink()
            except OSError:
                pass  # gone meanwhile, or not ours to delete


# What reading a shard damaged from outside raises (numpy's zip reader, its format checks).
_DAMAGED = (OSError, ValueError, KeyError, EOFError, NotImplementedError, zipfile.BadZipFile)


class _WrongWidth(ValueError):
    """A shard whose vectors are not as wide as ``meta.json`` says."""


class _Shard:
    """One committed shard: its key columns (loaded on demand) and its vectors, read through a
    memory map opened for each read and closed after it: a cache grows a shard per write, and
    maps kept open would hold a file descriptor each (at the usual limit of 1,024, a cache of
    about a thousand shards failed every read)."""

    def __init__(self, directory: Path, stem: str) -> None:
        self.directory = directory
        self.stem = stem
        self._ids: np.ndarray | None = None
        self._hashes: np.ndarray | None = None
        self._digests: np.ndarray | None = None  # (empty: a shard written before digests)

    @property
    def keys_path(self) -> Path:
        return self.directory / f"{self.stem}.keys.npz"

    @property
    def vec_path(self) -> Path:
        return self.directory / f"{self.stem}.vec.npy"

    def key64(self) -> np.ndarray:
        with np.load(self.keys_path, allow_pickle=False) as z:
            return np.asarray(z["key64"], dtype=np.uint64)

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        if self._ids is None:
            with np.load(self.keys_path, allow_pickle=False) as z:
                self._ids, self._hashes = z["item_id"], z["content_hash"]
                self._digests = np.asarray(z["digest"], np.uint64) if "digest" in z.files else np.zeros(0, np.uint64)
        return self._ids, self._hashes

    def rows(self, src: np.ndarray) -> np.ndarray:
        """The vectors at rows ``src`` (ascending reads best), copied out of a map closed after."""
        # No reference to the map outlives this line, so it closes (and frees its descriptor) here.
        return np.array(np.load(self.vec_path, mmap_mode="r", allow_pickle=False)[src], dtype=np.float32)

    def intact(self, src: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Which of the ``vectors`` read from rows ``src`` match the digests stored (a shard
        without them: which are finite). Shapes: src (R,), vectors (R, D) -> (R,) bool"""
        self.labels()
        if len(self._digests):
            return row_digest(vectors) == self._digests[src]
        return np.isfinite(vectors).all(axis=1)


class _EncoderStore:
    """The shards of one encoder identity and a sorted key64 index over them."""

    def __init__(self, directory: Path, encoder_id: str) -> None:
        self.directory = directory
        self.encoder_id = encoder_id
        self.shards: list[_Shard] = []
        self._known: set[str] = set()
        self._keys = np.zeros(0, dtype=np.uint64)  # sorted, unique
        self._where = np.zeros((0, 2), dtype=np.int64)  # [K, 2] (shard, row) of the newest copy
        self.dim: int | None = None
        self.wrong_width = 0  # shards whose vectors are not meta.json's width

    def refresh(self) -> None:
        """Pick up shards committed since the last look (by this or another process)."""
        if not self.directory.is_dir():
            return
        if self.dim is None:
            self.dim = self._read_meta()
            if self.dim is None:  # no readable meta.json: no shard is used until a put writes one
                return
        stems = []
        for name in os.listdir(self.directory):
            m = _SHARD_RE.match(name)
            if m and name[: -len(".keys.npz")] not in self._known:
                stems.append(name[: -len(".keys.npz")])
        if not stems:
            return
        new_keys, new_where = [self._keys], [self._where]
        for stem in sorted(stems):  # seq first in the name: older shards first, newer ones win
            shard = _Shard(self.directory, stem)
            try:
                k = shard.key64()
                shape = np.load(shard.vec_path, mmap_mode="r", allow_pickle=False).shape  # (map freed at once)
                if shape[0] != len(k):
                    raise ValueError(f"{len(k)} keys but {shape[0]} vectors")
                if len(shape) != 2 or shape[1] != self.dim:  # (a wider or narrower array failed every get)
                    raise _WrongWidth(f"vectors of shape {list(shape)}, where meta.json says {self.dim} wide")
            except _DAMAGED as e:
                logger.warning("feature cache: ignoring unreadable shard %s (%s)", shard.keys_path, e)
                self.wrong_width += isinstance(e, _WrongWidth)
                self._known.add(stem)
                continue
            idx = len(self.shards)
            self.shards.append(shard)
            self._known.add(stem)
            new_keys.append(k)
            new_where.append(np.stack([np.full(len(k), idx, np.int64), np.arange(len(k), dtype=np.int64)], 1))
        keys = np.concatenate(new_keys)  # [K']
        where = np.concatenate(new_where)  # [K', 2]
        # Stable sort keeps insertion order among equal keys; the last of each run is the newest.
        order = np.argsort(keys, kind="stable")
        keys, where = keys[order], where[order]
        last = np.ones(len(keys), dtype=bool)
        last[:-1] = keys[1:] != keys[:-1]
        self._keys, self._where = keys[last], where[last]

    def _read_meta(self) -> int | None:
        meta = self.directory / "meta.json"
        if not meta.exists():
            return None
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            dim = int(info["dim"])
        except (OSError, ValueError, KeyError, TypeError) as e:  # damaged from outside (JSON errors are ValueErrors)
            logger.warning("feature cache: unreadable %s (%s): its vectors are not used until the next write "
                           "replaces it", meta, e)
            return None
        if info.get("encoder_id") != self.encoder_id:
            raise RuntimeError(
                f"feature cache directory {self.directory} belongs to encoder {info.get('encoder_id')!r}, "
                f"not {self.encoder_id!r} (hash collision or a hand-edited cache): delete that directory"
            )
        return dim

    def lookup(self, key64: np.ndarray) -> np.ndarray:
        """[N, 2] (shard, row) per key, -1 where absent."""
        out = np.full((len(key64), 2), -1, dtype=np.int64)
        if len(self._keys) == 0:
            return out
        pos = np.searchsorted(self._keys, key64)  # [N]
        pos_c = np.minimum(pos, len(self._keys) - 1)
        found = self._keys[pos_c] == key64
        out[found] = self._where[pos_c[found]]
        return out

    def __len__(self) -> int:
        return len(self._keys)


class FeatureCache:
    """On-disk vectors keyed by (encoder identity, item id, content hash).

    See the module docstring for the layout and the crash-safety protocol. Item ids are
    compared by ``str(item_id)``, so ``1`` and ``"1"`` are the same key; the vector is a function
    of the encoder and the content alone, so that can never return a wrong vector.

    Args:
        root: cache directory (created on first :meth:`put`).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._stores: dict[str, _EncoderStore] = {}

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    def _store(self, encoder_id: str) -> _EncoderStore:
        if encoder_id not in self._stores:
            name = hashlib.sha256(encoder_id.encode("utf-8")).hexdigest()[:24]
            self._stores[encoder_id] = _EncoderStore(self.root / name, encoder_id)
        store = self._stores[encoder_id]
        store.refresh()
        return store

    def __len__(self) -> int:
        """Number of distinct keys stored, over every encoder directory present under ``root``."""
        if not self.root.is_dir():
            return 0
        total = 0
        for d in sorted(self.root.iterdir()):
            meta = d / "meta.json"
            try:
                encoder_id = json.loads(meta.read_text(encoding="utf-8"))["encoder_id"]
            except (OSError, ValueError, KeyError, TypeError):  # no meta, or a damaged one: nothing usable
                continue
            if isinstance(encoder_id, str):
                total += len(self._store(encoder_id))
        return total

    def get(self, encoder_id: str, keys: Sequence[tuple[ItemId, str]]) -> tuple[np.ndarray | None, list[int]]:
        """Look up vectors.

        Args:
            encoder_id: the encoder's ``identity``.
            keys: ``(item_id, content_hash)`` per item.

        Returns:
            ``(vectors, missing)``: ``vectors`` is ``[N, D]`` float32 with the cached row for every
            hit and zeros at the missing positions, or ``None`` when nothing was found (then ``D``
            may be unknown); ``missing`` lists the positions (ascending) that were not found.

        Shapes: keys (N,) -> vectors (N, D)
        """
        n = len(keys)
        store = self._store(encoder_id)
        if n == 0 or len(store) == 0:
            return None, list(range(n))
        k64 = np.fromiter((_key64(i, h) for i, h in keys), dtype=np.uint64, count=n)  # [N]
        where = store.lookup(k64)  # [N, 2]
        hit = where[:, 0] >= 0
        q_ids = np.array([str(i) for i, _ in keys], dtype=str)  # [N]
        q_hashes = np.array([h for _, h in keys], dtype=str)  # [N]
        for s in np.unique(where[hit, 0]):
            rows = np.flatnonzero(hit & (where[:, 0] == s))
            try:
                ids, hashes = store.shards[s].labels()
            except _DAMAGED as e:  # a byte flipped inside the key file: its rows are misses
                logger.warning("feature cache: ignoring unreadable shard %s (%s)", store.shards[s].keys_path, e)
                hit[rows] = False
                continue
            src = where[rows, 1]
            # A 64-bit digest collision becomes a miss, never a wrong vector.
            same = (ids[src] == q_ids[rows]) & (hashes[src] == q_hashes[rows])
            hit[rows[~same]] = False
        if not hit.any():
            return None, list(range(n))
        out = np.zeros((n, store.dim), dtype=np.float32)  # [N, D]
        for s in np.unique(where[hit, 0]):
            rows = np.flatnonzero(hit & (where[:, 0] == s))
            src = where[rows, 1]
            order = np.argsort(src)  # sorted reads from the memory map
            try:
                vectors = store.shards[s].rows(src[order])
            except _DAMAGED as e:  # gone since it was listed (another process compacted), or damaged: misses
                logger.warning("feature cache: ignoring unreadable shard %s (%s)", store.shards[s].vec_path, e)
                hit[rows] = False
                continue
            good = store.shards[s].intact(src[order], vectors)
            if not good.all():
                logger.warning("feature cache: %d damaged vector(s) in %s ignored (encoded again)", int((~good).sum()),
                               store.shards[s].vec_path)
                hit[rows[order][~good]] = False
            out[rows[order][good]] = vectors[good]
        if not hit.any():
            return None, list(range(n))
        return out, np.flatnonzero(~hit).tolist()

    def put(self, encoder_id: str, keys: Sequence[tuple[ItemId, str]], vectors: np.ndarray) -> None:
        """Append vectors as one new shard (crash-safe: temp files, fsync, rename; keys last).

        Args:
            encoder_id: the encoder's ``identity``.
            keys: ``(item_id, content_hash)`` per row of ``vectors``.
            vectors: ``[N, D]`` float (stored as float32).

        Raises:
            ValueError: when ``vectors`` is not 2-D, its row count differs from ``len(keys)``,
                or ``D`` differs from the dimension already stored for this encoder.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError(f"put: expected vectors of shape [{len(keys)}, D], got {list(vectors.shape)}")
        if len(keys) == 0:
            return
        store = self._store(encoder_id)
        dim = int(vectors.shape[1])
        if store.dim is not None and store.dim != dim and not len(store) and store.wrong_width:
            # meta.json's width matches no shard (damaged, as one flipped digit does): every shard was read as
            # a miss; written anew, the shards of this width are read again. (With no shard on disk, another
            # writer's meta.json may precede its first shard: the width mismatch is refused below, as before.)
            logger.warning("feature cache: %s says %d-wide vectors and no shard agrees; rewritten for %d",
                           store.directory / "meta.json", store.dim, dim)
            (store.directory / "meta.json").unlink(missing_ok=True)
            del self._stores[encoder_id]
            store = self._store(encoder_id)
        if store.dim is not None and store.dim != dim:
            raise ValueError(
                f"put: encoder {encoder_id!r} has {store.dim}-d vectors in {store.directory}, got {dim}-d"
            )
        store.directory.mkdir(parents=True, exist_ok=True)
        if store.dim is None:
            meta = {"encoder_id": encoder_id, "dim": dim, "dtype": "float32"}
            tmp = store.directory / f".tmp-meta-{uuid.uuid4().hex[:8]}"
            _fsync_write(tmp, lambda f: f.write(json.dumps(meta, indent=1).encode("utf-8")))
            os.replace(tmp, store.directory / "meta.json")
            store.dim = dim
        self._write_shard(
            store,
            np.fromiter((_key64(i, h) for i, h in keys), dtype=np.uint64, count=len(keys)),
            np.array([str(i) for i, _ in keys], dtype=str),
            np.array([h for _, h in keys], dtype=str),
            vectors,
        )
        store.refresh()

    def _write_shard(
        self, store: _EncoderStore, key64: np.ndarray, ids: np.ndarray, hashes: np.ndarray, vectors: np.ndarray
    ) -> None:
        names = os.listdir(store.directory)
        _remove_stale_temporaries(store.directory, names)
        existing = [int(m.group(1)) for m in map(_SHARD_RE.match, names) if m]
        stem = f"shard-{max(existing, default=-1) + 1:012d}-{uuid.uuid4().hex[:8]}"
        tmp_vec = store.directory / f".tmp-{stem}.vec.npy"
        tmp_keys = store.directory / f".tmp-{stem}.keys.npz"
        try:
            _fsync_write(tmp_vec, lambda f: np.save(f, vectors, allow_pickle=False))
            _fsync_write(tmp_keys, lambda f: np.savez(f, key64=key64, item_id=ids, content_hash=hashes,
                                                      digest=row_digest(vectors)))
            os.replace(tmp_vec, store.directory / f"{stem}.vec.npy")
            os.replace(tmp_keys, store.directory / f"{stem}.keys.npz")  # the commit point
            _fsync_dir(store.directory)
        finally:
            for p in (tmp_vec, tmp_keys):
                if p.exists():
                    p.unlink()

    def compact(self, encoder_id: str) -> int:
        """Rewrite all shards of one encoder as a single shard holding the newest copy of each key.

        Crash-safe: the merged shard is committed before the old ones are deleted, and a key
        present in both resolves to the same vector.

        Returns:
            The number of keys in the merged shard.
        """
        store = self._store(encoder_id)
        if len(store.shards) <= 1:
            return len(store)
        old = list(store.shards)
        where = store._where  # [K, 2]
        ids = np.empty(len(where), dtype=object)
        hashes = np.empty(len(where), dtype=object)
        vectors = np.empty((len(where), store.dim), dtype=np.float32)  # [K, D]
        keep = np.ones(len(where), dtype=bool)  # a damaged vector is left out (a miss), not given a new digest
        for s, shard in enumerate(old):
            rows = np.flatnonzero(where[:, 0] == s)
            src = where[rows, 1]
            try:
                sid, shash = shard.labels()
                ids[rows], hashes[rows] = sid[src], shash[src]
                vectors[rows] = shard.rows(src)
                keep[rows] = shard.intact(src, vectors[rows])
            except _DAMAGED as e:  # read as misses by get(); left out here (it raised BadZipFile)
                logger.warning("feature cache: leaving the unreadable shard %s out of the compacted one (%s)",
                               shard.keys_path, e)
                keep[rows] = False
        if not keep.all():
            logger.warning("feature cache: %d damaged vector(s) left out of the compacted shard", int((~keep).sum()))
        self._write_shard(store, store._keys[keep], ids[keep].astype(str), hashes[keep].astype(str), vectors[keep])
        for shard in old:
            shard.keys_path.unlink(missing_ok=True)  # uncommit first, then drop the data
            shard.vec_path.unlink(missing_ok=True)
        del self._stores[encoder_id]
        return len(self._store(encoder_id))


def encode_with_cache(
    encode: Callable[[list], np.ndarray],
    encoder_id: str,
    item_ids: Sequence[ItemId],
    contents: Sequence,
    hashes: Sequence[str],
    cache: FeatureCache | None,
    chunk_size: int = 8192,
) -> tuple[np.ndarray, int]:
    """Encode only what the cache does not hold, store it, and return every vector in input order.

    The missing contents are encoded and stored ``chunk_size`` at a time, each chunk as its own
    cache shard, so an interrupted encoding run (a crash, Ctrl-C, a full disk) keeps every chunk
    finished before it: the next run encodes only the rest.

    Args:
        encode: batched encoder, e.g. ``TextEncoder.encode`` or ``ImageEncoder.encode_paths``;
            called once per chunk of missing contents, in input order.
        encoder_id: the encoder's ``identity``.
        item_ids: item id per content.
        contents: texts or image paths.
        hashes: content hash per content (:func:`content_hash` / :func:`file_hash`).
        cache: the cache, or ``None`` to encode everything (in one call).
        chunk_size: missing contents encoded and stored per call, default 8192.

    Returns:
        ``(vectors [N, D] float32, number of items encoded)``.

    Shapes: contents (N,) -> vectors (N, D)
    """
    n = len(contents)
    if not (len(item_ids) == n == len(hashes)):
        raise ValueError(
            f"encode_with_cache: {len(item_ids)} item ids, {n} contents and {len(hashes)} hashes must match"
        )
    if chunk_size < 1:
        raise ValueError(f"encode_with_cache: chunk_size must be >= 1, got {chunk_size}")
    if cache is None or n == 0:  # (nothing to look up: the encoder says what an empty batch is, [0, D])
        return np.asarray(encode(list(contents)), dtype=np.float32), n
    keys = list(zip(item_ids, hashes))
    cached, missing = cache.get(encoder_id, keys)
    if not missing:
        return cached, 0
    out = cached
    for start in range(0, len(missing), chunk_size):
        rows = missing[start : start + chunk_size]
        fresh = np.asarray(encode([contents[i] for i in rows]), dtype=np.float32)  # [n_chunk, D]
        if fresh.ndim != 2 or fresh.shape[0] != len(rows):
            raise ValueError(f"encode returned shape {list(fresh.shape)} for {len(rows)} inputs")
        if out is None:
            out = np.zeros((n, fresh.shape[1]), dtype=np.float32)  # [N, D]
        elif out.shape[1] != fresh.shape[1]:
            raise ValueError(f"cached vectors are {out.shape[1]}-d but the encoder returned {fresh.shape[1]}-d")
        if cache is not None:
            try:
                cache.put(encoder_id, [keys[i] for i in rows], fresh)  # durable before the next chunk starts
            except OSError as e:  # a full disk, a read-only cache: the vectors are good, only not kept
                logger.warning("feature cache: cannot write to %s (%s): going on without caching", cache.root,
                               e.strerror or e)
                cache = None
        out[rows] = fresh
    return out, len(missing)
