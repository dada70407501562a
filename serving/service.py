"""The BentoML deployable: `bentoml serve serving.service:Compressor`.

One service, `Compressor`, the HTTP front (routes in `serving/routes/`, auth and size limits in
`serving/guards.py`, the web page in `serving/static/`). It runs the served ONNX model itself, behind a
micro-batcher (`serving/inference.py`) that merges concurrent classifications into one ONNX Runtime call, and it
starts the job worker (`serving/worker.py`) as a separate, supervised process, so training never slows
classification down more than the CPU it shares.
"""
from __future__ import annotations

import gc
import os
import sys

import bentoml

from serving.guards import Gatekeeper
from serving.inference import BatchedModel
from serving.routes import make_app
from serving.settings import settings
from serving.supervisor import WorkerSupervisor
from serving.timeouts import install as install_request_timeout

install_request_timeout()

SETTINGS = settings()
MODEL = BatchedModel(SETTINGS)  # opens nothing until the service starts (Compressor.__init__)


@bentoml.asgi_app(make_app(SETTINGS, MODEL.predict, lambda: Compressor.openapi_spec.asdict()), path="/")
@bentoml.service(workers=1, traffic={"timeout": 300})
class Compressor:
    """The HTTP front: /classify, /models, /compress/*, the page; the job worker is its child process."""

    def __init__(self) -> None:
        # Everything imported so far lives as long as the process: keep it out of the garbage collector's full
        # passes, which otherwise walk it all and stall every request in flight (the p99 under load).
        gc.collect()
        gc.freeze()
        MODEL.start_loading()
        SETTINGS.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.worker = WorkerSupervisor(
            [sys.executable, "-m", "serving.worker", "--jobs-dir", str(SETTINGS.jobs_dir), "--parent-pid", str(os.getpid())],
        ).start()

    def __is_ready__(self) -> bool:
        return self.worker.alive() and MODEL.ready()

    @bentoml.on_shutdown
    def stop_worker(self) -> None:
        self.worker.stop()


Compressor.add_asgi_middleware(Gatekeeper, model_ready=MODEL.ready)
