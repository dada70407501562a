"""DFAD, the seed's method (Fang et al., 2019): a pure min-max on the L1 distance of logits.

Kept faithful on purpose so benchmarks can show what the default method adds.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from compressor.methods.base import Logs, Method, SynthBatch
from compressor.methods.losses import l1_logits


class DFAD(Method):
    name = "dfad"
    default_round = (1, 5)  # the seed's k_g = 1, k_s = 5 on fresh images

    def generator_loss(self, batch: SynthBatch) -> tuple[torch.Tensor, Logs]:
        t_logits = self.teacher(batch.images)
        s_logits = self.student(batch.images)
        disagreement = l1_logits(s_logits, t_logits)
        return -disagreement, {"g_adv": disagreement.detach()}

    def student_loss(self, batch: SynthBatch, student: nn.Module | None = None) -> tuple[torch.Tensor, Logs]:
        with torch.no_grad():
            t_logits = self.teacher(batch.images)
        loss = l1_logits((self.student if student is None else student)(batch.images), t_logits)
        return loss, {"s_loss": loss.detach()}
