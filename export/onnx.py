"""Export a PyTorch classifier to ONNX and prove the file computes the same logits.

The `torch.export`-based exporter (`dynamo=True`, PyTorch's supported path) writes the file; where it cannot
take a model, the TorchScript exporter (deprecated in torch 2.14) does, and the result says why. Both are
verified the same way against PyTorch. The opset is fixed so files are reproducible across torch upgrades.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
import torch.nn as nn
from torch.export import ExportedProgram

from export.errors import first_line
from export.program import export_program, quiet_torch

OPSET = 18  # the lowest opset the torch.export-based exporter writes
MAX_OPSET = 23
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
Exporter = Literal["dynamo", "torchscript"]


class ExportError(Exception):
    """The export or its verification failed; the model must not be shipped."""


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    exporter: Exporter
    fallback: str | None = None  # why the torch.export-based exporter did not write it, where it did not


def _described(exc: BaseException) -> str:
    """`Type: first line`, as an exporter's many exception types need their name to be understood."""
    return f"{type(exc).__name__}: {first_line(exc, 200)}" if str(exc).strip() else type(exc).__name__


@contextlib.contextmanager
def _output_discarded() -> Iterator[None]:
    """Standard output and error, at the file-descriptor level, go nowhere: the TorchScript exporter prints a
    failing model's whole graph from C++, where no Python redirect reaches."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _quiet_export(*args, **kwargs) -> None:
    """The exporters print progress and, on a failure, the whole graph: the caller reports the failure in a line."""
    with quiet_torch(), _output_discarded():
        torch.onnx.export(*args, **kwargs)


def _with_dynamo(program: ExportedProgram, path: Path, opset: int) -> None:
    _quiet_export(program, (), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                  dynamo=True, external_data=False, verbose=False)


def _with_torchscript(model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int) -> None:
    example = torch.zeros(2, *input_shape, device=next(model.parameters()).device)
    _quiet_export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset, dynamo=False)


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    path: str | Path,
    metadata: dict[str, object] | None = None,
    opset: int = OPSET,
    exporter: Exporter | Literal["auto"] = "auto",
    program: ExportedProgram | None = None,
) -> OnnxExport:
    """Write `model` with a dynamic batch axis. `auto` uses the torch.export-based exporter (on `program` where
    the caller has already exported one) and falls back to the TorchScript one where it fails."""
    path = Path(path)
    model = model.eval()
    used: Exporter = "dynamo"
    fallback = None
    try:
        if exporter == "torchscript":
            used = "torchscript"
            _with_torchscript(model, input_shape, path, opset)
        else:
            try:
                _with_dynamo(program if program is not None else export_program(model, input_shape), path, opset)
            except Exception as exc:  # the exporter raises many kinds; the old one may still take the model
                if exporter == "dynamo":
                    raise
                used, fallback = "torchscript", _described(exc)
                _with_torchscript(model, input_shape, path, opset)
    except Exception as exc:
        raise ExportError(f"the {used} exporter failed: {_described(exc)}") from None
    onnx.checker.check_model(str(path))
    set_metadata(path, metadata or {})
    return OnnxExport(path, used, fallback)


def set_metadata(path: str | Path, metadata: dict[str, object]) -> Path:
    """Replace the file's metadata; values that are not strings are stored as JSON."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(path))
    return path


def cpu_session(path: str | Path):
    """An ONNX Runtime session on the CPU provider, without the GPU build's CUDA noise."""
    from export.providers import make_session

    return make_session(path, "cpu")[0]


# Tolerance of ONNX Runtime against PyTorch, relative to the largest |logit| (1e-4 absolute where logits are
# small). Measured fp32 differences across the registry (torchvision ResNet-34/50, MobileNetV3, EfficientNet-B0,
# DenseNet-121, CIFAR ResNet-20, WRN-40-2 and their students, at 32, 64 and 224 px, batch 1 and 37): at most
# 9.1e-7 of the largest logit, but up to 8.4e-5 absolute where logits reach 119, so a fixed 1e-4 was at the edge.
RELATIVE_TOLERANCE = 1e-4


@torch.no_grad()
def verify_onnx(
    model: nn.Module,
    path: str | Path,
    inputs: list[torch.Tensor],
    rtol: float = RELATIVE_TOLERANCE,
) -> float:
    """Max |logit difference| between PyTorch and ONNX Runtime over `inputs`. Raises if it exceeds `rtol` x the
    largest |logit| (at least `rtol` absolute), or if the top-1 class differs anywhere the two best logits are
    further apart than that tolerance (a near-tie may flip either way)."""
    session = cpu_session(path)
    model = model.eval()
    worst = 0.0
    for x in inputs:
        expected = model(x.to(next(model.parameters()).device)).float().cpu().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy().astype(np.float32)})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
        if not got.size:
            continue
        diff = float(np.max(np.abs(got - expected)))
        tolerance = rtol * max(1.0, float(np.max(np.abs(expected))))
        worst = max(worst, diff)
        if diff > tolerance:
            raise ExportError(f"ONNX logits differ from PyTorch by {diff:.2e} (> {tolerance:.1e}, {rtol:g} of the "
                              f"largest logit) at batch {len(x)}")
        top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else np.zeros((len(expected), 2))
        decisive = (top2[:, 1] - top2[:, 0]) > tolerance
        if np.any((got.argmax(1) != expected.argmax(1)) & decisive):
            raise ExportError(f"ONNX top-1 differs from PyTorch at batch {len(x)}")
    return worst
