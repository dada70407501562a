"""The method contract: what the generator and the student minimise.

`compressor.engine` owns everything else (schedule, optimisers, AMP,
checkpoints, acceleration), so adding a method never touches the loop.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from compressor.generator import Generator

Logs = dict[str, torch.Tensor]  # detached scalars: the loop reads them at evaluation time, not every step


@dataclass
class SynthBatch:
    """Images in the teacher's input space: made by the generator from `z` just now (with grad for a generator
    step, detached for a student step), or drawn from a pool of earlier ones (`z` is None)."""

    z: torch.Tensor | None
    images: torch.Tensor
    # The teacher's logits for `images`, where the method labelled them ahead of the step (`Method.label`).
    teacher_logits: torch.Tensor | None = None

    @property
    def synthesised(self) -> int:
        """How many of these images the generator made for this batch (what images/s counts)."""
        return 0 if self.z is None else len(self.z)


class Method(ABC):
    """One round of the loop is: `generator_loss` minimised for g steps on one batch of noise, `store` of the
    batch the round ended with, then k student steps, each `student_loss` on a `student_batch`."""

    name: str = "base"
    default_round: tuple[int, int] = (1, 1)  # (g, k) where the settings leave the round unset

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: Generator, settings, workdir: Path) -> None:
        self.teacher = teacher
        self.student = student  # for the generator's loss and evaluation: never synchronised across ranks
        self.generator = generator
        self.settings = settings
        self.workdir = workdir

    @abstractmethod
    def generator_loss(self, batch: SynthBatch) -> tuple[torch.Tensor, Logs]:
        """Loss the generator minimises on a batch it just produced (gradients flow into the generator)."""

    @abstractmethod
    def student_loss(self, batch: SynthBatch, student: nn.Module | None = None) -> tuple[torch.Tensor, Logs]:
        """Loss the student minimises on a detached synthetic batch, computed through `student`: what the run's
        acceleration step trains through (the student itself where None, its CUDA-graphed forward, or under
        torchrun its DistributedDataParallel wrapper, whose backward averages the gradients across ranks)."""

    def store(self, images: torch.Tensor) -> None:  # noqa: B027 - an optional hook; keeping nothing is the default
        """Keep the batch a synthesis round ended with (detached, teacher's input space); the default keeps nothing."""

    def label(self, batch: SynthBatch) -> SynthBatch:
        """The batch as the method's student steps receive it: laid out as its own batches are, with what a step
        needs besides its images computed outside the step (and outside what --compile traces). The loop's trial
        round labels its batch through this, so that what it compiles is what the rounds run; the default (fresh
        generator images, nothing computed ahead) changes nothing."""
        return batch

    def student_batch(self, batch_size: int) -> SynthBatch:
        """What the student learns from next; the default is a fresh batch from the current generator."""
        device = next(self.student.parameters()).device
        z = torch.randn(batch_size, self.generator.noise_dim, device=device)
        # The loop draws student batches inside its autocast (the default method's teacher labels there); the seed's
        # fresh images stay in full precision, as they were before that.
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            return SynthBatch(z, self.generator(z).detach())

    @classmethod
    def disk_bytes(cls, settings, image_elements: int, images_made: int | None) -> int:
        """The most disk a run of this method writes besides its checkpoints, known before it starts (a server
        bounds a job's disk with it): `image_elements` per synthetic image, `images_made` in the whole run (None:
        not known in advance). The default keeps nothing."""
        return 0

    def warnings(self) -> list[str]:
        """What the user should know before training: terms this teacher leaves the method unable to use."""
        return []

    def state_dict(self) -> dict:
        """Anything the method keeps between rounds (a pool of images), for exact resume."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - an optional hook, as `state_dict` is
        pass
