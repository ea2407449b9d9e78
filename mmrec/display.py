"""Text for a terminal table: one line, control characters out, widths as a terminal shows them.

Catalog text is anyone's: a title may hold line breaks, tabs, ANSI escape sequences (which a
terminal would obey) or wide CJK characters (two columns each), and a table padded by
``len()`` came out of line.
"""
from __future__ import annotations

import unicodedata


def _width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0  # an accent on the character before, a zero-width joiner
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal (a wide character two, a combining mark none)."""
    return sum(_width(ch) for ch in text)


def one_line(text: str, width: int | None = None) -> str:
    """``text`` on one line (control characters and runs of white space become one space), cut to
    ``width`` display columns with ``...`` when it is wider."""
    text = " ".join("".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text).split())
    if width is None or display_width(text) <= width:
        return text
    kept, used = [], 0
    for ch in text:
        if used + _width(ch) > width - 3:
            break
        kept.append(ch)
        used += _width(ch)
    return "".join(kept) + "..."


def pad(text: str, width: int) -> str:
    """``text`` left-aligned in ``width`` display columns."""
    return text + " " * max(0, width - display_width(text))
