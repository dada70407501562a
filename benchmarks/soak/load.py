"""The classification load: clients classifying a PNG over keep-alive connections for the whole soak, every
request's fate recorded (Attempt), and the summary that puts each request in exactly one class."""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from benchmarks.serving import multipart_request

IMMEDIATE_S = 1.0  # a 503 or 429 answered faster than this is a refusal, not a loss
IDLE_RECONNECT_S = 2.0  # a keep-alive connection idle longer is replaced: the server may be closing it as we send
RECONNECT_PAUSE_S = 0.25  # after a failed request, so that clients do not spin while the server is down


@dataclass(slots=True)
class Attempt:
    """One classification request as its client saw it (monotonic times)."""

    started: float
    elapsed: float
    status: int | None  # None: no answer
    failure: str | None = None  # why there is no answer
    sent: bool = True  # the request was written to an open connection


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server closes the connection) of one HTTP/1.1 response, its body read and dropped."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed without an answer")
    status = int(status_line.split()[1])
    length, chunked, close = 0, False, status_line.startswith(b"HTTP/1.0")
    while (line := await reader.readline()) != b"\r\n":
        if not line:
            raise ConnectionError("closed in the middle of the headers")
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if not chunked:
        await reader.readexactly(length)
        return status, close
    while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
        await reader.readexactly(size + 2)
    while (await reader.readline()) not in (b"\r\n", b""):  # trailers, if any
        pass
    return status, close


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed in the middle of the answer"
    return f"{type(exc).__name__}: {exc}"[:120]


class ClassifyLoad:
    """`clients` keep-alive connections on one event loop (in a thread), each sending the same multipart PNG as
    soon as its last request is answered: light on the shared CPU, and every request's fate is recorded."""

    def __init__(self, url: str, image: bytes, clients: int, timeout: float, pause: float) -> None:
        self.host, port = url.split("//", 1)[1].split(":")
        self.port = int(port)
        self.payload = multipart_request(url, image)
        self.clients, self.timeout, self.pause = clients, timeout, pause
        self.attempts: list[Attempt] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._all()), name="classify-load", daemon=True)

    def start(self) -> ClassifyLoad:
        self.thread.start()
        return self

    def stop(self) -> list[Attempt]:
        """Let every client finish its request in flight (up to the timeout), then return what they recorded."""
        self.stopping.set()
        self.thread.join(self.timeout + 30)
        return list(self.attempts)

    async def _all(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.clients)))

    async def _client(self) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        idle_since = 0.0
        while not self.stopping.is_set():
            if writer is not None and time.monotonic() - idle_since > IDLE_RECONNECT_S:
                writer.close()
                reader = writer = None
            started = time.monotonic()
            sent = False
            try:
                async with asyncio.timeout(self.timeout):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(self.host, self.port)
                    writer.write(self.payload)
                    await writer.drain()
                    sent = True
                    status, close = await read_response(reader)
            except (OSError, TimeoutError, EOFError, ValueError, IndexError) as exc:
                self.attempts.append(Attempt(started, time.monotonic() - started, None, _why(exc), sent))
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(RECONNECT_PAUSE_S)
                continue
            self.attempts.append(Attempt(started, time.monotonic() - started, status))
            if close:
                writer.close()
                reader = writer = None
            idle_since = time.monotonic()
            if self.pause:
                await asyncio.sleep(self.pause)


def _overlaps(attempt: Attempt, windows: list[list[float | None]]) -> bool:
    end = attempt.started + attempt.elapsed
    return any(start <= end and (stop is None or attempt.started <= stop) for start, stop in windows)


def classification_summary(attempts: list[Attempt], down: list[list[float | None]]) -> dict:
    """Every request in exactly one class: ok (200), refused (503/429 in under a second), client_error (another
    4xx: our requests are valid), server_down (no answer or a 5xx while the server was down), lost (the rest)."""
    counts: Counter[str] = Counter()
    lost_why: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    latencies = []
    for a in attempts:
        if a.status == 200:
            counts["ok"] += 1
            latencies.append(a.elapsed)
        elif a.status in (503, 429) and a.elapsed < IMMEDIATE_S:
            counts["refused"] += 1
        elif a.status is not None and 400 <= a.status < 500:
            counts["client_error"] += 1
            unexpected[str(a.status)] += 1
        elif _overlaps(a, down):
            counts["server_down"] += 1
        else:
            counts["lost"] += 1
            lost_why[f"HTTP {a.status} after {a.elapsed:.0f} s" if a.status else
                     f"{a.failure}{'' if a.sent else ' (before the request was sent)'}"] += 1
    ms = np.array(latencies) * 1000
    return {"sent": len(attempts), "ok": counts["ok"], "refused": counts["refused"],
            "client_error": counts["client_error"], "server_down": counts["server_down"], "lost": counts["lost"],
            "lost_why": dict(lost_why.most_common(10)), "client_error_statuses": dict(unexpected),
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "slowest_ok_s": float(ms.max() / 1000) if len(ms) else None}
