"""POST /classify: one or more images (multipart files, base64 in JSON, or the raw bytes) to the served model's
top-k classes.

A request takes one of the `max_in_flight` slots only once its whole body has arrived (serving/guards.py holds
the body to a deadline), so clients that send slowly cannot take the slots from those that do not. Everything
that parses what a client sent (JSON, base64, image headers and pixels) runs in a bounded thread pool, never on
the event loop: a file built to be slow to parse delays its own answer, not the server's. The model runs behind
serving/inference.py's micro-batcher."""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging

import anyio
import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from compressor.errors import first_line
from serving.guards import token_matches
from serving.images import LARGE_IMAGE_PIXELS, ImageRejected, decode_image, release_memory, to_model_input
from serving.inference import BadModelInput, ModelUnavailable
from serving.models import DEFAULT_ID, ModelSpec, UnknownModel
from serving.routes.errors import ApiError
from serving.routes.params import content_type, integer, parse_json, read_form
from serving.schemas import ClassifyJSON, ClassifyResponse, Prediction
from serving.settings import ServingSettings

log = logging.getLogger("serving")
TOP_K_NOT_INT = "top_k must be an integer"


async def classify(request: Request) -> Response:
    state = request.app.state
    await request.body()  # kept by the request for the parsers below
    if state.in_flight >= state.settings.max_in_flight:  # shed at once rather than queue past any deadline
        raise ApiError(503, "the server is at its limit of concurrent classifications; retry shortly", retry_after=1)
    state.in_flight += 1
    try:
        return await _classify(request)
    finally:
        state.in_flight -= 1


async def _classify(request: Request) -> Response:
    state = request.app.state
    s: ServingSettings = state.settings
    blobs, top_k = await _image_payloads(request, s)
    if len(blobs) > s.max_images:
        raise ApiError(413, f"{len(blobs)} images in one request; the limit is {s.max_images}")
    if not 0 < top_k <= s.max_top_k:
        raise ApiError(400, f"top_k must be between 1 and {s.max_top_k}")
    try:
        spec = state.catalog.served_spec()
    except UnknownModel as exc:
        raise ApiError(503, f"no model to serve: {exc}") from None
    batch = await anyio.to_thread.run_sync(_prepare, blobs, spec, s.max_pixels, limiter=state.decoders)
    probs = await _predict(state.predict, batch, s)
    answer = _top_k(probs, spec, top_k)
    if spec.id != DEFAULT_ID and not token_matches(request.headers.get("authorization", ""), s.token):
        answer.model = "student"  # a job's id is for token holders (see GET /models)
    return JSONResponse(answer.model_dump())


# ---------------------------------------------------------------- the request's images, in any of three forms


async def _image_payloads(request: Request, s: ServingSettings) -> tuple[list[bytes], int]:
    ctype = content_type(request)
    if ctype == "multipart/form-data":
        return await _multipart_images(request, s)
    if ctype == "application/json":
        return await anyio.to_thread.run_sync(_json_images, await request.body(), s.max_images,
                                              limiter=request.app.state.decoders)
    body = await request.body()
    if body and (ctype.startswith("image/") or ctype == "application/octet-stream"):
        return [body], integer(request.query_params.get("top_k", "5"), TOP_K_NOT_INT)
    raise ApiError(415, "send multipart/form-data with an 'image' file, JSON {\"images\": [base64, …]}, "
                        "or the image bytes with an image/* content type")


async def _multipart_images(request: Request, s: ServingSettings) -> tuple[list[bytes], int]:
    form = await read_form(request, max_files=s.max_images)
    uploads, top_k = [], 5
    for key, value in form.multi_items():
        if key in ("image", "images"):
            if not isinstance(value, UploadFile):
                raise ApiError(400, f"field {key!r} must be a file upload (curl -F {key}=@file.png)")
            uploads.append(await value.read())
        elif key == "top_k":
            top_k = integer(value, TOP_K_NOT_INT)
        else:
            raise ApiError(400, f"unknown field {key!r}: send 'image' (one or more files) and optionally 'top_k'")
    if not uploads:
        raise ApiError(400, "no image: send a file in the 'image' field")
    return uploads, top_k


def _json_images(body: bytes, max_images: int) -> tuple[list[bytes], int]:
    """The images of a JSON body, base64-decoded. Each image is one JSON string, so a body with more quotes
    than the image limit allows is refused from a count of them, before millions of strings are parsed."""
    if body.count(b'"') > 2 * max_images + 8:
        raise ApiError(413, f"too many strings in the JSON body for at most {max_images} images")
    payload = parse_json(body, ClassifyJSON, "{\"images\": [base64, …], \"top_k\": k}")
    if len(payload.images) > max_images:  # before decoding them all
        raise ApiError(413, f"{len(payload.images)} images in one request; the limit is {max_images}")
    images = []
    for i, text in enumerate(payload.images):
        try:
            images.append(base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(400, f"images[{i}] is not valid base64") from None
    return images, payload.top_k


# ---------------------------------------------------------------- decoding, the model, the answer


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


async def _predict(predict, batch: np.ndarray, s: ServingSettings) -> np.ndarray:
    """Class probabilities, in slices of at most max_batch_size rows; a 503 if the model cannot answer in time."""
    probs = []
    try:
        async with asyncio.timeout(s.runner_timeout_s):
            for start in range(0, len(batch), s.max_batch_size):
                probs.append(np.asarray(await predict(batch[start : start + s.max_batch_size])))
    except (ModelUnavailable, BadModelInput, TimeoutError) as exc:  # BadModelInput: a model switch mid-request
        log.warning("classification not answered: %s", first_line(exc))
        raise ApiError(503, "the model could not answer in time (overloaded, loading or switching models); "
                            "retry shortly", retry_after=1) from None
    return np.concatenate(probs)


def _top_k(probs: np.ndarray, spec: ModelSpec, top_k: int) -> ClassifyResponse:
    k = min(top_k, probs.shape[1])
    names = spec.class_names or [str(i) for i in range(probs.shape[1])]
    predictions = []
    for row in probs:
        order = np.argsort(-row)[:k]
        predictions.append([Prediction(index=int(j), label=names[j] if j < len(names) else str(j),
                                       probability=float(row[j])) for j in order])
    return ClassifyResponse(model=spec.id, predictions=predictions)
