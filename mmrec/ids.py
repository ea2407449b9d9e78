"""How external ids are read: one rule for catalogs and interaction files alike.

Ids are read as text. A column whose every id is a canonical integer (``"7"``, ``"-3"``; not
``"007"``, ``"7.0"`` or ``"-0"``) becomes ``int``; otherwise every id stays ``str``. So ``"007"`` is never
silently turned into ``7``, and the same file read as CSV, TSV, JSON Lines or Parquet gives the
same ids, with one exception: a JSON or Parquet *number* (a float or a decimal) that holds an
integer (``7.0``) is that integer (``7``), while the CSV text ``7.0`` stays ``"7.0"``.
"""
from __future__ import annotations

import decimal
import re
from collections.abc import Iterable

import numpy as np

from mmrec.typing import ItemId

# Not "-0": it would collide with "0". At most 4,000 digits: Python refuses to read a longer number from
# text (its 4,300-digit limit), and an id such as a 5,000-digit string made a query fail with ValueError
# (500 from serve) where it is simply no id of the index; a column with such an id stays text.
_CANONICAL_INT = re.compile(r"(0|-?[1-9][0-9]{0,3999})\Z")


def id_text(value: object) -> str:
    """The text form of one raw id value (an int, a str, or a float or decimal that holds an integer)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, decimal.Decimal) and value.is_finite() and value == value.to_integral_value():
        return str(int(value))  # a Parquet decimal(38, 1) 7.0 is 7, as a float 7.0 is (not "7.0")
    return str(value).strip()


def normalize_ids(values: Iterable[object]) -> list[ItemId]:
    """Apply the module rule to a whole column of raw id values (``None`` stays ``None``)."""
    texts = [None if v is None else id_text(v) for v in values]
    if all(t is None or _CANONICAL_INT.match(t) for t in texts):
        return [None if t is None else int(t) for t in texts]
    return texts


def one_id(value: object) -> object:
    """``value``, or the scalar a 0-d numpy array holds (``np.array(7)`` is the id 7)."""
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def too_long(value: object) -> str | None:
    """``"an integer of about N digits"`` for an int past the 4,300 digits Python's ``str()`` writes
    (no id of any index or model: ids stop at 4,000 digits), else ``None``."""
    if not isinstance(value, int):
        return None
    try:
        str(value)
        return None
    except ValueError:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"


def id_shown(value: object) -> str:
    """An id as a message names it: :func:`too_long`'s words, or ``str(value)``."""
    return too_long(value) or str(value)


def id_list(ids: Iterable[object] | object) -> list[object]:
    """``ids`` as a list, read once (a generator too); a single id (a ``str``, ``bytes`` or integer)
    is one id, so ``"12"`` is item 12, not the items ``"1"`` and ``"2"``; ``None`` is no id."""
    if ids is None:
        return []
    if isinstance(ids, (str, bytes, int, np.integer)):
        return [ids]
    if isinstance(ids, np.ndarray) and ids.ndim == 0:  # np.array(7): one id
        return [one_id(ids)]
    return list(ids)
