"""Why a job's process ended, in words a client can act on.

A compressor that exits by itself says why on its last `error:` line. One that is killed says nothing: the
exit status is then all there is (minus the signal number), and this module turns it into a sentence. The
kernel's out-of-memory killer sends the same SIGKILL as `kill -9`; its own counter in the cgroup's memory
events tells them apart where the machine exposes it.
"""
from __future__ import annotations

import signal
from pathlib import Path

from export.cli import ExitCode

OOM_COUNTERS = (Path("/sys/fs/cgroup/memory.events"), Path("/sys/fs/cgroup/memory/memory.oom_control"))
NO_SPACE = "no space left on device"


def oom_kills() -> int | None:
    """How many processes the out-of-memory killer has killed in this cgroup; None where it is not exposed."""
    for path in OOM_COUNTERS:
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def killed_by(returncode: int, oom_before: int | None, disk_full: bool = False) -> str | None:
    """What interrupted a process that exited with `returncode` (a phrase that reads after "interrupted by"), or
    None if it ended by itself: a signal nobody in the service sent, or a full disk. Either way the job is
    resumed from its checkpoint rather than failed. `oom_before` is `oom_kills()` from when it started;
    `disk_full`, whether the jobs disk is full as it exits: a failure then is taken for the full disk's doing,
    since a process whose log is on that disk may not manage to say so (or fail in a way that hides it)."""
    if returncode == ExitCode.NO_SPACE or (returncode not in (0, ExitCode.INTERRUPTED) and disk_full):
        return f"a full disk ({NO_SPACE})"
    if returncode >= 0:
        return None
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if number == signal.SIGKILL:
        after = oom_kills()
        if oom_before is not None and after is not None and after > oom_before:
            return "the out-of-memory killer (the machine ran out of memory)"
        return "SIGKILL (kill -9, or the out-of-memory killer)"
    if number == signal.SIGBUS:
        return "SIGBUS (a memory-mapped file could not be written: a full disk?)"
    return name
