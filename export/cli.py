"""What every command line of the project shares: one-line usage errors and the exit codes."""
from __future__ import annotations

import argparse
from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of `python -m compressor` and `python -m export`, which the service's worker reads back."""

    DONE = 0
    USAGE = 2  # a user mistake: one line on stderr
    CHECK_FAILED = 3  # trained, but a check after training failed: the student and the report are kept
    NO_SPACE = 4  # the disk filled up: the last checkpoint is what it was, `--resume` continues once space is free
    INTERRUPTED = 130  # Ctrl-C or SIGINT: a checkpoint was written, `--resume` continues


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (the full usage stays behind --help)."""

    def error(self, message: str):
        self.exit(ExitCode.USAGE, f"error: {message} (see --help)\n")
