"""The default method: synthesis rounds, a pool of every synthetic image, many KD steps per image.

The structure of the strongest published methods (../shared/METHODS.md: CMI, Fast, NAYER), on DFAD's game:
- a synthesis round optimises the generator for g steps on one batch of noise, towards images that match the
  teacher's BatchNorm running statistics (keeps them in the teacher's domain), cover every class (a balance
  term on the teacher's mean prediction and a small one-hot term), and make the student disagree with the
  teacher where the two currently agree (the adversarial term, which explores the decision boundary instead
  of rewarding images the teacher itself is unsure about), and lie away from the images already stored (a
  repulsion, in the teacher's penultimate features, from the rest of the batch and a bank of the latest stored
  images: CMI's remedy for pools of near-duplicates, the lever that paid most on the validation split);
- the batch the round ends with is stored, as pixels, in a pool of every image the run has synthesised;
- the student then takes k KD steps (KL at a temperature) on batches drawn from the whole pool, with random
  crops and flips in whole pixels, so each synthetic image is reused many times and nothing is forgotten.
Synthesis is the expensive half on a CPU; this spends it once per image instead of once per student step.

On CUDA (`label_ahead`) the teacher labels a round's student batches ahead, one forward pass per chunk of them,
not one per step: it is frozen and the pool does not change within a round, so the targets are the same (and so
are the batches, unless the student itself draws random numbers, e.g. dropout: the draws then interleave
differently). There a KD step is bound by launching kernels (an H200 lease measured about 13.5 ms per step at
k = 40, for an estimated few milliseconds of arithmetic), and the teacher's forward is a large share of them.
"""
from __future__ import annotations

from collections import deque

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor import distributed
from compressor.augment import random_crop_flip
from compressor.methods.base import Logs, Method, SynthBatch
from compressor.methods.losses import (
    BatchNormStatistics,
    PenultimateFeatures,
    class_balance,
    feature_repulsion,
    kl_at_temperature,
    one_hot_confidence,
    per_sample_kl,
)
from compressor.methods.pool import SyntheticPool


class DefaultMethod(Method):
    name = "default"
    # g = 10 beat g = 5 on the validation split at the CPU protocol's 1,200 student updates (benchmarks/RESULTS.md).
    default_round = (10, 10)
    # The most input elements the teacher labels in one forward pass: 5 batches of 256 at 32 px (8 forwards for
    # k = 40 instead of 40), none ahead at 224 px (`batches_per_label`). A no-grad forward's largest activation is
    # then the input's size times the teacher's widest layer over its 3 channels: 90 MB for a WRN-40-2 (32 wide)
    # in bf16, 450 MB for a WRN-28-10 (160).
    label_chunk_elements: int = 1 << 22

    def __init__(self, teacher, student, generator, settings, workdir) -> None:
        super().__init__(teacher, student, generator, settings, workdir)
        self.bn_stats = BatchNormStatistics(teacher)
        self.pool = SyntheticPool(settings.pool_size, workdir / "pool.u8", next(student.parameters()).device)
        self.features = PenultimateFeatures(teacher) if settings.diversity_weight > 0 else None
        # Normalised features of the latest stored images, oldest first, in a bank of fixed shape whose mask says
        # which rows are filled yet: the synthesis step then sees the same shapes every round (--compile).
        device = next(teacher.parameters()).device
        self.feature_bank = torch.zeros(settings.diversity_bank, self.features.dim if self.repels else 0, device=device)
        self.bank_filled = torch.zeros(settings.diversity_bank, dtype=torch.bool, device=device)
        self.bank_count = 0  # how many rows are filled, known on the host: reading the mask would sync with the GPU
        self.label_ahead = settings.label_ahead if settings.label_ahead is not None else device.type == "cuda"
        self.labelled: deque[SynthBatch] = deque()  # this round's student batches, drawn and labelled ahead
        self.left_in_round = 0  # of the round's k batches, those not drawn yet

    @classmethod
    def disk_bytes(cls, settings, image_elements: int, images_made: int | None) -> int:
        """The pool file: one byte per element of every image stored, up to its capacity."""
        stored = settings.pool_size if images_made is None else min(settings.pool_size, images_made)
        return stored * image_elements

    @property
    def repels(self) -> bool:
        """Whether the diversity term is on: asked for, and the teacher has a Linear layer to read features from."""
        return self.features is not None and self.features.found

    def warnings(self) -> list[str]:
        notes = []
        if len(self.bn_stats) == 0:
            notes.append("the teacher has no BatchNorm layers, so the batch-norm statistics term is off; expect a "
                         "weaker student (the adversarial, balance and one-hot terms remain)")
        if self.features is not None and not self.features.found:
            notes.append("the teacher has no Linear layer whose input could serve as its features, so the diversity "
                         "term is off")
        return notes

    def generator_loss(self, batch: SynthBatch) -> tuple[torch.Tensor, Logs]:
        s = self.settings
        self.bn_stats.start()
        try:
            t_logits = self.teacher(batch.images)
        finally:
            self.bn_stats.active = False
        bn_loss = self.bn_stats.collect(t_logits.device)
        was_training = self.student.training
        self.student.eval()  # the generator's images must not move the student's BatchNorm statistics
        try:
            s_logits = self.student(batch.images)
        finally:
            self.student.train(was_training)

        agree = (s_logits.argmax(1) == t_logits.argmax(1)).float()
        adversarial = (per_sample_kl(s_logits, t_logits) * agree).mean()
        balance = class_balance(t_logits)
        one_hot = one_hot_confidence(t_logits)
        loss = (s.bn_weight * bn_loss + s.balance_weight * balance + s.one_hot_weight * one_hot
                - s.adversarial_weight * adversarial)
        logs = {
            "g_bn": bn_loss.detach(),
            "g_adv": adversarial.detach(),
            "g_balance": balance.detach(),
            "g_onehot": one_hot.detach(),
            "diversity": batch.images.detach().float().std(dim=0).mean(),
        }
        if self.repels:
            # The others are the global synthesis batch (gathered from every rank, so the objective does not
            # depend on their number) and the bank, held fixed: each image moves away from them, not they from it.
            local = self.features.last
            batch_features = distributed.all_gather(F.normalize(local.detach().float(), dim=1))
            others = torch.cat([batch_features, self.feature_bank])
            valid = torch.cat([torch.ones(len(batch_features), dtype=torch.bool, device=others.device), self.bank_filled])
            repulsion = feature_repulsion(local, others, s.diversity_temperature, offset=distributed.local_start(len(local)),
                                          valid=valid)
            loss = loss + s.diversity_weight * repulsion
            logs["g_repulsion"] = repulsion.detach()
        return loss, logs

    def store(self, images: torch.Tensor) -> None:
        self.labelled.clear()
        self.left_in_round = self.settings.round[1]
        self.pool.add(self.generator.to_pixels(images))
        if self.repels:
            with torch.no_grad():
                self.teacher(images)
            new = F.normalize(self.features.last.float(), dim=1)
            self._bank(torch.cat([self.banked(), new]))

    def banked(self) -> torch.Tensor:
        """The bank's filled rows, oldest first (they are always its last rows)."""
        return self.feature_bank[len(self.feature_bank) - self.bank_count:]

    def _bank(self, rows: torch.Tensor) -> None:
        """Keep the latest `diversity_bank` of `rows` at the end of the bank, the rest of it empty."""
        size = self.settings.diversity_bank
        rows = rows[-size:].to(self.feature_bank.device)
        # In place: a synthesis step replayed from a CUDA graph reads the bank where it was captured.
        self.feature_bank.copy_(torch.cat([self.feature_bank.new_zeros(size - len(rows), self.feature_bank.shape[1]), rows]))
        self.bank_filled.copy_(torch.arange(size, device=self.bank_filled.device) >= size - len(rows))
        self.bank_count = len(rows)

    def student_batch(self, batch_size: int) -> SynthBatch:
        """The round's next batch. Labelling ahead, the first call after `store` draws and labels the round's k
        batches (in chunks of at most `label_chunk_elements` inputs), in the order one call per step draws them."""
        if not self.labelled:
            chunk = self.batches_per_label(batch_size, int(self.pool.data.shape[1:].numel()))
            if not chunk:
                return SynthBatch(None, self._draw(batch_size))  # the teacher labels it in the step
            n = max(1, min(self.left_in_round, chunk))
            self.left_in_round -= n
            drawn = [self._draw(batch_size) for _ in range(n)]
            logits = self._teacher_logits(torch.cat(drawn))
            self.labelled.extend(SynthBatch(None, x, t) for x, t in zip(drawn, logits.split(batch_size), strict=True))
        return self.labelled.popleft()

    def batches_per_label(self, batch_size: int, image_elements: int) -> int:
        """How many batches one teacher forward labels ahead; 0: each step labels its own batch. That is so where
        `label_ahead` is off, and where a chunk would hold one batch (a 224 px one): labelling it ahead would
        only take the teacher's forward out of --compile's graph."""
        fits = self.label_chunk_elements // (batch_size * image_elements) if self.label_ahead else 0
        return fits if fits >= 2 else 0

    def _draw(self, batch_size: int) -> torch.Tensor:
        """A batch from the whole pool, cropped and flipped as the settings say, in the teacher's input space."""
        s = self.settings
        pixels = self.pool.sample(batch_size, next(self.student.parameters()).device)
        if s.augment or s.flip:
            pixels = random_crop_flip(pixels, max(1, pixels.shape[-1] // 8) if s.augment else 0, s.flip)
        return self.generator.normalise(pixels)

    def label(self, batch: SynthBatch) -> SynthBatch:
        # Laid out as the pool's batches are: on CUDA a generator's images are channels_last, and a compiled step
        # warmed up on those would be traced again at the first round's contiguous ones.
        images = batch.images.contiguous()
        if not self.batches_per_label(len(images), images[0].numel()):
            return SynthBatch(batch.z, images)
        return SynthBatch(batch.z, images, self._teacher_logits(images))

    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's targets for a student batch, or for a chunk of them labelled ahead."""
        with torch.no_grad():
            return self.teacher(images)

    def student_loss(self, batch: SynthBatch, student: nn.Module | None = None) -> tuple[torch.Tensor, Logs]:
        t_logits = batch.teacher_logits if batch.teacher_logits is not None else self._teacher_logits(batch.images)
        loss = kl_at_temperature((self.student if student is None else student)(batch.images), t_logits,
                                 self.settings.temperature)
        return loss, {"s_loss": loss.detach()}

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict(), "feature_bank": self.banked()}

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state["pool"])
        rows = state["feature_bank"]  # the filled rows, oldest first
        self._bank(rows.view(-1, self.feature_bank.shape[1]) if rows.numel() else self.feature_bank[:0])
