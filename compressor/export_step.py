"""The run's last step: the best student as a verified `student.onnx`, through the `export` package."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from compressor.config import RunConfig
from compressor.errors import CompressorError
from export.onnx import ExportError, export_onnx, verify_onnx


def export_student(
    student: nn.Module,
    synthetic: torch.Tensor,
    input_shape: tuple[int, int, int],
    path: Path,
    cfg: RunConfig,
    accuracy: dict,
) -> dict:
    """Export on the CPU, then check ONNX Runtime against PyTorch at batch 1 and 37, on noise and generator samples."""
    cpu_student = student.to("cpu").eval().to(memory_format=torch.contiguous_format)
    t = cfg.teacher
    metadata = {
        "class_names": t.class_names,
        "input_size": t.input_size,
        "in_channels": t.in_channels,
        "mean": list(t.mean),
        "std": list(t.std),
        "params": sum(p.numel() for p in cpu_student.parameters()),
        "teacher_arch": t.arch,
        "teacher_sha256": t.sha256,
        "method": cfg.method.name,
        "accuracy": (accuracy.get("top1") or {}).get("full"),
        "student_family": cfg.student.family,
    }
    g = torch.Generator().manual_seed(0)
    synthetic = synthetic.float().cpu()
    checks = [
        torch.randn(1, *input_shape, generator=g),
        torch.randn(37, *input_shape, generator=g),
        synthetic[:1],
        synthetic[torch.arange(37) % len(synthetic)],
    ]
    try:
        export_onnx(cpu_student, input_shape, path, metadata)
        max_diff = verify_onnx(cpu_student, path, checks)
    except ExportError as exc:
        raise CompressorError(f"ONNX export failed verification: {exc}") from None
    return {"max_abs_logit_diff": max_diff, "batch_sizes": [1, 37], "inputs": ["gaussian noise", "generator samples"]}
