"""Errors raised on bad user input.

Every data error names where the problem is (file, row, field) so a user can fix the input
without reading a traceback. The CLI prints ``str(error)`` and exits non-zero.
"""
from __future__ import annotations

import bz2
import gzip
import numbers
from dataclasses import dataclass, field
from pathlib import Path


class MMRecError(Exception):
    """Base class of every error mmrec raises on purpose (shown without a traceback)."""


@dataclass
class Problem:
    """One offending place in an input file.

    Args:
        row: 1-based data row (the header is not counted), or ``None`` for file-level problems.
        field: column name, or ``None`` when the whole row is at fault.
        message: what is wrong, in words.
    """

    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass
class DataError(MMRecError):
    """Invalid input data: one or more problems in one file.

    Args:
        path: the file at fault.
        problems: what is wrong where; at most ``limit`` are printed.
        limit: how many problems ``str()`` lists before summarising the rest.
    """

    path: str | Path
    problems: list[Problem] = field(default_factory=list)
    limit: int = 20

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        if len(self.problems) == 1:  # one line: the file, then where in it and what
            return f"{self.path}: {self.problems[0]}"
        shown = self.problems[: self.limit]
        lines = [f"{self.path}: {len(self.problems)} problem(s)"]
        lines += [f"  {self.path}: {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        return "\n".join(lines)


def missing_file(path: str | Path, what: str | None = None) -> "DataError":
    """The error for an input path that is no file: a directory, said so, or nothing at all
    (``what`` names the file in the message, e.g. ``"feature file for modality 'x'"``)."""
    text = "is a directory, not a file" if Path(path).is_dir() else ("not found" if what else "file not found")
    return DataError(path, [Problem(None, None, f"{what} {text}" if what else text)])


class ConfigError(MMRecError):
    """An option or saved artefact that does not fit (wrong dimension, unknown modality...)."""


class UnknownIdError(MMRecError, KeyError):
    """A user or item id that an interaction set, index or model does not know (``mmrec
    serve`` answers it with 404)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


# A CSV / TSV whose first line that is not empty holds only spaces or tabs: read as the header, it
# named no column ("required column is missing (columns found: '')", or every row too long).
BLANK_HEADER = Problem(None, None, "the header row names no column (a line of spaces, tabs or separators alone?): "
                                   "the header is the first line that is not empty; delete the lines before it")


def utf8_problem(path: str | Path) -> Problem | None:
    """Where a text file stops being UTF-8 (its line and byte), or ``None`` when it is UTF-8 (or,
    compressed as ``.gz`` / ``.bz2``, when it does not decompress: the caller's message stands).

    Read on the error path only (the whole file is read, decompressed). The line is the file's,
    header included: a quoted field spanning lines makes it differ from the data row.
    """
    path = Path(path)
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix.lower())
    try:
        if opener is None:
            data = path.read_bytes()
        else:
            with opener(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError):
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        where = f"byte {e.start}" + (" of the decompressed text" if opener is not None else "")
        return Problem(None, None, f"line {line} ({where}) holds byte 0x{data[e.start]:02x}, which is not "
                                   "UTF-8: save the file as UTF-8")
    return None


def check_count(value: object, what: str = "k") -> int:
    """``value`` as an ``int`` of at least 1 (a numpy integer too), else :class:`MMRecError` naming
    ``what``: a bool, a float (``2.0`` included), ``None`` or text is no count."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MMRecError(f"{what} must be a whole number of at least 1, got {value!r}")
    if value < 1:
        raise MMRecError(f"{what} must be at least 1, got {value}")
    return int(value)
