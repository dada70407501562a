"""The served ONNX model, in the HTTP front's own process, behind a micro-batcher.

Classification used to call a separate BentoML model service over HTTP, whose adaptive batching merged
concurrent requests. Profiled under load (benchmarks/RESULTS.md), that hop cost more CPU than the model: a
second HTTP stack (request parsing, OpenTelemetry, access log, metrics, JSON schema work per response) in a
second process, for a student ONNX Runtime runs in microseconds. Here requests queue in memory instead, and one
batcher task runs whatever has queued as one ONNX Runtime call, in a thread (ONNX Runtime releases the GIL, so
the event loop keeps accepting and decoding meanwhile):

- no added latency when idle (a lone request runs at once), large batches under load (everything that arrived
  during the previous call), never more than `max_batch_size` rows per call;
- a request that waited longer than `max_latency_ms` is shed with 503, at once, rather than served late;
- the served-model pointer is followed on every batch, so selecting a job's student needs no restart.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field

import anyio
import numpy as np
from prometheus_client import Histogram

from serving.models import ModelCatalog
from serving.settings import ServingSettings

log = logging.getLogger("serving")
INLINE_SECONDS = 0.002  # a full batch expected under this runs on the event loop itself
# On /metrics with BentoML's own: how many rows each ONNX Runtime call ran (the batching actually achieved).
BATCH_SIZE = Histogram("dfcompress_classify_batch_size", "images per ONNX Runtime call of /classify",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))


class ModelUnavailable(Exception):
    """No model to run, or too busy to run it in time: the client gets 503 with Retry-After."""


class BadModelInput(Exception):
    """The input does not fit the served model (a model switch between decoding and running): 400."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class _Request:
    rows: np.ndarray
    future: asyncio.Future
    queued: float = field(default_factory=time.monotonic)


class BatchedModel:
    def __init__(self, settings: ServingSettings, threads: int = 2) -> None:
        self.settings = settings
        self.catalog = ModelCatalog(settings)
        self.threads = threads
        self.lock = threading.Lock()
        self.loaded: tuple[str, str, int] | None = None  # (model id, path, mtime) of the open session
        self.session = None
        self.provider: str | None = None
        self.first_load_done = threading.Event()
        self.pending: deque[_Request] = deque()
        self.wakeup: asyncio.Event | None = None
        self.batcher: asyncio.Task | None = None
        self.last_call_s = float("inf")  # what a full batch took last time (estimated); unknown: use a thread

    # ------------------------------------------------------------ the session

    def start_loading(self) -> None:
        """Open the served model in the background: the probes answer while it loads."""
        threading.Thread(target=self._first_load, daemon=True).start()

    def _first_load(self) -> None:
        try:
            self._refresh()
        except Exception:
            log.exception("could not load the served model; /classify answers 503 until one is selected")
        finally:
            self.first_load_done.set()

    def ready(self) -> bool:
        """Loaded, or known to be missing (jobs still work then)."""
        return self.first_load_done.is_set()

    def _refresh(self):
        model_id, path = self.catalog.served()
        try:
            key = (model_id, str(path), path.stat().st_mtime_ns)
        except OSError:
            return self.session
        with self.lock:
            if key != self.loaded:
                from export.providers import make_session

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    session, provider = make_session(path, self.settings.provider, threads=self.threads,
                                                     spinning=self.settings.ort_spinning)
                self.session, self.provider, self.loaded = session, provider, key
                log.info("serving model %s from %s on %s", model_id, path, provider)
            return self.session

    def _run(self, rows: np.ndarray) -> np.ndarray:
        session = self._refresh()
        if session is None:
            raise ModelUnavailable("no model loaded")
        expected = [int(d) for d in session.get_inputs()[0].shape[1:]]
        if list(rows.shape[1:]) != expected:
            raise BadModelInput(f"input shape {list(rows.shape[1:])} does not fit the served model {expected}")
        logits = session.run(None, {session.get_inputs()[0].name: rows.astype(np.float32, copy=False)})[0]
        return softmax(logits).astype(np.float32)

    # ------------------------------------------------------------ requests

    async def _run_timed(self, rows: np.ndarray) -> np.ndarray:
        """`_run` on the event loop when the last call took under INLINE_SECONDS (a small student: a thread hop
        and its GIL hand-over cost more than the call), else in a thread, so a large model never blocks the loop."""
        started = time.perf_counter()
        if self.last_call_s < INLINE_SECONDS:
            probs = self._run(rows)
        else:
            probs = await anyio.to_thread.run_sync(self._run, rows)
        self.last_call_s = (time.perf_counter() - started) / max(1, len(rows)) * self.settings.max_batch_size
        BATCH_SIZE.observe(len(probs))
        return probs

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities for `rows` (N x C x H x W, float32), batched with whatever else is waiting."""
        if not self.settings.batching:
            return await self._run_timed(rows)
        if self.batcher is None or self.batcher.done():  # first use (or a crashed batcher): on this event loop
            self.wakeup = asyncio.Event()
            self.batcher = asyncio.get_running_loop().create_task(self._batch_forever(), name="classify-batcher")
        request = _Request(rows, asyncio.get_running_loop().create_future())
        self.pending.append(request)
        self.wakeup.set()
        return await request.future

    def _next_batch(self) -> list[_Request]:
        """Everything waiting, oldest first, up to max_batch_size rows; requests queued past the deadline, or whose
        client went away, are answered now instead."""
        limit, deadline = self.settings.max_batch_size, time.monotonic() - self.settings.max_latency_ms / 1000
        batch: list[_Request] = []
        rows = 0
        while self.pending and (not batch or rows + len(self.pending[0].rows) <= limit):
            r = self.pending.popleft()
            if r.future.done():
                continue
            if r.queued < deadline:
                r.future.set_exception(ModelUnavailable("queued past the batching deadline"))
                continue
            batch.append(r)
            rows += len(r.rows)
        return batch

    async def _batch_forever(self) -> None:
        while True:
            if not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
            batch = self._next_batch()
            if not batch:
                continue
            try:
                probs = await self._run_timed(np.concatenate([r.rows for r in batch]))
            except Exception as exc:  # every request of the batch gets the answer the batch got
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            start = 0
            for r in batch:
                n = len(r.rows)
                if not r.future.done():
                    r.future.set_result(probs[start : start + n])
                start += n
