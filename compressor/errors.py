"""The one exception type a user sees as a single line, never as a traceback."""
from pydantic import ValidationError


class CompressorError(Exception):
    """Bad input or an impossible request: the CLI prints it and exits with code 2."""


def first_problem(exc: ValidationError) -> str:
    """A settings error as one line, `where: what` (the first problem pydantic found; fixing it shows the next)."""
    first = exc.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"
