"""Text for a terminal table: one line, control characters out, widths as a terminal shows them.

Catalog text is anyone's: a title may hold line breaks, tabs, ANSI escape sequences (which a
terminal would obey), bidirectional controls (which reorder what follows) or wide CJK
characters and emoji (two columns each), and a table padded by ``len()`` came out of line.
"""
from __future__ import annotations

import unicodedata

# Bidirectional embeddings, overrides and isolates: format characters that reorder the text after them.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def _width(ch: str, before: str) -> int:
    """Columns of ``ch`` after ``before`` (the character before it, ``""`` at the start)."""
    if ch == "\ufe0f":  # emoji presentation: the character before it (a heart) takes two columns
        return 1 if before and unicodedata.east_asian_width(before) not in ("W", "F") else 0
    wide = unicodedata.east_asian_width(ch) in ("W", "F")
    if (before == "\u200d" and wide) or "\U0001f3fb" <= ch <= "\U0001f3ff":  # joined into the emoji before;
        return 0  # a skin tone
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0  # an accent on the character before, a zero-width joiner
    return 2 if wide else 1


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal (a wide character or an emoji two, a combining mark
    none, an emoji sequence joined by U+200D or a skin tone as its first emoji)."""
    return sum(_width(ch, text[i - 1] if i else "") for i, ch in enumerate(text))


def _plain(ch: str) -> bool:
    return unicodedata.category(ch) != "Cc" and ch not in _BIDI


def one_line(text: str, width: int | None = None) -> str:
    """``text`` on one line (control characters and runs of white space become one space,
    bidirectional controls go), cut to ``width`` display columns with ``...`` when wider."""
    text = " ".join("".join(ch if _plain(ch) else " " if ch not in _BIDI else "" for ch in text).split())
    if width is None or display_width(text) <= width:
        return text
    kept, used = [], 0
    for i, ch in enumerate(text):
        w = _width(ch, text[i - 1] if i else "")
        if used + w > width - 3:
            break
        kept.append(ch)
        used += w
    return "".join(kept) + "..."


def visible(text: str) -> str:
    """``text`` (an id) with its control and bidirectional characters written as escapes (``\\t``,
    ``\\x1b``, ``\\u202e``) and every other character kept: ids that differ stay apart."""
    return "".join(ch if _plain(ch) else ch.encode("unicode_escape").decode("ascii") for ch in text)


def pad(text: str, width: int) -> str:
    """``text`` left-aligned in ``width`` display columns."""
    return text + " " * max(0, width - display_width(text))
