"""Waiting without spinning: exponential back-off between retries, and a file lock polled until it is free.

The worker retries its job table with back-off, the supervisor restarts the worker with back-off, and both the
worker and a job's process wait for a lock another process holds: each uses these two helpers.
"""
from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


class Backoff:
    """Delays that double after each wait, from `first` up to `ceiling`; `reset()` after a success."""

    def __init__(self, first: float, ceiling: float) -> None:
        self.first, self.ceiling = first, ceiling
        self.delay = first  # the next wait

    def reset(self) -> None:
        self.delay = self.first

    def wait(self, stop: threading.Event) -> bool:
        """Wait the current delay, cut short when `stop` is set (then True), and double the next one."""
        stopped = stop.wait(self.delay)
        self.delay = min(self.ceiling, self.delay * 2)
        return stopped


def wait_for_lock(path: Path, mode: str, poll: float, give_up: Callable[[], bool] = lambda: False,
                  sleep: Callable[[float], object] = time.sleep,
                  while_waiting: Callable[[], None] = lambda: None) -> IO[str] | None:
    """`path` opened with `mode` and locked exclusively (flock), polling every `poll` seconds while another
    process holds it; `while_waiting()` runs before each pause. None (the file closed) once `give_up()` is true."""
    lock = path.open(mode)
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if give_up():
                lock.close()
                return None
            while_waiting()
            sleep(poll)
