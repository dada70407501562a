"""The run's last step, through the `export` package: verified ONNX files, fp16 / INT8 variants and speed.

Writes `student.onnx` (verified against PyTorch: batch 1 and 37, noise and generator samples),
`student.pt` (TorchScript, what `python -m export` re-exports from), `student.safetensors` (the weights, with
the student's architecture spec in its metadata), `teacher.onnx` (so students and
teachers are benchmarked the same way), `calibration.npz` (generator samples: INT8 stays data-free),
`student.fp16.onnx` and `student.int8.onnx`.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

from compressor.config import RunConfig
from compressor.data import Split, cache_dir
from compressor.errors import CompressorError
from compressor.evaluate import normalise
from export.bench import benchmark
from export.onnx import ExportError, export_onnx, set_metadata, verify_onnx
from export.providers import make_session
from export.quantize import to_fp16, to_int8


def _metadata(cfg: RunConfig, model: nn.Module, role: str, accuracy: float | None) -> dict:
    t = cfg.teacher
    return {
        "role": role,
        "class_names": t.class_names,
        "input_size": t.input_size,
        "in_channels": t.in_channels,
        "mean": list(t.mean),
        "std": list(t.std),
        "params": sum(p.numel() for p in model.parameters()),
        "teacher_arch": t.arch,
        "teacher_sha256": t.sha256,
        "method": cfg.method.name,
        "student_family": cfg.student.family,
        "accuracy": accuracy,
    }


def _export_verified(model: nn.Module, checks: list[torch.Tensor], shape, path: Path, metadata: dict) -> float:
    try:
        export_onnx(model, shape, path, metadata)
        return verify_onnx(model, path, checks)
    except ExportError as exc:
        if path.exists():  # an unverified file never carries the name of a verified one
            os.replace(path, path.with_suffix(".unverified.onnx"))
        raise CompressorError(f"ONNX export of {path.name} failed verification: {exc}") from None


def _cached_teacher_onnx(teacher: nn.Module, checks, shape, path: Path, metadata: dict, cfg: RunConfig) -> float:
    """The teacher's verified ONNX file, exported and checked once per teacher file and input (a ResNet-50 takes
    many seconds): later runs copy it from the cache folder, keyed by the teacher's sha256, and set this run's
    metadata. Returns the verified max |logit difference|."""
    t = cfg.teacher
    key = f"{t.sha256}-{t.in_channels}x{t.input_size}"
    cached, record = cache_dir() / "teachers" / f"{key}.onnx", cache_dir() / "teachers" / f"{key}.json"
    if cached.is_file() and record.is_file():
        shutil.copyfile(cached, path)
        set_metadata(path, metadata)
        return float(json.loads(record.read_text())["max_abs_logit_diff"])
    diff = _export_verified(teacher, checks, shape, path, metadata)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, cached)
        record.write_text(json.dumps({"max_abs_logit_diff": diff}))
    except OSError:  # a read-only or full cache only costs the next run the export
        pass
    return diff


def onnx_accuracy(path: Path, test: Split, mean, std) -> float:
    session, _ = make_session(path, "cpu")
    x = normalise(test.images, mean, std).numpy().astype(np.float32)
    preds = np.concatenate([session.run(None, {"input": x[i : i + 256]})[0].argmax(1) for i in range(0, len(x), 256)])
    return float((preds == test.labels.numpy()).mean())


def export_run(
    student: nn.Module,
    teacher: nn.Module,
    synthetic: torch.Tensor,
    run_dir: Path,
    cfg: RunConfig,
    student_accuracy: float | None,
    teacher_accuracy: float | None,
    test: Split | None,
) -> dict:
    t = cfg.teacher
    shape = (t.in_channels, t.input_size, t.input_size)
    student = student.to("cpu").eval().to(memory_format=torch.contiguous_format)
    teacher = teacher.to("cpu").eval().to(memory_format=torch.contiguous_format)
    synthetic = synthetic.float().cpu()
    g = torch.Generator().manual_seed(0)
    checks = [torch.randn(1, *shape, generator=g), torch.randn(37, *shape, generator=g),
              synthetic[:1], synthetic[torch.arange(37) % len(synthetic)]]

    # The trained student first, in the forms that need no check, so a failed check below loses nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(student, synthetic[:2]), str(run_dir / "student.pt"))
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(run_dir / "student.safetensors"),
              metadata={"arch": cfg.student.arch or "", "spec": json.dumps(cfg.student.spec)})
    np.savez(run_dir / "calibration.npz", images=synthetic.numpy().astype(np.float32))

    student_path, teacher_path = run_dir / "student.onnx", run_dir / "teacher.onnx"
    student_diff = _export_verified(student, checks, shape, student_path, _metadata(cfg, student, "student", student_accuracy))
    teacher_diff = _cached_teacher_onnx(teacher, checks, shape, teacher_path,
                                        _metadata(cfg, teacher, "teacher", teacher_accuracy), cfg)

    variants = {"fp32": student_path, "fp16": to_fp16(student_path, run_dir / "student.fp16.onnx")}
    variants["int8"] = to_int8(student_path, run_dir / "student.int8.onnx", synthetic.numpy())
    out: dict = {
        "verification": {"student_max_abs_logit_diff": student_diff, "teacher_max_abs_logit_diff": teacher_diff,
                         "batch_sizes": [1, 37], "inputs": ["gaussian noise", "generator samples"]},
        "variants": {},
    }
    for name, path in variants.items():
        acc = onnx_accuracy(path, test, t.mean, t.std) if test is not None else None
        out["variants"][name] = {"file": path.name, "bytes": path.stat().st_size, "accuracy": acc}
    out["teacher_file"] = {"file": teacher_path.name, "bytes": teacher_path.stat().st_size}
    speed = benchmark([student_path, teacher_path], [1, 64], "cpu", budget_s=0.5, max_runs=50)
    out["cpu_speed"] = {
        "threads": speed.models[0].threads,
        "student": {str(x.batch_size): x.model_dump() for x in speed.models[0].timings},
        "teacher": {str(x.batch_size): x.model_dump() for x in speed.models[1].timings},
        "speedup": speed.speedup,
    }
    return out
