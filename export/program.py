"""A model as a `torch.export` ExportedProgram (`.pt2`): PyTorch's supported deployment format.

TorchScript (`torch.jit.trace/save/load`) is deprecated in torch 2.14; `torch.export` is what AOTInductor,
ExecuTorch and the ONNX exporter read. The program is exported with a dynamic batch dimension, so one file
serves every batch size, and it carries the caller's metadata as an extra file of the archive.

Loading: `torch.export.load` falls back to full unpickling when a restricted load fails. Where a file may come
from someone else, `load_program(..., untrusted=True)` forbids that fallback for the duration of the load.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn
from torch.export import Dim, ExportedProgram

from export.errors import first_line

METADATA_FILE = "dfcompress.json"
# Exported with a batch of 2: torch.export specialises a dimension traced at size 0 or 1.
EXAMPLE_BATCH = 2
_force_lock = threading.Lock()


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """torch.export's and the ONNX exporter's progress lines, warnings and logged tracebacks are for torch's
    developers; the caller reports what failed in its own words."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export", "torch.onnx", "torch._dynamo",
                                                     "torch.fx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class ProgramError(Exception):
    """The model could not be exported, or a file is not a loadable program."""


def export_program(model: nn.Module, input_shape: tuple[int, ...]) -> ExportedProgram:
    """`model` (in eval mode, on the CPU) traced by torch.export with a dynamic batch dimension."""
    model = model.eval()
    device = next(model.parameters()).device
    example = torch.zeros(EXAMPLE_BATCH, *input_shape, device=device)
    try:
        with quiet_torch():
            return torch.export.export(model, (example,), dynamic_shapes=({0: Dim.DYNAMIC},))
    except Exception as exc:  # torch raises many kinds (user errors, unsupported ops, guards)
        raise ProgramError(f"torch.export could not trace the model: {first_line(exc, 200)}") from None


def save_program(program: ExportedProgram, path: str | Path, metadata: dict[str, object] | None = None) -> Path:
    path = Path(path)
    torch.export.save(program, str(path), extra_files={METADATA_FILE: json.dumps(metadata or {})})
    return path


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every torch.load inside runs with weights_only=True (torch's own switch), so a file cannot make
    torch.export.load unpickle code."""
    with _force_lock:
        before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def load_program(path: str | Path, untrusted: bool = True) -> tuple[ExportedProgram, dict[str, object]]:
    """(the program, the metadata saved with it)."""
    extra = {METADATA_FILE: ""}
    guard = _weights_only_loads() if untrusted else contextlib.nullcontext()
    try:
        with guard, quiet_torch():
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        raise ProgramError(f"{path} is not a torch.export program (.pt2): {first_line(exc, 160)}") from None
    try:
        metadata = json.loads(extra[METADATA_FILE] or "{}")
    except json.JSONDecodeError:
        metadata = {}
    return program, metadata if isinstance(metadata, dict) else {}


class ProgramModule(nn.Module):
    """A loaded program as an ordinary module. A program is exported in one mode (ours in eval mode) and its
    graph refuses `train()`/`eval()`, so here they only set the flag: callers that switch modes keep working."""

    def __init__(self, program: ExportedProgram) -> None:
        super().__init__()
        self.graph = program.module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> ProgramModule:
        self.training = mode
        return self


def program_module(program: ExportedProgram) -> nn.Module:
    return ProgramModule(program)
