"""How a failure is quoted in one line, for `export` and, through `compressor.errors`, the whole project."""
from __future__ import annotations


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's message as one line (the first, where it spans several), or its type's name where it has
    none: what a note or an error message quotes of a failure it goes on after."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line[:limit] if limit else line
