"""`--cuda-graphs`: the forward and backward of a round's two steps, synthesis and distillation, replayed as CUDA graphs.

On a GPU a round is bound by launching kernels, not by arithmetic: an H200 measured about 13.5 ms per KD step and
51 ms per generator step for an estimated few milliseconds of work each (benchmarks/RESULTS.md). Eager PyTorch
launches every convolution, normalisation, activation, autocast cast and BatchNorm-statistics hook of a forward, and
each node of the backward, one by one from Python and the autograd engine. A CUDA graph records that sequence once
and replays it with one launch.

PyTorch's `torch.cuda.make_graphed_callables` does the capture: a call copies its input into the graph's static
input and replays the forward; the backward replays the recorded backward, whose parameter gradients then reach
the optimiser as usual (the optimisers, the clipping, the KD loss and the batch drawing stay eager). Two steps:
- the student's training forward, wrapped in a module the method's student step trains through (the run's
  acceleration step hands it to the step, where DistributedDataParallel's wrapper goes under torchrun). The student itself
  stays an ordinary module, so evaluation, selection, checkpoints and the ONNX export use it as before;
- the synthesis step (the generator's images and the method's generator loss, with the teacher's and the student's
  forwards inside), graphed with the generator's parameters as what it differentiates. What Python does during that
  step (the BatchNorm hooks collecting moments, the features hook) happens once, at capture; the kernels it
  launched are what each replay runs, on whatever the tensors it read hold by then (the student's weights, the
  diversity bank, which is therefore updated in place).
Each replays only where the call is what was captured (training mode, the captured shape), and runs eagerly
otherwise. A graph needs a fixed batch (the loop's is), no host sync inside (a round has none: see
tests/test_methods.py), and autocast without its weight cache. Capture runs each step a few times first (to let
cuDNN choose its kernels outside the capture), which would move BatchNorm statistics: they are put back. Each graph
keeps its activations in a memory pool of its own, so the two steps' peaks add up where eagerly the larger one
counted: `--batch-size auto`, chosen eagerly, may leave too little room (a failed capture runs that step eagerly).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn

from compressor.errors import first_line
from compressor.kept import kept


class _Step(nn.Module):
    """A step as a module of its own, whose parameters are what its backward differentiates: make_graphed_callables
    replaces this wrapper's forward, not the student's or the generator's."""

    def __init__(self, owner: nn.Module, step: Callable) -> None:
        super().__init__()
        self.owner = owner
        self.step = step

    def forward(self, x: torch.Tensor):
        return self.step(x)


class GraphedStudent(nn.Module):
    """The student, replayed from its graphs where a call is what they recorded: training mode and the captured
    batch shape. Anything else (the student in eval mode, another batch size) runs the student eagerly, rather
    than replaying a training step's BatchNorm updates or failing to copy into the graph's input."""

    def __init__(self, student: nn.Module, replay: Callable, shape: torch.Size) -> None:
        super().__init__()
        self.student = student
        self._replay = replay  # the graphed wrapper's forward: a function, so not a second registered module
        self.shape = shape

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.student.training and images.shape == self.shape:
            return self._replay(images)
        return self.student(images)


class GraphedSteps(NamedTuple):
    synthesis_loss: Callable  # z -> (images, loss, logs): graphed, or the eager step it was given
    training_student: nn.Module | None  # the student's graphed training forward; None: the student runs eagerly
    note: str  # one line for the run's report


def _capture(wrapper: nn.Module, sample: torch.Tensor, amp: bool) -> tuple[Callable | None, str]:
    """(the wrapper's graphed forward, or None; why not)."""
    # The loop's autocast caches each weight's cast for the length of its context; a capture may not use that.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if amp else contextlib.nullcontext()
    try:
        with autocast:
            return torch.cuda.make_graphed_callables(wrapper, (sample,)).forward, ""
    except Exception as exc:  # an operator that cannot be captured, a step that syncs with the host
        return None, f"{type(exc).__name__}: {first_line(exc, 160)}"


def graph_student(student: nn.Module, sample: torch.Tensor, amp: bool) -> tuple[GraphedStudent | None, str]:
    """The student's training forward as CUDA graphs, or None and why not; `sample`: a batch of the steps' shape."""
    if sample.device.type != "cuda":
        return None, f"CUDA graphs need a CUDA device (this run is on {sample.device.type})"
    with kept([student]):
        student.train().requires_grad_(True)  # as in the student's steps, which is what the graph replays
        replay, why = _capture(_Step(student, student), sample.detach().clone(), amp)
    return (GraphedStudent(student, replay, sample.shape), "") if replay else (None, why)


def graph_synthesis(synthesis_loss: Callable, generator: nn.Module, student: nn.Module, z: torch.Tensor,
                    amp: bool) -> tuple[Callable | None, str]:
    """The synthesis step `synthesis_loss(z) -> (images, loss, logs)` as CUDA graphs, or None and why not. It is
    captured as a round runs it: the generator training, the student frozen (in the mode the loop left it). `z` is
    the round's noise (requiring grad where the noise is optimised)."""
    if z.device.type != "cuda":
        return None, f"CUDA graphs need a CUDA device (this run is on {z.device.type})"
    student_mode = student.training
    with kept([generator, student]):
        generator.train()
        student.requires_grad_(False)
        replay, why = _capture(_Step(generator, synthesis_loss), z.detach().clone().requires_grad_(z.requires_grad), amp)
    if replay is None:
        return None, why

    def graphed_synthesis(noise: torch.Tensor):
        # What the capture recorded: a training generator, this noise's shape and whether it is optimised, and the
        # student's mode (a method may run the student as it is; the default one always runs it in eval mode).
        if not (generator.training and student.training == student_mode and noise.shape == z.shape
                and noise.requires_grad == z.requires_grad):
            return synthesis_loss(noise)
        images, loss, logs = replay(noise)
        # The logs are read at the next flush, after later replays have overwritten the graph's outputs.
        return images, loss, {k: v.detach().clone() for k, v in logs.items()}

    return graphed_synthesis, ""


def graph_steps(synthesis_loss: Callable, generator: nn.Module, student: nn.Module, noise: torch.Tensor,
                images: torch.Tensor, amp: bool) -> GraphedSteps:
    """Both steps, each graphed where it can be: `noise` and `images` are samples of a round's noise and student
    batch (drawn from a generator of their own, so the run's random streams stay as they are)."""
    graphed_synthesis, synthesis_why = graph_synthesis(synthesis_loss, generator, student, noise, amp)
    graphed_student, student_why = graph_student(student, images, amp)
    if graphed_synthesis and graphed_student:
        note = f"the synthesis and the student's steps replayed as CUDA graphs (batch {len(images)})"
    elif not (graphed_synthesis or graphed_student) and synthesis_why == student_why:
        note = f"{synthesis_why}: both steps run eagerly"
    else:
        note = "; ".join([
            "the synthesis step replayed as CUDA graphs" if graphed_synthesis
            else f"the synthesis step runs eagerly ({synthesis_why})",
            "the student's step replayed as CUDA graphs" if graphed_student
            else f"the student's step runs eagerly ({student_why})",
        ]) + f" (batch {len(images)})"
    return GraphedSteps(graphed_synthesis or synthesis_loss, graphed_student, note)
