"""The OpenAPI description of the routes BentoML cannot see.

`/classify`, `/models` and `/compress/*` are a Starlette app mounted into the BentoML service (serving/routes/
says why), so BentoML's generated document lists only its own probes. This module describes them from the same
pydantic models the handlers validate with (serving/schemas.py), with the bearer scheme on the protected paths,
and merges the result into BentoML's document: one `/docs.json` for the Swagger page and for generated clients.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving.jobs import DOWNLOADABLE
from serving.schemas import (
    ClassifyJSON,
    ClassifyResponse,
    ErrorBody,
    JobList,
    JobOptions,
    JobView,
    MetricsPage,
    ModelInfo,
    ModelListing,
    SelectModel,
    Submitted,
)

REF = "#/components/schemas/{model}"
MODELS: list[type[BaseModel]] = [ClassifyJSON, ClassifyResponse, ErrorBody, JobList, JobOptions, JobView, MetricsPage,
                                 ModelInfo, ModelListing, SelectModel, Submitted]
BEARER = [{"bearerAuth": []}]


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*statuses: int) -> dict:
    reasons = {400: "invalid input", 401: "missing or wrong bearer token", 404: "unknown job or model",
               409: "the job is not in a state that allows this", 413: "request body too large",
               415: "unsupported content type", 503: "unavailable for now (see Retry-After)"}
    return {str(s): _json(ErrorBody, reasons[s]) for s in statuses}


def _job_id(required: bool = True) -> dict:
    return {"name": "job_id", "in": "query", "required": required, "schema": {"type": "string"},
            "description": "the id /compress/submit answered with"}


def _operation(summary: str, responses: dict, *, protected: bool, tag: str, **extra: Any) -> dict:
    op = {"summary": summary, "tags": [tag], "responses": responses, **extra}
    if protected:
        op["security"] = BEARER
    return op


def paths() -> dict:
    """The mounted routes, each with its request and response schemas."""
    return {**_classification_paths(), **_model_paths(), **_job_paths()}


def _classification_paths() -> dict:
    image_form = {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "one or more image files"},
        "top_k": {"type": "integer", "default": 5}}}
    return {
        "/classify": {"post": _operation(
            "Top-k classes of the served model for one or more images", tag="classification", protected=False,
            requestBody={"required": True, "content": {
                "multipart/form-data": {"schema": image_form},
                "application/json": {"schema": _ref(ClassifyJSON)},
                "image/*": {"schema": {"type": "string", "format": "binary"}}}},
            parameters=[{"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "default": 5},
                         "description": "only for a raw image body"}],
            responses={"200": _json(ClassifyResponse, "one top-k list per image, in request order"),
                       **_errors(400, 413, 415, 503)})},
    }


def _model_paths() -> dict:
    return {
        "/models": {"get": _operation(
            "The served model and every student that can be served (server paths only with the token)",
            tag="models", protected=False, responses={"200": _json(ModelListing, "the catalogue")})},
        "/models/select": {"post": _operation(
            "Serve another model: 'default' or a succeeded job's student; no restart", tag="models", protected=True,
            requestBody={"required": True, "content": {"application/json": {"schema": _ref(SelectModel)}}},
            responses={"200": _json(ModelInfo, "the model now served"), **_errors(400, 401, 404)})},
    }


def _job_paths() -> dict:
    option_fields = JobOptions.model_json_schema(ref_template=REF)["properties"]  # the compressor's names as enums
    submit_form = {"type": "object", "required": ["teacher", "ratio"], "properties": {
        "teacher": {"type": "string", "format": "binary",
                    "description": "a state dict (.pth, loaded with weights_only), .safetensors or a "
                                   "torch.export .pt2; never TorchScript"},
        **option_fields,
        "options": {"type": "string", "description": "the same options as one JSON object, instead of fields"}}}
    return {
        "/compress/submit": {"post": _operation(
            "Queue a compression job for an uploaded teacher", tag="compression", protected=True,
            requestBody={"required": True, "content": {"multipart/form-data": {"schema": submit_form}}},
            responses={"202": _json(Submitted, "queued"), **_errors(400, 401, 413, 415, 503)})},
        "/compress/status": {"get": _operation(
            "One job: state, progress, error, downloadable artifacts", tag="compression", protected=True,
            parameters=[_job_id()], responses={"200": _json(JobView, "the job"), **_errors(400, 401, 404)})},
        "/compress/metrics": {"get": _operation(
            "A job's per-round metrics (losses; evaluations with accuracy and selection score), for live curves",
            tag="compression", protected=True,
            parameters=[_job_id(), {"name": "start", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 0, "default": 0},
                                    "description": "first line to return: the previous answer's `next`"}],
            responses={"200": _json(MetricsPage, "the records"), **_errors(400, 401, 404)})},
        "/compress/get": {"get": _operation(
            "Download an artifact of a succeeded job", tag="compression", protected=True,
            parameters=[_job_id(), {"name": "artifact", "in": "query", "required": False,
                                    "schema": {"type": "string", "enum": list(DOWNLOADABLE), "default": "student.onnx"}}],
            responses={"200": {"description": "the file", "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}}}},
                **_errors(400, 401, 404, 409)})},
        "/compress/cancel": {"post": _operation(
            "Cancel a queued or running job (its process is stopped; the state becomes cancelled)",
            tag="compression", protected=True, parameters=[_job_id()],
            responses={"200": _json(JobView, "the job, with cancel requested"), **_errors(400, 401, 404, 409)})},
        "/compress/jobs": {"get": _operation(
            "The latest 100 jobs, newest first", tag="compression", protected=True,
            responses={"200": _json(JobList, "the jobs"), **_errors(401)})},
    }


def schemas() -> dict:
    _, top = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    return top.get("$defs", {})


def merged(bentoml_spec: dict) -> dict:
    """BentoML's document (its probes and metrics) with the mounted routes, their schemas and the bearer scheme."""
    spec = dict(bentoml_spec)
    # BentoML's own description links badge images on the internet; the page must fetch nothing from outside.
    spec["info"] = {**(spec.get("info") or {}), "title": "dfcompress", "description": (
        "Classify images with a distilled student and run data-free compression jobs. The 🔒 operations need "
        "`Authorization: Bearer <COMPRESSOR_TOKEN>`; every client error is a 4xx with a JSON `ErrorBody`.")}
    spec["paths"] = {**spec.get("paths", {}), **paths()}
    components = dict(spec.get("components") or {})
    components["schemas"] = {**(components.get("schemas") or {}), **schemas()}
    components["securitySchemes"] = {**(components.get("securitySchemes") or {}), "bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "the operator's COMPRESSOR_TOKEN; required on /compress/* and /models/select"}}
    spec["components"] = components
    spec["tags"] = [*(spec.get("tags") or []),
                    {"name": "classification", "description": "the served student"},
                    {"name": "models", "description": "which student is served"},
                    {"name": "compression", "description": "data-free compression jobs"}]
    return spec
