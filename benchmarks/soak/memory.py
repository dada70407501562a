"""The HTTP front's memory: its RSS sampled through the soak, for the check that it does not grow more than
`memory_tolerance` between the warm-up and the end."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

from benchmarks.soak.processes import front_process
from serving.local import LocalServer


class FrontMemory:
    """Samples the HTTP front's RSS every second (the front changes after a restart): its peak, and readings on
    demand for the baseline and the end."""

    def __init__(self, server: Callable[[], LocalServer]) -> None:
        self.server = server
        self.peak: dict[int, int] = {}  # front pid -> highest RSS seen
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="front-memory", daemon=True)

    def read(self) -> tuple[int, int] | None:
        """(pid, RSS bytes) of the front now; None while there is no worker to find it by."""
        front = front_process(self.server())
        try:
            return (front.pid, front.memory_info().rss) if front else None
        except psutil.Error:
            return None

    def read_waiting(self, timeout: float = 60) -> tuple[int, int] | None:
        deadline = time.monotonic() + timeout
        while (reading := self.read()) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        return reading

    def _watch(self) -> None:
        while not self.stopping.wait(1.0):
            if (reading := self.read()) is not None:
                pid, rss = reading
                self.peak[pid] = max(self.peak.get(pid, 0), rss)

    def start(self) -> FrontMemory:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
