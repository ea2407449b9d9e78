"""Catalog loading and validation.

A catalog is a table of items: a required ``item_id`` column (any string or int), text columns
and an optional column of local image paths. CSV, TSV, JSON Lines and Parquet are read through
Hugging Face ``datasets``. Validation runs before any encoding work and reports every problem
with its file, 1-based data row and field.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import urllib.parse
import tempfile
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mmrec.errors import BLANK_HEADER, ConfigError, DataError, MMRecError, Problem, missing_file, utf8_problem
from mmrec.ids import id_text, normalize_ids
from mmrec.jsonlines import mend_surrogates, read_json_rows, read_objects
from mmrec.typing import ItemId

logger = logging.getLogger(__name__)

ID_FIELD = "item_id"
DEFAULT_IMAGE_FIELD = "image"
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class Catalog:
    """Validated items, in file order.

    Attributes:
        item_ids: the catalog's own ids (all ``int`` or all ``str``, see :mod:`mmrec.ids`).
        texts: one text per item: the chosen text fields joined with ``". "`` (``""`` if none).
        images: resolved local image path per item, or ``None``.
        records: display fields per item (every column except the id, as strings).
        text_fields: the columns the texts were made from.
        image_field: the image column, or ``None``.
        source: where the catalog came from (a path, or a name such as ``ml-100k``).
        skipped: rows left out under ``skip_invalid=True``, with the reason.
        skipped_ids: the raw ``item_id`` of each skipped row (``None`` where it had none).
        rows: each item's 1-based data row in the file, for messages once rows were skipped
            (empty: the items are rows ``1..N``).
        masked: images left out under ``mask_bad_images=True`` (missing or unreadable), their
            rows kept, with the reason; ``masked_ids`` the raw ``item_id`` of each.
    """

    item_ids: list[ItemId]
    texts: list[str]
    images: list[str | None]
    records: list[dict[str, str]]
    text_fields: list[str]
    image_field: str | None
    source: str
    skipped: list[Problem] = field(default_factory=list)
    skipped_ids: list[Any] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    masked: list[Problem] = field(default_factory=list)
    masked_ids: list[Any] = field(default_factory=list)
    mask_bad_images: bool = False  # read with mask_bad_images (an index built from it remembers it)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __repr__(self) -> str:
        return (
            f"Catalog({self.source!r}, items={len(self)}, text_fields={self.text_fields}, "
            f"image_field={self.image_field!r}, skipped={len(self.skipped)})"
        )

    @property
    def has_images(self) -> bool:
        return any(p is not None for p in self.images)

    def select(self, positions: Sequence[int]) -> "Catalog":
        """A catalog holding only the items at ``positions`` (in that order)."""
        kept = {self.row(i) for i in positions}  # the masked images of the rows kept: a row dropped is not "kept"
        masked = [(p, item) for p, item in zip(self.masked, self.masked_ids or [None] * len(self.masked))
                  if p.row in kept]
        return Catalog(
            item_ids=[self.item_ids[i] for i in positions],
            texts=[self.texts[i] for i in positions],
            images=[self.images[i] for i in positions],
            records=[self.records[i] for i in positions],
            text_fields=self.text_fields,
            image_field=self.image_field,
            source=self.source,
            skipped=list(self.skipped),
            skipped_ids=list(self.skipped_ids),
            rows=[self.row(i) for i in positions],
            masked=[p for p, _ in masked],
            masked_ids=[item for _, item in masked],
            mask_bad_images=self.mask_bad_images,
        )

    def row(self, position: int) -> int:
        """The 1-based data row of the file the item at ``position`` came from."""
        return self.rows[position] if self.rows else position + 1

    def skip_records(self) -> list[dict[str, Any]]:
        """What was skipped, one dict a row, in row order: row, item_id (as in the file, ``None``
        when missing), field, message, and the file; a masked image is one too (field the image
        column), its row kept."""
        pairs = [*zip(self.skipped, self.skipped_ids or [None] * len(self.skipped)),
                 *zip(self.masked, self.masked_ids or [None] * len(self.masked))]
        pairs.sort(key=lambda pair: pair[0].row or 0)
        return [{"row": p.row, "item_id": None if _blank(item) else id_text(item), "field": p.field,
                 "message": p.message, "file": str(self.source)} for p, item in pairs]


def cell_text(value: Any) -> str:
    """A catalog cell as text: a list (JSON Lines, Parquet) as its values joined by ``|``, the
    catalogs' list convention (``["Animation", "Comedy"]`` -> ``Animation|Comedy``, so display
    fields and ``--where genres=Comedy`` read it as a CSV's), an object as JSON, a boolean as
    ``true`` / ``false``, ``None`` and NaN as ``""``, anything else as ``str`` gives it."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (list, tuple)):
        return "|".join(t for t in (cell_text(v).strip() for v in value) if t)
    if isinstance(value, dict):  # what JSON has no type for (a date, bytes that are no text) as str gives it
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")):
        return "true" if value else "false"  # as JSON writes it (and --where in_stock=true reads it), not Python's True
    return str(value)


def has_text(text: str) -> bool:
    """Whether ``text`` holds a character a text encoder reads: not only spaces and the control and
    format characters its tokenizer drops (a zero-width space, a byte-order mark, NUL), which
    left such a cell, or query, encoded as the empty text."""
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf") for ch in text)  # (stops at the
    # first such character: the first one of nearly every text)


def compose_text(values: Sequence[Any]) -> str:
    """Join field values into one text: values with text (:func:`has_text`) joined by ``". "``.

    Pipe-separated lists (``Animation|Comedy``, or a JSON list), a common catalog convention,
    read as ``Animation, Comedy``.
    """
    parts = [t.strip().replace("|", ", ") for t in map(cell_text, values) if has_text(t)]
    return ". ".join(parts)


TEXT_TYPES = ("string", "large_string", "list<string>")  # the columns a catalog's text is made of by default


def rows_in_memory(source: Any) -> list[dict[str, Any]] | None:
    """``source`` as catalog rows when it holds them in memory (dicts: a list, a tuple, any
    iterable of them; a pandas DataFrame's rows; a pyarrow Table's), each value a plain Python one
    (numpy numbers, booleans and arrays as Python's; a missing pandas cell, NaN, NaT or NA, as
    ``None``, which empties the field as a CSV's blank cell does; a float column with a missing
    cell whose other values are all whole numbers, an integer column pandas widened to hold the
    gap, as integers); ``None`` when it is a path.

    Raises:
        ConfigError: anything else (a dict of lists, rows that are no dicts).
    """
    if isinstance(source, (str, bytes, os.PathLike)) or source is None:
        return None
    widened: list[str] = []  # integer columns pandas made float64 to hold a missing cell
    narrow: dict[str, str] = {}  # float32 / float16 columns, whose values Python widens to float64
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # a pandas DataFrame
        widened = [str(c) for c, column in source.items() if getattr(column.dtype, "kind", "") == "f"
                   and column.isna().any() and bool((column.dropna() % 1 == 0).all())
                   and bool((column.dropna().abs() <= 2**53).all())]  # (past 2**53 a float holds no exact integer)
        narrow = {str(c): str(column.dtype) for c, column in source.items()}
        source = source.to_dict("records")
    elif hasattr(source, "to_pylist"):  # a pyarrow Table
        for f in getattr(source, "schema", []):
            with contextlib.suppress(NotImplementedError, TypeError, AttributeError):
                inner = getattr(f.type, "value_type", None)  # a list column: its values' type
                name = np.dtype((f.type if inner is None else inner).to_pandas_dtype()).name
                narrow[str(f.name)] = name if inner is None else f"list<{name}>"
        source = source.to_pylist()
    if isinstance(source, Catalog):
        raise ConfigError("this is a loaded Catalog: pass it to ItemIndex.build / add / update or fit as it is "
                          "(load_catalog reads a file or rows)")
    kind = type(source).__name__
    rows = list(source) if isinstance(source, Iterable) and not isinstance(source, Mapping) else None
    if rows is None or not all(isinstance(r, Mapping) for r in rows):
        raise ConfigError(f"a catalog is a file path or rows in memory (dicts: a list or any iterable of them, a "
                          f"pandas DataFrame, a pyarrow Table), got {kind}" + ("" if rows is None else " of " + ", ".join(
                              sorted({type(r).__name__ for r in rows if not isinstance(r, Mapping)}))))

    def plain(v: Any) -> Any:
        if type(v).__module__ == "numpy" and hasattr(v, "tolist"):  # a number, a boolean, an array (a list cell)
            v = v.tolist()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):  # a struct cell (read_parquet): its values too
            return {str(k): plain(x) for k, x in v.items()}
        if type(v).__name__ in ("NaTType", "NAType") or (isinstance(v, float) and v != v):
            return None  # pandas' missing cell
        return v

    rows = [{str(k): plain(v) for k, v in r.items()} for r in rows]
    cut = []  # lone surrogates, half of a character (a cut emoji): as a JSON Lines file's are read
    for n, r in enumerate(rows):
        mended, first = mend_surrogates(r)
        if first is not None:
            rows[n] = mended
            cut.append(f"row {n + 1} ({first!r})")
    if cut:
        logger.warning("%d row(s) in memory hold a lone surrogate, half of a character (a cut emoji?), read as "
                       "U+FFFD: %s%s", len(cut), "; ".join(cut[:5]), " ..." if len(cut) > 5 else "")
    _narrow_floats(rows, narrow)
    for r in rows:  # a year 1995 beside a missing one reads "1995", as the CSV it came from does, not "1995.0"
        for c in widened:
            if r[c] is not None:
                r[c] = int(r[c])
    return rows


_NARROW_FLOATS = {"float32": np.float32, "float16": np.float16, "Float32": np.float32,  # (pandas' nullable Float32)
                  "list<float32>": np.float32, "list<float16>": np.float16}


def _narrow_floats(rows: list[dict[str, Any]], types: Mapping[str, str]) -> None:
    """The cells of the float32 / float16 columns among ``types`` (column -> dtype name), and the
    values of their lists, as their own shortest decimal, as a CSV holds them: 4.1, not the
    4.099999904632568 of its widening to a Python float (which display fields, ``--where
    price=4.1`` and the text read)."""
    def narrow(v: Any, kind: Any) -> Any:
        return float(str(kind(v))) if type(v) is float and v - v == 0 else v  # (finite: NaN and inf have no shorter form)

    kinds = {c: _NARROW_FLOATS[t] for c, t in types.items() if t in _NARROW_FLOATS}
    for r in rows if kinds else ():
        for c, kind in kinds.items():
            v = r.get(c)
            r[c] = [narrow(x, kind) for x in v] if type(v) is list else narrow(v, kind)


def _json_type(rows: list[dict[str, Any]], column: str) -> str:
    """The type name of a JSON column: ``string`` when its values are text, or text and numbers (a
    title ``1984`` among titles; a CSV reads such a column as text too), ``list<string>`` when
    lists of text are among them, a number type when every value is one, else ``object``."""
    values = [r[column] for r in rows if r.get(column) is not None]
    kinds = {type(v) for v in values}
    if not kinds:
        return "null"  # no value at all: not a text column
    if kinds <= {int}:
        return "int64"
    if kinds <= {int, float}:
        return "double"
    texts = all(t is None or type(t) is str for v in values if type(v) is list for t in v)  # cell_text skips a null
    if kinds <= {str, int, float, list} and texts:
        return "list<string>" if list in kinds else "string"
    return "object"


def _feature_type(feature: Any) -> str:
    """The type name of a column ``datasets`` read: its dtype, or ``list<string>`` for a list of text."""
    inner = getattr(feature, "feature", None)  # List / LargeList / Sequence of one value type
    if inner is not None and getattr(inner, "dtype", None) in ("string", "large_string"):
        return "list<string>"
    if inner is not None and getattr(inner, "dtype", None) in ("float32", "float16"):
        return f"list<{inner.dtype}>"
    return str(getattr(feature, "dtype", "object"))


def read_table(path: str | Path, fill: bool = True) -> tuple[list[str], list[dict[str, Any]], dict[str, str]]:
    """Read a CSV/TSV file with the standard library (:func:`_read_csv`: every cell as written, so
    ``"007"`` stays ``"007"`` and display fields show what the file says; each column typed over
    every row), a Parquet file through ``datasets``, a JSON / JSON Lines one through
    :mod:`mmrec.jsonlines` (which keeps each value's JSON type: ``"007"`` beside ``1`` stays text).
    Empty cells become ``None``; so does a JSON key a row leaves out, unless ``fill`` is off (the
    row then holds its own keys only: an update's "leave this field as it is").

    Returns:
        (column names, rows as dicts, arrow type name per column)

    Raises:
        DataError: unknown extension, unreadable or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_file(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(path, [Problem(None, None, f"unknown file type '{path.suffix}' (use {', '.join(FORMATS)})")])
    if fmt == "json":  # mmrec's own reader: ids may change JSON type from line to line
        rows = read_objects(path) if path.suffix.lower() == ".jsonl" else read_json_rows(path)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        filled = [{c: r.get(c) for c in columns} for r in rows] if fill else [dict(r) for r in rows]
        return columns, filled, {c: _json_type(rows, c) for c in columns}
    if fmt == "csv":
        return _read_csv(path, "\t" if path.suffix.lower() == ".tsv" else ",")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            metadata = pq.read_metadata(path)
        except (pa.ArrowException, OSError):  # not Parquet, or damaged: the reader below says what is wrong
            metadata = None
        if metadata is not None:  # (datasets printed the schema; then said "BatchSize must be greater than 0")
            _refuse_columns_twice(path, list(metadata.schema.to_arrow_schema().names))
            if metadata.num_rows == 0:
                raise DataError(path, [Problem(None, None, "file has no data rows")])
    import datasets

    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its failures are reported below, once
    try:
        with tempfile.TemporaryDirectory(prefix="mmrec-ds-") as cache:
            ds = datasets.load_dataset(
                fmt, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True
            )
            columns = list(ds.column_names)
            types = {c: _feature_type(ds.features[c]) for c in columns}
            rows = ds.to_list()
            _narrow_floats(rows, types)
            if fmt == "parquet":
                columns = _parquet_data_columns(path, columns, rows, types)
    except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as e:
        cause = e.__cause__ or e
        located = _not_utf8_cells(path) if fmt == "parquet" and isinstance(cause, UnicodeDecodeError) else []
        raise DataError(path, located or [Problem(None, None, f"cannot be read as {fmt}: {cause}")]) from e
    finally:
        datasets.enable_progress_bars()
        datasets.logging.set_verbosity(verbosity)
    if not rows:
        raise DataError(path, [Problem(None, None, "file has no data rows")])
    return columns, rows, types


def _refuse_columns_twice(path: Path, columns: list[str]) -> None:
    """Refuse a header that names a column twice: one would hide the other."""
    twice = list(dict.fromkeys(name for name in columns if columns.count(name) > 1))
    if twice:
        raise DataError(path, [Problem(None, name, f"the header names this column {columns.count(name)} times: "
                                                   "rename or drop one") for name in twice])


def _not_utf8_cells(path: Path) -> list[Problem]:
    """The first cell of each string column of a Parquet file holding bytes that are not UTF-8
    (a writer that did not check what it stored as text; reading it raised a bare codec error,
    naming no row or field). Error path only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError):
        return []
    problems = []
    for name in table.column_names:
        column = table.column(name)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        for row, cell in enumerate(column.cast(pa.large_binary()).to_pylist(), start=1):
            try:
                None if cell is None else cell.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(Problem(row, name, f"text that is not UTF-8 ({cell[max(e.start - 8, 0):e.end + 8]!r})"))
                break
    return problems


_INT = re.compile(r"[+-]?\d+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.IGNORECASE | re.ASCII)
_BOOL = {"True", "TRUE", "true", "False", "FALSE", "false"}


class _RecordLines:
    """A file's lines, those of the record being read kept (to tell a blank line from a quoted
    empty field, and to see whether the last record ends inside a quote)."""

    def __init__(self, f: Any) -> None:
        self.f, self.record = f, []

    def __iter__(self) -> "_RecordLines":
        return self

    def __next__(self) -> str:
        line = next(self.f)
        self.record.append(line)
        return line


def _ends_in_quotes(text: str, sep: str) -> bool:
    """Whether one CSV record's text ends inside a quoted field, as the ``csv`` module (not strict)
    reads it: a quote opens a field only at its start, and ``""`` inside one is a quote."""
    state, i, n = "start", 0, len(text)
    while i < n:
        ch = text[i]
        if state == "quoted":
            j = text.find('"', i)
            if j < 0:
                return True
            state, i = "quote", j + 1
            continue
        if state == "quote":  # just after a quote in a quoted field
            state = "quoted" if ch == '"' else "start" if ch == sep or ch in "\r\n" else "field"
        elif state == "start":
            state = "quoted" if ch == '"' else "start" if ch == sep or ch in "\r\n" else "field"
        elif ch == sep or ch in "\r\n":  # an unquoted field: its quotes are text
            state = "start"
        i += 1
    return state == "quoted"


def _csv_records(path: Path, sep: str) -> tuple[list[str] | None, list[list[str]]]:
    """``(header, data records)`` of a CSV/TSV, blank lines and lines of spaces left out (a quoted
    empty field, ``""``, is a record), read by the ``csv`` module as pandas read it (a quote inside
    a field is text).

    Raises:
        DataError: a quote left open at the end of the file (the ``csv`` module would read the rest
            of the file into one field), named by the data row it opens in.
        UnicodeDecodeError: not UTF-8.
    """
    # utf-8-sig: the header's first name without a byte-order mark (Excel's "CSV UTF-8" writes one).
    with open(path, newline="", encoding="utf-8-sig") as f, _any_field_size():
        lines = _RecordLines(f)
        reader = csv.reader(lines, delimiter=sep)
        header, raw, last, in_header = None, [], [], False
        for row in reader:
            last, lines.record = lines.record, []
            in_header = header is None
            if in_header and not row:  # an empty line before the header, as pandas and arrow skip it
                continue
            if in_header:
                header = row
            elif row and not (len(row) == 1 and not row[0].strip() and '"' not in "".join(last)):
                raw.append(row)
    if last and _ends_in_quotes("".join(last), sep):  # only the last record can run to the end
        raise DataError(path, [Problem(None if in_header else len(raw), None,
                                       f"an unbalanced quote{' in the header' if in_header else ''}: the field it "
                                       "opens runs to the end of the file")])
    return header, raw


def _read_csv(path: Path, sep: str) -> tuple[list[str], list[dict[str, Any]], dict[str, str]]:
    """A CSV/TSV read with the standard library: every cell as the file writes it (an empty cell is
    ``None``; only that is missing: ``NA``, ``null``, ``None`` are values), a column's type judged
    over every row (``int64`` / ``double`` / ``bool`` when each of its cells is one, stripped, and
    those cells stripped; ``string`` otherwise; ``null`` when all are empty), header names stripped
    (an empty one is ``Unnamed: N``, N its position, as pandas names it).

    Raises:
        DataError: not UTF-8, a quote left open to the end of the file, no header, a name given
            twice, no data row, a row with more fields than the header (by data row: blank lines
            are not counted).
    """
    try:
        header, raw = _csv_records(path, sep)
    except UnicodeDecodeError:
        raise DataError(path, [utf8_problem(path)]) from None
    except csv.Error as e:  # (Python 3.10's csv module refuses a NUL byte)
        raise DataError(path, [Problem(None, None, f"cannot be read as CSV: {e}")]) from None
    too_long = [Problem(r, None, f"has {len(row)} fields but the header names {len(header)}: a stray separator, an "
                                 "unquoted value or an unbalanced quote")
                for r, row in enumerate(raw, 1) if header and len(row) > len(header)]  # every one (DataError prints 20)
    if not header:
        raise DataError(path, [Problem(None, None, "file is empty (no header row)")])
    if not any(name.strip() for name in header):
        raise DataError(path, [BLANK_HEADER])
    if any("\x00" in name for name in header):  # UTF-16 without a byte-order mark reads as UTF-8 here
        raise DataError(path, [Problem(None, None, "the header row is not UTF-8 text (NUL bytes: UTF-16?): "
                                                   "save the file as UTF-8")])
    columns = [name.strip() or f"Unnamed: {j}" for j, name in enumerate(header)]  # as interactions strip them
    _refuse_columns_twice(path, columns)
    if not any(cell.strip() for row in raw for cell in row):
        raise DataError(path, [Problem(None, None, "file has no data rows")])
    if too_long:  # the fields of such a row would be shifted
        raise DataError(path, too_long)
    width = len(columns)
    cells = [[row[j] if j < len(row) else "" for row in raw] for j in range(width)]  # [column][row]
    types = {}
    for name, column in zip(columns, cells):
        values = [c.strip() for c in column if c.strip()]
        kind = ("null" if not values else "bool" if all(v in _BOOL for v in values)
                else "int64" if all(_INT.fullmatch(v) for v in values)
                else "double" if all(_FLOAT.fullmatch(v) for v in values) else "string")
        if name in (ID_FIELD, "user_id"):  # ids are text as written ("007"): the id rules read them
            kind = "string"
        elif kind != "string":  # a number as written, without its spaces
            column[:] = [c.strip() for c in column]
        types[name] = kind
    rows = [{name: (column[r] if column[r] != "" else None) for name, column in zip(columns, cells)}
            for r in range(len(raw))]
    return columns, rows, types


def _utf8(value: Any) -> Any:
    """A binary value, and the binary values inside a list or a struct (at any depth), as UTF-8
    text; anything else as it is."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_utf8(v) for v in value]
    if isinstance(value, dict):
        return {k: _utf8(v) for k, v in value.items()}
    return value


def _has_bytes(value: Any) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, list):
        return any(_has_bytes(v) for v in value)
    return isinstance(value, dict) and any(_has_bytes(v) for v in value.values())


def _not_utf8(value: Any) -> bool:
    try:
        _utf8(value)
    except UnicodeDecodeError:
        return True
    return False


def _parquet_data_columns(path: Path, columns: list[str], rows: list[dict[str, Any]], types: dict[str, str]) -> list[str]:
    """The data columns of a Parquet file, its rows changed in place: an unnamed pandas index
    (``__index_level_0__``, which ``DataFrame.to_parquet`` writes for any index but a plain range)
    dropped, as pandas reads it back as the index, not data; binary cells (and lists of them)
    decoded as UTF-8 text, as the interactions loader decodes them (an id ``b"i0"`` is ``i0``),
    except in a column of values that are mostly no UTF-8 (a hash), left as it is.

    Raises:
        DataError: an ``item_id``, or a few cells of an otherwise UTF-8 column, that are no UTF-8
            text, named by row and field.
    """
    dropped = [c for c in columns if c.startswith("__index_level_") and c.endswith("__")]
    for r in rows:
        for c in dropped:
            del r[c]
    problems = []
    for c in columns:
        if c in dropped or not any(_has_bytes(r[c]) for r in rows):
            continue
        # a list of binary values (tags) is a list of text once decoded; a list of structs stays no text
        tags = any(isinstance(r[c], list) and any(isinstance(v, bytes) for v in r[c]) for r in rows)
        try:  # a list of binary values (tags), a struct holding some, too
            decoded = [_utf8(r[c]) for r in rows]
        except UnicodeDecodeError:
            bad = [n for n, r in enumerate(rows, 1) if _not_utf8(r[c])]
            binary = sum(r[c] is not None for r in rows)
            # An id must be text, and so must a column of text with a few bad cells; a column of
            # such values (a hash, a UUID) is no text: it is left as it is.
            if c == ID_FIELD or len(bad) <= 0.1 * binary:
                problems += [Problem(n, c, "binary value is not UTF-8 text") for n in bad]
            continue
        for r, value in zip(rows, decoded):
            r[c] = value
        if types[c] in ("binary", "large_binary") or types[c].startswith("fixed_size_binary"):
            types[c] = "string"
        elif tags and types[c] == "object":
            types[c] = "list<string>"  # a list of binary values: text now
    if problems:
        raise DataError(path, problems)
    for c in dropped:
        del types[c]
    return [c for c in columns if c not in dropped]


@contextlib.contextmanager
def _any_field_size() -> Iterator[None]:
    """Lift the csv module's 128 KiB field limit (pandas has none: a long description is data)."""
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(limit)


def _unseen(ch: str) -> bool:
    """A character an id shows no trace of: a control character (NUL, ESC) or a format one (a
    zero-width space, a byte-order mark)."""
    return unicodedata.category(ch) in ("Cc", "Cf")


def _warn_lookalike_ids(path: Path | str, first_seen: Mapping[str, int]) -> None:
    """Warn about ids that print alike yet are different items (matched as written): equal once
    Unicode-composed (NFC: ``café`` typed, against ``cafe`` + a combining accent from another
    export) with their control and format characters taken out (``a`` against ``a`` + a
    zero-width space), and ids holding such characters at all (``2`` + NUL). ``first_seen``:
    id -> 0-based row. (Only ids that are not plain printable ASCII are looked at.)"""
    odd = [rid for rid in first_seen if not (rid.isascii() and rid.isprintable())]
    if not odd:
        return
    hidden = [rid for rid in odd if any(map(_unseen, rid))]
    if hidden:
        logger.warning("%s: %d item id(s) hold a control or invisible character, matched as written: %s%s", path,
                       len(hidden), "; ".join(f"row {first_seen[r] + 1}: {ascii(r)}" for r in hidden[:5]),
                       " ..." if len(hidden) > 5 else "")
    groups: dict[str, list[str]] = {}
    for rid in odd:
        groups.setdefault("".join(ch for ch in unicodedata.normalize("NFC", rid) if not _unseen(ch)), []).append(rid)
    alike = []
    for key, group in groups.items():
        if key in first_seen and key not in group:  # the plain id it prints as ("a" for "a" + a zero-width space)
            group.append(key)
        if len(group) > 1:
            alike.append(sorted(group, key=first_seen.__getitem__))
    if alike:
        logger.warning("%s: %d group(s) of item ids print alike but differ in Unicode composition or invisible "
                       "characters, and are different items: %s%s", path, len(alike),
                       "; ".join(" and ".join(f"{ascii(r)} (row {first_seen[r] + 1})" for r in g) for g in alike[:5]),
                       " ..." if len(alike) > 5 else "")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() == ""


def load_catalog(
    path: str | Path | Sequence[Mapping[str, Any]] | Any,
    *,
    text_fields: Sequence[str] | None = None,
    image_field: str | None = None,
    image_root: str | Path | None = None,
    check_images: bool = True,
    skip_invalid: bool = False,
    show_progress: bool = True,
    require_content: bool = True,
    optional: Sequence[str] = (),
    encoded: Sequence[str] = ("text", "image"),
    mask_bad_images: bool = False,
    partial: bool = False,
    checked_images: Collection[str] = (),
    every_image_may_fail: bool = False,
) -> Catalog:
    """Load and validate a catalog file, or rows in memory.

    Args:
        path: ``.csv``, ``.tsv``, ``.jsonl``, ``.json`` or ``.parquet`` with an ``item_id`` column;
            or rows in memory (a list of dicts, a pandas DataFrame: :func:`rows_in_memory`), read
            as a JSON file's, named ``<records>`` in messages (relative image paths resolve
            against the working directory unless ``image_root`` says otherwise).
        text_fields: columns joined into the item text; default every column of text (strings,
            lists of strings, a JSON column of text with numbers among it) except the id and the
            image column.
        image_field: column of local image paths; default ``image`` when such a column exists.
        image_root: base for relative image paths; default the catalog's folder.
        check_images: open every image once (existence + decoding) before any encoding.
        skip_invalid: leave bad rows out (recorded in ``Catalog.skipped``) instead of failing.
        show_progress: progress bar over the image check.
        require_content: a row needs text or an image (default); ``False`` when the items' content
            comes from elsewhere too (precomputed ``--features``).
        optional: which of ``"text_fields"`` and ``"image_field"`` may name columns the file
            lacks: those are left out (logged) instead of refused. For fields taken from another
            index or model (``index add``, ``finetune``), where a modality the new catalog lacks
            is masked.
        encoded: the modalities an encoder will read (``"text"``, ``"image"``): with one turned off
            (``--text-encoder none``), a row needs content in the other; images are checked only
            when encoded.
        mask_bad_images: an image that is missing or does not decode leaves its row without an
            image (recorded in ``Catalog.masked``) instead of making the row invalid, as long as
            the row keeps content (its text, or ``require_content`` off).
        partial: the rows change items an index holds (``index update``): an ``optional`` column
            the file lacks keeps the items' stored values (only what is logged changes), and in JSON
            a row's record holds only the keys the row has (one it leaves out is kept as stored).
        checked_images: content hashes (:func:`encoders.cache.file_hash`) of images known to
            decode, such as those an index stores (``index add`` / ``update`` pass them): a file
            with one of them is read to hash it but not decoded again (a 640 x 480 JPEG: 0.08 ms
            against 1.2 ms, measured), so a nightly update checks only its new pictures.
        every_image_may_fail: with ``mask_bad_images``, a catalog in which no picture can be read
            is refused (a new index or model, ``finetune``'s too: a wrong ``image_root``) unless
            this is set (``index add`` / ``update`` set it: their items have, or keep, pictures of
            their own).

    Returns:
        The validated :class:`Catalog`.

    Raises:
        DataError: missing ``item_id`` column, unknown text/image fields, missing or duplicate
            ids, rows with neither text nor image, image paths that do not exist or do not
            decode. Every problem is listed with row and field; nothing is encoded first.
    """
    if isinstance(text_fields, str):  # one column, not its letters
        text_fields = [text_fields]
    given = rows_in_memory(path)
    if given is not None:  # rows in memory, read as a JSON file's: each value's type kept
        path = Path("<records>")
        if not given:
            raise DataError(path, [Problem(None, None, "no rows")])
        columns = list(dict.fromkeys(k for r in given for k in r))
        rows = [{c: r.get(c) for c in columns} for r in given] if not partial else given
        types = {c: _json_type(given, c) for c in columns}
    else:
        path = Path(path)
        columns, rows, types = read_table(path, fill=not partial)
    if ID_FIELD not in columns:
        raise DataError(path, [Problem(None, ID_FIELD, f"required column missing (columns: {', '.join(columns)})")])
    if image_field is None and DEFAULT_IMAGE_FIELD in columns:
        image_field = DEFAULT_IMAGE_FIELD
    asked_text, asked_image = list(text_fields or []), image_field
    if image_field is not None and image_field not in columns and "image_field" in optional:
        logger.info("%s has no %r column: its items %s", path, image_field,
                    "keep their images" if partial else "have no image")
        image_field = None
    if image_field is not None and image_field not in columns:
        raise DataError(path, [Problem(None, image_field, f"image column not found (columns: {', '.join(columns)})")])
    if text_fields is not None and "text_fields" in optional:
        absent = [f for f in text_fields if f not in columns]
        if absent:  # an update keeps the stored values; new items' text would lack what the model read
            logger.log(logging.INFO if partial else logging.WARNING, "%s has no %s column(s): %s", path,
                       ", ".join(map(repr, absent)), "their stored values are kept" if partial else
                       "left out of the item text, which the index or model it extends read them in")
        text_fields = [f for f in text_fields if f in columns]
    if text_fields is None:
        text_fields = [c for c in columns if c not in (ID_FIELD, image_field) and types[c] in TEXT_TYPES]
        _warn_numbers_as_text(path, text_fields, rows)
        if image_field is None and "image" in encoded:
            _warn_paths_as_text(path, text_fields, rows)
    else:
        unknown = [f for f in text_fields if f not in columns]
        if unknown:
            raise DataError(
                path, [Problem(None, f, f"text column not found (columns: {', '.join(columns)})") for f in unknown]
            )
    if optional and require_content:
        _check_given_fields(path, columns, encoded, (asked_text, text_fields), (asked_image, image_field), optional)
    root = Path(image_root) if image_root is not None else path.parent
    return _validate(
        rows,
        source=str(path),
        path=path,
        text_fields=list(text_fields),
        image_field=image_field,
        image_root=root,
        check_images=check_images,
        skip_invalid=skip_invalid,
        show_progress=show_progress,
        require_content=require_content,
        encoded=encoded,
        mask_bad_images=mask_bad_images,
        checked_images=checked_images,
        every_image_may_fail=every_image_may_fail,
    )


def _file_hash_or_none(path: str) -> str | None:
    from encoders.cache import file_hash

    if not os.path.isfile(path):  # missing, a folder, a FIFO or a device (never read to its end): check_image says
        return None
    try:
        return file_hash(path)
    except OSError:  # unreadable: check_image says so
        return None


def _warn_numbers_as_text(path: Path, text_fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Warn about a default text column whose cells are numbers but for a few (a price with one
    ``N/A``): it is embedded as text, and a change of its numbers then re-encodes the item."""
    for column in text_fields:
        cells = [(r, str(row[column]).strip()) for r, row in enumerate(rows, 1)
                 if isinstance(row.get(column), (str, int, float)) and str(row[column]).strip()]
        words = [(r, v) for r, v in cells if not _FLOAT.fullmatch(v)]
        if cells and words and len(words) <= 0.1 * len(cells):
            logger.warning("%s: column %r is read as text: %d of its %d values %s not a number (row %d: %r), so it is "
                           "part of every item's text; name the text columns with --text-fields (text_fields=) to "
                           "leave it out", path, column, len(words), len(cells), "is" if len(words) == 1 else "are",
                           *words[0])


_IMAGE_PATH = re.compile(r"[^\s|?]+\.(?:jpe?g|png|gif|webp|bmp|tiff?)(?:\?[^\s|]*)?", re.IGNORECASE)  # (a URL's ?query)
_URL = re.compile(r"(?!file://)[a-z][a-z0-9+.-]*://|data:", re.IGNORECASE)  # a file:// URI is a local path


def is_image_url(value: str) -> bool:
    """Whether an image path is a web (or ``data:``) URL, which no local file reads."""
    return bool(_URL.match(value))


def local_image_path(value: str) -> str:
    """An image path as a local one: a ``file://`` URI as the path it names, anything else as it is."""
    return urllib.parse.unquote(urllib.parse.urlsplit(value).path) if value[:7].lower() == "file://" else value


def _warn_paths_as_text(path: Path, text_fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Warn about a default text column of image file names (or image URLs) when the catalog
    has no image column (``image``): they would be embedded as text and no picture read."""
    for column in text_fields:
        cells = [str(row[column]).strip() for row in rows if isinstance(row.get(column), str) and row[column].strip()]
        pictures = [v for v in cells if _IMAGE_PATH.fullmatch(v)]
        if not cells or len(pictures) < 0.5 * len(cells):
            continue
        if sum(is_image_url(v) for v in pictures) >= 0.5 * len(pictures):  # what --image-field cannot read
            logger.warning("%s: column %r holds image URLs (%r, ...), read as text: mmrec reads local image files "
                           "only, so no picture is read; download them and name the column of their local paths "
                           "with --image-field (image_field=)", path, column, pictures[0])
        else:
            logger.warning("%s: column %r holds image file names (%r, ...) but is read as text, and no picture is "
                           "read: pass --image-field %s (image_field=%r) to read them as images", path, column,
                           pictures[0], column, column)


def _check_given_fields(path: Path, columns: list[str], encoded: Sequence[str],
                        text: tuple[list[str], list[str]], image: tuple[str | None, str | None],
                        optional: Sequence[str]) -> None:
    """With the fields taken from an index or model (``optional``), a file that has none of them
    has nothing to encode: say which columns the new rows need (``--text-fields`` is no option there)."""
    (asked_text, kept_text), (asked_image, kept_image) = text, image
    if ("text" in encoded and kept_text) or ("image" in encoded and kept_image):
        if "text" in encoded and asked_text and "text_fields" in optional and not kept_text:
            # The rows then need an image each: a row without one is named, this says why.
            logger.warning("%s has none of the text columns (%s) that the index or model it extends reads: its "
                           "items get no text", path, ", ".join(asked_text))
        return
    wanted = []
    if "text" in encoded and asked_text and "text_fields" in optional:
        wanted.append(f"none of the text columns ({', '.join(asked_text)})")
    if "image" in encoded and asked_image and "image_field" in optional:
        wanted.append(f"no image column '{asked_image}'")
    if wanted:
        raise DataError(path, [Problem(None, None, f"nothing to encode: the file has {' and '.join(wanted)} that the "
                                                   f"index or model it extends reads (columns: {', '.join(columns)}); "
                                                   f"give the new rows those columns (mmrec finetune also takes "
                                                   f"--text-fields / --image-field)")])


def _shown_path(cell: object) -> object:
    """An image cell as its display field shows it: a file name given as bytes (a Parquet binary
    column) as text, a byte that is no UTF-8 as U+FFFD (the path read is the bytes themselves), not
    ``"b'...'"``."""
    return cell.decode("utf-8", errors="replace") if isinstance(cell, bytes) else cell


def catalog_from_records(
    records: Sequence[dict[str, Any]],
    *,
    text_fields: Sequence[str],
    image_field: str | None = "auto",
    image_root: str | Path | None = None,
    source: str = "<records>",
    check_images: bool = True,
    skip_invalid: bool = False,
    mask_bad_images: bool = False,
) -> Catalog:
    """Build a validated catalog from in-memory rows (the same rules and options as :func:`load_catalog`:
    the fields named must be fields of the rows, and a row without an ``item_id`` is an invalid row).
    ``image_field``: ``"auto"`` (default) reads an ``image`` field as the image column when the
    rows have one, as :func:`load_catalog` reads a file's; ``None``: no image column."""
    if isinstance(text_fields, str):  # one field, not its letters
        text_fields = [text_fields]
    fields = list(dict.fromkeys(k for r in records for k in r))
    if not records:
        raise DataError(source, [Problem(None, None, "no rows")])
    if image_field == "auto":  # as load_catalog reads a file's image column
        image_field = DEFAULT_IMAGE_FIELD if DEFAULT_IMAGE_FIELD in fields else None
    if ID_FIELD not in fields:
        raise DataError(source, [Problem(None, ID_FIELD, f"required field missing (fields: {', '.join(fields)})")])
    unknown = [Problem(None, f, f"text field not found (fields: {', '.join(fields)})")
               for f in text_fields if f not in fields]
    if image_field is not None and image_field not in fields:
        unknown.append(Problem(None, image_field, f"image field not found (fields: {', '.join(fields)})"))
    if unknown:
        raise DataError(source, unknown)
    return _validate(
        list(records),
        source=source,
        path=Path(source),
        text_fields=list(text_fields),
        image_field=image_field,
        image_root=Path(image_root) if image_root is not None else Path("."),
        check_images=check_images,
        skip_invalid=skip_invalid,
        show_progress=False,
        mask_bad_images=mask_bad_images,
        every_image_may_fail=False,
    )


def _validate(
    rows: list[dict[str, Any]],
    *,
    source: str,
    path: Path,
    text_fields: list[str],
    image_field: str | None,
    image_root: Path,
    check_images: bool,
    skip_invalid: bool,
    show_progress: bool,
    require_content: bool = True,
    encoded: Sequence[str] = ("text", "image"),
    mask_bad_images: bool = False,
    checked_images: Collection[str] = (),
    every_image_may_fail: bool,
) -> Catalog:
    uses_text, uses_image = "text" in encoded, "image" in encoded
    off = [m for m in ("text", "image") if m not in encoded]
    if require_content and not (uses_text and text_fields) and not (uses_image and image_field):
        columns = list(dict.fromkeys(k for r in rows for k in r))
        why = ["text encoding is off (--text-encoder none)" if not uses_text else "no text columns",
               "image encoding is off (--image-encoder none)" if not uses_image else "no image column"]
        fixes = ([] if not uses_text else ["name the text columns with --text-fields a,b (text_fields=)"]) + \
                ([] if not uses_image else ["name the image column with --image-field (image_field=)"])
        fix = " or ".join(fixes) if fixes else "turn an encoder back on"
        raise DataError(path, [Problem(None, None, f"nothing to encode: {' and '.join(why)} (columns: "
                                                   f"{', '.join(columns)}); {fix}")])
    problems: list[Problem] = []
    bad: set[int] = set()  # 0-based row positions to drop
    raw_ids = [None if _blank(r.get(ID_FIELD)) else id_text(r[ID_FIELD]) for r in rows]
    first_seen: dict[str, int] = {}
    for i, rid in enumerate(raw_ids):
        if rid is None:
            problems.append(Problem(i + 1, ID_FIELD, "empty item id"))
            bad.add(i)
        elif isinstance(rows[i][ID_FIELD], (bool, list, dict)):  # JSON Lines, Parquet: true is no id
            problems.append(Problem(i + 1, ID_FIELD, f"{json.dumps(rows[i][ID_FIELD])} is a "
                                                     f"{type(rows[i][ID_FIELD]).__name__}: an item id is a string "
                                                     "or an integer"))
            bad.add(i)
        elif isinstance(rows[i][ID_FIELD], float) and not math.isfinite(rows[i][ID_FIELD]):  # JSON Infinity, 1e999
            problems.append(Problem(i + 1, ID_FIELD, f"{rows[i][ID_FIELD]} is not a finite number: an item id is a "
                                                     "string or an integer"))
            bad.add(i)
        elif "\n" in rid or "\r" in rid:  # rows of the file swallowed by an unbalanced quote, as interactions say
            problems.append(Problem(i + 1, ID_FIELD, "holds a line break (in a CSV: an unbalanced quote before it took "
                                                     "in the lines that follow)"))
            bad.add(i)
        elif rid in first_seen:
            problems.append(Problem(i + 1, ID_FIELD, f"duplicate id '{rid}' (first at row {first_seen[rid] + 1})"))
            bad.add(i)
        else:
            first_seen[rid] = i
    _warn_lookalike_ids(path, first_seen)

    texts = [compose_text([r.get(f) for f in text_fields]) for r in rows]
    images: list[str | None] = []
    urls = set()  # rows whose image is a URL, which no local path reads
    cell_refused = set()  # rows whose image cell is no path (said once, not again as a row without content)
    for n, r in enumerate(rows):
        if image_field is not None and isinstance(r.get(image_field), (list, tuple, dict)):  # JSON / Parquet
            problems.append(Problem(n + 1, image_field, f"{json.dumps(r[image_field], default=str)}: an image cell "
                                                        "holds one local path (a string)"))
            bad.add(n)
            cell_refused.add(n)
            images.append(None)
            continue
        cell = None if image_field is None else r.get(image_field)
        if isinstance(cell, bytes):  # a Parquet binary column that is mostly no UTF-8: file names as the disk has them
            cell = os.fsdecode(cell)
        value = None if _blank(cell) else str(cell).strip()
        value = None if value is None else local_image_path(value)
        if value is not None and is_image_url(value):
            urls.add(n)
        images.append(None if value is None else value if n in urls else
                      str(value if Path(value).is_absolute() else image_root / value))
    missing = []  # what a row without content lacks (the same for every such row)
    if uses_text:
        missing.append(f"no text in {', '.join(text_fields)}" if text_fields else "no text fields")
    if uses_image:
        missing.append(f"no image in '{image_field}'" if image_field else "no image column")
    lacks = (" and ".join(missing) or "nothing to encode") + (f" ({' and '.join(off)} encoding is off)" if off else "")
    for i, (text, image) in enumerate(zip(texts, images)):
        if i in cell_refused:
            continue
        if require_content and not (uses_text and text) and not (uses_image and image is not None):
            problems.append(Problem(i + 1, None, lacks))
            bad.add(i)

    masked: list[Problem] = []
    if check_images and image_field is not None and uses_image:
        from encoders.image import check_image

        todo = [i for i, p in enumerate(images) if p is not None and i not in bad]
        for i in tqdm(todo, desc="checking images", unit="img", disable=not show_progress or not todo):
            if i in urls:
                reason = "a URL: mmrec reads local image files only (download the pictures, give their paths)"
            elif checked_images and _file_hash_or_none(images[i]) in checked_images:
                continue  # the bytes of an image that decoded before
            else:
                reason = check_image(images[i])
            if reason is None:
                continue
            if mask_bad_images and (not require_content or (uses_text and texts[i])):
                masked.append(Problem(i + 1, image_field, f"{images[i]}: {reason}; the image is left out, the "
                                                          "row kept (--mask-bad-images)"))
                images[i] = None
            else:
                problems.append(Problem(i + 1, image_field, f"{images[i]}: {reason}" + (
                    ("; the row has no text to keep it by" if uses_text else
                     "; text is not encoded, so the row has nothing to keep it by") if mask_bad_images else "")))
                bad.add(i)
    if masked and not every_image_may_fail and len(todo) >= 2 and all(images[i] is None or i in bad for i in todo):
        # A build or training run left with no picture at all: a wrong --image-root, not a few bad files.
        web = all(i in urls for i in todo)
        raise DataError(path, [Problem(None, image_field, f"none of the {len(todo)} images could be read "
                                                          f"({masked[0].message.split('; the image')[0]}): " + (
            "they are URLs, and mmrec reads local image files only" if web else
            "a wrong --image-root (image_root=)? --mask-bad-images leaves a few bad pictures out, not every one")
            + " (--image-encoder none builds without images)")])
    if masked:
        logger.warning("%s: %d image(s) missing or unreadable left out, their rows kept (listed in the written "
                       "directory's skipped.jsonl): %s%s", source, len(masked), "; ".join(map(str, masked[:3])),
                       " ..." if len(masked) > 3 else "")

    problems.sort(key=lambda p: (p.row or 0))
    if problems and not skip_invalid:
        raise DataError(path, problems)
    if problems:
        logger.warning("%s: skipped %d invalid row(s) of %d", source, len(bad), len(rows))
    keep = [i for i in range(len(rows)) if i not in bad]
    if not keep:
        raise DataError(path, [Problem(None, None, "no valid rows left")] + problems)
    ids = normalize_ids([raw_ids[i] for i in keep])
    records = [
        {k: ("" if _blank(v) else cell_text(_shown_path(v) if k == image_field else v))
         for k, v in rows[i].items() if k != ID_FIELD} for i in keep
    ]
    return Catalog(
        item_ids=ids,
        texts=[texts[i] for i in keep],
        images=[images[i] for i in keep],
        records=records,
        text_fields=text_fields,
        image_field=image_field,
        source=source,
        skipped=problems,
        skipped_ids=[raw_ids[p.row - 1] if p.row is not None else None for p in problems],
        masked=masked,
        masked_ids=[raw_ids[p.row - 1] for p in masked],
        rows=[i + 1 for i in keep],
        mask_bad_images=mask_bad_images,
    )


def check_catalog_ids(catalog: Catalog, existing: set[ItemId], source: str, *, skip: bool = False,
                      id_type: type | None = None) -> Catalog:
    """Refuse items whose ids are already present (for incremental adds), or with ``skip`` (the
    catalog was read with ``skip_invalid``) leave them out as skipped rows, as a duplicate id
    within the file is; the catalog of the items left, which is ``catalog`` when none clashed.
    With ``id_type`` (the index's id type), ids take that type first: with ``str`` every id is
    text; with ``int`` a canonical integer (``"50"``, read as text beside ``"x9"``) is that
    integer, and any other id is refused (or skipped) as the clashes are.

    Raises:
        DataError: a clash or an id of another type without ``skip`` (every one named by row), or
            no row left with it.
    """
    problems, clash = [], []
    if id_type is str:
        catalog.item_ids = [str(i) for i in catalog.item_ids]
    elif id_type is int:
        typed = [i if isinstance(i, int) else normalize_ids([i])[0] for i in catalog.item_ids]
        for i, iid in enumerate(typed):
            if not isinstance(iid, int):
                clash.append(i)
                why = ("has a leading zero: the index's ids are whole numbers, which cannot keep one"
                       if re.fullmatch(r"\s*[+-]?0\d+\s*", str(iid)) else "is not a whole number, as every id of "
                       "the index is")
                problems.append(Problem(catalog.row(i), ID_FIELD, f"id '{iid}' {why}"))
        catalog.item_ids = typed
    mistyped = len(clash)
    for i, iid in enumerate(catalog.item_ids):
        if iid in existing:
            clash.append(i)
            problems.append(Problem(catalog.row(i), ID_FIELD, f"id '{iid}' is already in the index"))
    if not clash:
        return catalog
    parts = [f"{n} row(s) whose id {why}" for n, why in ((len(clash) - mistyped, "is already in the index"),
                                                         (mistyped, "is not a canonical whole number, as the "
                                                                    "index's ids are"))
             if n]
    return drop_rows(catalog, clash, problems, source, skip=skip, summary=" and ".join(parts))


def drop_rows(catalog: Catalog, positions: Sequence[int], problems: Sequence[Problem], source: str, *, skip: bool,
              summary: str) -> Catalog:
    """Refuse the items at ``positions`` (a :class:`DataError` naming each by its ``problems``,
    one per position), or with ``skip`` leave them out as skipped rows (``summary`` says what
    was skipped in the warning); the catalog of the items left.

    Raises:
        DataError: without ``skip``, or when no row is left.
    """
    order = sorted(range(len(positions)), key=lambda j: catalog.row(positions[j]) or 0)
    positions, problems = [positions[j] for j in order], [problems[j] for j in order]
    if not skip:
        raise DataError(source, problems)
    gone = set(positions)
    left = catalog.select([i for i in range(len(catalog)) if i not in gone])
    if not len(left):
        every = sorted(catalog.skipped + problems, key=lambda q: q.row or 0)
        raise DataError(source, [Problem(None, None, "no valid rows left")] + every)
    logger.warning("%s: skipped %s", source, summary)
    pairs = sorted(zip(left.skipped + problems, (left.skipped_ids or [None] * len(left.skipped))
                       + [id_text(catalog.item_ids[i]) for i in positions]), key=lambda pair: pair[0].row or 0)
    left.skipped, left.skipped_ids = [q for q, _ in pairs], [item for _, item in pairs]
    return left


class CatalogError(MMRecError):
    """A catalog source that cannot be found (e.g. the MovieLens files)."""
