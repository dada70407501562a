"""GET /models (the served model and every student that could be) and POST /models/select (serve another one,
without a restart)."""
from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving.guards import token_matches
from serving.models import UnknownModel
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
        for info in [listing["served"], *listing["available"]]:  # server paths are for the operator only
            if info:
                info.pop("path")
    return JSONResponse(listing)


async def select_model(request: Request) -> Response:
    choice = await json_body(request, SelectModel, "{\"model_id\": \"default\" or a job id}")
    try:
        info = await anyio.to_thread.run_sync(request.app.state.catalog.select, choice.model_id)
    except UnknownModel as exc:
        raise ApiError(404, str(exc)) from None
    return JSONResponse(info.model_dump())
