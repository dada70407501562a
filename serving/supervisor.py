"""Keeps the job worker process alive: restarted with back-off whenever it dies, stopped cleanly with the front.

The worker is a separate process so that training never shares the classifier's process; the price is that
it can die on its own (a kill, the OOM killer, a bug). Without a supervisor the queue would then wait forever
behind `202 queued`. The restarted worker recovers the job its predecessor left `running` (see
`JobStore.recover_interrupted` and the run lock in `serving/worker.py`). `problem()` is what `/readyz` says
while the worker is down.
"""
from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Sequence

from serving.retry import Backoff

log = logging.getLogger("serving")

MIN_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
STABLE_SECONDS = 60.0  # a worker that ran this long before dying restarts at the shortest back-off again

_current: WorkerSupervisor | None = None


def current() -> WorkerSupervisor | None:
    """The supervisor of this process's front, for the readiness check in `serving/guards.py`."""
    return _current


class WorkerSupervisor:
    def __init__(self, command: Sequence[str], min_backoff: float = MIN_BACKOFF_SECONDS,
                 max_backoff: float = MAX_BACKOFF_SECONDS) -> None:
        self.command = list(command)
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.next_start: float | None = None  # monotonic time of the next restart, while waiting for it
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        global _current
        self._spawn()
        self.thread.start()
        _current = self
        return self

    def _spawn(self) -> None:
        with self.lock:
            self.proc = subprocess.Popen(self.command)
            self.started_at = time.monotonic()
            self.next_start = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def problem(self) -> str | None:
        """None while the worker runs; otherwise one sentence for an operator."""
        if self.alive():
            return None
        if self.stopping.is_set():
            return "the job worker is stopping with the server"
        when = ""
        if self.next_start is not None:
            when = f"; restart {self.restarts + 1} in {max(0.0, self.next_start - time.monotonic()):.0f} s"
        return f"the job worker is not running ({self.last_exit or 'starting'}){when}; queued jobs wait for it"

    def _watch(self) -> None:
        backoff = Backoff(self.min_backoff, self.max_backoff)
        while not self.stopping.is_set():
            rc = self.proc.wait()
            if self.stopping.is_set():
                return
            ran = time.monotonic() - self.started_at
            self.last_exit = (f"exited with code {rc} after {ran:.0f} s" if rc >= 0
                              else f"killed by signal {-rc} after {ran:.0f} s")
            if ran >= STABLE_SECONDS:
                backoff.reset()
            self.next_start = time.monotonic() + backoff.delay
            log.error("job worker %s; restarting in %.0f s", self.last_exit, backoff.delay)
            if backoff.wait(self.stopping):
                return
            self.restarts += 1
            self._spawn()

    def stop(self, timeout: float = 90) -> None:
        """A clean stop lets the running job write its checkpoint; it resumes at the next start."""
        self.stopping.set()
        with self.lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
