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
# Letters drawn as blank space (Hangul and halfwidth fillers, the braille blank) and the grapheme joiner.
_BLANK = set("\u3164\u115f\u1160\uffa0\u2800\u034f")


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _pictograph(ch: str) -> bool:
    """An emoji drawn as one (the pictographs from U+1F000), or the selector asking for one."""
    return ord(ch) >= 0x1F000 or ch == _EMOJI_STYLE


def _joins(cluster: str, ch: str, after: str = "") -> bool:
    """Whether U+200D at the end of an emoji ``cluster`` joins ``ch`` (followed by ``after``)
    into it (a family, a flag, a health worker's U+2695 with its emoji selector): only after an
    emoji, and only an emoji or a symbol asking to be one; between two CJK characters a joiner
    joins nothing."""
    emoji = any(ord(c) >= 0x1F000 for c in cluster) or any(
        c == _EMOJI_STYLE and unicodedata.category(p) == "So" for p, c in zip(cluster, cluster[1:]))
    return emoji and (ord(ch) >= 0x1F000 or (unicodedata.category(ch) == "So" and after.startswith(_EMOJI_STYLE)))


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
        while j < len(text) and (_extends(text[j]) or (text[j - 1] == _ZWJ and j - 1 > i
                                                       and _joins(text[i : j - 1], text[j], text[j + 1 : j + 2]))):
            j += 1
        cluster = text[i:j]
        if any(_wide(c) for c in cluster) or "\u20e3" in cluster or (
                _EMOJI_STYLE in cluster and unicodedata.category(cluster[0]) == "So"):
            width = 2  # (an emoji selector widens a symbol, not a letter; a keycap is one emoji)
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
    out = []
    for cluster, _ in _clusters(text):
        for k, ch in enumerate(cluster):
            if ch == "\\":
                out.append("\\\\")
            elif ch == _ZWJ and k + 1 < len(cluster) and _joins(cluster[:k], cluster[k + 1], cluster[k + 2 : k + 3]):
                out.append(ch)  # joining an emoji sequence (a family, a flag): part of the one drawn, shown as it is
            elif ch == _EMOJI_STYLE and k and (unicodedata.category(cluster[k - 1]) == "So" or ord(cluster[k - 1]) >= 0x1F000
                                               or cluster[k + 1 : k + 2] == "\u20e3"):
                out.append(ch)  # an emoji's own selector (a keycap's too)
            elif ch != " " and (not _plain(ch) or ch in _BLANK or unicodedata.category(ch) in ("Cf", "Zs", "Zl", "Zp")
                                or 0xFE00 <= ord(ch) <= 0xFE0F or 0xE0100 <= ord(ch) <= 0xE01EF):
                out.append(ch.encode("unicode_escape").decode("ascii"))  # (drawn as nothing, or as a space)
            else:
                out.append(ch)
    return "".join(out)


def pad(text: str, width: int) -> str:
    """``text`` left-aligned in ``width`` display columns."""
    return text + " " * max(0, width - display_width(text))
