"""`--cuda-graphs`: the student's forward and backward in each KD step, replayed as CUDA graphs.

On a GPU a small student's KD step is bound by launching kernels, not by arithmetic: an H200 measured about
13.5 ms per step for an estimated few milliseconds of work (benchmarks/RESULTS.md). Eager PyTorch launches every
convolution, normalisation, activation and autocast cast of the forward, and each node of the backward, one by one
from Python and the autograd engine. A CUDA graph records that sequence once and replays it with one launch.

What is graphed is a thin wrapper around the student, which the method's student step calls through
`Method.training_student` (where DistributedDataParallel's wrapper goes under torchrun): the student itself stays an
ordinary module, so the generator's loss (which runs it in eval mode), evaluation, selection, checkpoints and the
ONNX export use it exactly as before. PyTorch's `torch.cuda.make_graphed_callables` does the capture: it copies each
batch into the graph's static input, replays the forward, and on backward replays the recorded backward, whose
parameter gradients then reach the optimiser as usual (which, with the loss, the clipping and the batch drawing,
stays eager). A graph needs a fixed batch shape (the loop's is), no host sync inside (a round has none: see
tests/test_methods.py), and autocast without its weight cache.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn


class _StudentForward(nn.Module):
    """The student's forward, as a module of its own: make_graphed_callables replaces this wrapper's forward,
    not the student's."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)


class GraphedStudent(nn.Module):
    """The student, replayed from its graphs where a call is what they recorded: training mode and the captured
    batch shape. Anything else (the student in eval mode, another batch size) runs the student eagerly, rather
    than replaying a training step's BatchNorm updates or failing to copy into the graph's input."""

    def __init__(self, student: nn.Module, replay, shape: torch.Size) -> None:
        super().__init__()
        self.student = student
        self._replay = replay  # the graphed wrapper's forward: a function, so not a second registered module
        self.shape = shape

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.student.training and images.shape == self.shape:
            return self._replay(images)
        return self.student(images)


def graph_student(student: nn.Module, sample: torch.Tensor, amp: bool) -> tuple[nn.Module | None, str]:
    """(the student's training forward as CUDA graphs, or None to run eagerly; one line saying which and why).

    `sample` is a batch of the shape every step will give. Capturing runs the student a few times on it (to let
    cuDNN choose its kernels outside the capture), which would move its BatchNorm statistics: they are put back."""
    if sample.device.type != "cuda":
        return None, f"CUDA graphs need a CUDA device (this run is on {sample.device.type}): the student runs eagerly"
    saved = copy.deepcopy(student.state_dict())
    was_training, needed_grad = student.training, [p.requires_grad for p in student.parameters()]
    student.train().requires_grad_(True)  # as in the student's steps, which is what the graph replays
    wrapper = _StudentForward(student)
    # The loop's autocast caches each weight's cast for the length of its context; a capture may not use that.
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if amp
                else contextlib.nullcontext())
    try:
        with autocast:
            graphed = torch.cuda.make_graphed_callables(wrapper, (sample.detach().clone(),))
    except Exception as exc:  # an operator that cannot be captured, a student that syncs with the host
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return None, f"CUDA graph capture failed, running eagerly: {type(exc).__name__}: {first_line}"
    finally:
        student.load_state_dict(saved)
        student.train(was_training)
        for p, flag in zip(student.parameters(), needed_grad):
            p.requires_grad_(flag)
    return GraphedStudent(student, graphed.forward, sample.shape), \
        f"the student's forward and backward replayed as CUDA graphs (batch {len(sample)})"
