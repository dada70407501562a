"""The HTTP routes: /classify, /models, /models/select, /compress/{submit,status,metrics,get,cancel,jobs}, the web
page (/ and /ui/*) and the API's documentation (/docs.json and its Swagger page at /docs).

They are a Starlette app mounted into the BentoML service rather than `@bentoml.api` methods because BentoML's
own file parameters were unsafe or fragile here: a JSON string in a `Path` field reaches the API as a server
file path, an optional or list-typed upload fails validation, and a text value in a file field makes the
server fetch it as a URL. Parsing the body ourselves gives every bad input a 4xx with a JSON body. Batching is
done in this process by serving/inference.py's micro-batcher.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Awaitable, Callable

import anyio
import numpy as np
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving import openapi
from serving.guards import token_matches
from serving.inference import BadModelInput, ModelUnavailable
from serving.images import (LARGE_IMAGE_PIXELS, ImageRejected, all_small, decode_image, release_memory,
                            to_model_input)
from serving.jobs import DOWNLOADABLE, FINISHED, JobStore
from serving.models import ModelCatalog, ModelSpec, UnknownModel
from serving.schemas import (ClassifyJSON, ClassifyResponse, ErrorBody, JobList, JobOptions, MetricsPage, ModelListing,
                             Prediction, SelectModel, Submitted)
from serving.settings import ServingSettings

log = logging.getLogger("serving")
Predict = Callable[[np.ndarray], Awaitable[np.ndarray]]
FIELD_LIMIT = 1024 * 1024
STATIC = Path(__file__).parent / "static"
# Swagger UI from BentoML's own copy (/static_content), so nothing is fetched from the internet.
SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dfcompress API</title>
<link rel="icon" href="/static_content/favicon-light-32x32.png">
<link rel="stylesheet" href="/static_content/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static_content/swagger-ui-bundle.js"></script>
<script src="/ui/swagger.js"></script></body></html>
"""


class ClientError(Exception):
    """A mistake in the request: becomes a 4xx with an ErrorBody wherever it is raised."""

    def __init__(self, status: int, message: str, detail: list | dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


def error(status: int, message: str, detail: list | dict | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(error=message, detail=detail).model_dump(exclude_none=True), status_code=status)


def validation_detail(exc: ValidationError) -> list[dict]:
    return exc.errors(include_url=False, include_context=False, include_input=False)


async def read_form(request: Request, max_files: int):
    try:
        return await request.form(max_files=max_files, max_fields=64, max_part_size=FIELD_LIMIT)
    except MultiPartException as exc:
        raise ClientError(400, f"malformed multipart body: {exc.message}") from None


def _field_value(raw: str):
    """Form fields arrive as text: numbers and JSON literals are parsed, anything else stays a string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# ---------------------------------------------------------------- classification


async def _image_payloads(request: Request, s: ServingSettings) -> tuple[list[bytes], int]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await read_form(request, max_files=s.max_images)
        uploads, top_k = [], 5
        for key, value in form.multi_items():
            if key in ("image", "images"):
                if not isinstance(value, UploadFile):
                    raise ClientError(400, f"field {key!r} must be a file upload (curl -F {key}=@file.png)")
                uploads.append(await value.read())
            elif key == "top_k":
                top_k = _field_value(value) if isinstance(value, str) else None
                if not isinstance(top_k, int) or isinstance(top_k, bool):
                    raise ClientError(400, "top_k must be an integer")
            else:
                raise ClientError(400, f"unknown field {key!r}: send 'image' (one or more files) and optionally 'top_k'")
        if not uploads:
            raise ClientError(400, "no image: send a file in the 'image' field")
        return uploads, top_k
    if ctype == "application/json":
        try:
            payload = ClassifyJSON.model_validate_json(await request.body())
        except ValidationError as exc:
            raise ClientError(400, "invalid JSON body: expected {\"images\": [base64, …], \"top_k\": k}",
                              validation_detail(exc)) from None
        images = []
        for i, text in enumerate(payload.images):
            try:
                images.append(base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True))
            except (binascii.Error, ValueError):
                raise ClientError(400, f"images[{i}] is not valid base64") from None
        return images, payload.top_k
    body = await request.body()
    if body and (ctype.startswith("image/") or ctype == "application/octet-stream"):
        top_k = _field_value(request.query_params.get("top_k", "5"))
        if not isinstance(top_k, int) or isinstance(top_k, bool):
            raise ClientError(400, "top_k must be an integer")
        return [body], top_k
    raise ClientError(415, "send multipart/form-data with an 'image' file, JSON {\"images\": [base64, …]}, "
                             "or the image bytes with an image/* content type")


def _prepare(blobs: list[bytes], spec: ModelSpec, max_pixels: int) -> np.ndarray:
    arrays, pixels = [], 0
    try:
        for i, blob in enumerate(blobs):
            try:
                image = decode_image(blob, max_pixels, spec.input_size)
            except ImageRejected as exc:
                raise ImageRejected(f"image {i}: {exc}" if len(blobs) > 1 else str(exc), exc.status) from None
            pixels = max(pixels, image.size[0] * image.size[1])
            arrays.append(to_model_input(image, spec.input_size, spec.channels, spec.mean, spec.std))
            del image
    finally:
        if pixels > LARGE_IMAGE_PIXELS:
            release_memory()
    return np.stack(arrays)


def make_app(settings: ServingSettings, predict: Predict, bentoml_spec: Callable[[], dict] = dict) -> Starlette:
    """`bentoml_spec` gives BentoML's own OpenAPI document, which /docs.json extends with these routes."""
    catalog = ModelCatalog(settings)
    store = JobStore(settings.jobs_dir)

    in_flight = [0]  # classifications being handled; one event loop, so no lock is needed
    # Decoding holds a full-size image in memory: bound how many run at once (the rest wait their turn).
    decoders = anyio.CapacityLimiter(settings.max_concurrent_decodes)

    def unavailable(message: str) -> JSONResponse:
        response = error(503, message)
        response.headers["Retry-After"] = "1"
        return response

    async def classify(request: Request) -> Response:
        if in_flight[0] >= settings.max_in_flight:  # shed at once rather than queue past any deadline
            return unavailable("the server is at its limit of concurrent classifications; retry shortly")
        in_flight[0] += 1
        try:
            return await _classify(request)
        finally:
            in_flight[0] -= 1

    async def _classify(request: Request) -> Response:
        blobs, top_k = await _image_payloads(request, settings)
        if len(blobs) > settings.max_images:
            return error(413, f"{len(blobs)} images in one request; the limit is {settings.max_images}")
        if not 0 < top_k <= settings.max_top_k:
            return error(400, f"top_k must be between 1 and {settings.max_top_k}")
        try:
            spec = catalog.served_spec()
        except UnknownModel as exc:
            return error(503, f"no model to serve: {exc}")
        try:
            if len(blobs) <= 4 and all_small(blobs):  # a thread hop would cost more than the decoding
                batch = _prepare(blobs, spec, settings.max_pixels)
            else:
                batch = await anyio.to_thread.run_sync(_prepare, blobs, spec, settings.max_pixels, limiter=decoders)
        except ImageRejected as exc:
            return error(exc.status, str(exc))
        probs = []
        try:
            async with asyncio.timeout(settings.runner_timeout_s):
                for start in range(0, len(batch), settings.max_batch_size):
                    probs.append(np.asarray(await predict(batch[start : start + settings.max_batch_size])))
        except (ModelUnavailable, BadModelInput, TimeoutError) as exc:  # BadModelInput: a model switch mid-request
            log.warning("classification not answered: %s", exc or type(exc).__name__)
            return unavailable("the model could not answer in time (overloaded, loading or switching models); "
                               "retry shortly")
        probs = np.concatenate(probs)
        k = min(top_k, probs.shape[1])
        names = spec.class_names or [str(i) for i in range(probs.shape[1])]
        predictions = []
        for row in probs:
            order = np.argsort(-row)[:k]
            predictions.append([Prediction(index=int(j), label=names[j] if j < len(names) else str(j),
                                           probability=float(row[j])) for j in order])
        return JSONResponse(ClassifyResponse(model=spec.id, predictions=predictions).model_dump())

    # ------------------------------------------------------------ models

    async def list_models(request: Request) -> Response:
        served_id, served_path = catalog.served()
        available = await anyio.to_thread.run_sync(catalog.available)
        served = next((m for m in available if m.served), None)
        if served is None and served_path.is_file():
            served = catalog.info(served_id, served_path, True)
        listing = ModelListing(served=served, available=available).model_dump()
        if not token_matches(request.headers.get("authorization", ""), settings.token):
            for info in [listing["served"], *listing["available"]]:  # server paths are for the operator only
                if info:
                    info.pop("path")
        return JSONResponse(listing)

    async def select_model(request: Request) -> Response:
        try:
            choice = SelectModel.model_validate_json(await request.body())
        except ValidationError as exc:
            return error(400, "invalid JSON body: expected {\"model_id\": \"default\" or a job id}", validation_detail(exc))
        try:
            info = await anyio.to_thread.run_sync(catalog.select, choice.model_id)
        except UnknownModel as exc:
            return error(404, str(exc))
        return JSONResponse(info.model_dump())

    # ------------------------------------------------------------ compression jobs

    def _job_or_404(request: Request):
        job_id = request.query_params.get("job_id") or request.query_params.get("task_id")
        if not job_id:
            raise ClientError(400, "job_id query parameter is required")
        job = store.get(job_id)
        if job is None:
            raise ClientError(404, f"unknown job id {job_id!r}")
        return job

    def _validate_teacher(path, options: JobOptions) -> None:
        """Load the upload exactly as the job will (weights_only) and size its student, so a bad file is a 400 now."""
        from compressor.distill import default_input, per_channel
        from compressor.errors import CompressorError
        from compressor.model_stats import profile_model
        from compressor.students import plan_student
        from compressor.teachers import check_archive_size, load_teacher

        try:
            check_archive_size(path, settings.max_teacher_bytes)
            teacher = load_teacher(path, options.arch)
            size, mean, std = default_input(teacher.arch, options.dataset)
            per_channel(options.mean or mean, teacher.in_channels, "mean")
            per_channel(options.std or std, teacher.in_channels, "std")
            size = options.input_size or size
            profile = profile_model(teacher.model, (teacher.in_channels, size, size))
            plan_student(options.student, options.ratio, profile, teacher.num_classes, teacher.in_channels,
                         options.macs_ratio)
        except CompressorError as exc:
            raise ClientError(400, str(exc).replace(str(path), "the uploaded teacher")) from None
        except Exception as exc:  # anything torch cannot make sense of is still the upload's fault
            raise ClientError(400, f"cannot load the teacher checkpoint: {type(exc).__name__}: {exc}") from None

    async def submit(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            return error(415, "send multipart/form-data: a 'teacher' file and 'ratio' (plus options)")
        form = await read_form(request, max_files=1)
        teacher = form.get("teacher")
        if not isinstance(teacher, UploadFile):
            return error(400, "the 'teacher' field must be a checkpoint file upload (curl -F teacher=@model.pth)")
        fields: dict = {}
        for key, value in form.multi_items():
            if key == "teacher":
                continue
            if not isinstance(value, str):
                return error(400, f"field {key!r} must be a value, not a file")
            if key == "options":
                parsed = _field_value(value)
                if not isinstance(parsed, dict):
                    return error(400, "'options' must be a JSON object")
                fields.update(parsed)
            else:
                fields[key] = _field_value(value)
        try:
            options = JobOptions.model_validate(fields)
        except ValidationError as exc:
            return error(400, "invalid job options", validation_detail(exc))
        if options.steps and options.steps > settings.max_job_steps:
            return error(400, f"steps={options.steps} exceeds this server's limit of {settings.max_job_steps}")
        job_id, folder = store.new_job_dir()
        try:
            def save() -> None:
                with store.teacher_path(job_id).open("wb") as out:
                    shutil.copyfileobj(teacher.file, out, 1024 * 1024)

            await anyio.to_thread.run_sync(save)
            await anyio.to_thread.run_sync(_validate_teacher, store.teacher_path(job_id), options)
            job = store.create(job_id, options, teacher.filename)
        except BaseException:
            store.discard_job_dir(job_id)
            raise
        return JSONResponse(Submitted(job_id=job.job_id, status=job.status).model_dump(), status_code=202)

    async def status(request: Request) -> Response:
        return JSONResponse(_job_or_404(request).model_dump())

    async def get_result(request: Request) -> Response:
        job = _job_or_404(request)
        name = request.query_params.get("artifact", "student.onnx")
        if name not in DOWNLOADABLE:
            return error(400, f"unknown artifact {name!r}; choose from {', '.join(DOWNLOADABLE)}")
        if job.status != "succeeded":
            reason = f": {job.error}" if job.error else ""
            return error(409, f"job {job.job_id} is {job.status}{reason}; results exist only for succeeded jobs")
        path = store.artifact_path(job.job_id, name)
        if not path.is_file():
            return error(404, f"job {job.job_id} has no {name}")
        media = {"json": "application/json", "md": "text/markdown", "png": "image/png"}.get(path.suffix[1:], "application/octet-stream")
        return FileResponse(path, media_type=media, filename=name)

    async def cancel(request: Request) -> Response:
        job = _job_or_404(request)
        if job.status in FINISHED:
            return error(409, f"job {job.job_id} already {job.status}")
        return JSONResponse(store.request_cancel(job.job_id).model_dump())

    async def list_jobs(request: Request) -> Response:
        return JSONResponse(JobList(jobs=store.list(limit=100)).model_dump())

    async def metrics(request: Request) -> Response:
        job = _job_or_404(request)
        start = _field_value(request.query_params.get("start", "0"))
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            return error(400, "start must be a non-negative integer (the previous answer's 'next')")
        records, next_line = await anyio.to_thread.run_sync(store.metrics, job.job_id, start)
        return JSONResponse(MetricsPage(job_id=job.job_id, records=records, next=next_line).model_dump())

    # ------------------------------------------------------------ the web page and the API's documentation

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def docs_page(request: Request) -> Response:
        return Response(SWAGGER_PAGE, media_type="text/html")

    async def docs_json(request: Request) -> Response:
        return JSONResponse(openapi.merged(bentoml_spec()))

    async def client_error(request: Request, exc: ClientError) -> Response:
        return error(exc.status, exc.message, exc.detail)

    async def http_error(request: Request, exc: HTTPException) -> Response:  # Starlette's own: 404, 405
        return error(exc.status_code, str(exc.detail))

    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        return error(400, "the request body ended early")

    async def storage_failed(request: Request, exc: Exception) -> Response:
        log.error("job storage failed on %s: %s", request.url.path, exc)
        response = error(503, f"job storage is unavailable on this server ({type(exc).__name__}); retry later")
        response.headers["Retry-After"] = "10"
        return response

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error(500, "internal error; the server log has the details")

    routes = [
        Route("/classify", classify, methods=["POST"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/models/select", select_model, methods=["POST"]),
        Route("/compress/submit", submit, methods=["POST"]),
        Route("/compress/status", status, methods=["GET"]),
        Route("/compress/get", get_result, methods=["GET"]),
        Route("/compress/cancel", cancel, methods=["POST", "PUT"]),
        Route("/compress/jobs", list_jobs, methods=["GET"]),
        Route("/compress/metrics", metrics, methods=["GET"]),
        Route("/", page, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Route("/docs.json", docs_json, methods=["GET"]),
        Mount("/ui", StaticFiles(directory=STATIC), name="ui"),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={ClientError: client_error, HTTPException: http_error, ClientDisconnect: disconnected,
                            sqlite3.Error: storage_failed, OSError: storage_failed, Exception: crashed},
    )
