"""User-item interactions: load, validate, and map external ids to contiguous indices.

An interaction file is a table with one row per (user, item) event:

========== ======== ============================================================
column     required meaning
========== ======== ============================================================
user_id    yes      the user's own id (any text or integer)
item_id    yes      the item's own id; with a catalog, it must be a catalog id
rating     no       a number; ``rating_threshold`` keeps rows with rating >= it
timestamp  no       a number (e.g. Unix seconds); used by the temporal split
split      no       ``train`` / ``valid`` / ``test``: a fixed, published split
========== ======== ============================================================

Formats, chosen by extension: ``.csv`` (comma), ``.tsv`` (tab), ``.jsonl`` (one object a line),
``.parquet`` / ``.pq``; a ``.gz`` or ``.bz2`` suffix on a CSV/TSV is decompressed on the fly.
Other columns are ignored.

The files are read with pyarrow (the engine under Hugging Face ``datasets``) rather than
``datasets.load_dataset``: that goes through pandas type inference (``"007"`` would become
``7``) and materialises Python rows, which is slow for 10^5-10^7 interactions; pyarrow reads
every known column as text, and the checks below run vectorised over whole columns.

Ids follow the one rule in :mod:`mmrec.ids`: a column whose every id is a canonical integer
becomes ``int``, otherwise every id stays ``str`` (``"007"`` stays ``"007"``). With a catalog,
an interaction's item id is matched to the catalog id with the same ``str()`` form.

Rows are numbered like the rest of mmrec's errors: row 1 is the first data record after the
header. Problems (missing or non-numeric values, unknown split names or catalog ids) raise a
:class:`~mmrec.errors.DataError` naming file, row and field, or with ``on_invalid="skip"`` the
offending rows are dropped and counted in ``Interactions.report``. A (user, item) pair seen
more than once is kept once (its first row) and counted: implicit feedback is a set of pairs.
"""
from __future__ import annotations

import bisect
import csv
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import scipy.sparse as sp

from mmrec.errors import BLANK_HEADER, ConfigError, DataError, Problem, UnknownIdError, missing_file, utf8_problem
from mmrec.ids import id_text, normalize_ids
from mmrec.jsonlines import read_objects
from mmrec.typing import ItemId, UserId

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")  # position = the int8 code stored in Interactions.split
TRAIN, VALID, TEST = 0, 1, 2
REQUIRED_COLUMNS = ("user_id", "item_id")
OPTIONAL_COLUMNS = ("rating", "timestamp", "split")
ON_INVALID = ("error", "skip")
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSED = (".gz", ".bz2")
_CODECS = {".gz": "gzip", ".bz2": "bz2"}  # by the lower-cased suffix: arrow's detection reads ".GZ" as text
HEADER_BYTES = 64 << 20  # the most of a CSV/TSV read looking for the end of its header row
NO_RATING_COLUMN = "rating_threshold is set but the file has no rating column"
_PROBLEMS_IN_REPORT = 20  # offending rows listed in report["problems"] when skipping


def split_codes(split: str | Sequence[str]) -> list[int]:
    """The int8 codes of one split name, a sequence of names, or ``"all"``.

    Raises:
        ConfigError: an unknown split name.
    """
    names = list(SPLITS) if split == "all" else [split] if isinstance(split, str) else list(split)
    unknown = [s for s in names if s not in SPLITS]
    if unknown:
        raise ConfigError(f"unknown split {unknown[0]!r}; expected one of {', '.join(SPLITS)} or 'all'")
    return [SPLITS.index(s) for s in names]


@dataclass(eq=False)
class Interactions:
    """Interactions in contiguous index space, with the maps back to external ids.

    Row ``e`` says user ``user_ids[users[e]]`` interacted with item ``item_ids[items[e]]``.
    Users are the ones with at least one kept interaction (sorted by id); items are the
    catalog's items in catalog order when a catalog was given (items without interactions
    are cold-start items), else the interacted items sorted by id.

    Args:
        user_ids: contiguous user index -> external user id.
        item_ids: contiguous item index -> external item id.
        users: user index of each interaction.
        items: item index of each interaction.
        ratings: rating of each interaction, or ``None``.
        timestamps: timestamp of each interaction, or ``None``.
        split: 0 train, 1 valid, 2 test per interaction, or ``None`` before splitting.
        report: what loading and splitting dropped, merged or decided, with counts.
        seen: ``(users, items)`` of pairs the file has but that are not positives (rated below
            the rating threshold): not trained or evaluated on, but never recommended back
            (:meth:`known_items`). ``None`` without a threshold.

    Raises:
        ValueError: arrays of different lengths or indices out of range.

    Shapes:
        users (E,) int64, items (E,) int64, ratings (E,) float64, timestamps (E,) float64,
        split (E,) int8
    """

    user_ids: list[UserId]
    item_ids: list[ItemId]
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    split: np.ndarray | None = None
    report: dict[str, Any] = field(default_factory=dict)
    seen: tuple[np.ndarray, np.ndarray] | None = None
    _user_lookup: dict[str, int] | None = field(default=None, init=False, repr=False)
    _item_lookup: dict[str, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.user_ids = list(self.user_ids)
        self.item_ids = list(self.item_ids)
        self.users = np.asarray(self.users, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        n = len(self.users)
        if self.users.ndim != 1 or self.items.shape != (n,):
            raise ValueError(
                f"users and items must be 1-D of one length, got {self.users.shape} and {self.items.shape}"
            )
        spaces = (("users", self.users, len(self.user_ids)), ("items", self.items, len(self.item_ids)))
        for name, index, size in spaces:
            if n and (index.min() < 0 or index.max() >= size):
                raise ValueError(f"{name} indices must lie in [0, {size}), got [{index.min()}, {index.max()}]")
        if self.ratings is not None:
            self.ratings = np.asarray(self.ratings, dtype=np.float64)
        if self.timestamps is not None:
            self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        if self.split is not None:
            self.split = np.asarray(self.split, dtype=np.int8)
            if n and (self.split.min() < TRAIN or self.split.max() > TEST):
                raise ValueError("split codes must be 0 (train), 1 (valid) or 2 (test)")
        for name in ("ratings", "timestamps", "split"):
            value = getattr(self, name)
            if value is not None and value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {value.shape}")
        if self.seen is not None:
            su, si = (np.asarray(a, dtype=np.int64) for a in self.seen)
            if su.shape != si.shape or su.ndim != 1 or (len(su) and (
                    su.min() < 0 or su.max() >= len(self.user_ids) or si.min() < 0 or si.max() >= len(self.item_ids))):
                raise ValueError("seen must be two 1-D index arrays of one length, within the user and item spaces")
            self.seen = (su, si)

    # -- sizes -----------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    def split_counts(self) -> dict[str, int]:
        """Interactions per split name; ``{}`` before the data is split."""
        if self.split is None:
            return {}
        counts = np.bincount(self.split, minlength=len(SPLITS))
        return {name: int(c) for name, c in zip(SPLITS, counts)}

    def __repr__(self) -> str:
        split = f", split={self.split_counts()}" if self.split is not None else ""
        return f"Interactions(users={self.num_users}, items={self.num_items}, interactions={len(self)}{split})"

    # -- id lookups ------------------------------------------------------------------------
    def _lookup(self, kind: str) -> dict[str, int]:
        """External id (its ``str()`` form) -> contiguous index, for ``"user"`` or ``"item"``."""
        if kind == "user":
            if self._user_lookup is None:
                self._user_lookup = {str(u): i for i, u in enumerate(self.user_ids)}
            return self._user_lookup
        if self._item_lookup is None:
            self._item_lookup = {str(i): k for k, i in enumerate(self.item_ids)}
        return self._item_lookup

    def user_index(self, user_id: UserId) -> int:
        """Contiguous index of an external user id (matched by its ``str()`` form).

        Raises:
            UnknownIdError: the user has no interactions here.
        """
        try:
            return self._lookup("user")[str(user_id)]
        except KeyError:
            raise UnknownIdError(f"unknown user id {user_id!r}: no interactions for this user") from None

    def item_index(self, item_id: ItemId) -> int:
        """Contiguous index of an external item id (matched by its ``str()`` form).

        Raises:
            UnknownIdError: the item is not in the item space.
        """
        try:
            return self._lookup("item")[str(item_id)]
        except KeyError:
            raise UnknownIdError(f"unknown item id {item_id!r}: not in the item space") from None

    def indices(self, kind: str, ids: Sequence[object]) -> np.ndarray:
        """Contiguous indices of many ``"user"`` or ``"item"`` ids (``str()`` forms), ``-1`` for
        ids not in that space.

        Shapes: ids (K,) -> (K,) int64
        """
        lookup = self._lookup(kind)
        return np.array([lookup.get(str(i), -1) for i in ids], dtype=np.int64)

    # -- views -----------------------------------------------------------------------------
    def split_mask(self, split: str | Sequence[str]) -> np.ndarray:
        """Boolean mask ``(E,)`` of the interactions in ``split`` (a name, names, or ``"all"``).

        Raises:
            ConfigError: an unknown split name, or a named split before the data is split.
        """
        codes = split_codes(split)
        if split == "all":
            return np.ones(len(self), dtype=bool)
        if self.split is None:
            raise ConfigError(
                f"interactions are not split yet; cannot select {split!r} (use mmrec.split.ensure_split)"
            )
        return np.isin(self.split, np.asarray(codes, dtype=np.int8))

    def subset(self, split: str | Sequence[str]) -> Interactions:
        """The interactions of one or more splits, in the same user and item index space."""
        return self.rows(self.split_mask(split))

    def rows(self, keep: np.ndarray, split: np.ndarray | None = None) -> Interactions:
        """The interactions where ``keep`` is True, in the same user and item index space, with
        their ratings, timestamps and ``seen`` pairs (below the rating threshold: still never
        ranked by ``mask="all"``); ``split`` (one per interaction, before ``keep``) replaces
        their split.

        Shapes:
            keep (len,), split (len,)
        """
        pick = (lambda a: None if a is None else a[keep])  # noqa: E731
        return Interactions(
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            users=self.users[keep],
            items=self.items[keep],
            ratings=pick(self.ratings),
            timestamps=pick(self.timestamps),
            split=pick(self.split if split is None else split),
            report=dict(self.report),
            seen=self.seen,
        )

    def user_items(self, split: str | Sequence[str] = "all") -> sp.csr_matrix:
        """Binary user x item matrix of the interactions in ``split``.

        Row ``u`` lists user ``u``'s items (``indices[indptr[u]:indptr[u+1]]``, sorted).

        Shapes:
            -> (U, N) float32 CSR with ones
        """
        keep = self.split_mask(split)
        u, i = self.users[keep], self.items[keep]
        m = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=(self.num_users, self.num_items))
        m.sum_duplicates()
        m.data[:] = 1.0  # a pair given twice by hand is still one interaction
        return m

    def known_items(self) -> sp.csr_matrix:
        """Binary user x item matrix of every pair the user has seen: all positives (every
        split) and the ``seen`` pairs below the rating threshold. Never recommended back.

        Shapes:
            -> (U, N) float32 CSR with ones
        """
        known = self.user_items("all")
        below = self.seen_items()
        if not below.nnz:
            return known
        known = (known + below).tocsr()
        known.data[:] = 1.0
        return known

    def seen_items(self) -> sp.csr_matrix:
        """Binary user x item matrix of the ``seen`` pairs (rated below the rating threshold;
        empty without one).

        Shapes:
            -> (U, N) float32 CSR with ones
        """
        u, i = self.seen if self.seen is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        m = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=(self.num_users, self.num_items))
        m.sum_duplicates()
        m.data[:] = 1.0  # a pair listed twice is still one
        return m

    def item_popularity(self, split: str | Sequence[str] = "train") -> np.ndarray:
        """Number of interactions of each item in ``split``.

        Shapes:
            -> (N,) int64
        """
        return np.bincount(self.items[self.split_mask(split)], minlength=self.num_items).astype(np.int64)


# -- reading -------------------------------------------------------------------------------
def _file_format(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
        fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
        return fmt if fmt in ("csv", "tsv") else None
    return _FORMATS.get(suffixes[-1]) if suffixes else None


def _read_jsonl(path: Path) -> tuple[pa.Table, dict[str, dict[int, str]], list[str]]:
    """A JSON-lines file as a table of text columns (one object a line; values of any JSON type,
    which may differ from line to line, as ids often do; the known columns only), per column the
    rows (0-based) holding a JSON true / false, list or object, with what is wrong (invalid rows,
    which :func:`load_interactions` skips or reports as it does every other), and every key the
    lines use, in the order they first appear (the file's header, unread keys included)."""
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    values: dict[str, list[str]] = {c: [] for c in known}
    seen: dict[str, None] = {}
    odd: dict[str, dict[int, str]] = {}
    for row, obj in enumerate(read_objects(path)):
        seen.update(dict.fromkeys(obj))
        for c in known:
            v = obj.get(c)
            if isinstance(v, (bool, list, dict)):  # true is no id nor a rating, [1] no timestamp
                odd.setdefault(c, {})[row] = f"{json.dumps(v)} is a JSON {type(v).__name__}: expected a string or a number"
            elif isinstance(v, float) and not math.isfinite(v):  # NaN, Infinity, 1e400: Python's json takes them
                odd.setdefault(c, {})[row] = f"{v} is not a finite number"
            values[c].append("" if v is None else id_text(v))
    return pa.table({c: pa.array(values[c], pa.string()) for c in known if c in seen}), odd, list(seen)


def _codec(path: Path) -> str | None:
    """The compression of a CSV/TSV, from its lower-cased suffix (``None``: plain text)."""
    return _CODECS.get(path.suffix.lower())


def _read_header(path: Path, delimiter: str) -> list[str] | None:
    """The header row of a (possibly compressed) CSV/TSV as written, or ``None`` for an empty file.

    Raises:
        DataError: a compressed file that does not decompress; a header row that cannot be read, or
            whose quote runs past its line end.
    """
    chunks: list[bytes] = []
    try:
        with pa.input_stream(str(path), compression=_codec(path)) as raw:
            # Up to the first line end after the header's first character (empty lines before it are
            # skipped, as the reader skips them), however wide, a chunk at a time (at most HEADER_BYTES).
            while (chunk := raw.read(1 << 16)):
                chunks.append(chunk)
                text = b"".join(chunks).removeprefix(b"\xef\xbb\xbf").lstrip(b"\r\n")
                if b"\n" in text or b"\r" in text or len(chunks) << 16 >= HEADER_BYTES:
                    break
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, [Problem(None, None, f"cannot be read as {_codec(path)}-compressed text: {e}")]) from e
    text = b"".join(chunks).decode("utf-8-sig", errors="replace").lstrip("\r\n")
    if not text.strip():
        return None
    try:
        first = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), None)
    except csv.Error as e:
        raise DataError(path, [Problem(None, None, f"the header row cannot be read as {delimiter!r}-separated "
                                                   f"text: {e}")]) from e
    if first and any("\n" in c or "\r" in c for c in first):  # (a column name holding a line break: a quote
        # opened in the header and closed in a later row, or never; the catalog reader refuses it too)
        raise DataError(path, [Problem(None, None, "an unbalanced quote in the header: a column name runs past "
                                                   "the header's line end")])
    if first and not any(c.strip() for c in first):
        raise DataError(path, [BLANK_HEADER])
    return first or None


def check_threshold(rating_threshold: float | None) -> None:
    """A rating threshold is ``None`` or a finite number (NaN would keep every row).

    Raises:
        ConfigError: anything else, ``"4"`` and ``True`` included.
    """
    if rating_threshold is None:
        return
    if isinstance(rating_threshold, (bool, np.bool_)) or not isinstance(rating_threshold, (int, float, np.integer,
                                                                                           np.floating)):
        raise ConfigError(f"the rating threshold must be a number, got {rating_threshold!r}")
    if not np.isfinite(rating_threshold):
        raise ConfigError(f"the rating threshold must be a finite number, got {rating_threshold}")


def _refuse_twice(path: Path, header: list[str]) -> None:
    """Refuse a header that names a column the loader reads more than once: which one is meant
    cannot be told, and reading either would lose the other silently."""
    twice = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if header.count(c) > 1]
    if twice:
        raise DataError(path, [Problem(None, c, f"the header names this column {header.count(c)} times: keep one")
                               for c in twice])


def _refuse_no_rating(path: Path, header: list[str]) -> None:
    """Refuse a rating threshold for a file without a ``rating`` column, naming a ``Rating``
    there (which a warning alone named, before a bare refusal)."""
    if "rating" not in header:
        said = dict(_lookalikes(header)).get("rating")
        raise DataError(path, [Problem(None, "rating", NO_RATING_COLUMN + (f" ({said})" if said else ""))])


def _lookalikes(header: list[str]) -> list[tuple[str, str]]:
    """``(column meant, why it is not read)`` for each column that looks meant as an optional
    column it does not name (``Split``, ``Rating``; MMRec's ``x_label``)."""
    said = []
    for name in OPTIONAL_COLUMNS:
        if name in header:
            continue
        for c in header:
            if c.lower() == name:
                said.append((name, f"column {c!r} is not read: the column read is {name!r}, in lower case"))
            elif name == "split" and c.lower() == "x_label":
                said.append((name, f"column {c!r} is not read: the split is read from a column 'split' of train / "
                                   "valid / test (MMRec's x_label 0 / 1 / 2 are those three)"))
    return said


def _warn_unread_lookalikes(path: Path, header: list[str]) -> None:
    """Warn about the :func:`_lookalikes`: with ``--split auto`` a ``Split`` column was silently
    replaced by a random split."""
    for _, said in _lookalikes(header):
        logger.warning("%s: %s", path, said)


def check_columns(path: str | Path, *, split: str = "auto", rating_threshold: float | None = None) -> None:
    """What :func:`load_interactions` and the split would refuse about a file's columns, from its
    header alone, so that a training run refuses before it encodes a catalog: a missing file, an
    unknown type, no ``user_id`` / ``item_id``, a column the loader reads named twice, a rating
    threshold without a ``rating`` column, a temporal split without ``timestamp`` or a given one
    without ``split``. (A JSON-lines file, whose columns are the keys its lines use, is parsed
    for them: a file the loader could not read is refused here as there.)

    Raises:
        DataError, ConfigError: as loading and splitting the file would.
    """
    check_threshold(rating_threshold)
    path = Path(path)
    if not path.is_file():
        raise missing_file(path)
    fmt = _file_format(path)
    if fmt is None:
        return  # (an unknown type is named by load_interactions, with the types it reads)
    if fmt == "jsonl":  # (it checked nothing: a temporal split without timestamps failed after the encoding)
        header = list(dict.fromkeys(key for obj in read_objects(path) for key in obj))  # (in the order they appear)
    elif fmt == "parquet":
        try:
            header = list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as e:
            raise DataError(path, [Problem(None, None, f"cannot be read as parquet: {e}")]) from e
    else:
        written = _read_header(path, "\t" if fmt == "tsv" else ",")
        header = [c.strip() for c in written or []]
    if any(c not in header for c in REQUIRED_COLUMNS):
        return  # load_interactions names them (and a file that is not UTF-8)
    _refuse_twice(path, header)
    # (a refusal below for want of "split" said nothing of a "Split" column there)
    if rating_threshold is not None:
        _refuse_no_rating(path, header)
    hint = {name: f" ({said})" for name, said in reversed(_lookalikes(header))}
    from mmrec.split import check_rule_columns  # (split reads this module)

    try:
        check_rule_columns(split, has_split="split" in header, has_timestamps="timestamp" in header, source=path)
    except ConfigError as e:
        raise ConfigError(f"{e}{hint.get({'given': 'split', 'temporal': 'timestamp'}.get(split, ''), '')}") from None


def _read_csv(path: Path, fmt: str, present: list[str], raw: dict[str, str]) -> pa.Table:
    """The ``present`` columns of a CSV/TSV as text.

    Raises:
        DataError: rows with more or fewer fields than the header names, by data row (read a
            second time, on one thread, for the row numbers: the parallel reader does not know them).
    """
    def read(use_threads: bool, bad: list, block_size: int | None = None) -> pa.Table:
        def handler(row: Any) -> str:
            bad.append(row)  # a line of only spaces among them is a blank line, as the catalog reader takes it
            return "skip"

        with pa.input_stream(str(path), compression=_codec(path)) as source:
            return pacsv.read_csv(
                source,
                read_options=pacsv.ReadOptions(use_threads=use_threads,
                                               **({"block_size": block_size} if block_size else {})),
                # Quoted values may hold line breaks (measured: 0.28 s against 0.22 s without, 123 MB).
                parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",",
                                                 invalid_row_handler=handler, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={raw[c]: pa.string() for c in present},
                    include_columns=[raw[c] for c in present],
                    strings_can_be_null=False,
                ),
            ).rename_columns(present)

    bad: list = []
    block_size = None
    while True:
        try:
            table = read(True, bad, block_size)
            break
        except pa.ArrowInvalid as e:
            if "Empty CSV file" in str(e):  # a header without a line end, and nothing after it
                raise DataError(path, [Problem(None, None, "file has no data rows")]) from None
            # A row longer than the reader's block (1 MiB by default; a long review cell): larger blocks,
            # up to arrow's largest (a signed 32-bit size).
            if "straddling" not in str(e):
                raise
            if block_size == (1 << 31) - 1:
                raise DataError(path, [Problem(None, None, "a row is longer than 2 GiB")]) from None
            block_size, bad = min((block_size or 1 << 20) * 16, (1 << 31) - 1), []
    if any(row.text.strip() for row in bad):
        bad = []
        read(False, bad, block_size)  # numbered: the header is row 1 of the reader's count, empty lines are not counted
        spaces = [row.number for row in bad if not row.text.strip() and row.number is not None]  # not counted either
        raise DataError(path, [Problem(None if row.number is None else row.number - 1 - bisect.bisect(spaces, row.number),
                                       None, f"has {row.actual_columns} fields but the header names "
                                             f"{row.expected_columns}: a stray separator, an unquoted value or an "
                                             "unbalanced quote")
                               for row in bad if row.text.strip()])
    _refuse_open_quote(path, "\t" if fmt == "tsv" else ",", table.num_rows + len(bad))
    return table


def _refuse_open_quote(path: Path, sep: str, records: int) -> None:
    """Refuse a quote left open to the end of the file, by the data row it opens in: the reader
    takes the rest of the file into that one field, so the rows after it vanish (into a column
    nobody reads, when the field is one: silently).

    First a count of the line breaks (C speed; ``\n``, ``\r`` and ``\r\n`` each one, mixed or
    not): when they are no more than the records the reader made, the header and a last line end
    (when the file has one),
    no field spans lines, and only the last line can end inside quotes (a quote opened in it,
    holding the final line end). Otherwise, or when it does, the file is walked once more by the
    ``csv`` module, as the catalog reader walks it, and its last record checked
    (:func:`mmrec.catalog._ends_in_quotes`), which names the row.

    Raises:
        DataError: the last record ends inside a quoted field.
    """
    from mmrec.catalog import _any_field_size, _ends_in_quotes, _RecordLines  # (the catalog reader's own rules)

    breaks, tail, previous = 0, b"", b""
    with pa.input_stream(str(path), compression=_codec(path)) as raw:
        while chunk := raw.read(1 << 24):
            # a "\r\n" is one line end, also when a chunk boundary falls inside it
            breaks += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n") \
                - (previous == b"\r" and chunk[:1] == b"\n")
            previous = chunk[-1:]
            text = tail + chunk  # the last line (with its line end), however long
            body = text.rstrip(b"\r\n")
            tail = text[max(body.rfind(b"\n"), body.rfind(b"\r")) + 1:]
    last_line = tail.decode("utf-8", errors="replace")
    ends_line = previous in (b"\n", b"\r")  # (without a last line end, one line swallowed fitted the slack)
    if breaks <= records + ends_line and not _ends_in_quotes(last_line.removeprefix("\ufeff"), sep):
        return
    with pa.input_stream(str(path), compression=_codec(path)) as raw, \
            io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="") as f, _any_field_size():
        lines = _RecordLines(f)
        last, row_number, header = [], 0, False
        spanning: list[int] = []  # the data rows whose quoted value spans lines
        try:
            for row in csv.reader(lines, delimiter=sep):
                last, lines.record = lines.record, []
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line or one of spaces: not counted, as the reader skips it
                if header:
                    row_number += 1
                    if len(last) > 1:
                        spanning.append(row_number)
                header = True
        except csv.Error as e:  # (Python 3.10's csv module refuses a NUL byte)
            raise DataError(path, [Problem(row_number + 1, None, f"cannot be read as CSV: {e}")]) from None
    if last and _ends_in_quotes("".join(last), sep):
        raise DataError(path, [Problem(row_number or None, None, "an unbalanced quote: the field it opens runs to "
                                                                 "the end of the file (the rows after it would be lost)")])
    if spanning:  # (an unquoted export with a value starting with a quote merges the lines up to the next one)
        logger.warning("%s: %d row(s) hold a quoted value spanning lines, each read as one row (rows %s): if the "
                       "file does not quote values, a value starting with \" took in the lines after it, whose "
                       "interactions are lost", path, len(spanning), ", ".join(map(str, spanning[:5]))
                       + (", ..." if len(spanning) > 5 else ""))


def _read_columns(path: Path, fmt: str, needs_rating: bool
                  ) -> tuple[dict[str, pa.Array], int, dict[str, dict[int, str]]]:
    """Every known column present, as an arrow array, the number of data rows, and the values of
    a JSON-lines file that are no string or number (:func:`_read_jsonl`; ``{}`` for the others).

    Raises:
        DataError: empty file, missing required columns (or the ``rating`` column, when
            ``needs_rating``), unparseable file.
    """
    whole = None  # a JSON-lines file is read whole: its columns are the keys its objects use
    odd: dict[str, dict[int, str]] = {}
    raw = {}  # CSV/TSV: column name -> as written in the header (``user_id, item_id`` has " item_id")
    if fmt == "parquet":
        try:
            header = list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as e:
            raise DataError(path, [Problem(None, None, f"cannot be read as parquet: {e}")]) from e
    elif fmt == "jsonl":
        whole, odd, header = _read_jsonl(path)  # (the table's columns alone hid an unread 'Split', 'x_label')
    else:
        written = _read_header(path, "\t" if fmt == "tsv" else ",")
        if written is None:
            raise DataError(path, [Problem(None, None, "file is empty (no header row)")])
        raw = {c.strip(): c for c in reversed(written)}  # the first of two equal names wins
        header = [c.strip() for c in written]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing and fmt in ("csv", "tsv") and any("\ufffd" in c or "\x00" in c for c in header):
        # Not UTF-8 (UTF-16, as Notepad's "Unicode" writes, is mostly NUL bytes to a UTF-8 reader);
        # a U+FFFD the file itself holds is text, and the missing column is the message.
        problem = utf8_problem(path)
        if problem is None and any("\x00" in c for c in header):
            problem = Problem(None, None, "the header row is not UTF-8 text (NUL bytes: UTF-16?): "
                                          "save the file as UTF-8")
        if problem is not None:
            raise DataError(path, [problem])
    if missing:
        found = ", ".join(repr(c) for c in header)
        message = f"required column is missing (columns found: {found})"
        raise DataError(path, [Problem(None, c, message) for c in missing])
    present = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in header]
    _refuse_twice(path, header)
    if needs_rating:
        _refuse_no_rating(path, header)
    _warn_unread_lookalikes(path, header)
    try:
        if whole is not None:
            table = whole.select(present)
        elif fmt == "parquet":
            table = pq.read_table(path, columns=present)
        else:
            table = _read_csv(path, fmt, present, raw)
    except (pa.ArrowException, OSError) as e:
        not_utf8 = utf8_problem(path) if fmt in ("csv", "tsv") else None
        raise DataError(path, [not_utf8 or Problem(None, None, f"cannot be read as {fmt}: {e}")]) from e
    if table.num_rows == 0:
        raise DataError(path, [Problem(None, None, "file has no data rows")])
    columns = {c: table.column(c).combine_chunks() for c in present}
    # A Parquet column of lists, structs or true/false holds no id, rating or timestamp (JSON
    # lines report such values row by row, as their types differ from line to line); bytes are
    # text when they are UTF-8 (older writers store strings as bytes without saying so).
    problems = []
    for c, col in list(columns.items()):
        if pa.types.is_dictionary(col.type):  # (a categorical column: its values, as the other columns)
            col = columns[c] = col.dictionary_decode()
        if pa.types.is_nested(col.type) or pa.types.is_boolean(col.type):
            problems.append(Problem(None, c, f"is a column of {col.type}: expected strings or numbers"))
        elif (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)
              or pa.types.is_fixed_size_binary(col.type) or pa.types.is_binary_view(col.type)):
            try:
                plain = col if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type) else pc.cast(
                    col, pa.binary())
                columns[c] = pc.cast(plain, pa.string())
            except pa.ArrowInvalid:
                problems.append(Problem(None, c, f"is a column of {col.type} that is not UTF-8 text"))
    if problems:
        raise DataError(path, problems)
    for c, col in columns.items():  # a typed date/time column (Parquet) counts in seconds since 1970
        if pa.types.is_date(col.type):
            col = pc.cast(col, pa.timestamp("s"))
        if pa.types.is_timestamp(col.type):
            ticks = pc.cast(col, pa.int64())  # since 1970 UTC, in the column's unit
            per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[col.type.unit]
            if per_second == 1:
                seconds = ticks
            else:  # whole seconds + the fraction, each exact in float64 (ticks / per_second is not)
                whole = pc.divide(ticks, per_second)  # integer division
                fraction = pc.subtract(ticks, pc.multiply(whole, per_second))
                seconds = pc.add(pc.cast(whole, pa.float64()), pc.divide(pc.cast(fraction, pa.float64()), float(per_second)))
            columns[c] = pc.cast(seconds, pa.string())  # fractions of a second kept
    return columns, table.num_rows, odd


class _NearIds:
    """The id of an item space that a whole number written otherwise means (``7`` for ``007``,
    ``7.0`` for ``7``): ids are matched as text, and a Parquet or spreadsheet export of a column
    of numbers loses leading zeros or adds ``.0``. Built on the first unknown id (error path only)."""

    _WHOLE = re.compile(r"[+-]?0*(\d+)(?:\.0*)?")

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys, self._by_number = keys, None

    def hint(self, value: str) -> str:
        """``" (it has '007': ...)"`` when ``value`` is a whole number that some key writes otherwise."""
        if self._by_number is None:
            self._by_number = {}
            for key in self._keys:
                if (m := self._WHOLE.fullmatch(key)) and not key.startswith("-"):
                    self._by_number.setdefault(m[1], key)
        m = self._WHOLE.fullmatch(value.strip())
        key = self._by_number.get(m[1]) if m and not value.strip().startswith("-") else None
        return "" if key is None else f" (it has {key!r}: ids are matched as text, as written)"


def _texts(column: pa.Array) -> pa.Array:
    """A column as stripped text, ``""`` for nulls."""
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        if pa.types.is_floating(column.type):  # a float id column from parquet: 7.0 -> "7"
            # A float32 (or float16) value as its own shortest text, as a CSV holds it: 4.1, not the
            # 4.099999904632568 that widening it gives (a rating threshold of 4.1 dropped that row).
            narrow = None if column.type == pa.float64() else np.dtype(column.type.to_pandas_dtype()).type
            values = ["" if v is None or v != v else id_text(v if narrow is None else float(str(narrow(v))))
                      for v in column.to_pylist()]
            return pa.array(values, type=pa.string())
        if pa.types.is_decimal(column.type):  # a decimal(38, 1) 7.0 is the id 7, as a float's is ("7.0" from cast)
            return pa.array(["" if v is None else id_text(v) for v in column.to_pylist()], type=pa.string())
        column = pc.cast(column, pa.string())
    return pc.fill_null(pc.utf8_trim_whitespace(column), "")


# A number as written in a data file: ASCII digits, an optional sign, point and exponent (Python's
# float() also takes "1_000", full-width and other scripts' digits, and "infinity").
_DECIMAL = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


def _numbers(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Parse a text column to float64; returns (values, bad mask). Bad: empty, non-numeric (see
    :data:`_DECIMAL`), non-finite."""
    texts = column.to_numpy(zero_copy_only=False)
    values = np.full(len(texts), np.nan)
    filled = pc.match_substring_regex(column, _DECIMAL).to_numpy(zero_copy_only=False)  # "" matches no number
    try:
        values[filled] = texts[filled].astype(np.float64)
    except ValueError:  # find the offending cells one by one (error path only)
        for k in np.flatnonzero(filled):
            try:
                values[k] = float(texts[k])
            except ValueError:
                values[k] = np.nan
    return values, ~np.isfinite(values)


def _users_lost(users: pa.Array, before: np.ndarray, after: np.ndarray) -> int:
    """How many users have a row among the ``before`` rows and none among the ``after`` ones (a
    subset of them)."""
    if before.sum() == after.sum():
        return 0
    return int(pc.count_distinct(users.filter(pa.array(before))).as_py()
               - pc.count_distinct(users.filter(pa.array(after))).as_py())


def _id_index(texts: pa.Array) -> tuple[list[Any], np.ndarray]:
    """Typed unique ids (mmrec.ids rule, sorted) and each row's index into them."""
    encoded = pc.dictionary_encode(texts)  # hashing: much faster than sorting Python strings
    typed = normalize_ids(encoded.dictionary.to_pylist())
    order = sorted(range(len(typed)), key=typed.__getitem__)  # ints sort numerically
    rank = np.empty(len(order), dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    return [typed[k] for k in order], rank[encoded.indices.to_numpy(zero_copy_only=False)]


def load_interactions(
    path: str | Path,
    *,
    item_ids: Sequence[ItemId] | None = None,
    rating_threshold: float | None = None,
    on_invalid: str = "error",
    unknown_items: str = "error",
    item_space: str = "the catalog",
    skippable: Sequence[ItemId] | None = None,
    unknown_below_threshold: bool = False,
) -> Interactions:
    """Read, validate and index an interaction file.

    Order of work: read, validate every row, drop invalid rows (``on_invalid="skip"``), drop
    rows below ``rating_threshold``, index users and items, keep the first row of each
    duplicated (user, item) pair. Each step's count is in ``report``.

    Args:
        path: ``.csv``, ``.tsv`` (optionally ``.gz`` / ``.bz2``), ``.jsonl``, ``.parquet`` or ``.pq``
            file (see the module docstring).
        item_ids: the item space, usually ``catalog.item_ids``: item index ``k`` is
            ``item_ids[k]``, and an interaction with another item id is an error. Default
            ``None``: the item space is the interacted items, sorted by id.
        rating_threshold: keep rows with ``rating >= rating_threshold``; needs a ``rating``
            column. Default ``None``: every row is a positive (implicit feedback). Rows below
            it are counted in ``report["below_threshold"]``, and users left with none at or
            above it in ``report["users_only_below_threshold"]``.
        on_invalid: ``"error"`` (default) raises on any invalid row; ``"skip"`` drops invalid
            rows, counts them in ``report["invalid"]`` and lists the first few in
            ``report["problems"]``. File-level problems always raise.
        unknown_items: what a row whose item id is not in ``item_ids`` is: ``"error"``
            (default: an invalid row, handled as ``on_invalid`` says) or ``"skip"`` (dropped and
            counted in ``report["unknown_items"]``, e.g. items removed from an index since it
            was trained; users left with no positive row, who had one before, are counted in
            ``report["users_only_unknown_items"]``).
        item_space: what ``item_ids`` are, for the unknown-item message (default ``"the
            catalog"``).
        skippable: with ``unknown_items="skip"``, the only unknown ids that are skipped (e.g.
            the items a model was trained on, since removed from its index); any other unknown
            id is an invalid row. Default ``None``: every unknown id is skipped.
        unknown_below_threshold: a row rated below ``rating_threshold`` whose item is not in
            ``item_ids`` is dropped with the other below-threshold rows instead of being an
            unknown item: a model trained without a catalog has no item that was only ever
            rated below it, and ``evaluate`` reads its training file again. Default ``False``.

    Returns:
        The interactions, unsplit unless the file has a ``split`` column.

    Raises:
        DataError: missing file or required column, empty file, unreadable file; per row
            (naming row and field): missing id, unknown catalog item id, missing /
            non-numeric / non-finite rating or timestamp, unknown split name; nothing left
            after filtering; ``rating_threshold`` without a rating column.
        ConfigError: a bad ``on_invalid``, or ``item_ids`` with repeated ids.
    """
    path = Path(path)
    check_threshold(rating_threshold)
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
    if unknown_items not in ON_INVALID:
        raise ConfigError(f"unknown_items must be one of {ON_INVALID}, got {unknown_items!r}")
    if not path.is_file():
        raise missing_file(path)
    fmt = _file_format(path)
    if fmt is None:
        message = (f"unknown file type {''.join(path.suffixes)!r} (use .csv, .tsv, .jsonl or .parquet / .pq; "
                   ".csv and .tsv may be compressed as .gz or .bz2)")
        raise DataError(path, [Problem(None, None, message)])
    columns, n_rows, odd = _read_columns(path, fmt, needs_rating=rating_threshold is not None)

    bad: dict[str, np.ndarray] = {}  # field -> bad-row mask
    reasons: dict[str, Any] = {}  # field -> callable(row index) -> message
    texts = {c: _texts(columns[c]) for c in columns}

    empty = {c: pc.equal(texts[c], "").to_numpy(zero_copy_only=False) for c in texts}
    text = lambda c, k: texts[c][int(k)].as_py()  # noqa: E731  (error path only)
    for c in REQUIRED_COLUMNS:
        # In a CSV/TSV, an id holding a line break is rows of the file swallowed by an unbalanced quote.
        broken = (pc.match_substring_regex(texts[c], r"[\r\n]").to_numpy(zero_copy_only=False)
                  if fmt in ("csv", "tsv") else np.zeros(n_rows, bool))
        # A Parquet float id column's inf read as the id "inf" (NaN is a missing value, as pandas writes one).
        infinite = (np.isinf(columns[c].to_numpy(zero_copy_only=False)) if pa.types.is_floating(columns[c].type)
                    else np.zeros(n_rows, bool))
        bad[c] = empty[c] | broken | infinite
        reasons[c] = (lambda k, e=empty[c], i=infinite, c=c: "missing value" if e[k] else
                      f"not a finite number: {text(c, k)}" if i[k] else
                      "holds a line break: an unbalanced quote before it took in the lines that follow (or the "
                      "id is quoted over lines: no id may hold one)")
    numbers: dict[str, np.ndarray] = {}
    for c in ("rating", "timestamp"):
        if c in texts:
            numbers[c], bad[c] = _numbers(texts[c])
            reasons[c] = lambda k, c=c: "missing value" if empty[c][k] else f"not a finite number: {text(c, k)!r}"
    catalog_index = None
    outside = np.zeros(n_rows, dtype=bool)  # rows of items outside item_ids, skipped on request
    if item_ids is not None:
        catalog_keys = [str(i) for i in item_ids]
        if len(set(catalog_keys)) != len(catalog_keys):
            raise ConfigError("item_ids contains the same id more than once")
        found = pc.index_in(texts["item_id"], value_set=pa.array(catalog_keys, type=pa.string()))
        catalog_index = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        unknown = (catalog_index < 0) & ~bad["item_id"]
        if unknown_below_threshold and rating_threshold is not None:
            unknown &= ~(numbers["rating"] < rating_threshold)  # NaN (an invalid rating) compares False
        allowed = np.full(n_rows, unknown_items == "skip")  # unknown rows that are skipped, not invalid
        if unknown_items == "skip" and skippable is not None:
            allowed = pc.is_in(texts["item_id"], value_set=pa.array([str(i) for i in skippable], type=pa.string()))
            allowed = allowed.to_numpy(zero_copy_only=False).astype(bool)
        outside = unknown & allowed
        before = bad["item_id"].copy()  # rows already invalid keep their own reason
        bad["item_id"] = bad["item_id"] | (unknown & ~allowed)
        near = _NearIds(catalog_keys)
        reasons["item_id"] = lambda k, other=reasons["item_id"], before=before: (
            other(k) if before[k] else f"unknown item id {text('item_id', k)!r}: not in {item_space}"
                                       f"{near.hint(text('item_id', k))}"
        )
    split = None
    if "split" in texts:
        found = pc.index_in(texts["split"], value_set=pa.array(SPLITS, type=pa.string()))
        split = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int8)
        bad["split"] = split < 0
        reasons["split"] = lambda k: (
            "missing value" if empty["split"][k]
            else f"unknown split {text('split', k)!r} (expected one of {', '.join(SPLITS)})"
        )

    for c, marks in odd.items():  # JSON Lines: a true, [1] or {...} where a string or number belongs
        if c not in bad:
            continue  # a column this file's rows do not use (an unknown one is never read)
        mask = np.zeros(n_rows, dtype=bool)
        mask[list(marks)] = True
        bad[c] = bad[c] | mask
        reasons[c] = lambda k, marks=marks, other=reasons[c]: marks[int(k)] if int(k) in marks else other(k)

    invalid = np.zeros(n_rows, dtype=bool)
    for mask in bad.values():
        invalid |= mask
    report: dict[str, Any] = {"path": str(path), "rows": n_rows, "invalid": int(invalid.sum())}
    if invalid.any():
        problems = [
            Problem(int(k) + 1, c, reasons[c](k))
            for k in np.flatnonzero(invalid)
            for c in bad
            if bad[c][k]
        ]
        if on_invalid == "error":
            raise DataError(path, problems)
        report["problems"] = [str(p) for p in problems[:_PROBLEMS_IN_REPORT]]
        # Users whose every row was invalid drop out (as for below-threshold rows): count them.
        report["users_only_invalid"] = _users_lost(texts["user_id"], ~bad["user_id"], ~invalid)
        shown = "; ".join(str(p) for p in problems[:3])
        more = f"; ... (the first {_PROBLEMS_IN_REPORT} are in the report: train_report.json's data.problems for a " \
               "training run)" if len(problems) > 3 else ""
        lost = f" ({report['users_only_invalid']} user(s) had no other row)" if report["users_only_invalid"] else ""
        logger.warning("%s: skipped %d invalid row(s) of %d%s: %s%s", path, invalid.sum(), n_rows, lost, shown, more)

    keep = ~invalid
    if item_ids is not None and unknown_items == "skip":
        report["unknown_items"] = int((outside & keep).sum())
        # Users whose every positive row was such an item drop out: count them (rows below the
        # rating threshold would not have kept a user anyway).
        positive = keep if rating_threshold is None else keep & ~(numbers["rating"] < rating_threshold)
        report["users_only_unknown_items"] = _users_lost(texts["user_id"], positive, positive & ~outside)
        keep &= ~outside
    if rating_threshold is not None:
        below = keep & (numbers["rating"] < rating_threshold)
        report["below_threshold"] = int(below.sum())
        # Users with no row at or above the threshold drop out: count them too.
        report["users_only_below_threshold"] = _users_lost(texts["user_id"], keep, keep & ~below)
        keep &= ~below
    if not keep.any():
        message = "no interactions left after dropping invalid, unknown-item and below-threshold rows"
        raise DataError(path, [Problem(None, None, message)])

    rows = np.flatnonzero(keep)
    user_ids, users = _id_index(texts["user_id"].take(pa.array(rows)))
    if catalog_index is not None:
        items_space: list[Any] = list(item_ids)  # type: ignore[arg-type]
        items = catalog_index[rows]
    else:
        items_space, items = _id_index(texts["item_id"].take(pa.array(rows)))
    # Keep the first row of each (user, item) pair, in file order.
    _, first = np.unique(users * max(len(items_space), 1) + items, return_index=True)
    first.sort()
    report["duplicates"] = int(len(rows) - len(first))
    rows, users, items = rows[first], users[first], items[first]
    inter = Interactions(
        user_ids=user_ids,
        item_ids=items_space,
        users=users,
        items=items,
        ratings=numbers["rating"][rows] if "rating" in numbers else None,
        timestamps=numbers["timestamp"][rows] if "timestamp" in numbers else None,
        split=split[rows] if split is not None else None,
        report=report,
    )
    if rating_threshold is not None:  # rated below it: not positives, but seen (never recommended back)
        b = np.flatnonzero(below)
        su = inter.indices("user", texts["user_id"].take(pa.array(b)).to_pylist())
        si = (np.asarray(catalog_index[b], dtype=np.int64) if catalog_index is not None
              else inter.indices("item", texts["item_id"].take(pa.array(b)).to_pylist()))
        ok = (su >= 0) & (si >= 0)  # users or items with no positive row are not in the spaces
        # A pair also rated at or above the threshold (in another row) is a positive, not a seen one.
        n = max(inter.num_items, 1)
        ok &= ~np.isin(su * n + si, users.astype(np.int64) * n + items)
        inter.seen = (su[ok], si[ok])
    report.update(interactions=len(inter), users=inter.num_users, items=inter.num_items)
    report["cold_items"] = int((np.bincount(items, minlength=inter.num_items) == 0).sum())
    logger.info(
        "%s: %d interactions, %d users, %d items (%d without interactions); dropped %d invalid, "
        "%d below threshold (%d users had no other row), %d duplicate pairs",
        path, len(inter), inter.num_users, inter.num_items, report["cold_items"], report["invalid"],
        report.get("below_threshold", 0), report.get("users_only_below_threshold", 0), report["duplicates"],
    )
    return inter
