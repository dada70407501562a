"""The one exception type a user sees as a single line, never as a traceback."""
import errno

from pydantic import ValidationError

# compressor's modules quote failures through this name; the one definition lives in the lowest layer, export.
from export.errors import first_line as first_line


class CompressorError(Exception):
    """Bad input or an impossible request: the CLI prints it and exits with code 2."""


def first_problem(exc: ValidationError) -> str:
    """A settings error as one line, `where: what` (the first problem pydantic found; fixing it shows the next)."""
    first = exc.errors()[0]
    cause = first.get("ctx", {}).get("error") if first["type"] == "value_error" else None
    what = str(cause) if cause is not None else first["msg"]  # a validator's own words, without "Value error, "
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {what}" if where else what  # a rule across settings has no one place


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the user's quota on it) is full: what a resume survives once space is free."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
