"""What a soak run varies (SoakConfig, with the defaults of `python -m benchmarks.soak`) and the few names every
part of the harness shares: the repository root, MB and the attacks it knows."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024
Attack = Literal["slow_bodies", "padded_jpeg", "empty_weights"]
ATTACKS: tuple[Attack, ...] = ("slow_bodies", "padded_jpeg", "empty_weights")


class SoakConfig(BaseModel):
    """Everything a soak run varies; the defaults are `python -m benchmarks.soak`'s."""

    model_config = ConfigDict(extra="forbid")

    run: Path = Field(ROOT / "runs" / "demo", description="a finished run folder: teacher.pth and student.onnx")
    workdir: Path | None = Field(None, description="server logs and the jobs folder; default: a new temporary folder")
    clients: int = Field(32, gt=0, description="classification clients, each sending its next request once answered")
    pause_s: float = Field(0.0, ge=0, description="a client's pause between requests")
    request_timeout_s: float = Field(30.0, gt=0, description="a classification not answered by then is lost")
    warmup_s: float = Field(5.0, ge=0, description="load before the front's baseline memory is read")
    jobs: int = Field(8, ge=0)
    steps: int = Field(80, gt=0)
    eval_every: int = Field(10, gt=0, description="also the checkpoint interval: a killed job resumes from there")
    method: str = Field("dfad", description="dfad: five times cheaper a round than default, on a shared CPU")
    batch_size: int = Field(16, gt=1)
    seconds: float = Field(300.0, gt=0, description="the faults are injected at moments within this many seconds")
    seed: int = 0
    compressor_kills: int = Field(2, ge=0)
    worker_kills: int = Field(2, ge=0)
    server_restarts: int = Field(1, ge=0)
    disk_fills: int = Field(1, ge=0)
    disk_hold_s: float = Field(10.0, ge=0, description="how long the jobs disk stays full")
    disk_mb: int | None = Field(None, gt=0, description="tmpfs size; default room for every job (40 MB each) + 100 MB")
    attacks: list[Attack] = Field(default_factory=lambda: list(ATTACKS))
    slow_bodies: int = Field(8, gt=0, description="slow-body connections opened at once")
    slow_body_stall_s: float = Field(30.0, gt=0, description="a slow body the server has not cut off by then fails")
    padded_jpeg_mb: float = Field(8.0, gt=0, description="0xFF fill bytes before the JPEG's SOF")
    padded_jpeg_copies: int = Field(2, gt=0)
    process_wait_s: float = Field(90.0, gt=0, description="how long a kill waits for its process to be running")
    job_deadline_s: float = Field(1200.0, gt=0, description="after the fault phase, for every job to finish")
    memory_tolerance: float = Field(0.20, ge=0, description="the front's RSS may end this much above its baseline")
    orphan_grace_s: float = Field(5.0, ge=0, description="after the clean stop, for job processes to be gone")
