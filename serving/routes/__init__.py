"""The HTTP routes, one module per resource: classification (/classify), models (/models, /models/select), jobs
(/compress/*), pages (/ and /ui/*) and docs (/docs, /docs.json); `params` reads a request's parameters and
`errors` turns every failure into a JSON ErrorBody.

They are a Starlette app mounted into the BentoML service rather than `@bentoml.api` methods because BentoML's
own file parameters were unsafe or fragile here: a JSON string in a `Path` field reaches the API as a server
file path, an optional or list-typed upload fails validation, and a text value in a file field makes the
server fetch it as a URL. Parsing the body ourselves gives every bad input a 4xx with a JSON body. Batching is
done in this process by serving/inference.py's micro-batcher.

Handlers are module-level functions of the request; what they share lives on `app.state`: `settings`,
`predict`, `catalog` (the served model and the others), `store` (the job table), `decoders` (the limit on
images decoded at once), `checks` (on uploads checked at once), `in_flight` (classifications being handled)
and `bentoml_spec`.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.routing import Route

from serving.jobs import JobStore
from serving.models import ModelCatalog
from serving.routes import classification, docs, jobs, models, pages
from serving.routes.errors import EXCEPTION_HANDLERS
from serving.settings import ServingSettings

Predict = Callable[[np.ndarray], Awaitable[np.ndarray]]


def make_app(settings: ServingSettings, predict: Predict, bentoml_spec: Callable[[], dict] = dict) -> Starlette:
    """`bentoml_spec` gives BentoML's own OpenAPI document, which /docs.json extends with these routes."""
    app = Starlette(routes=[
        Route("/classify", classification.classify, methods=["POST"]),
        Route("/models", models.list_models, methods=["GET"]),
        Route("/models/select", models.select_model, methods=["POST"]),
        Route("/compress/submit", jobs.submit, methods=["POST"]),
        Route("/compress/status", jobs.status, methods=["GET"]),
        Route("/compress/get", jobs.get_result, methods=["GET"]),
        Route("/compress/cancel", jobs.cancel, methods=["POST", "PUT"]),
        Route("/compress/jobs", jobs.list_jobs, methods=["GET"]),
        Route("/compress/metrics", jobs.metrics, methods=["GET"]),
        Route("/", pages.page, methods=["GET"]),
        Route("/docs", docs.docs_page, methods=["GET"]),
        Route("/docs.json", docs.docs_json, methods=["GET"]),
        pages.static_files(),
    ], exception_handlers=EXCEPTION_HANDLERS)
    state = app.state
    state.settings, state.predict, state.bentoml_spec = settings, predict, bentoml_spec
    state.catalog = ModelCatalog(settings)
    state.store = JobStore(settings.jobs_dir)
    # Decoding holds a full-size image in memory: bound how many run at once (the rest wait their turn).
    state.decoders = anyio.CapacityLimiter(settings.max_concurrent_decodes)
    # Checking an upload loads the teacher and plans its student: bound how many run at once, memory included.
    state.checks = anyio.CapacityLimiter(settings.max_checks)
    state.in_flight = 0  # one event loop, so no lock is needed
    return app
