"""GET /models (the served model and every student that could be) and POST /models/select (serve another one,
without a restart)."""
from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving.guards import token_matches
from serving.models import DEFAULT_ID, UnknownModel
from serving.routes.errors import ApiError
from serving.routes.params import json_body
from serving.schemas import ModelListing, SelectModel


async def list_models(request: Request) -> Response:
    state = request.app.state
    catalog = state.catalog
    served_id, served_path = catalog.served()
    available = await anyio.to_thread.run_sync(catalog.available)
    served = next((m for m in available if m.served), None)
    if served is None and served_path.is_file():
        served = catalog.info(served_id, served_path, True)
    listing = ModelListing(served=served, available=available).model_dump()
    if not token_matches(request.headers.get("authorization", ""), state.settings.token):
        listing = {"served": _public(listing["served"]),
                   "available": [_public(m) for m in listing["available"] if m["id"] == DEFAULT_ID or m["served"]]}
    return JSONResponse(listing)


def _public(info: dict | None) -> dict | None:
    """What anyone may see of a model: what it is and how good, not the server's paths, the job that made it (its
    id reaches its files) or its teacher's hash (which says whose model it is)."""
    if info is None:
        return None
    hidden = {k: v for k, v in info.items() if k not in ("path", "teacher_sha256")}
    return {**hidden, "id": info["id"] if info["id"] == DEFAULT_ID else None}


async def select_model(request: Request) -> Response:
    choice = await json_body(request, SelectModel, "{\"model_id\": \"default\" or a job id}")
    try:
        info = await anyio.to_thread.run_sync(request.app.state.catalog.select, choice.model_id)
    except UnknownModel as exc:
        raise ApiError(404, str(exc)) from None
    return JSONResponse(info.model_dump())
