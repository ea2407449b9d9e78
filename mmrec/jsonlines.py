"""JSON Lines files (one JSON object a line) as read by catalogs and interaction files alike.

Read with :mod:`json` line by line rather than by pyarrow's reader: ids often change JSON type
from line to line (``1``, then ``"b2"``), which pyarrow refuses, and a broken line is named by
its 1-based row here (pyarrow counts from 0).
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmrec.errors import DataError, Problem, utf8_problem

_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # (in the file's text: a JSON escape of one)
_SURROGATE = re.compile("[\ud800-\udfff]")
logger = logging.getLogger(__name__)


def _mend(value: Any) -> tuple[Any, str | None]:
    """``value`` with each lone surrogate in its strings replaced by U+FFFD, and the first one found."""
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return (value, None) if m is None else (_SURROGATE.sub("\ufffd", value), m[0])
    if isinstance(value, (list, dict)):
        pairs = [(_mend(k), _mend(v)) for k, v in (value.items() if isinstance(value, dict) else enumerate(value))]
        first = next((f for (_, fk), (_, fv) in pairs for f in (fk, fv) if f), None)
        if isinstance(value, list):
            return [v for _, (v, _) in pairs], first
        return {k: v for (k, _), (v, _) in pairs}, first
    return value, None


def mend_surrogates(value: Any) -> tuple[Any, str | None]:
    """``value`` (a string, or a list or dict holding strings) with each lone surrogate replaced by
    U+FFFD, and the first one found (``None``: there was none, ``value`` is returned as it is)."""
    return _mend(value) if _has_surrogate(value) else (value, None)


def _has_surrogate(value: Any) -> bool:
    """Whether ``value``'s strings hold a lone surrogate (an ASCII string, told at once, holds none)."""
    if isinstance(value, str):
        return not value.isascii() and _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(map(_has_surrogate, value))
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def _mend_lone_surrogates(path: Path, rows: Iterable[tuple[int, Any]]) -> None:
    """Replace, in place, each lone surrogate of the ``(row, object)`` pairs' strings
    (``"\\ud83d"``, half of an emoji cut by a truncation: JSON allows the escape, but it is no
    character, and writing it as UTF-8 failed later with a bare UnicodeEncodeError) by U+FFFD,
    naming the first rows in a warning. The caller passes the rows whose text holds the escape of
    a surrogate (a pair, an emoji written by an ASCII-only writer, is one too)."""
    found = []
    for row, obj in rows:
        if not isinstance(obj, dict):
            continue
        mended, first = _mend(obj)
        if first is not None:
            field = next(k for k, v in obj.items() if _mend([k, v])[1])
            obj.clear()
            obj.update(mended)
            found.append(f"row {row}, field {_mend(field)[0]!r} ({first!r})")
    if found:
        logger.warning("%s: %d row(s) hold a lone surrogate, half of a character (a cut emoji?), read as U+FFFD: %s%s",
                       path, len(found), "; ".join(found[:5]), " ..." if len(found) > 5 else "")


def _whole_or_digits(digits: str) -> int | str:
    """A JSON integer as Python's ``int``, or its digits as text past the interpreter's limit for
    converting text to ``int`` (4,300 digits; such an id reads as text, as :mod:`mmrec.ids` has it)."""
    try:
        return int(digits)
    except ValueError:
        return digits


class _Decoder:
    """``json.loads`` that notes each object naming a key twice (``json`` keeps the last value
    without a word, another reader the first, so such a row is refused, not guessed at), and keeps
    an integer too long for ``int`` as its digits (it raised a bare ``ValueError``, which no row
    or file named; that hook only runs for a text that needs it)."""

    def __init__(self) -> None:
        self.repeated: list[tuple[dict[str, Any], str]] = []  # (the object, its first key named twice)
        self._plain = json.JSONDecoder(object_pairs_hook=self._object)
        self._long = json.JSONDecoder(object_pairs_hook=self._object, parse_int=_whole_or_digits)

    def _object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            seen: set[str] = set()
            self.repeated.append((obj, next(k for k, _ in pairs if k in seen or seen.add(k))))
        return obj

    def loads(self, text: str) -> Any:
        noted = len(self.repeated)
        try:
            return self._plain.decode(text)
        except json.JSONDecodeError:
            raise
        except ValueError:
            del self.repeated[noted:]  # (the retry notes them again)
            return self._long.decode(text)

    def refuse_repeated(self, path: Path, rows: list[tuple[int, Any]]) -> None:
        """Raise for the first noted object, naming the row of ``rows`` (1-based row, decoded
        value) that holds it; no-op when none was noted."""
        if not self.repeated:
            return
        inner, key = self.repeated[0]
        row, obj = next((row, obj) for row, obj in rows if _holds(obj, inner))
        if obj is inner:
            raise DataError(path, [Problem(row, key, "named twice in one object (JSON readers differ "
                                                     "on which value counts: keep one)")])
        field = next(k for k, v in obj.items() if _holds(v, inner))
        raise DataError(path, [Problem(row, field, f"holds an object naming {key!r} twice (keep one)")])


def _holds(value: Any, inner: dict[str, Any]) -> bool:
    """Whether ``inner`` is ``value`` or inside it (by identity)."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return value is inner or any(_holds(v, inner) for v in children)


def read_objects(path: str | Path) -> list[dict[str, Any]]:
    """Every object of a JSON-lines file, in order (blank lines ignored).

    Raises:
        DataError: not UTF-8 (line and byte named), no object at all, or a row (1-based, blank
            lines not counted) that is not one JSON object or names a key twice.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark, as some editors write, is not data
            lines = [line for line in f if line.strip()]
    except UnicodeDecodeError:
        raise DataError(path, [utf8_problem(path)]) from None
    if not lines:
        raise DataError(path, [Problem(None, None, "file is empty (no JSON lines)")])
    objects = []
    decoder = _Decoder()
    for row, line in enumerate(lines, start=1):
        try:
            obj = decoder.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, [Problem(row, None, f"not a JSON object ({e.msg})")]) from None
        if not isinstance(obj, dict):
            raise DataError(path, [Problem(row, None, f"not a JSON object (a {type(obj).__name__})")])
        decoder.refuse_repeated(path, [(row, obj)])
        objects.append(obj)
    _mend_lone_surrogates(path, ((row, objects[row - 1]) for row, line in enumerate(lines, start=1)
                                 if "\\u" in line and _ESCAPED_SURROGATE.search(line)))
    return objects


__all__ = ["read_objects"]


def read_json_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every object of a ``.json`` catalog: a JSON array of objects, or JSON Lines (as
    :func:`read_objects`). Read with :mod:`json` for the same reason: a reader that infers one
    type a column turns ``"007"`` beside ``1`` into ``7``.

    Raises:
        DataError: not UTF-8, not JSON, an element (1-based) that is not an object or names a
            key twice, no object.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            head = f.read(4096)
            if not head.lstrip().startswith(("[", "{")):
                return read_objects(path)  # (which names what is wrong with it)
            text = head + f.read()
    except UnicodeDecodeError:
        raise DataError(path, [utf8_problem(path)]) from None
    decoder = _Decoder()
    if text.lstrip().startswith("{"):  # JSON Lines, or one object written over several lines
        try:
            one = decoder.loads(text)
        except json.JSONDecodeError:
            return read_objects(path)
        if not isinstance(one, dict):
            return read_objects(path)
        decoder.refuse_repeated(path, [(1, one)])
        if _ESCAPED_SURROGATE.search(text):  # (a one-row .json: an index update's file, say)
            _mend_lone_surrogates(path, [(1, one)])
        return [one]
    try:
        data = decoder.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, [Problem(None, None, f"not a JSON array ({e.msg}, line {e.lineno})")]) from None
    if not isinstance(data, list) or not data:
        raise DataError(path, [Problem(None, None, "file is empty (no JSON objects)")])
    wrong = [Problem(row, None, f"not a JSON object (a {type(obj).__name__})")
             for row, obj in enumerate(data, start=1) if not isinstance(obj, dict)]
    if wrong:
        raise DataError(path, wrong)
    decoder.refuse_repeated(path, list(enumerate(data, start=1)))
    if _ESCAPED_SURROGATE.search(text):
        _mend_lone_surrogates(path, enumerate(data, start=1))
    return data
