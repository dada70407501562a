"""The one place where errors become JSON: every failure a route meets is answered with an ErrorBody.

Handlers raise `ApiError` (or let a known exception through) and never build an error response themselves;
`EXCEPTION_HANDLERS` is registered once, on the app, by `make_app`.
"""
from __future__ import annotations

import logging
import sqlite3

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from serving.images import ImageRejected
from serving.schemas import ErrorBody

log = logging.getLogger("serving")


class ApiError(Exception):
    """A request answered with an ErrorBody: a mistake in it (4xx), or a server that cannot answer it now (503;
    `retry_after` seconds become the Retry-After header)."""

    def __init__(self, status: int, message: str, detail: list | dict | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail, self.retry_after = status, message, detail, retry_after


def error_response(status: int, message: str, detail: list | dict | None = None,
                   retry_after: int | None = None) -> JSONResponse:
    response = JSONResponse(ErrorBody(error=message, detail=detail).model_dump(exclude_none=True), status_code=status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def validation_detail(exc: ValidationError) -> list[dict]:
    return exc.errors(include_url=False, include_context=False, include_input=False)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.detail, exc.retry_after)


async def _image_rejected(request: Request, exc: ImageRejected) -> Response:
    return error_response(exc.status, str(exc))


async def _http_error(request: Request, exc: HTTPException) -> Response:  # Starlette's own: 404, 405
    return error_response(exc.status_code, str(exc.detail))


async def _disconnected(request: Request, exc: ClientDisconnect) -> Response:
    return error_response(400, "the request body ended early")


async def _storage_failed(request: Request, exc: Exception) -> Response:
    log.error("job storage failed on %s: %s", request.url.path, exc)
    return error_response(503, f"job storage is unavailable on this server ({type(exc).__name__}); retry later",
                          retry_after=10)


async def _crashed(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(500, "internal error; the server log has the details")


EXCEPTION_HANDLERS = {ApiError: _api_error, ImageRejected: _image_rejected, HTTPException: _http_error,
                      ClientDisconnect: _disconnected, sqlite3.Error: _storage_failed, OSError: _storage_failed,
                      Exception: _crashed}
