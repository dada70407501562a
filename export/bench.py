"""Latency and throughput of ONNX models, measured the same way for students and teachers.

Per batch size: warm-up runs, then timed runs until a count or a time budget is reached; p50 / p90 / p99
latency and images per second. Models in one call run in the same process on the same provider and thread
count, so their speed-up ratio is a fair comparison.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from export.onnx import INPUT_NAME
from export.providers import make_session


class BatchTiming(BaseModel):
    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_second: float


class ModelBenchmark(BaseModel):
    path: str
    file_bytes: int
    provider: str
    threads: int
    input_shape: list[int]
    timings: list[BatchTiming]


class BenchmarkReport(BaseModel):
    models: list[ModelBenchmark]
    speedup: dict[str, float] | None = None  # batch size -> first model's throughput / second model's
    machine: str


def input_shape_of(session) -> list[int]:
    shape = session.get_inputs()[0].shape
    dims = [d if isinstance(d, int) else None for d in shape[1:]]
    if any(d is None for d in dims):
        raise ValueError(f"the model's input has non-fixed dimensions {shape}; only the batch axis may vary")
    return dims


def time_model(
    path: str | Path,
    batch_sizes: list[int],
    provider: str = "cpu",
    threads: int | None = None,
    warmup: int = 3,
    max_runs: int = 200,
    budget_s: float = 3.0,
) -> ModelBenchmark:
    threads = threads or max(1, min(4, os.cpu_count() or 1))
    session, used = make_session(path, provider, threads)
    shape = input_shape_of(session)
    rng = np.random.default_rng(0)
    timings = []
    for bs in batch_sizes:
        x = rng.standard_normal((bs, *shape), dtype=np.float32)
        for _ in range(warmup):
            session.run(None, {INPUT_NAME: x})
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < max_runs and (len(samples) < 5 or time.perf_counter() - start < budget_s):
            t0 = time.perf_counter()
            session.run(None, {INPUT_NAME: x})
            samples.append(time.perf_counter() - t0)
        ms = np.array(samples) * 1000
        timings.append(BatchTiming(
            batch_size=bs, runs=len(samples),
            p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)), p99_ms=float(np.percentile(ms, 99)),
            images_per_second=float(bs * 1000 / ms.mean()),
        ))
    return ModelBenchmark(path=str(path), file_bytes=Path(path).stat().st_size, provider=used, threads=threads,
                          input_shape=shape, timings=timings)


def benchmark(paths: list[str | Path], batch_sizes: list[int], provider: str = "cpu", **kw) -> BenchmarkReport:
    import platform

    models = [time_model(p, batch_sizes, provider, **kw) for p in paths]
    speedup = None
    if len(models) == 2:
        speedup = {
            str(a.batch_size): a.images_per_second / b.images_per_second
            for a, b in zip(models[0].timings, models[1].timings, strict=True)  # one timing per batch size each
        }
    return BenchmarkReport(models=models, speedup=speedup, machine=f"{platform.machine()}, {os.cpu_count()} cores")


def format_table(report: BenchmarkReport) -> str:
    lines = [f"{'model':40s} {'provider':8s} {'batch':>5s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'img/s':>9s} "
             f"{'size':>9s}"]
    for m in report.models:
        for t in m.timings:
            lines.append(f"{Path(m.path).name[:40]:40s} {m.provider:8s} {t.batch_size:5d} {t.p50_ms:8.2f} {t.p90_ms:8.2f} "
                         f"{t.p99_ms:8.2f} {t.images_per_second:9.0f} {m.file_bytes / 1e6:7.2f}MB")
    if report.speedup:
        lines.append("speed-up (first / second): " + ", ".join(f"batch {k}: {v:.2f}x" for k, v in report.speedup.items()))
    lines.append(f"threads: {report.models[0].threads}, machine: {report.machine}")
    return "\n".join(lines)
