"""What every command line of the project shares."""
from __future__ import annotations

import argparse

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (the full usage stays behind --help)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")
