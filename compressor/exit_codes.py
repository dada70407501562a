"""The command lines' exit codes, one place for the CLI, `python -m export` and the service's worker."""

DONE = 0
USAGE = 2  # a user mistake: one line on stderr
CHECK_FAILED = 3  # trained, but a check after training failed: the student and the report are kept
INTERRUPTED = 130  # Ctrl-C or SIGINT: a checkpoint was written, `--resume` continues
