"""Reading a request's parameters, one function per kind: the content type, a multipart form, a form or query
value, an integer, a JSON body as a pydantic model, the job a query names. Each raises ApiError (a 4xx with an
ErrorBody) for what it cannot read."""
from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from serving.routes.errors import ApiError, validation_detail
from serving.schemas import JobView

FIELD_LIMIT = 1024 * 1024
Model = TypeVar("Model", bound=BaseModel)


def content_type(request: Request) -> str:
    """The media type alone, lower case, without its parameters (boundary, charset)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request: Request, max_files: int) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=64, max_part_size=FIELD_LIMIT)
    except MultiPartException as exc:
        raise ApiError(400, f"malformed multipart body: {exc.message}") from None


def field_value(raw: str):
    """Form fields and query values arrive as text: numbers and JSON literals are parsed, anything else stays a
    string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def integer(raw: str | UploadFile | None, message: str, minimum: int | None = None) -> int:
    """A form field or query value that must be a whole number (at least `minimum`); `message` if it is not."""
    value = field_value(raw) if isinstance(raw, str) else None
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        raise ApiError(400, message)
    return value


def form_fields(form: FormData, skip: str) -> dict:
    """The form's value fields (every one but the file field `skip`), parsed; an `options` field holds more of
    them as one JSON object."""
    fields: dict = {}
    for key, value in form.multi_items():
        if key == skip:
            continue
        if not isinstance(value, str):
            raise ApiError(400, f"field {key!r} must be a value, not a file")
        if key == "options":
            parsed = field_value(value)
            if not isinstance(parsed, dict):
                raise ApiError(400, "'options' must be a JSON object")
            fields.update(parsed)
        else:
            fields[key] = field_value(value)
    return fields


def validated(model: type[Model], fields: dict, message: str) -> Model:
    """`fields` as `model`, or a 400 with `message` and pydantic's account of what is wrong."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise ApiError(400, message, validation_detail(exc)) from None


def parse_json(body: bytes, model: type[Model], expected: str) -> Model:
    """`body` as `model`; a 400 that shows what was `expected` otherwise."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(400, f"invalid JSON body: expected {expected}", validation_detail(exc)) from None


async def json_body(request: Request, model: type[Model], expected: str) -> Model:
    """The body as `model`: for small bodies of a known shape (their size is bounded by the request limit)."""
    return parse_json(await request.body(), model, expected)


def job_from_query(request: Request) -> JobView:
    """The job named by `job_id` (or BentoML's `task_id`) in the query: 400 without one, 404 if unknown."""
    job_id = request.query_params.get("job_id") or request.query_params.get("task_id")
    if not job_id:
        raise ApiError(400, "job_id query parameter is required")
    job = request.app.state.store.get(job_id)
    if job is None:
        raise ApiError(404, f"unknown job id {job_id!r}")
    return job
