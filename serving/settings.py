"""Operator configuration, read from environment variables so the same bento runs anywhere.

Every variable has a default that works on a laptop; `README.md` lists them. The settings are read once per
process (the HTTP front and the job worker each read the same environment).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_PREFIX = "COMPRESSOR_"
MB = 1024 * 1024


class ServingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path = Field(Path("runs/demo/student.onnx"), description="ONNX model served when no job's student was selected")
    jobs_dir: Path = Field(Path("runs/jobs"), description="SQLite job table, one folder per job, the served-model pointer")
    token: str | None = Field(None, description="bearer token for compression and model selection; unset = disabled")
    max_request_mb: float = Field(20.0, gt=0, description="largest request body outside compression submissions")
    max_teacher_mb: float = Field(1024.0, gt=0, description="largest teacher upload")
    body_timeout_s: float = Field(5.0, gt=0, description="a request body must have arrived this long after its headers "
                                                         "(408 after it); a teacher upload may pause this long at most")
    max_buffered_mb: float = Field(256.0, gt=0, description="request bodies held in memory at once, all requests "
                                                            "together (teacher uploads, spooled to disk, apart); 503 beyond")
    max_pixels: int = Field(40_000_000, gt=0, description="images with more pixels are refused (decompression bombs)")
    max_concurrent_decodes: int = Field(2, gt=0, description="images decoded at once (memory: each may be max_pixels large)")
    max_images: int = Field(64, gt=0, description="images per classification request")
    max_top_k: int = Field(100, gt=0)
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    batching: bool = Field(True, description="merge concurrent classifications into one ONNX Runtime call")
    max_batch_size: int = Field(64, gt=0)
    max_latency_ms: int = Field(5000, gt=0, description="batching deadline: a request queued longer is shed with 503")
    max_in_flight: int = Field(256, gt=0, description="classification requests handled at once; more are answered 503 at once")
    runner_timeout_s: float = Field(8.0, gt=0, description="a classification the model has not answered by then gets 503")
    ort_spinning: bool = Field(False, description="ONNX Runtime's threads spin-wait between calls: a little lower "
                                                  "latency, for a core kept busy that the jobs beside it train on")
    job_device: Literal["auto", "cpu", "cuda"] = "auto"
    allowed_hosts: list[str] = Field(["localhost", "127.0.0.1", "::1"],
                                     description="Host names the server answers to (comma-separated; * for any): "
                                                 "add the name clients use when it is reached by another")
    max_checks: int = Field(2, gt=0, description="uploaded teachers checked at once (each is loaded to plan its student)")
    max_queued_jobs: int = Field(32, gt=0, description="jobs queued or running at once; a submission beyond is answered 429")
    max_job_disk_mb: float = Field(10_240.0, gt=0, description="largest disk a job may need (its teacher and replay "
                                                               "pool); a larger submission is answered 413")
    max_job_steps: int = Field(20_000, gt=0, description="upper bound on the rounds a job runs (its steps, or its preset's)")
    job_resume_attempts: int = Field(3, ge=0, description="resumes of an interrupted job (server stop, kill, full disk)")
    job_backend: Literal["local", "ray"] = Field("local", description="where jobs run: a local process, or a Ray task")
    ray_address: str | None = Field(None, description="the Ray cluster (ray://head:10001, or host:port); unset: "
                                                       "RAY_ADDRESS, else a Ray instance started on this machine")
    ray_cpus_per_job: float = Field(1.0, gt=0, description="CPUs a job's Ray task asks for")
    ray_gpus_per_job: float = Field(0.0, ge=0, description="GPUs a job's Ray task asks for")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, v: object) -> object:
        if isinstance(v, str):
            return [name.strip().lower().strip("[]") for name in v.split(",") if name.strip()]
        return v

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    @property
    def max_teacher_bytes(self) -> int:
        return int(self.max_teacher_mb * MB)

    @property
    def max_buffered_bytes(self) -> int:
        return int(self.max_buffered_mb * MB)

    @property
    def max_job_disk_bytes(self) -> int:
        return int(self.max_job_disk_mb * MB)


def read_settings(environ: dict[str, str] | None = None) -> ServingSettings:
    """Map COMPRESSOR_<FIELD> variables onto the settings; pydantic turns strings into their types."""
    env = os.environ if environ is None else environ
    values = {}
    for name in ServingSettings.model_fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    return ServingSettings(**values)


@lru_cache(maxsize=1)
def settings() -> ServingSettings:
    return read_settings()
