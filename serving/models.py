"""Which ONNX model is served, and which others could be.

The served model is named by a small pointer file in the jobs folder, written atomically. The micro-batcher reads
it before every batch, so selecting a job's student takes effect on the next batch without a restart, and the
choice survives one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from compressor.run_folder import replace_text
from export.metadata import read_metadata
from serving.jobs import JobStore
from serving.schemas import ModelInfo
from serving.settings import ServingSettings

DEFAULT_ID = "default"


class UnknownModel(Exception):
    pass


@dataclass(frozen=True)
class ModelSpec:
    """What preprocessing and labelling need from an exported student's metadata."""

    id: str
    path: Path
    input_size: int
    channels: int
    mean: list[float]
    std: list[float]
    class_names: list[str]
    metadata: dict


@lru_cache(maxsize=4096)  # a few hundred bytes each: every student a server keeps
def _metadata(path: str, mtime_ns: int) -> dict:
    return read_metadata(path)


def load_spec(model_id: str, path: Path) -> ModelSpec:
    if not path.is_file():
        raise UnknownModel(f"model {model_id!r} has no ONNX file on this server")
    meta = _metadata(str(path), path.stat().st_mtime_ns)
    channels = int(meta.get("in_channels") or 3)
    num_classes = meta.get("num_classes")
    names = meta.get("class_names") or []
    if not names and num_classes:
        names = [f"class_{i}" for i in range(int(num_classes))]
    return ModelSpec(
        id=model_id, path=path, input_size=int(meta.get("input_size") or 32), channels=channels,
        mean=list(meta.get("mean") or [0.0] * channels), std=list(meta.get("std") or [1.0] * channels),
        class_names=[str(n) for n in names], metadata=meta,
    )


class ModelCatalog:
    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.jobs = JobStore(settings.jobs_dir)
        self.pointer = settings.jobs_dir / "served_model.json"

    def _path_of(self, model_id: str) -> Path:
        if model_id == DEFAULT_ID:
            return self.settings.model
        job = self.jobs.get(model_id)
        if job is None or job.status != "succeeded":
            raise UnknownModel(f"no finished job {model_id!r} has a student to serve")
        return self.jobs.artifact_path(model_id, "student.onnx")

    def served(self) -> tuple[str, Path]:
        """The selected model, falling back to the configured default if the pointer is absent or stale."""
        try:
            chosen = json.loads(self.pointer.read_text())
            path = Path(chosen["path"])
            if path.is_file():
                return str(chosen["id"]), path
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return DEFAULT_ID, self.settings.model

    def served_spec(self) -> ModelSpec:
        model_id, path = self.served()
        return load_spec(model_id, path)

    def select(self, model_id: str) -> ModelInfo:
        path = self._path_of(model_id)
        load_spec(model_id, path)  # refuse a file that is not a readable model before pointing at it
        self.pointer.parent.mkdir(parents=True, exist_ok=True)
        replace_text(self.pointer, json.dumps({"id": model_id, "path": str(path.resolve())}))
        return self.info(model_id, path, served=True)

    def info(self, model_id: str, path: Path, served: bool) -> ModelInfo:
        meta = load_spec(model_id, path).metadata
        return ModelInfo(
            id=model_id, path=str(path), served=served, params=meta.get("params"), accuracy=meta.get("accuracy"),
            method=meta.get("method"), teacher_sha256=meta.get("teacher_sha256"), input_size=meta.get("input_size"),
            channels=meta.get("in_channels"), class_names=[str(n) for n in meta.get("class_names") or []],
        )

    def available(self) -> list[ModelInfo]:
        served_id, _ = self.served()
        out = []
        if self.settings.model.is_file():
            out.append(self.info(DEFAULT_ID, self.settings.model, served_id == DEFAULT_ID))
        for job in self.jobs.list(status="succeeded"):
            path = self.jobs.artifact_path(job.job_id, "student.onnx")
            if path.is_file():
                out.append(self.info(job.job_id, path, served_id == job.job_id))
        return out
