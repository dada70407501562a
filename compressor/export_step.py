"""The run's last step, through the `export` package: verified ONNX files, fp16 / INT8 variants and speed.

Writes `student.pt2` (a torch.export program with a dynamic batch: what `python -m export` re-exports from, and
what AOTInductor or ExecuTorch take), `student.safetensors` (the weights, with the student's architecture spec in
its metadata), `student.onnx` (verified against PyTorch: batch 1 and 37, noise and generator samples),
`teacher.onnx` (so students and teachers are benchmarked the same way; a teacher that no exporter takes costs
the run only its speed-up figure), `calibration.npz` (generator samples: INT8 stays data-free),
`student.fp16.onnx` and `student.int8.onnx`.
"""
from __future__ import annotations

import json
import os
import shutil
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
from export.onnx import ExportError, OnnxExport, export_onnx, set_metadata, verify_onnx
from export.program import ExportedProgram, ProgramError, export_program, save_program
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


def _export_verified(model: nn.Module, checks: list[torch.Tensor], shape, path: Path, metadata: dict,
                     program: ExportedProgram | None = None) -> tuple[OnnxExport, float]:
    try:
        written = export_onnx(model, shape, path, metadata, program=program)
        return written, verify_onnx(model, path, checks)
    except ExportError as exc:
        if path.exists():  # an unverified file never carries the name of a verified one
            os.replace(path, path.with_suffix(".unverified.onnx"))
        raise CompressorError(f"ONNX export of {path.name} failed verification: {exc}") from None


def _cached_teacher_onnx(teacher: nn.Module, checks, shape, path: Path, metadata: dict, cfg: RunConfig) -> dict:
    """The teacher's verified ONNX file, exported and checked once per teacher file and input (a ResNet-50 takes
    many seconds): later runs copy it from the cache folder, keyed by the teacher's sha256, and set this run's
    metadata. Returns what the export recorded (the verified max |logit difference|, the exporter)."""
    t = cfg.teacher
    key = f"{t.sha256}-{t.in_channels}x{t.input_size}"
    cached, record = cache_dir() / "teachers" / f"{key}.onnx", cache_dir() / "teachers" / f"{key}.json"
    if cached.is_file() and record.is_file():
        shutil.copyfile(cached, path)
        set_metadata(path, metadata)
        return json.loads(record.read_text())
    written, diff = _export_verified(teacher, checks, shape, path, metadata)
    recorded = {"max_abs_logit_diff": diff, **_exporter_note(written)}
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, cached)
        record.write_text(json.dumps(recorded))
    except OSError:  # a read-only or full cache only costs the next run the export
        pass
    return recorded


def _exporter_note(written: OnnxExport) -> dict:
    return {"exporter": written.exporter, "exporter_fallback": written.fallback}


def _student_program(student: nn.Module, shape, path: Path, metadata: dict) -> tuple[ExportedProgram | None, str | None]:
    """(the student's torch.export program, saved to `path`; or None and why it could not be exported)."""
    try:
        program = export_program(student, shape)
        save_program(program, path, metadata)
        return program, None
    except ProgramError as exc:
        return None, str(exc)


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
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(run_dir / "student.safetensors"),
              metadata={"arch": cfg.student.arch or "", "spec": json.dumps(cfg.student.spec),
                        "num_classes": str(t.num_classes), "in_channels": str(t.in_channels)})
    np.savez(run_dir / "calibration.npz", images=synthetic.numpy().astype(np.float32))
    student_meta = _metadata(cfg, student, "student", student_accuracy)
    program, program_error = _student_program(student, shape, run_dir / "student.pt2", student_meta)

    student_path, teacher_path = run_dir / "student.onnx", run_dir / "teacher.onnx"
    written, student_diff = _export_verified(student, checks, shape, student_path, student_meta, program)
    try:
        teacher_export = _cached_teacher_onnx(teacher, checks, shape, teacher_path,
                                              _metadata(cfg, teacher, "teacher", teacher_accuracy), cfg)
    except CompressorError as exc:  # the teacher's file only serves the speed comparison: the run goes on
        teacher_export = {"error": str(exc)}

    variants = {"fp32": student_path, "fp16": to_fp16(student_path, run_dir / "student.fp16.onnx")}
    variants["int8"] = to_int8(student_path, run_dir / "student.int8.onnx", synthetic.numpy())
    out: dict = {
        "verification": {"student_max_abs_logit_diff": student_diff,
                         "teacher_max_abs_logit_diff": teacher_export.get("max_abs_logit_diff"),
                         "batch_sizes": [1, 37], "inputs": ["gaussian noise", "generator samples"]},
        "program": {"file": "student.pt2"} if program is not None else {"error": program_error},
        "exporters": {"student": _exporter_note(written),
                      "teacher": {k: v for k, v in teacher_export.items() if k != "max_abs_logit_diff"}},
        "variants": {},
    }
    for name, path in variants.items():
        acc = onnx_accuracy(path, test, t.mean, t.std) if test is not None else None
        out["variants"][name] = {"file": path.name, "bytes": path.stat().st_size, "accuracy": acc}
    has_teacher = "error" not in teacher_export
    out["teacher_file"] = {"file": teacher_path.name, "bytes": teacher_path.stat().st_size} if has_teacher else None
    speed = benchmark([student_path, teacher_path] if has_teacher else [student_path], [1, 64], "cpu", budget_s=0.5,
                      max_runs=50)
    out["cpu_speed"] = {
        "threads": speed.models[0].threads,
        "student": {str(x.batch_size): x.model_dump() for x in speed.models[0].timings},
        "teacher": {str(x.batch_size): x.model_dump() for x in speed.models[1].timings} if has_teacher else None,
        "speedup": speed.speedup if has_teacher else None,
    }
    return out
