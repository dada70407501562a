"""One round: g generator updates on one batch of noise, whose final images the method stores, then k student
updates on batches the method draws (its pool, or fresh from the generator)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compressor import distributed
from compressor.engine.accelerate import Steps
from compressor.engine.build import Parts
from compressor.engine.context import RunContext
from compressor.engine.optim import optimizer_step
from compressor.engine.state import TrainState


@dataclass
class Throughput:
    """This session's training time and images drawn from the generator (what images/s is measured on)."""

    train_seconds: float = 0.0
    synthesised: int = 0


def synthesise(ctx: RunContext, parts: Parts, steps: Steps, state: TrainState, seen: Throughput) -> dict[str, torch.Tensor]:
    """g generator updates on one batch of noise (the student frozen); every rank's pool stores the global batch."""
    cfg, generator = ctx.cfg, parts.generator
    logs: dict[str, torch.Tensor] = {}
    parts.student.requires_grad_(False)
    generator.train()
    z = state.noise(cfg.batch_size, cfg.generator.noise_dim)
    for _ in range(cfg.method.round[0]):
        with ctx.amp():
            images, loss_g, logs_g = steps.synthesis_loss(z)
        optimizer_step(state.opt_g, loss_g, generator, cfg.grad_clip, distributed.average_gradients)
        seen.synthesised += len(z) * ctx.world.size
        logs.update(logs_g)
    parts.method.store(distributed.all_gather(images.detach()))
    parts.student.requires_grad_(True)
    return logs


def distil(ctx: RunContext, parts: Parts, steps: Steps, state: TrainState, seen: Throughput) -> dict[str, torch.Tensor]:
    """k student updates, each on this rank's share of a global batch the method draws."""
    cfg, student = ctx.cfg, parts.student
    logs: dict[str, torch.Tensor] = {}
    student.train()
    for _ in range(cfg.method.round[1]):
        with ctx.amp():
            batch = parts.method.student_batch(steps.local_batch)
            loss_s, logs_s = steps.distil(batch)  # through DDP on several ranks, or the graphed student
        optimizer_step(state.opt_s, loss_s, student, cfg.grad_clip)
        seen.synthesised += batch.synthesised * ctx.world.size
        logs.update(logs_s)
    distributed.broadcast_module(student, buffers_only=True)  # every rank: the same student, buffers too
    return logs


def play_round(ctx: RunContext, parts: Parts, steps: Steps, state: TrainState, seen: Throughput) -> dict[str, torch.Tensor]:
    """The round's losses, as tensors (read when the metrics log writes them)."""
    logs = synthesise(ctx, parts, steps, state, seen)
    logs.update(distil(ctx, parts, steps, state, seen))
    state.sched_s.step()
    state.sched_g.step()
    state.step += 1
    return logs
