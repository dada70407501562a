"""Every payload the HTTP API reads or writes, as pydantic models (the OpenAPI contract in one place)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compressor.config import Mean, MethodName, NamedDataset, PresetName, Std, StudentConfig, StudentInit

# The compressor's own names, so the API and its OpenAPI enums list exactly what a run accepts.
StudentFamily = StudentConfig.model_fields["family"].annotation


class Strict(BaseModel):
    # NaN and infinity never pass: JSON has no spelling for them, so a stored row would not read back.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------- classification


class ClassifyJSON(Strict):
    """JSON body of /classify: one or more base64-encoded image files (PNG, JPEG, any Pillow format)."""

    images: list[str] = Field(min_length=1)
    top_k: int = Field(5, gt=0)


class Prediction(BaseModel):
    index: int
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    model: str  # "default", the id of the job whose student answered (token holders), or "student"
    predictions: list[list[Prediction]]  # one top-k list per image, in request order


# ---------------------------------------------------------------- models


class ModelInfo(BaseModel):
    id: str | None  # "default" for the configured model, else the id of the job that made it (token holders only)
    path: str | None = None  # the server's file: shown only to a client with the token
    served: bool
    params: int | None = None
    accuracy: float | None = None
    method: str | None = None
    teacher_sha256: str | None = None  # token holders only
    input_size: int | None = None
    channels: int | None = None
    class_names: list[str] = []


class ModelListing(BaseModel):
    served: ModelInfo | None
    available: list[ModelInfo]


class SelectModel(Strict):
    model_id: str = Field(min_length=1, max_length=64)


# ---------------------------------------------------------------- compression jobs


class JobOptions(Strict):
    """What a submission may set: the compressor's CLI options that make sense on a server."""

    ratio: float = Field(gt=0, lt=1)
    name: str | None = Field(None, max_length=120, description="a label for people; never used as a path or markup")
    method: MethodName = "default"
    preset: PresetName = "default"
    student: StudentFamily = "auto"
    macs_ratio: float | None = Field(None, gt=0, le=100)
    student_init: StudentInit | None = Field(None, description=(
        "where the student's weights start (default: the preset's, auto but for seed): auto takes the teacher's "
        "strongest channels and blocks where both are post-activation ResNets, random weights otherwise"))
    steps: int | None = Field(None, gt=0, le=10**9)  # the server's own limit is checked on the steps a run resolves to
    batch_size: int | None = Field(None, gt=1, le=1024)
    lr: float | None = Field(None, gt=0, le=10)
    generator_lr: float | None = Field(None, gt=0, le=10)
    eval_every: int | None = Field(None, gt=0, le=10**9)
    seed: int | None = Field(None, ge=0, lt=2**32)  # numpy's seeds are 32-bit
    arch: str | None = Field(None, description="a registry name; custom code (package.module:factory) is refused here")
    dataset: NamedDataset | None = Field(
        None, description="evaluation data for the report; cifar needs the server's torchvision copy (no download)")
    input_size: int | None = Field(None, gt=0, le=1024)
    mean: Mean | None = Field(None, min_length=1, max_length=4, description="per channel, or one for all")
    std: Std | None = Field(None, min_length=1, max_length=4, description="per channel, each > 0")

    @model_validator(mode="after")
    def _same_channel_count(self) -> JobOptions:
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}: give one per channel for both")
        return self

    @field_validator("arch")
    @classmethod
    def _registry_only(cls, v: str | None) -> str | None:
        if v is not None and (":" in v or "/" in v):
            raise ValueError("only registry architectures are accepted over HTTP (no custom code)")
        return v

    def cli_args(self) -> list[str]:
        """The same options as `python -m compressor` flags, so a job is exactly a CLI run."""
        args = ["--ratio", repr(self.ratio), "--method", self.method, "--preset", self.preset, "--student", self.student]
        for name in ("macs_ratio", "student_init", "steps", "batch_size", "lr", "generator_lr", "eval_every", "seed", "arch",
                     "dataset", "input_size"):
            value = getattr(self, name)
            if value is not None:
                args += ["--" + name.replace("_", "-"), str(value)]
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:  # `--mean=-0.5`: a separate "-0.5" would be read as a flag
                args.append(f"--{name}=" + ",".join(repr(v) for v in value))
        return args


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobProgress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    losses: dict[str, float] = {}
    best_accuracy: float | None = None  # on the job's evaluation data, if it has any
    best_selection_score: float | None = None  # data-free: agreement with the teacher on held-out synthetic images


class JobView(BaseModel):
    job_id: str
    status: JobState
    created: float
    started: float | None = None
    finished: float | None = None
    options: JobOptions | None  # None only for a row written by an older, laxer server that no longer validates
    teacher: str | None = None  # the uploaded teacher's file name
    progress: JobProgress
    error: str | None = None
    notes: list[str] = []
    cancel_requested: bool = False
    artifacts: list[str] = []


class JobList(BaseModel):
    jobs: list[JobView]  # newest first, at most 100


class MetricsPage(BaseModel):
    """Records of a run's metrics.jsonl from line `start` on: one per round (losses, learning rate), with an
    `eval` object where the run evaluated (selection score, accuracy). `next` is where the next poll starts."""

    job_id: str
    records: list[dict]
    next: int


class Submitted(BaseModel):
    job_id: str
    status: JobState


class ErrorBody(BaseModel):
    error: str
    detail: list | dict | None = None
