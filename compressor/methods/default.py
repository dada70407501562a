"""The default method: DFAD's adversarial game made to work on thin students.

What it adds to DFAD, each for a reason the literature (../shared/METHODS.md) and our digits probe agree on:
- the teacher's BatchNorm running statistics are matched on every synthetic batch, which keeps images in the
  teacher's domain (the term that turned a 10 %-budget student on digits from chance to 97 %);
- a class-balance term on the teacher's mean prediction, and a small one-hot term, so every class is drawn;
- the adversarial term only counts images where student and teacher currently agree, so the generator
  explores the decision boundary instead of producing garbage the teacher is unsure about;
- the student learns with KL at a temperature, on fresh images plus a replay pool of past batches, with random
  shifts and flips, which stops it forgetting what earlier generators drew.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from compressor.methods.base import Logs, Method, SynthBatch
from compressor.methods.losses import (
    BatchNormStatistics,
    class_balance,
    kl_at_temperature,
    one_hot_confidence,
    per_sample_kl,
)


def random_shift_flip(x: torch.Tensor, max_shift: float, flip: bool) -> torch.Tensor:
    """Per-image random translation (up to `max_shift` of the side, reflected borders) and horizontal flip."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    sx = torch.ones(n, device=x.device, dtype=x.dtype)
    if flip:
        sx = torch.where(torch.rand(n, device=x.device) < 0.5, -sx, sx)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = 1
    theta[:, :, 2] = (torch.rand(n, 2, device=x.device, dtype=x.dtype) * 2 - 1) * 2 * max_shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class ReplayPool:
    """A fixed-size ring buffer of past synthetic images, kept on the training device."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.images: torch.Tensor | None = None
        self.size = 0
        self.cursor = 0

    def add(self, images: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        images = images.detach()
        if self.images is None:
            self.images = torch.empty((self.capacity, *images.shape[1:]), dtype=images.dtype, device=images.device)
        for chunk in images.split(self.capacity):
            n = chunk.shape[0]
            idx = (torch.arange(n, device=chunk.device) + self.cursor) % self.capacity
            self.images[idx] = chunk
            self.cursor = (self.cursor + n) % self.capacity
            self.size = min(self.capacity, self.size + n)

    def sample(self, n: int) -> torch.Tensor:
        assert self.images is not None and self.size > 0
        idx = torch.randint(0, self.size, (n,), device=self.images.device)
        return self.images[idx]

    def state_dict(self) -> dict:
        return {"images": self.images[: self.size].cpu() if self.images is not None else None,
                "size": self.size, "cursor": self.cursor}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.size, self.cursor = int(state["size"]), int(state["cursor"])
        if state["images"] is not None:
            stored = state["images"].to(device)
            self.images = torch.empty((self.capacity, *stored.shape[1:]), dtype=stored.dtype, device=device)
            self.images[: self.size] = stored


class DefaultMethod(Method):
    name = "default"

    def __init__(self, teacher, student, generator, settings) -> None:
        super().__init__(teacher, student, generator, settings)
        self.bn_stats = BatchNormStatistics(teacher)
        self.pool = ReplayPool(settings.replay_size)

    def generator_loss(self, batch: SynthBatch) -> tuple[torch.Tensor, Logs]:
        s = self.settings
        self.bn_stats.active = True
        try:
            t_logits = self.teacher(batch.images)
        finally:
            self.bn_stats.active = False
        bn_loss = self.bn_stats.collect().to(t_logits.device)
        was_training = self.student.training
        self.student.eval()  # the generator's images must not move the student's BatchNorm statistics
        s_logits = self.student(batch.images)
        self.student.train(was_training)

        kl = per_sample_kl(s_logits, t_logits)
        if s.adversarial_on_agreement:
            agree = (s_logits.argmax(1) == t_logits.argmax(1)).float()
            adversarial = (kl * agree).mean()
        else:
            adversarial = kl.mean()
        balance = class_balance(t_logits)
        one_hot = one_hot_confidence(t_logits)
        loss = s.bn_weight * bn_loss + s.balance_weight * balance + s.one_hot_weight * one_hot - s.adversarial_weight * adversarial
        return loss, {
            "g_bn": bn_loss.item(),
            "g_adv": adversarial.item(),
            "g_balance": balance.item(),
            "g_onehot": one_hot.item(),
            "diversity": batch.images.detach().float().std(dim=0).mean().item(),
        }

    def _replay_count(self, batch_size: int) -> int:
        if self.pool.capacity <= 0 or self.pool.size == 0:
            return 0
        return int(round(batch_size * self.settings.replay_fraction))

    def fresh_count(self, batch_size: int) -> int:
        """Only the non-replayed part of a student batch is synthesised: generator passes are the CPU bottleneck."""
        return batch_size - self._replay_count(batch_size)

    def student_loss(self, batch: SynthBatch) -> tuple[torch.Tensor, Logs]:
        s = self.settings
        images = batch.images
        if self.pool.capacity > 0:
            f = s.replay_fraction  # the loop synthesised fresh_count(B) images; top up to B from the pool
            n_replay = int(round(images.shape[0] * f / (1 - f))) if self.pool.size else 0
            self.pool.add(images)
            if n_replay:
                images = torch.cat([images, self.pool.sample(n_replay)])
        if s.augment:
            images = random_shift_flip(images, max_shift=0.125, flip=s.flip)
        with torch.no_grad():
            t_logits = self.teacher(images)
        loss = kl_at_temperature(self.student(images), t_logits, s.temperature)
        return loss, {"s_loss": loss.item()}

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "pool" in state:
            self.pool.load_state_dict(state["pool"], next(self.student.parameters()).device)
