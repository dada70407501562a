"""`--compile`: the two training steps' forward passes (generator + teacher + student, and student + teacher)
through `torch.compile`, with a clean fallback to eager execution.

What is compiled are the loss functions the loop calls, not the modules: the modules stay ordinary `nn.Module`s,
so checkpoints, the incumbent copy used for selection, evaluation and the ONNX export see exactly what they
would without compilation. Compilation happens at the first call, so `compile_steps` proves it with a warm-up
round (whose effects the caller undoes) and falls back to eager, saying why, if that round fails.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from compressor.errors import first_line

F = TypeVar("F", bound=Callable)


def compile_steps(steps: tuple[F, ...], backend: str, warm_up: Callable[[tuple[F, ...]], None]) -> tuple[tuple[F, ...], str]:
    """(the steps to use, one line saying what happened). `warm_up` runs one round with the given steps."""
    try:
        compiled = tuple(torch.compile(step, backend=backend) for step in steps)
        warm_up(compiled)
    except Exception as exc:  # an unknown backend, an unsupported operator, a missing compiler toolchain
        torch._dynamo.reset()
        return steps, f"torch.compile ({backend}) failed, running eagerly: {type(exc).__name__}: {first_line(exc, 200)}"
    return compiled, f"training steps compiled with torch.compile ({backend})"
