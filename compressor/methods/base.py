"""The method contract: what the generator and the student minimise.

`compressor.distill` owns everything else (schedule, optimisers, AMP,
checkpoints), so adding a method never touches the loop.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn as nn

from compressor.generator import Generator

Logs = dict[str, float]


@dataclass
class SynthBatch:
    """Noise and the images the generator made from it (with grad for a generator step, detached for a student step)."""

    z: torch.Tensor
    images: torch.Tensor


class Method(ABC):
    name: str = "base"

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: Generator, settings) -> None:
        self.teacher = teacher
        self.student = student
        self.generator = generator
        self.settings = settings

    @abstractmethod
    def generator_loss(self, batch: SynthBatch) -> tuple[torch.Tensor, Logs]:
        """Loss the generator minimises on a batch it just produced (gradients flow into the generator)."""

    @abstractmethod
    def student_loss(self, batch: SynthBatch) -> tuple[torch.Tensor, Logs]:
        """Loss the student minimises on a detached synthetic batch."""

    def fresh_count(self, batch_size: int) -> int:
        """How many new images the loop should synthesise for a student batch of `batch_size` (a replay pool wants fewer)."""
        return batch_size

    def state_dict(self) -> dict:
        """Anything the method keeps between steps (a replay pool), for exact resume."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
