"""Text for a terminal table: one line, control characters out, widths as a terminal shows them.

Catalog text is anyone's: a title may hold line breaks, tabs, ANSI escape sequences (which a
terminal would obey), bidirectional controls (which reorder what follows) or wide CJK
characters and emoji (two columns each), and a table padded by ``len()`` came out of line.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Iterator

# Bidirectional embeddings, overrides and isolates: format characters that reorder the text after them.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_ZWJ, _EMOJI_STYLE, _TEXT_STYLE = "\u200d", "\ufe0f", "\ufe0e"


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _pictograph(ch: str) -> bool:
    """An emoji drawn as one (the pictographs from U+1F000), or the selector asking for one."""
    return ord(ch) >= 0x1F000 or ch == _EMOJI_STYLE


def _joins(cluster: str, ch: str) -> bool:
    """Whether U+200D at the end of an emoji ``cluster`` joins ``ch`` into it (a family, a health
    worker's U+2695, a flag): only after a pictograph, and only a pictograph or a symbol; between
    two CJK characters a joiner joins nothing."""
    return any(_pictograph(c) for c in cluster) and (_pictograph(ch) or unicodedata.category(ch) == "So")


def _extends(ch: str) -> bool:
    """Whether ``ch`` draws into the character before it (a mark, a selector, a skin tone, a
    decomposed Hangul vowel or final consonant)."""
    return (ch in (_ZWJ, _EMOJI_STYLE, _TEXT_STYLE) or "\U0001f3fb" <= ch <= "\U0001f3ff" or "\u1160" <= ch <= "\u11ff"
            or unicodedata.combining(ch) > 0 or unicodedata.category(ch) in ("Mn", "Me"))


def _clusters(text: str) -> Iterator[tuple[str, int]]:
    """``(cluster, columns)``: a character with the marks drawn into it, and an emoji sequence
    joined by U+200D, as one cell of one or two columns."""
    i = 0
    while i < len(text):
        j = i + 1
        while j < len(text) and (_extends(text[j]) or (text[j - 1] == _ZWJ and j - 1 > i and _joins(text[i:j], text[j]))):
            j += 1
        cluster = text[i:j]
        if any(_wide(c) for c in cluster) or _EMOJI_STYLE in cluster:
            width = 2
        elif unicodedata.category(cluster[0]) == "Cf" and len(cluster) == 1:
            width = 0  # a zero-width space or joiner alone
        else:
            width = 1
        yield cluster, width
        i = j


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal (a wide character or an emoji sequence two, a
    combining mark none)."""
    return sum(w for _, w in _clusters(text))


def _plain(ch: str) -> bool:
    return unicodedata.category(ch) != "Cc" and ch not in _BIDI


def one_line(text: str, width: int | None = None) -> str:
    """``text`` on one line (control characters and runs of white space become one space,
    bidirectional controls go), cut to ``width`` display columns with ``...`` when wider."""
    text = " ".join("".join(ch if _plain(ch) else " " if ch not in _BIDI else "" for ch in text).split())
    if width is None or display_width(text) <= width:
        return text
    kept, used = [], 0
    for cluster, w in _clusters(text):
        if used + w > width - 3:
            break
        kept.append(cluster)
        used += w
    return "".join(kept) + "..."


def visible(text: str) -> str:
    """``text`` (an id) with its backslashes, control, format and bidirectional characters and
    white space other than a plain space written as escapes (``\\\\``, ``\\t``, ``\\x1b``,
    ``\\u200b``), every other character kept: ids that differ print differently."""
    def shown(ch: str, joined: bool) -> str:
        if ch == "\\":
            return "\\\\"
        if ch == _ZWJ and joined:
            return ch  # inside an emoji sequence (a family, a flag): part of the one drawn, shown as it is
        if ch != " " and (not _plain(ch) or unicodedata.category(ch) in ("Cf", "Zs", "Zl", "Zp")):
            return ch.encode("unicode_escape").decode("ascii")
        return ch

    out = []
    for cluster, _ in _clusters(text):
        joined = any(_pictograph(c) for c in cluster) and not cluster.endswith(_ZWJ)  # (a trailing one joins nothing)
        out.append("".join(shown(ch, joined) for ch in cluster))
    return "".join(out)


def pad(text: str, width: int) -> str:
    """``text`` left-aligned in ``width`` display columns."""
    return text + " " * max(0, width - display_width(text))
