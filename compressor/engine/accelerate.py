"""The one step through which a run is made fast: `--batch-size auto`, `--compile`, `--cuda-graphs` and DDP.

It returns the two steps a round calls and the module the student's step trains through, with one line for the
report about each choice. The method itself is never changed: it receives the training student as an argument.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from compressor import distributed
from compressor.batch_size import BatchSizeChoice, choose_batch_size
from compressor.compile import compile_steps
from compressor.cuda_graphs import graph_steps
from compressor.engine.build import Parts
from compressor.engine.context import RunContext
from compressor.errors import CompressorError
from compressor.kept import kept
from compressor.methods import SynthBatch
from compressor.methods.base import Logs

SynthesisLoss = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, Logs]]  # z -> images, loss, logs
DistillationLoss = Callable[[SynthBatch, nn.Module], tuple[torch.Tensor, Logs]]  # (batch, student) -> loss, logs


@dataclass
class Steps:
    """What a round calls: the synthesis step, the student's step and the module that step trains through (the
    student, its graphed forward, or its DistributedDataParallel wrapper), and what was chosen on the way."""

    synthesis_loss: SynthesisLoss
    distillation_loss: DistillationLoss
    training_student: nn.Module
    local_batch: int  # this rank's share of the global batch
    batch_choice: BatchSizeChoice | None = None
    compile_note: str | None = None
    graphs_note: str | None = None

    def distil(self, batch: SynthBatch) -> tuple[torch.Tensor, Logs]:
        return self.distillation_loss(batch, self.training_student)


def eager_synthesis(parts: Parts) -> SynthesisLoss:
    """The generator's images and the method's loss on them: the synthesis step's forward."""
    def synthesis_loss(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Logs]:
        images = parts.generator(z)
        loss, logs = parts.method.generator_loss(SynthBatch(z, images))
        return images, loss, logs

    return synthesis_loss


def trial_round(ctx: RunContext, parts: Parts, synthesis_loss: SynthesisLoss, distillation_loss: DistillationLoss,
                n: int) -> None:
    """One synthesis and one student forward and backward at batch n, as a round runs them (so what --compile
    traces is what the rounds run); every weight, statistic and random state it touches is put back."""
    student, method = parts.student, parts.method
    with kept([student, parts.generator], rng_device=ctx.device):
        z = torch.randn(n, ctx.cfg.generator.noise_dim, device=ctx.device)
        student.requires_grad_(False)
        with ctx.amp():
            images, loss_g, _ = synthesis_loss(z)
        loss_g.backward()
        student.requires_grad_(True)
        with ctx.amp():
            loss_s, _ = distillation_loss(method.label(SynthBatch(z, images.detach())), student)
        loss_s.backward()


def choose_local_batch(ctx: RunContext, trial: Callable[[int], None]) -> tuple[int, BatchSizeChoice | None]:
    """(this rank's batch, the auto choice if there was one). `auto` is resolved once: config.json keeps the
    number, so a resume uses the same; each rank times its own share and rank 0's choice is everyone's."""
    cfg, world = ctx.cfg, ctx.world
    choice = None
    if cfg.batch_size == "auto":
        with distributed.local_only():
            choice = choose_batch_size(trial, ctx.device)
        choice = distributed.broadcast_object(choice)
        cfg.batch_size = choice.batch_size * world.size  # --batch-size is the global batch
        ranks = f"; {choice.batch_size} on each of {world.size} ranks" if world.distributed else ""
        ctx.say(f"batch size {cfg.batch_size} (auto: {choice.reason}{ranks})")
    if cfg.batch_size % world.size:
        raise CompressorError(f"--batch-size {cfg.batch_size} is the global batch: it must divide evenly among "
                              f"the {world.size} ranks")
    return cfg.batch_size // world.size, choice


def graphed(ctx: RunContext, parts: Parts, steps: Steps) -> Steps:
    """`--cuda-graphs`: both steps' forward and backward replayed as CUDA graphs, where they can be."""
    if ctx.world.distributed:
        steps.graphs_note = "CUDA graphs are not used under torchrun (DDP's gradient hooks): both steps run eagerly"
        return steps
    own = torch.Generator(device=ctx.device).manual_seed(ctx.cfg.seed)  # the run's random streams stay as they are
    sample_z = torch.randn(steps.local_batch, ctx.cfg.generator.noise_dim, device=ctx.device, generator=own)
    sample_images = torch.randn(steps.local_batch, *parts.input_shape, device=ctx.device, generator=own)
    graphs = graph_steps(steps.synthesis_loss, parts.generator, parts.student, sample_z, sample_images, ctx.use_amp)
    steps.synthesis_loss, steps.graphs_note = graphs.synthesis_loss, graphs.note
    if graphs.training_student is not None:
        steps.training_student = graphs.training_student
    return steps


def accelerate(ctx: RunContext, parts: Parts) -> Steps:
    synthesis_loss, distillation_loss = eager_synthesis(parts), parts.method.student_loss

    def trial(pair: tuple[SynthesisLoss, DistillationLoss], n: int) -> None:
        trial_round(ctx, parts, *pair, n)

    local_batch, choice = choose_local_batch(ctx, lambda n: trial((synthesis_loss, distillation_loss), n))
    steps = Steps(synthesis_loss, distillation_loss, parts.student, local_batch, choice)
    if ctx.cfg.compile:
        (steps.synthesis_loss, steps.distillation_loss), steps.compile_note = compile_steps(
            (synthesis_loss, distillation_loss), ctx.cfg.compile, lambda pair: trial(pair, local_batch))
        ctx.say(steps.compile_note)
    if ctx.cfg.cuda_graphs:
        steps = graphed(ctx, parts, steps)
        ctx.say(steps.graphs_note)
    if ctx.world.distributed:  # the student's step runs through DDP, which averages its gradients across ranks
        steps.training_student = nn.parallel.DistributedDataParallel(
            parts.student, device_ids=[ctx.device.index] if ctx.on_cuda else None)
    return steps
