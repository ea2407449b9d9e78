"""FAISS index over item vectors, keyed by the catalog's own item ids.

:class:`FaissIndex` wraps one FAISS index described by a factory string and adds what a
recommender needs on top of raw FAISS:

* **Cosine similarity everywhere.** Vectors are cast to float32 and L2-normalised by the wrapper
  itself (for both ``add`` and ``search``), then searched by inner product; callers pass raw
  vectors. Zero, NaN and infinite rows are rejected.
* **Catalog ids.** Items are added under their own ids (``str`` or ``int``, mixed allowed, ``7``
  and ``"7"`` are different items); FAISS sees a private, never-reused int64 label per add.
* **Removal for every factory.** Flat and IVF indexes drop removed vectors physically; HNSW graphs
  cannot, so removed labels become tombstones that an ``IDSelector`` hides at search time (the
  graph still routes through them, which keeps recall intact). Rebuild an HNSW index when most of
  it is tombstones: the memory is not reclaimed.
* **Exclusion with refill.** ``search(..., exclude=[...])`` hides per-query ids (a user's known
  items, the query item itself) and still returns ``k`` results whenever ``k`` eligible items
  exist: it over-fetches, and when an approximate index comes back short it retries with a larger
  ``k`` and wider search (``nprobe`` / ``efSearch``), ending, if it must, with an exhaustive scan.
* **Candidates.** ``search(..., only=ids)`` returns nothing outside ``ids`` (a category, a region's
  stock), still ``k`` results whenever ``k`` candidates are left: a small set is let through by an
  ``IDSelector`` with a search widened to match, a large one kept after an over-fetching search.
* **Persistence** of the FAISS index plus ids, tombstones and search knobs (see :meth:`save`).

Factories offered: ``Flat`` (exact), ``HNSW{M}``, ``IVF{n},Flat``, ``IVF{n},SQ8``,
``IVF{n},PQ{m}`` (any width: one ``m`` does not divide is padded with zero columns, which leaves
every inner product as it is), and ``auto`` (see :meth:`FaissIndex.resolve_factory`).

Example::

    index = FaissIndex.build(item_vectors, item_ids)          # factory="auto"
    ids, scores = index.search(query_vectors, k=10, exclude=[seen_by_user])
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import faiss
import numpy as np
from tqdm.auto import tqdm

from index.persist import IndexFormatError, sha256_file

logger = logging.getLogger(__name__)

ItemId = Union[str, int]  # the catalog's own item id (mirrors mmrec.typing.ItemId; index must not import mmrec)

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
IDS_FORMAT_VERSION = 1

# An ``only`` set of this share of the items or more is kept after a search over-fetching 2 N / |only|
# times k, instead of being let through by an IDSelector inside FAISS. Where the two ways cross, timed
# side by side on 20k and 200k clustered vectors: Flat 7-30% (its selector skips the BLAS scan), HNSW
# 10-20%. IVF always uses the selector: kept after a search of the usual nprobe lists, the nearest
# candidates may lie in lists it never probed (recall 0.94 against 1.0 on 10k vectors at 5%), and
# probing N / |only| times as many lists, as the selector way does, costs that way's time anyway.
POST_FILTER_SHARE = {"flat": 0.1, "ivf": math.inf, "hnsw": 0.2}
# On Flat, an ``exclude_all`` list of at most FLAT_FOLD_MAX ids and FLAT_FOLD_SHARE of the items is
# left out after a search fetching that many more results, not hidden by an IDSelector, which turns
# off Flat's batched BLAS scan. Timed side by side (bench_exclude.py; 1,024 queries, 64-d, 1 thread):
# at 20k vectors folding 16 and 100 ids is 1.6x and 1.3x faster; in probes the two ways crossed near
# 256 ids at 20k vectors (near 20 ids at 2k), past which the deeper fetch costs more than the
# selector (2x at 1,000 ids); at 200k vectors they are level (1.06x at 100 ids).
FLAT_FOLD_MAX = 128
FLAT_FOLD_SHARE = 0.01
AUTO_EXACT_BELOW = 100_000  # "auto" keeps exact search below this many items
MIN_POINTS_PER_CENTROID = 39  # faiss k-means warns below this; we refuse instead (see train)
PQ_CENTROIDS = 256  # 8-bit PQ codes: each sub-quantizer is a 256-centroid k-means
DEFAULT_EF_SEARCH = 256  # HNSW32 recall@10 0.999 (64-d) / 0.995 (384-d) at 100k, 0.96 at 1M in bench_index.py
_ADD_CHUNK = 65_536  # rows per faiss add call, so progress can be reported

_GONE = object()  # marks a label whose item was removed

_FACTORY_FORMS = "Flat, HNSW{M}, IVF{n},Flat, IVF{n},SQ8, IVF{n},PQ{m} (e.g. 'HNSW32', 'IVF1024,PQ16') or auto"
_HNSW_RE = re.compile(r"HNSW([1-9][0-9]*)")
_IVF_RE = re.compile(r"IVF([1-9][0-9]*),(Flat|SQ8|PQ([1-9][0-9]*))")


class UnknownIdError(KeyError):
    """Some ids given to :meth:`FaissIndex.remove` are not in the index (``.ids`` lists them)."""

    def __init__(self, ids: list[ItemId]) -> None:
        super().__init__(ids)
        self.ids = ids

    def __str__(self) -> str:
        shown = ", ".join(repr(i) for i in self.ids[:10])
        more = f" (+{len(self.ids) - 10} more)" if len(self.ids) > 10 else ""
        return f"{len(self.ids)} id(s) not in the index: {shown}{more}"


@dataclass(frozen=True)
class _Spec:
    kind: str  # "flat" | "hnsw" | "ivf"
    hnsw_m: int = 0
    nlist: int = 0
    codec: str = ""  # IVF list storage: "Flat" | "SQ8" | "PQ"
    pq_m: int = 0


def _parse_factory(factory: str) -> _Spec:
    if not isinstance(factory, str):
        raise TypeError(f"factory must be a string, got {type(factory).__name__}")
    if factory == "Flat":
        return _Spec("flat")
    m = _HNSW_RE.fullmatch(factory)
    if m:
        if int(m.group(1)) < 2:
            raise ValueError(f"factory {factory!r}: HNSW needs M >= 2")
        return _Spec("hnsw", hnsw_m=int(m.group(1)))
    m = _IVF_RE.fullmatch(factory)
    if m:
        codec = "PQ" if m.group(3) else m.group(2)
        return _Spec("ivf", nlist=int(m.group(1)), codec=codec, pq_m=int(m.group(3) or 0))
    raise ValueError(f"unknown factory {factory!r}; accepted forms: {_FACTORY_FORMS}")


def _default_nprobe(nlist: int) -> int:
    """IVF default: ``max(16, nlist // 64)`` lists (all of them if fewer). With the lists that
    ``auto`` picks this measured recall@10 0.988 (IVF256,Flat at 100k) and 1.000 (IVF1024,Flat
    at 1M) in bench_index.py; small IVF indexes (a few hundred items per list) need more."""
    return min(nlist, max(16, nlist // 64))


def _auto_nlist(n: int, train_size: int = 100_000) -> int:
    """The power of two nearest ``sqrt(n)``, halved until ``train_size`` rows give every list
    39 training points: 256 lists at 100k items, 1024 at 1M, at most 2048."""
    nlist = 1 << max(0, round(math.log2(math.sqrt(n))))
    while nlist > 1 and MIN_POINTS_PER_CENTROID * nlist > min(n, train_size):
        nlist //= 2
    return nlist


def _resolve(factory: str, n: int, *, train_size: int) -> str:
    if factory == "auto":
        if n < AUTO_EXACT_BELOW:
            return "Flat"
        return f"IVF{_auto_nlist(n, train_size)},Flat"
    _parse_factory(factory)
    return factory


def _check_training_rows(factory: str, spec: _Spec, n: int, train_size: int) -> None:
    """ValueError when ``n`` vectors (at most ``train_size`` sampled) cannot train ``spec``: every
    k-means needs 39 points per centroid (faiss's own guideline)."""
    if spec.kind != "ivf":
        return
    n_train = min(n, int(train_size))
    need = MIN_POINTS_PER_CENTROID * spec.nlist
    if spec.codec == "PQ":
        need = max(need, MIN_POINTS_PER_CENTROID * PQ_CENTROIDS)
    if n_train < need:
        fits = max(1, n_train // MIN_POINTS_PER_CENTROID)
        hint = f"use IVF{fits} or fewer lists, or factory='auto'"
        if fits * MIN_POINTS_PER_CENTROID > n_train:
            hint = "use Flat"
        if spec.codec == "PQ" and n_train < MIN_POINTS_PER_CENTROID * PQ_CENTROIDS:
            hint = f"PQ codebooks need {MIN_POINTS_PER_CENTROID * PQ_CENTROIDS} rows; use SQ8 or Flat lists"
        raise ValueError(
            f"factory {factory!r} needs at least {need} training vectors "
            f"({MIN_POINTS_PER_CENTROID} per centroid); got {n_train} "
            f"(catalog {n}, train_size {train_size}): {hint}"
        )


NORMALISE_ROWS = 1 << 16  # rows normalised at a time (in float64)


def _canonical_id(item_id: Any) -> ItemId:
    if isinstance(item_id, (bool, np.bool_)):
        raise TypeError(f"item id {item_id!r} is a bool; ids must be str or int")
    if isinstance(item_id, np.str_):  # (a str subclass: kept as the plain str)
        return str(item_id)
    if isinstance(item_id, (str, int)):
        return item_id
    if isinstance(item_id, np.integer):
        return int(item_id)
    raise TypeError(f"item id {item_id!r} has type {type(item_id).__name__}; ids must be str or int")


def _unit_rows(vectors: Any, dim: int | None, what: str) -> np.ndarray:
    """float32 copy of ``vectors`` with unit-norm rows, or a ValueError naming the bad row."""
    try:
        x = np.array(vectors, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} cannot be converted to float32: {e}") from e
    want = f"(N, {dim})" if dim is not None else "(N, D)"
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim) or x.shape[1] == 0:
        raise ValueError(f"{what} must have shape {want}, got {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{what} row {int(np.flatnonzero(bad)[0])} contains NaN or inf")
    # In float64, where float32 squares would overflow (entries near 1e19) or underflow (1e-23);
    # a block of rows at a time, so no float64 copy of a large matrix is made.
    for start in range(0, len(x), NORMALISE_ROWS):
        block = x[start : start + NORMALISE_ROWS].astype(np.float64)  # [R, D]
        norms = np.linalg.norm(block, axis=1, keepdims=True)  # [R, 1]
        zero = norms[:, 0] == 0
        if zero.any():
            raise ValueError(f"{what} row {start + int(np.flatnonzero(zero)[0])} is a zero vector (cannot be "
                             "L2-normalised)")
        x[start : start + NORMALISE_ROWS] = block / norms
    return x  # [N, D]


class FaissIndex:
    """Inner product on L2-normalised vectors; the catalog's own ids mapped to int64 FAISS ids.

    Build one with :meth:`build` (train + add); the constructor makes an empty, untrained index.

    Args:
        dim: Vector dimension D.
        factory: A concrete factory string (not ``"auto"``; see :meth:`resolve_factory`).
            Defaults to ``"Flat"``.

    Shapes:
        add: vectors (N, D), ids N -> None
        search: queries (B, D) -> B lists of <= K ids, B arrays (<= K,) float32 scores
    """

    metric = "inner_product"

    def __init__(self, dim: int, factory: str = "Flat") -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if factory == "auto":
            raise ValueError("factory 'auto' needs the catalog size: use FaissIndex.build() or resolve_factory()")
        spec = _parse_factory(factory)
        self.dim = int(dim)
        self.factory = factory
        self._spec = spec
        # PQ{m} cuts each vector into m equal pieces: a width m does not divide gets zero columns
        # up to the next multiple (inner products, hence the ranking, are unchanged).
        self._width = -(-self.dim // spec.pq_m) * spec.pq_m if spec.codec == "PQ" else self.dim
        base = faiss.index_factory(self._width, factory, faiss.METRIC_INNER_PRODUCT)
        if spec.codec == "PQ":
            # Polysemous training (faiss's default for "PQm") only serves Hamming-filtered search,
            # which this wrapper never uses, and it dominates training time.
            base.do_polysemous_training = False
        # IVF indexes store ids natively; Flat and HNSW get an id map around them.
        self._index = base if spec.kind == "ivf" else faiss.IndexIDMap(base)
        self._label_of: dict[ItemId, int] = {}  # live items, insertion order
        self._id_by_label: list[Any] = []  # label -> item id, or _GONE once removed
        self._tombstones: set[int] = set()  # HNSW labels removed logically
        # label -> the label whose place it took in the order of equal scores (replace(): a vector
        # changed keeps its item's place); a label not here is its own place
        self._place_of: dict[int, int] = {}
        self._tomb_selector: Any = None  # cached IDSelectorNot over the tombstones
        # The last frozenset given as ``only`` (a server's repeated --where filter), with what was
        # made of it: (the set, the items' version, its live labels, {its "keep" array, "sel"ector}).
        self._only_memo: tuple[frozenset, int, frozenset[int], dict[str, Any]] | None = None
        self._version = 0  # bumped by every add and remove: labels resolved before are stale
        self._nprobe = _default_nprobe(spec.nlist) if spec.kind == "ivf" else 0
        self._ef_search = DEFAULT_EF_SEARCH if spec.kind == "hnsw" else 0
        self._push_knobs()

    # ----------------------------------------------------------------- construction
    @staticmethod
    def resolve_factory(factory: str, n: int) -> str:
        """Turn ``"auto"`` into a concrete factory for ``n`` items; validate and return others.

        The ``auto`` rule (from ``scripts/bench_index.py``, see ``benchmarks/results/index.md``):

        * ``n < 100_000``: ``"Flat"`` -- exact, and fast enough at this size.
        * otherwise ``"IVF{nlist},Flat"`` with ``nlist`` the power of two nearest ``sqrt(n)``,
          capped so the default 100k-row training sample gives 39 points per list (256 at 100k,
          1024 at 1M, at most 2048), searched with ``nprobe = max(16, nlist // 64)``. On
          bench_index.py's clustered 64-d sets this measured recall@10 0.988 at 100k and 1.000
          at 1M, where it ran ~60x the QPS of exact search (benchmarks/results/index.md). It
          trains in under a minute, removes items physically, and its scores are exact cosines.
          HNSW32 (separate run, ``--sizes 1M:64 --hnsw-max-n 1000000``) needed efSearch 256 for
          recall 0.96 at 1M, took ~9 minutes to build on two busy cores and can only tombstone
          removed items; SQ8 and PQ cap recall through their codes (~0.97 and ~0.5).

        Args:
            factory: ``"auto"`` or one of the concrete forms.
            n: Number of items the index will hold.

        Returns:
            A concrete factory string.

        Raises:
            ValueError: Unknown factory form.
        """
        return _resolve(factory, n, train_size=100_000)

    @staticmethod
    def check_factory(factory: str, n: int, *, train_size: int = 100_000) -> str:
        """:meth:`resolve_factory`, plus the checks :meth:`build` makes before training an IVF
        index on ``n`` vectors, so a factory that cannot work is refused before any encoding.

        Raises:
            ValueError: unknown factory form, too few vectors to train it.
        """
        concrete = _resolve(factory, n, train_size=train_size)
        _check_training_rows(concrete, _parse_factory(concrete), n, train_size)
        return concrete

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[ItemId],
        factory: str = "auto",
        *,
        train_size: int = 100_000,
        seed: int = 0,
        progress: bool = False,
    ) -> FaissIndex:
        """Create, train (IVF/PQ, on a seeded sample of ``vectors``) and fill an index.

        Args:
            vectors: Item vectors; normalised by the wrapper.
            ids: One catalog id per row.
            factory: Factory string or ``"auto"``. Defaults to ``"auto"``.
            train_size: Most rows used to train IVF / PQ (with ``"auto"`` it also caps the
                number of lists at ``train_size // 39``). Defaults to 100_000.
            seed: Seed of the training sample. Defaults to 0.
            progress: Show a tqdm bar while adding. Defaults to False.

        Returns:
            The filled index.

        Shapes:
            vectors (N, D), ids N -> index of N items
        """
        x = _unit_rows(vectors, None, "vectors")
        clean_ids = _check_new_ids({}, ids, len(x))
        index = cls(x.shape[1], _resolve(factory, len(x), train_size=train_size))
        start = time.perf_counter()
        if not index.is_trained:
            index._train_unit(x, train_size=train_size, seed=seed)
        index._add_unit(x, clean_ids, progress=progress)
        logger.info("built %s over %d x %d vectors in %.1f s", index.factory, *x.shape, time.perf_counter() - start)
        return index

    @property
    def is_trained(self) -> bool:
        """False for an IVF index that has not been trained yet."""
        return bool(self._index.is_trained)

    def train(self, vectors: np.ndarray, *, train_size: int = 100_000, seed: int = 0) -> None:
        """Train the IVF coarse quantizer (and SQ / PQ codec) on a seeded sample of ``vectors``.

        Every k-means involved must get at least 39 points per centroid (faiss's own guideline):
        ``IVF{n}`` needs ``39 * n`` training rows, ``PQ`` codebooks ``39 * 256``. With fewer rows
        this raises instead of silently training a poor index (or clamping ``n`` behind the
        caller's back); the message says the largest ``n`` that would fit.

        Args:
            vectors: Training vectors (usually the catalog itself).
            train_size: Most rows to sample. Defaults to 100_000.
            seed: Sample seed. Defaults to 0.

        Raises:
            ValueError: Not an IVF index, already trained, or too few training rows.

        Shapes:
            vectors (N, D) -> None
        """
        self._train_unit(_unit_rows(vectors, self.dim, "training vectors"), train_size=train_size, seed=seed)

    def _train_unit(self, x: np.ndarray, *, train_size: int, seed: int) -> None:
        if self._spec.kind != "ivf":
            raise ValueError(f"{self.factory} needs no training")
        if self.is_trained:
            raise ValueError(f"{self.factory} index is already trained")
        n_train = min(len(x), int(train_size))
        _check_training_rows(self.factory, self._spec, len(x), train_size)
        rng = np.random.default_rng(seed)
        sample = self._wide(x if n_train == len(x) else x[np.sort(rng.choice(len(x), n_train, replace=False))])
        ivf = faiss.extract_index_ivf(self._index)
        ivf.cp.seed = seed  # coarse k-means seed (faiss defaults to a fixed 1234)
        start = time.perf_counter()
        self._index.train(sample)
        logger.info("trained %s on %d vectors in %.1f s", self.factory, n_train, time.perf_counter() - start)

    # ----------------------------------------------------------------- mutation
    def add(self, vectors: np.ndarray, ids: Sequence[ItemId]) -> None:
        """Add items (normalised by the wrapper).

        Raises:
            ValueError: Wrong shape or dim, NaN/inf or zero rows, ids repeated within the call or
                already live in the index, or an untrained IVF index.
            TypeError: An id that is not str or int.

        Shapes:
            vectors (N, D), ids N -> None
        """
        clean_ids = _check_new_ids(self._label_of, ids, None)
        x = _unit_rows(vectors, self.dim, "vectors")
        if len(clean_ids) != len(x):
            raise ValueError(f"got {len(x)} vectors but {len(clean_ids)} ids")
        if not self.is_trained:
            raise ValueError(f"{self.factory} index is not trained: use FaissIndex.build() or .train() first")
        self._add_unit(x, clean_ids, progress=False)

    def _add_unit(self, x: np.ndarray, ids: list[ItemId], *, progress: bool) -> None:
        first = len(self._id_by_label)
        labels = np.arange(first, first + len(x), dtype=np.int64)  # [N]
        bar = tqdm(total=len(x), desc=f"index {self.factory}", unit="vec", disable=not progress)
        with bar:
            for s in range(0, len(x), _ADD_CHUNK):
                self._index.add_with_ids(self._wide(x[s : s + _ADD_CHUNK]), labels[s : s + _ADD_CHUNK])
                bar.update(min(_ADD_CHUNK, len(x) - s))
        self._id_by_label.extend(ids)
        for item_id, label in zip(ids, labels.tolist()):
            self._label_of[item_id] = label
        self._version += 1

    def _wide(self, x: np.ndarray) -> np.ndarray:
        """``[N, dim]`` rows as FAISS stores them: zero columns appended up to the PQ width."""
        if self._width == self.dim:
            return x
        return np.ascontiguousarray(np.pad(x, ((0, 0), (0, self._width - self.dim))), dtype=np.float32)

    def remove(self, ids: Sequence[ItemId]) -> int:
        """Remove items by catalog id; all or nothing.

        Flat and IVF drop the vectors; HNSW marks them as tombstones hidden at search time.
        Removed ids may be added again later (they get a fresh label).

        Returns:
            Number of items removed (repeated ids count once).

        Raises:
            UnknownIdError: (a KeyError) listing every id that is not live in the index;
                nothing is removed then.
        """
        if isinstance(ids, np.ndarray) and ids.ndim == 0:
            ids = ids.item()
        if isinstance(ids, (str, bytes, int, np.integer)):  # one id ("ab"), not its characters
            ids = [ids]
        wanted = list(dict.fromkeys(_canonical_id(i) for i in ids))
        unknown = [i for i in wanted if i not in self._label_of]
        if unknown:
            raise UnknownIdError(unknown)
        labels = [self._label_of.pop(i) for i in wanted]
        self._version += 1
        for label in labels:
            self._id_by_label[label] = _GONE
            self._place_of.pop(label, None)
        if self._spec.kind == "hnsw":
            self._tombstones.update(labels)
            self._tomb_selector = None
        elif labels:
            removed = self._index.remove_ids(np.asarray(labels, dtype=np.int64))
            if removed != len(labels):  # would mean the id map and faiss disagree
                raise RuntimeError(f"faiss removed {removed} vectors, expected {len(labels)}")
        return len(labels)

    def replace(self, vectors: np.ndarray, ids: Sequence[ItemId]) -> None:
        """Give live items new vectors, each keeping its place among equal scores (the order
        its first add gave it, which is the caller's item order): a :meth:`remove` then
        :meth:`add` would rank it after every item added before, as a new item.

        Raises:
            UnknownIdError: an id not live in the index (nothing changed); otherwise as :meth:`add`.

        Shapes:
            vectors (N, D), ids N -> None
        """
        clean = [_canonical_id(i) for i in ids]
        unknown = [i for i in clean if i not in self._label_of]
        if unknown:
            raise UnknownIdError(unknown)
        if len(set(clean)) != len(clean) or len(_unit_rows(vectors, self.dim, "vectors")) != len(clean):
            raise ValueError(f"replace takes one vector for each of distinct ids; got {len(vectors)} vectors for "
                             f"{len(clean)} ids ({len(set(clean))} distinct)")  # (checked before anything is removed)
        places = [self._place_of.get(self._label_of[i], self._label_of[i]) for i in clean]
        self.remove(clean)
        self.add(vectors, clean)
        for item_id, place in zip(clean, places):
            self._place_of[self._label_of[item_id]] = place

    # ----------------------------------------------------------------- knobs
    @property
    def nprobe(self) -> int:
        """IVF lists scanned per query (default ``max(16, nlist // 64)``); ValueError for non-IVF."""
        if self._spec.kind != "ivf":
            raise ValueError(f"{self.factory} has no nprobe (only IVF indexes do)")
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._spec.kind != "ivf":
            raise ValueError(f"{self.factory} has no nprobe (only IVF indexes do)")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= self._spec.nlist:
            raise ValueError(f"nprobe must be an int in [1, {self._spec.nlist}], got {value!r}")
        self._nprobe = int(value)
        self._push_knobs()

    @property
    def ef_search(self) -> int:
        """HNSW candidate-list size per query (default 256); ValueError for non-HNSW."""
        if self._spec.kind != "hnsw":
            raise ValueError(f"{self.factory} has no ef_search (only HNSW indexes do)")
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self._spec.kind != "hnsw":
            raise ValueError(f"{self.factory} has no ef_search (only HNSW indexes do)")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value < 2**31:
            raise ValueError(f"ef_search must be an int in [1, {2**31 - 1}] (FAISS's int), got {value!r}")
        self._ef_search = int(value)
        self._push_knobs()

    @property
    def knob(self) -> str | None:
        """The search knob that trades speed for recall: ``"nprobe"`` (IVF), ``"ef_search"``
        (HNSW), or ``None`` (Flat, which is exact)."""
        return {"ivf": "nprobe", "hnsw": "ef_search"}.get(self._spec.kind)

    @property
    def knob_top(self) -> int | None:
        """The knob's largest setting, where search is exhaustive: IVF ``nlist``, HNSW the number
        of stored vectors (``None`` for Flat)."""
        if self.knob is None:
            return None
        return int(self._spec.nlist if self.knob == "nprobe" else max(self._index.ntotal, 1))

    def sweep_knob(self, queries: np.ndarray, k: int = 10, *, exclude: Sequence[Collection[ItemId]] | None = None,
                   target: float | None = None) -> list[dict[str, float]]:
        """Recall@k of :meth:`search` at each setting of :attr:`knob`, against this index's own
        exhaustive search (every IVF list; for HNSW a scan of every stored vector).

        Recall counts a returned item when its score reaches the reference's k-th best (less
        1e-6), so items tied at the cut (equal vectors) count whichever of them came back; queries
        whose exclusions leave no item are left out. The reference is what the index can return
        at best: the exact cosine ranking for ``IVF{n},Flat`` and ``HNSW{M}``, the ranking of the
        quantised codes for SQ8 / PQ. Settings tried: IVF ``nprobe`` 1, 2, 4, ... up to ``nlist``;
        HNSW ``ef_search`` 16, 32, 64, ... up to the number of stored vectors (where search becomes
        the exhaustive scan). The knob is left as it was.

        Args:
            queries: query vectors (normalised by the wrapper, as for :meth:`search`).
            k: the cut-off of the recall.
            exclude: per query, ids hidden from its results, as for :meth:`search` (a similar-items
                query's own item, a user's known items), so the measured lists are those served.
            target: stop after the first setting whose recall reaches this.

        Returns:
            One row per setting tried, in increasing order: ``{"value": v, "recall": r,
            "ms_per_query": t}`` (``t`` the wall time of one batched :meth:`search`).

        Raises:
            ValueError: a Flat index (no knob), an empty index or query set, queries that all
                exclude every item, ``k < 1``, a ``target`` outside ``(0, 1]``.
        """
        name = self.knob
        if name is None:
            raise ValueError(f"{self.factory} search is exact: it has no knob to tune")
        if not len(self):
            raise ValueError("the index is empty: nothing to measure")
        if target is not None and not 0.0 < target <= 1.0:
            raise ValueError(f"target recall must be in (0, 1], got {target!r}")
        q = _unit_rows(queries, self.dim, "queries")
        if not len(q):
            raise ValueError("no queries to measure recall on")
        top = self.knob_top
        values = [1 << i for i in range(top.bit_length()) if (1 << i) < top and (name == "nprobe" or (1 << i) >= 16)]
        values.append(top)
        before = getattr(self, name)
        rows: list[dict[str, float]] = []
        try:
            setattr(self, name, top)
            _, truth = self.search(q, k, exclude=exclude)
            measured = [b for b, t in enumerate(truth) if len(t)]  # a query whose exclusions cover every item has no top-k
            if not measured:
                raise ValueError("every query excludes every item of the index: there is no top-k to measure")
            if len(measured) < len(q):
                q = q[measured]
                exclude = None if exclude is None else [exclude[b] for b in measured]
                truth = [truth[b] for b in measured]
            for value in values:
                setattr(self, name, value)
                start = time.perf_counter()
                _, found = self.search(q, k, exclude=exclude)
                ms = 1000.0 * (time.perf_counter() - start) / len(q)
                rows.append({"value": value, "recall": _score_recall(found, truth), "ms_per_query": ms})
                if target is not None and rows[-1]["recall"] >= target:
                    break
        finally:
            setattr(self, name, before)
        return rows

    def _push_knobs(self) -> None:
        # Mirror the knobs into the faiss object too, so a raw faiss user of index.faiss sees them.
        if self._spec.kind == "ivf":
            faiss.extract_index_ivf(self._index).nprobe = self._nprobe
        elif self._spec.kind == "hnsw":
            faiss.downcast_index(self._index.index).hnsw.efSearch = self._ef_search

    @property
    def faiss_index(self) -> Any:
        """The underlying faiss index, for inspection (size, statistics). Mutating it directly
        bypasses the id map and tombstones: use :meth:`add` / :meth:`remove`."""
        return self._index

    # ----------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, item_id: object) -> bool:
        try:
            return _canonical_id(item_id) in self._label_of
        except TypeError:
            return False

    @property
    def ids(self) -> list[ItemId]:
        """Live ids in insertion order (a re-added id counts from its latest add)."""
        return list(self._label_of)

    def __repr__(self) -> str:
        knob = ""
        if self._spec.kind == "ivf":
            knob = f", nprobe={self._nprobe}"
        elif self._spec.kind == "hnsw":
            knob = f", ef_search={self._ef_search}"
        return f"FaissIndex({self.dim}, factory={self.factory!r}{knob}, size={len(self)})"

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Sequence[Collection[ItemId]] | None = None,
        exclude_all: Collection[ItemId] = (),
        only: Collection[ItemId] | None = None,
    ) -> tuple[list[list[ItemId]], list[np.ndarray]]:
        """Top-``k`` items per query by cosine similarity (queries are normalised by the wrapper).

        Args:
            queries: Query vectors.
            k: Results wanted per query.
            exclude: Optional, one collection per query of ids that must not be returned for it
                (a bare id counts as one id, a string never as its characters); ids not in the
                index are ignored.
            exclude_all: Ids no query may return (ids not in the index are ignored). Unlike
                ``exclude`` they are hidden inside FAISS (an ``IDSelector``), so a long list costs
                neither a deeper fetch nor a per-query copy; on Flat, without ``only``, a list of
                at most ``FLAT_FOLD_MAX`` (128) ids and ``FLAT_FOLD_SHARE`` (1%) of the items is
                left out of a deeper fetch instead, as the selector would turn off its batched scan.
            only: Optional candidate set: when given, no query returns an id outside it (ids
                not in the index are ignored; an empty set returns nothing); ``exclude`` and
                ``exclude_all`` still apply within it. A set of under ``POST_FILTER_SHARE`` of
                the items (Flat 10%, HNSW 20%; IVF always) is let through inside FAISS by an
                ``IDSelector`` (IVF then probes, and HNSW walks, ``N / len(only)`` times as wide,
                to see as many candidates as an unrestricted search sees items); a larger one is
                kept after an unrestricted search that fetches ``2 N / len(only)`` times as many
                results, refilling when short.

        Returns:
            ``(ids, scores)``: per query, item ids best-first and their float32 scores. Each
            list has exactly ``min(k, eligible)`` entries, ``eligible`` being the live items
            (within ``only``) not excluded for that query, also for approximate factories (see
            the module docstring).
            Scores are FAISS's: exact cosines for Flat and HNSW, approximations for SQ8 / PQ.

        Shapes:
            queries (B, D) -> B lists of K ids, B arrays (K,) float32
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = self._wide(_unit_rows(queries, self.dim, "queries"))
        n_q = len(q)
        if exclude is not None and len(exclude) != n_q:
            raise ValueError(f"exclude has {len(exclude)} entries for {n_q} queries")
        shared = self._labels(exclude_all)
        allowed, made = (None, {}) if only is None else self._only_labels(only, shared)
        excluded: list[set[int]] = [set() for _ in range(n_q)]
        if exclude is not None:
            for b, items in enumerate(exclude):
                if isinstance(items, (str, bytes, int, np.integer)):
                    items = [items]  # one id, not its characters (as exclude_all and only read one)
                for item in items:
                    label = None if isinstance(item, (bool, np.bool_)) else self._label_of.get(item)
                    if label is not None and label not in shared and (allowed is None or label in allowed):
                        excluded[b].add(label)
        visible = len(self._label_of) - len(shared)  # through a selector hiding ``shared``
        live = visible if allowed is None else len(allowed)
        # A large candidate set is cheaper to keep after the search, over-fetching by the share it
        # leaves out, than to check inside FAISS, whose selector skips the BLAS scan of Flat and
        # is what made IVF probe N / live times as many lists (README, bench_candidates.py).
        post = allowed is not None and len(allowed) >= POST_FILTER_SHARE[self._spec.kind] * len(self._label_of)
        if post and "keep" not in made:  # [labels] bool: one lookup a fetched label (np.isin sorted them)
            made["keep"] = np.zeros(len(self._id_by_label), dtype=bool)
            made["keep"][np.fromiter(allowed, dtype=np.int64, count=len(allowed))] = True
        keep = made.get("keep")
        # A short shared list on Flat is filtered out of a deeper fetch instead (FLAT_FOLD_MAX).
        fold = (self._spec.kind == "flat" and allowed is None
                and 0 < len(shared) <= min(FLAT_FOLD_MAX, FLAT_FOLD_SHARE * len(self._label_of)))
        folded = shared if fold else frozenset()
        if folded:
            sel = None
        elif post or allowed is None:
            sel = self._selector(shared)
        else:
            if "sel" not in made:
                made["sel"] = self._selector(shared, allowed)
            sel = made["sel"]
        # Twice the expected need: at exactly N / |only| times k, half the queries would come back
        # short of k candidates and search again, wider.
        scale = 2.0 * visible / max(live, 1) if post else 1.0
        target = [min(int(k), live - len(e)) for e in excluded]
        out_ids: list[list[ItemId]] = [[] for _ in range(n_q)]
        out_scores: list[np.ndarray] = [np.empty(0, dtype=np.float32) for _ in range(n_q)]

        ntotal = int(self._index.ntotal)
        # Each query fetches k plus what it excludes. Queries whose needs are within a factor of
        # two share one FAISS call, at the largest need among them: one call at the batch's
        # largest need would fetch (and filter) hundreds of rows per query for every query of a
        # batch holding one user with a long history. A single query fetches exactly its need.
        # (and one more: the first past the list tells whether a tie of equal scores crosses its end)
        need = [min(ntotal, math.ceil((int(k) + 1 + len(e) + len(folded)) * scale)) for e in excluded]
        groups: dict[int, list[int]] = {}
        for b in range(n_q):
            if target[b] > 0:
                groups.setdefault(need[b].bit_length(), []).append(b)
        for pending in groups.values():
            self._search_group(q, pending, max(need[b] for b in pending), excluded, target, out_ids, out_scores,
                               visible if post else live, sel, keep, folded)
        return out_ids, out_scores

    def _search_group(self, q: np.ndarray, pending: list[int], fetch: int, excluded: list[set[int]],
                      target: list[int], out_ids: list[list[ItemId]], out_scores: list[np.ndarray],
                      live: int, sel: Any, keep: np.ndarray | None = None,  # [labels] bool
                      hidden: Collection[int] = frozenset()) -> None:
        """Fill ``out_ids`` / ``out_scores`` for the queries ``pending`` (rows of ``q``), starting
        at ``fetch`` results per query and widening for those still short (:meth:`search`);
        ``live`` items are visible through the selector ``sel`` (:meth:`_selector`), only the
        labels ``keep`` (a bool per label, when given) marks are kept of what comes back, and no
        label in ``hidden``."""
        ntotal = int(self._index.ntotal)
        nprobe, ef, exhaustive = self._nprobe, self._ef_search, False
        if self._spec.kind == "hnsw":
            # Tombstones and hidden ids still occupy the graph: to meet ``fetch`` visible nodes the
            # walk must visit about ntotal / live times as many, so widen the candidate list up
            # front. A walk over every node, or over a graph where fewer than one node in M is
            # visible, costs more than a flat scan of the graph's storage: scan instead.
            ef = max(ef, math.ceil(fetch * ntotal / max(live, 1)))
            exhaustive = ef >= ntotal or ntotal > self._spec.hnsw_m * max(live, 1) or self._walk_costs_more(ef)
        elif self._spec.kind == "ivf" and live < ntotal:
            # The same for inverted lists: hidden vectors still fill them, so probe ntotal / live
            # times as many lists to see as many visible vectors as an unrestricted search does.
            # Otherwise a selective ``only`` stops at the first k candidates of the nearest lists,
            # and the nearest candidates, sparse, may lie in others (recall 0.94 against 0.999).
            nprobe = min(self._spec.nlist, math.ceil(nprobe * ntotal / max(live, 1)))
        hidden_labels = np.fromiter(hidden, dtype=np.int64, count=len(hidden)) if hidden else None
        # A tie at a query's list's end widens its fetch once, by TIE_FETCH (see below): the fetch
        # that settles it, per query (a widening for another query, short, may fall below it).
        tie_settled_at: dict[int, int] = {}
        while pending:
            scores, labels = self._raw_search(q[pending], fetch, nprobe, ef, exhaustive, sel)  # [B', F] each
            # An exact scan's top ``fetch`` hold the answer: ``fetch`` counts each query's own
            # exclusions, but not what ``keep`` leaves out, which only the whole ranking settles.
            exact = exhaustive or self._spec.kind == "flat" or (self._spec.kind == "ivf" and nprobe >= self._spec.nlist)
            done = exact and (fetch >= ntotal or (exhaustive and keep is None))
            shown = labels >= 0  # [B', F]; -1 pads
            if keep is not None:  # one vectorised test: a share s of candidates means k / s labels a query
                shown &= keep[np.maximum(labels, 0)]
            if hidden_labels is not None:  # the same for a folded shared list
                shown &= ~np.isin(labels, hidden_labels)
            short, tied = [], []
            for row, b in enumerate(pending):
                got_ids, got_pos, got_labels = [], [], []
                row_scores, cols = scores[row], np.flatnonzero(shown[row])
                whole = False  # the next result past the list's end scores lower: no tie crosses that end
                for j, label in _head_first(cols, labels[row], target[b] + len(excluded[b]) + 1):
                    if label in excluded[b]:
                        continue
                    item = self._id_by_label[label]
                    if item is _GONE:
                        continue
                    if len(got_ids) >= target[b] and row_scores[j] < row_scores[got_pos[target[b] - 1]]:
                        whole = True
                        break
                    got_ids.append(item)  # (past the target: tied with the list's last, kept to order the tie)
                    got_pos.append(j)
                    got_labels.append(label)
                if len(got_ids) >= target[b] and not whole and fetch < tie_settled_at.get(b, ntotal) \
                        and labels[row, -1] >= 0 and row_scores[-1] >= row_scores[got_pos[target[b] - 1]]:
                    tied.append(b)  # the tie at the list's end may run on past what was fetched
                    tie_settled_at.setdefault(b, min(ntotal, fetch + TIE_FETCH))
                elif len(got_ids) >= target[b] or done:
                    places = [self._place_of.get(label, label) for label in got_labels] if self._place_of else got_labels
                    out_ids[b], out_scores[b] = _ties_by_label(got_ids, places, row_scores[got_pos], target[b])
                else:
                    short.append(b)
            if short:  # (a done search is short only of a tie's end)
                logger.debug("%d of %d queries short at fetch=%d; widening", len(short), len(pending), fetch)
                fetch = min(ntotal, 2 * fetch)
                nprobe = min(self._spec.nlist, 2 * nprobe)
                ef = max(2 * ef, fetch)
            elif tied:
                # Deeper in the same lists and graph walk, once: a tie of TIE_FETCH items or fewer is then
                # whole and ordered by label. A larger one (thousands of duplicate rows) is ordered as far as
                # it was fetched: widening until it ended probed every list, or scanned every vector, a query.
                fetch = min(ntotal, fetch + TIE_FETCH)
                ef = max(ef, fetch)
            # As above; a scan stays one (the graph that made a walk cost more has not changed, and
            # ``ef >= ntotal`` alone sent a graph with few live nodes back to walking, widened)
            exhaustive = exhaustive or (self._spec.kind == "hnsw" and (ef >= ntotal or self._walk_costs_more(ef)))
            pending = short + tied

    def _only_labels(self, only: Collection[ItemId] | ItemId,
                     shared: set[int]) -> tuple[frozenset[int] | set[int], dict[str, Any]]:
        """``(the live labels of only but shared's, a dict to keep what is made of them)``. A
        frozenset seen last time, with no ``shared`` and the items unchanged, gives back what was
        made then: resolving 100k ids and building their selector took 10-20 ms a query."""
        memo = self._only_memo
        if not shared and memo is not None and memo[0] is only and memo[1] == self._version:
            return memo[2], memo[3]
        labels = self._labels(only)
        if shared or not isinstance(only, frozenset):  # a set may change between calls: made afresh
            return labels - shared, {}
        self._only_memo = (only, self._version, frozenset(labels), {})
        return self._only_memo[2], self._only_memo[3]

    def _labels(self, ids: Collection[ItemId] | ItemId) -> set[int]:
        """The labels of the ids in the index (others ignored); a single id is one id, not its characters."""
        if isinstance(ids, (str, bytes, int, np.integer)):
            ids = [ids]
        # True is no id, though Python's dict lookup finds id 1 with it (checked past the plain types).
        label_of = self._label_of
        return {label for item in ids
                if (type(item) is str or type(item) is int or not isinstance(item, (bool, np.bool_)))
                and (label := label_of.get(item)) is not None}

    def _walk_costs_more(self, ef: int) -> bool:
        """Whether an HNSW walk widened to ``ef`` (past the index's own efSearch) would compute
        more distances (about ``ef * M``) than a scan of its storage (``ntotal``): a user with
        many known items inside a small ``only`` set widens it that far (0.1 ms a query scanned
        against 72 ms walked, 20k vectors)."""
        return ef > self._ef_search and ef * self._spec.hnsw_m >= int(self._index.ntotal)

    def _raw_search(
        self, q: np.ndarray, fetch: int, nprobe: int, ef: int, exhaustive: bool, sel: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One FAISS call; returns (scores, labels), both (B, fetch); -1 labels are padding.
        ``sel`` (:meth:`_selector`) hides labels inside FAISS, in the exhaustive HNSW scan too."""
        kind = self._spec.kind
        if exhaustive:  # HNSW only: brute force over the graph's own vector storage
            hnsw = faiss.downcast_index(self._index.index)
            params = None
            if sel is not None:  # the storage counts positions: the selector sees them as labels
                translated = faiss.IDSelectorTranslated(self._index.id_map, sel)
                params = faiss.SearchParameters(sel=translated)
            scores, pos = faiss.downcast_index(hnsw.storage).search(q, fetch, params=params)  # [B, F] positions
            id_map = faiss.vector_to_array(self._index.id_map)  # [ntotal] position -> label
            return scores, np.where(pos >= 0, id_map[np.maximum(pos, 0)], -1)
        if kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        elif kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=ef)
        else:
            params = faiss.SearchParameters() if sel is not None else None
        if sel is not None:
            params.sel = sel
        return self._index.search(q, fetch, params=params)

    def _selector(self, shared: set[int], allowed: set[int] | None = None) -> Any:
        """The ``IDSelector`` hiding HNSW tombstones and the ``shared`` labels, or, given
        ``allowed`` (live labels, ``shared`` already taken out), letting only those through;
        ``None`` when nothing is hidden."""
        if allowed is not None:
            return _allowing(allowed)  # tombstones are never live, so never allowed
        if not shared:
            return self._tombstone_selector() if self._spec.kind == "hnsw" and self._tombstones else None
        return _hiding(shared | self._tombstones if self._spec.kind == "hnsw" else shared)

    def _tombstone_selector(self) -> Any:
        if self._tomb_selector is None:
            self._tomb_selector = _hiding(self._tombstones)
        return self._tomb_selector

    # ----------------------------------------------------------------- persistence
    def save(self, directory: Path) -> dict[str, str]:
        """Write ``index.faiss`` and ``ids.json`` into an existing directory.

        ``ids.json`` holds the factory, dim, live ids with their FAISS labels (JSON keeps ``7``
        an int and ``"7"`` a string), HNSW tombstones, the next free label and the search knobs,
        so :meth:`load` restores identical search results. Wrap it in
        :func:`index.atomic_directory` and record the returned checksums with
        :func:`index.write_manifest` for crash safety and integrity checks.

        Returns:
            ``{filename: sha256}`` for the two files.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"cannot save index: {directory} is not an existing directory")
        faiss.write_index(self._index, str(directory / INDEX_FILE))
        meta = {
            "ids_format_version": IDS_FORMAT_VERSION,
            "factory": self.factory,
            "dim": self.dim,
            "metric": self.metric,
            "ids": list(self._label_of),
            "labels": list(self._label_of.values()),
            "tombstones": sorted(self._tombstones),
            "next_label": len(self._id_by_label),
            "places": [[label, place] for label, place in sorted(self._place_of.items())],
            "nprobe": self._nprobe if self._spec.kind == "ivf" else None,
            "ef_search": self._ef_search if self._spec.kind == "hnsw" else None,
        }
        (directory / IDS_FILE).write_text(json.dumps(meta), encoding="utf-8")
        return {name: sha256_file(directory / name) for name in (INDEX_FILE, IDS_FILE)}

    @classmethod
    def load(cls, directory: Path) -> FaissIndex:
        """Read an index written by :meth:`save`.

        Raises:
            IndexFormatError: A file is missing or the two files disagree (dim, factory, count);
                the message names the directory and the field.
        """
        directory = Path(directory)
        for name in (INDEX_FILE, IDS_FILE):
            if not (directory / name).is_file():
                raise IndexFormatError(f"{directory}: missing {name}")
        try:
            meta = json.loads((directory / IDS_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexFormatError(f"{directory / IDS_FILE}: not valid JSON ({e})") from e

        def field(name: str) -> Any:
            if not isinstance(meta, dict) or name not in meta:
                raise IndexFormatError(f"{directory / IDS_FILE}: field {name!r} is missing")
            return meta[name]

        if field("ids_format_version") != IDS_FORMAT_VERSION:
            raise IndexFormatError(
                f"{directory / IDS_FILE}: field 'ids_format_version' is {meta['ids_format_version']!r}, "
                f"this code reads {IDS_FORMAT_VERSION}"
            )
        try:
            index = cls(field("dim"), field("factory"))
        except (TypeError, ValueError) as e:
            raise IndexFormatError(f"{directory / IDS_FILE}: field 'factory' or 'dim' is invalid: {e}") from e
        raw = faiss.read_index(str(directory / INDEX_FILE))
        if _structure(raw) != _structure(index._index):  # ids.json's factory must be the one index.faiss was built by
            raise IndexFormatError(f"{directory}: field 'factory' is {index.factory!r} in {IDS_FILE}, but {INDEX_FILE} "
                                   f"holds another kind of index ({', '.join(map(str, _structure(raw)))})")
        if raw.d != index._width:  # a PQ index stores its vectors padded to a multiple of m
            raise IndexFormatError(f"{directory}: field 'dim' is {index.dim} in {IDS_FILE} (FAISS width "
                                   f"{index._width}) but {raw.d} in {INDEX_FILE}")
        ids, labels, tombstones = field("ids"), field("labels"), field("tombstones")
        if len(ids) != len(labels):
            raise IndexFormatError(f"{directory / IDS_FILE}: fields 'ids' and 'labels' differ in length")
        if raw.ntotal != len(ids) + len(tombstones):
            raise IndexFormatError(
                f"{directory}: field 'ids' lists {len(ids)} items (+{len(tombstones)} tombstones) "
                f"but {INDEX_FILE} holds {raw.ntotal} vectors"
            )
        index._index = raw
        try:
            index._id_by_label = [_GONE] * int(field("next_label"))
            for item_id, label in zip(ids, labels):
                item_id = _canonical_id(item_id)
                index._label_of[item_id] = label
                index._id_by_label[label] = item_id
        except (TypeError, IndexError) as e:
            raise IndexFormatError(f"{directory / IDS_FILE}: fields 'ids' / 'labels' / 'next_label' are corrupt: {e}") from e
        if len(index._label_of) != len(ids):
            raise IndexFormatError(f"{directory / IDS_FILE}: field 'ids' contains duplicates")
        index._tombstones = {int(t) for t in tombstones}
        try:  # (absent before replace() kept places: every label its own)
            index._place_of = {int(label): int(place) for label, place in meta.get("places", [])}
        except (TypeError, ValueError) as e:
            raise IndexFormatError(f"{directory / IDS_FILE}: field 'places' is corrupt: {e}") from e
        if index._spec.kind == "ivf":
            index._nprobe = int(field("nprobe"))
        elif index._spec.kind == "hnsw":
            index._ef_search = int(field("ef_search"))
        index._push_knobs()
        return index


def _structure(index: Any) -> tuple:
    """What a FAISS index is, as a factory names it: ``("flat",)``, ``("hnsw", M)`` or
    ``("ivf", nlist, its class: Flat / scalar quantizer / PQ, PQ's m)`` (an id map looked through)."""
    x = faiss.downcast_index(index)
    if isinstance(x, faiss.IndexIDMap):
        x = faiss.downcast_index(x.index)
    if isinstance(x, faiss.IndexHNSW):
        return ("hnsw", int(x.hnsw.nb_neighbors(1)))
    if isinstance(x, faiss.IndexIVF):
        return ("ivf", int(x.nlist), type(x).__name__, int(x.pq.M) if hasattr(x, "pq") else 0)
    if isinstance(x, faiss.IndexFlat):
        return ("flat",)
    return (type(x).__name__,)


# How much deeper a query whose list ends in a tie of equal scores fetches, once, to order the tie.
TIE_FETCH = 64


def _ties_by_label(ids: list[ItemId], labels: list[int], scores: np.ndarray,
                   k: int) -> tuple[list[ItemId], np.ndarray]:
    """The best ``k`` of one query's results (``scores`` best first, as FAISS gives them), equal
    scores ordered by label (``labels``: each result's place, :meth:`FaissIndex.replace`), the
    index's own order, as ``mmrec evaluate`` ranks them: FAISS's order
    among equal scores, and which of a tie crossing the list's end it returned, changed with the
    depth fetched, so ``k=1`` and ``k=3`` disagreed on the top item, and ``only`` changed it too."""
    if len(ids) > k or (len(scores) > 1 and bool((scores[1:] == scores[:-1]).any())):
        order = np.lexsort((np.asarray(labels, dtype=np.int64), -scores))[:k]  # (score down, then label up)
        return [ids[i] for i in order], scores[order].astype(np.float32)
    return ids, scores.astype(np.float32)


def _head_first(cols: np.ndarray, row_labels: np.ndarray, head: int):
    """``(column, label)`` pairs of one query's shown results, best first, turned into Python ints
    the first ``head`` of them first and the rest only if the loop reads on: a query reads its
    target plus its own exclusions, not the whole deep fetch a long shared or candidate list asked
    for, unless it comes up short."""
    first = cols[:head]
    yield from zip(first.tolist(), row_labels[first].tolist())
    rest = cols[head:]
    if len(rest):
        yield from zip(rest.tolist(), row_labels[rest].tolist())


def _allowing(labels: Collection[int]) -> Any:
    """An ``IDSelector`` that lets only ``labels`` through."""
    return faiss.IDSelectorBatch(np.fromiter(labels, dtype=np.int64, count=len(labels)))


def _hiding(labels: Collection[int]) -> Any:
    """An ``IDSelector`` that lets every label through but ``labels``."""
    batch = faiss.IDSelectorBatch(np.fromiter(labels, dtype=np.int64, count=len(labels)))
    selector = faiss.IDSelectorNot(batch)
    selector.referenced_objects = [batch]  # IDSelectorNot does not own its argument: keep it alive
    return selector


# Scores within this of the reference's k-th best count as reaching it: the same cosine computed by
# two code paths (an HNSW walk, a scan of its storage) can differ in the last float32 bits.
_SCORE_TOLERANCE = 1e-6


def _score_recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean fraction of each query's reference top-k that ``found`` matches, by score: a found
    item counts when its score reaches the reference's k-th best, so items tied at the cut (equal
    vectors) count whichever of them came back. Rows are the score arrays of :meth:`FaissIndex.search`
    (distinct items, best first); every ``truth`` row is non-empty."""
    total = 0.0
    for got, want in zip(found, truth):
        cut = float(want[-1]) - _SCORE_TOLERANCE
        total += min(int((got >= cut).sum()), len(want)) / len(want)
    return total / len(truth)


def _check_new_ids(existing: Collection[ItemId], ids: Sequence[ItemId], n: int | None) -> list[ItemId]:
    """Canonical ids, or an error naming ids repeated in ``ids`` or already in ``existing``."""
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids must be a sequence of ids, not a single string")
    clean = [_canonical_id(i) for i in ids]
    if n is not None and len(clean) != n:
        raise ValueError(f"got {n} vectors but {len(clean)} ids")
    seen: set[ItemId] = set()
    repeated = [i for i in clean if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    if repeated:
        shown = ", ".join(repr(i) for i in list(dict.fromkeys(repeated))[:10])
        raise ValueError(f"duplicate ids in this call: {shown}")
    present = [i for i in clean if i in existing]
    if present:
        shown = ", ".join(repr(i) for i in present[:10])
        raise ValueError(f"{len(present)} id(s) already in the index: {shown} (remove them first)")
    return clean
