"""Compression jobs: POST /compress/submit, GET /compress/status, /compress/metrics, /compress/get (artifacts),
/compress/jobs, and POST or PUT /compress/cancel. The jobs themselves live in the JobStore and run in the
worker process (serving/worker.py); these handlers only read and write the store."""
from __future__ import annotations

import shutil
from pathlib import Path

import anyio
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from compressor.errors import CompressorError, first_problem
from serving.jobs import DOWNLOADABLE, FINISHED, JobStore
from serving.routes.errors import ApiError
from serving.routes.params import content_type, form_fields, integer, job_from_query, read_form, validated
from serving.runs import OverLimit, check_run, run_args
from serving.schemas import JobList, JobOptions, MetricsPage, Submitted
from serving.settings import ServingSettings

MEDIA_TYPES = {"json": "application/json", "md": "text/markdown", "png": "image/png"}


async def submit(request: Request) -> Response:
    state = request.app.state
    settings, store = state.settings, state.store
    _check_queue(store, settings)
    teacher, options = await _submission(request)
    job_id, _ = store.new_job_dir()
    try:
        path = store.teacher_path(job_id)
        await anyio.to_thread.run_sync(_save_upload, teacher, path)
        args = run_args(store, job_id, options, settings.job_device)
        await anyio.to_thread.run_sync(_check_teacher, args, settings, path, limiter=state.checks)
        _check_queue(store, settings)  # others may have been accepted while this one was checked
        job = store.create(job_id, options, teacher.filename)
    except BaseException:
        store.discard_job_dir(job_id)
        raise
    return JSONResponse(Submitted(job_id=job.job_id, status=job.status).model_dump(), status_code=202)


async def _submission(request: Request) -> tuple[UploadFile, JobOptions]:
    """The uploaded teacher and the validated options of a submission form."""
    if content_type(request) != "multipart/form-data":
        raise ApiError(415, "send multipart/form-data: a 'teacher' file and 'ratio' (plus options)")
    form = await read_form(request, max_files=1)
    teacher = form.get("teacher")
    if not isinstance(teacher, UploadFile):
        raise ApiError(400, "the 'teacher' field must be a checkpoint file upload (curl -F teacher=@model.pth)")
    return teacher, validated(JobOptions, form_fields(form, skip="teacher"), "invalid job options")


def _save_upload(upload: UploadFile, path: Path) -> None:
    with path.open("wb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)


def _check_queue(store: JobStore, settings: ServingSettings) -> None:
    active = store.count_active()
    if active >= settings.max_queued_jobs:
        raise ApiError(429, f"this server already has {active} jobs queued or running, its limit; retry when one has "
                            "finished", retry_after=60)


def _check_teacher(args: list[str], settings: ServingSettings, path: Path) -> None:
    """The job's run set up as the worker will run it (serving/runs.py), so a bad upload is a 400 now."""
    try:
        check_run(args, settings)
    except OverLimit as exc:
        raise ApiError(exc.status, str(exc)) from None
    except CompressorError as exc:
        raise ApiError(400, str(exc).replace(str(path), "the uploaded teacher")) from None
    except ValidationError as exc:
        raise ApiError(400, f"invalid job options: {first_problem(exc)}") from None
    except ImportError:
        raise  # the server's own code is broken: a 500, not the upload's fault
    except Exception as exc:  # anything torch cannot make sense of is still the upload's fault
        raise ApiError(400, f"cannot load the teacher checkpoint: {type(exc).__name__}: {exc}") from None


async def status(request: Request) -> Response:
    return JSONResponse(job_from_query(request).model_dump())


async def get_result(request: Request) -> Response:
    job = job_from_query(request)
    name = request.query_params.get("artifact", "student.onnx")
    if name not in DOWNLOADABLE:
        raise ApiError(400, f"unknown artifact {name!r}; choose from {', '.join(DOWNLOADABLE)}")
    if job.status != "succeeded":
        reason = f": {job.error}" if job.error else ""
        raise ApiError(409, f"job {job.job_id} is {job.status}{reason}; results exist only for succeeded jobs")
    path = request.app.state.store.artifact_path(job.job_id, name)
    if not path.is_file():
        raise ApiError(404, f"job {job.job_id} has no {name}")
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix[1:], "application/octet-stream"), filename=name)


async def cancel(request: Request) -> Response:
    job = job_from_query(request)
    if job.status in FINISHED:
        raise ApiError(409, f"job {job.job_id} already {job.status}")
    return JSONResponse(request.app.state.store.request_cancel(job.job_id).model_dump())


async def list_jobs(request: Request) -> Response:
    return JSONResponse(JobList(jobs=request.app.state.store.list(limit=100)).model_dump())


async def metrics(request: Request) -> Response:
    job = job_from_query(request)
    start = integer(request.query_params.get("start", "0"),
                    "start must be a non-negative integer (the previous answer's 'next')", minimum=0)
    records, next_line = await anyio.to_thread.run_sync(request.app.state.store.metrics, job.job_id, start)
    return JSONResponse(MetricsPage(job_id=job.job_id, records=records, next=next_line).model_dump())
