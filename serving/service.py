"""The BentoML deployable: `bentoml serve serving.service:Compressor`.

Two services, each in its own process:
- `ModelRunner` holds the ONNX Runtime session and exposes one batchable `predict`, so BentoML's adaptive
  batching merges concurrent classification requests into one ONNX call.
- `Compressor` is the HTTP front (routes in `serving/routes.py`, auth and size limits in `serving/guards.py`,
  the web page in `serving/static/`).
  It starts the job worker (`serving/worker.py`) as a separate process, so training never slows classification
  down more than the CPU it shares.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import warnings

import bentoml
import numpy as np

from serving.guards import Gatekeeper
from serving.models import ModelCatalog
from serving.routes import RunnerUnavailable, make_app
from serving.settings import settings
from serving.supervisor import WorkerSupervisor

log = logging.getLogger("serving")
SETTINGS = settings()


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# BentoML's client to a depended-on service closes its connection pool after `max_requests` calls (default
# 100) even while other calls are still using it: under load those calls died with "Connector is closed",
# "Server disconnected" or a bare CancelledError, and some requests were never answered. The pool is
# long-lived instead; a dropped keep-alive socket is retried in `_predict`.
RUNNER_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 7 * 24 * 3600.0}


@bentoml.service(workers=1, threads=2, runner_connection=RUNNER_CONNECTION)
class ModelRunner:
    """The served ONNX model; it follows the served-model pointer, so a selection needs no restart."""

    def __init__(self) -> None:
        self.catalog = ModelCatalog(SETTINGS)
        self.lock = threading.Lock()
        self.loaded: tuple[str, str, int] | None = None  # (model id, path, mtime) of the open session
        self.session = None
        self.provider = None
        self.first_load_done = threading.Event()
        threading.Thread(target=self._first_load, daemon=True).start()  # probes answer while the model loads

    def _first_load(self) -> None:
        try:
            self._refresh()
        except Exception:
            log.exception("could not load the served model; /classify answers 503 until one is selected")
        finally:
            self.first_load_done.set()

    def __is_ready__(self) -> bool:
        """Ready once the configured model is loaded, or known to be missing (jobs still work then)."""
        return self.first_load_done.is_set()

    def _refresh(self):
        model_id, path = self.catalog.served()
        try:
            key = (model_id, str(path), path.stat().st_mtime_ns)
        except OSError:
            return None
        with self.lock:
            if key != self.loaded:
                from export.providers import make_session

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    session, provider = make_session(path, SETTINGS.provider, threads=2)
                self.session, self.provider, self.loaded = session, provider, key
                log.info("serving model %s from %s on %s", model_id, path, provider)
            return self.session

    @bentoml.api(batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def predict(self, images: np.ndarray) -> np.ndarray:
        session = self._refresh() or self.session
        if session is None:
            raise bentoml.exceptions.ServiceUnavailable("no model loaded")
        expected = session.get_inputs()[0].shape[1:]
        if list(images.shape[1:]) != [int(d) for d in expected]:
            raise bentoml.exceptions.BadInput(f"input shape {images.shape[1:]} does not fit the served model {expected}")
        logits = session.run(None, {session.get_inputs()[0].name: images.astype(np.float32, copy=False)})[0]
        return _softmax(logits).astype(np.float32)


async def _predict(batch: np.ndarray, attempts: int = 3) -> np.ndarray:
    """Call the runner; retry a dropped connection (a reused keep-alive socket the runner just closed).

    `predict` has no side effects, so repeating it is safe; a clear refusal (bad input) is not retried. A
    CancelledError that is not this request's own cancellation (aiohttp cancels its wait for a pooled
    connection) is a failed call like any other, not a reason to leave the client without an answer.
    """
    for attempt in range(attempts):
        try:
            return await bentoml.get_current_service().runner.to_async.predict(batch)
        except bentoml.exceptions.BadInput:
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the client went away or the server is stopping
            exc: BaseException = RunnerUnavailable("the runner call was cancelled")
        except Exception as error:
            exc = error
        if attempt == attempts - 1:
            raise RunnerUnavailable(str(exc) or type(exc).__name__) from None
        log.info("runner call failed (%s); retrying", exc)
        await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


@bentoml.asgi_app(make_app(SETTINGS, _predict, lambda: Compressor.openapi_spec.asdict()), path="/")
@bentoml.service(workers=1, traffic={"timeout": 300})
class Compressor:
    """The HTTP front: /classify, /models, /compress/*; the job worker is its child process."""

    runner = bentoml.depends(ModelRunner)

    def __init__(self) -> None:
        SETTINGS.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.worker = WorkerSupervisor(
            [sys.executable, "-m", "serving.worker", "--jobs-dir", str(SETTINGS.jobs_dir), "--parent-pid", str(os.getpid())],
        ).start()

    def __is_ready__(self) -> bool:
        return self.worker.alive()

    @bentoml.on_shutdown
    def stop_worker(self) -> None:
        self.worker.stop()


Compressor.add_asgi_middleware(Gatekeeper)
