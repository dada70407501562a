"""The one exception type a user sees as a single line, never as a traceback."""


class CompressorError(Exception):
    """Bad input or an impossible request: the CLI prints it and exits with code 2."""
