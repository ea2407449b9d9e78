"""JSON Lines files (one JSON object a line) as read by catalogs and interaction files alike.

Read with :mod:`json` line by line rather than by pyarrow's reader: ids often change JSON type
from line to line (``1``, then ``"b2"``), which pyarrow refuses, and a broken line is named by
its 1-based row here (pyarrow counts from 0).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mmrec.errors import DataError, Problem, utf8_problem

_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # (in the file's text: a JSON escape of one)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in a decoded JSON value (a pair decodes to one character)."""
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return m[0] if m else None
    items = value.items() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        found = _lone_surrogate(item)
        if found:
            return found
    return None


def _refuse_lone_surrogates(path: Path, objects: list[Any], text: str) -> None:
    """Refuse the rows whose strings hold a lone surrogate (``"\\ud800"``: JSON allows the escape,
    but it is no character; writing it as UTF-8 failed later with a bare UnicodeEncodeError)."""
    if not _ESCAPED_SURROGATE.search(text):
        return
    problems = []
    for row, obj in enumerate(objects, start=1):
        if isinstance(obj, dict):
            problems += [Problem(row, str(k).encode("utf-8", "backslashreplace").decode("utf-8"),
                                 f"holds a lone surrogate ({_lone_surrogate([k, v])!r}): not Unicode text")
                         for k, v in obj.items() if _lone_surrogate([k, v])]
    if problems:
        raise DataError(path, problems)


def read_objects(path: str | Path) -> list[dict[str, Any]]:
    """Every object of a JSON-lines file, in order (blank lines ignored).

    Raises:
        DataError: not UTF-8 (line and byte named), no object at all, or a row (1-based, blank
            lines not counted) that is not one JSON object.
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
    for row, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, [Problem(row, None, f"not a JSON object ({e.msg})")]) from None
        if not isinstance(obj, dict):
            raise DataError(path, [Problem(row, None, f"not a JSON object (a {type(obj).__name__})")])
        objects.append(obj)
    _refuse_lone_surrogates(path, objects, "".join(lines))
    return objects


__all__ = ["read_objects"]


def read_json_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every object of a ``.json`` catalog: a JSON array of objects, or JSON Lines (as
    :func:`read_objects`). Read with :mod:`json` for the same reason: a reader that infers one
    type a column turns ``"007"`` beside ``1`` into ``7``.

    Raises:
        DataError: not UTF-8, not JSON, an element (1-based) that is not an object, no object.
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
    if text.lstrip().startswith("{"):  # JSON Lines, or one object written over several lines
        try:
            one = json.loads(text)
        except json.JSONDecodeError:
            return read_objects(path)
        return [one] if isinstance(one, dict) else read_objects(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, [Problem(None, None, f"not a JSON array ({e.msg}, line {e.lineno})")]) from None
    if not isinstance(data, list) or not data:
        raise DataError(path, [Problem(None, None, "file is empty (no JSON objects)")])
    wrong = [Problem(row, None, f"not a JSON object (a {type(obj).__name__})")
             for row, obj in enumerate(data, start=1) if not isinstance(obj, dict)]
    if wrong:
        raise DataError(path, wrong)
    _refuse_lone_surrogates(path, data, text)
    return data
