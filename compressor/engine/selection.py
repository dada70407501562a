"""Model selection: which of the evaluated students the run keeps, decided without real data by default.

`synthetic` (data-free): agreement with the teacher on a growing pool of held-out generator images that no
student step ever trained on; the current and the best student are compared on the same, grown pool. `val`:
accuracy on a seeded subset of the dataset's train split, for users who have one.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from compressor.data import Split, stratified_subset
from compressor.engine.build import Parts
from compressor.engine.context import RunContext
from compressor.errors import CompressorError
from compressor.evaluate import predict_logits, prepare_eval_images, teacher_agreement


class Selection:
    def __init__(self, ctx: RunContext, parts: Parts) -> None:
        cfg = ctx.cfg
        self.device = ctx.device
        self.criterion = cfg.eval.select_on
        self.per_eval, self.most = cfg.eval.heldout_per_eval, cfg.eval.heldout_max
        self.noise_dim = cfg.generator.noise_dim
        self.val: Split | None = None
        if self.criterion == "val":
            data = parts.data
            if data is None or data.train is None:
                raise CompressorError("--select-on val needs a dataset with a train split to hold a validation subset out of")
            idx = stratified_subset(data.train.labels, min(1.0, 1000 / len(data.train.labels)), seed=1)
            self.val = prepare_eval_images(Split(data.train.images[idx], data.train.labels[idx]), cfg.teacher.mean,
                                           cfg.teacher.std, ctx.device)
        elif self.criterion != "synthetic":
            raise CompressorError(f"--select-on must be 'synthetic' or 'val', not {self.criterion!r}")
        self.rng = torch.Generator(device="cpu").manual_seed(cfg.seed + 10_000)
        self.heldout_images = torch.empty(0, *parts.input_shape)
        self.heldout_labels = torch.empty(0, dtype=torch.long)
        self.best_state: dict | None = None
        self.best_score, self.best_step = -1.0, 0

    @property
    def description(self) -> str:
        return ("teacher agreement on held-out synthetic images" if self.criterion == "synthetic"
                else "accuracy on a validation subset of the train split")

    def consider(self, parts: Parts, step: int) -> dict:
        """Score the student as it is after `step` and keep it if it is the best yet; the evaluation's record."""
        score, best_wins = self._val_score(parts.student) if self.val is not None else self._agreement(parts)
        if best_wins:
            self.best_state = {k: v.detach().clone() for k, v in parts.student.state_dict().items()}
            self.best_score, self.best_step = score, step
        return {"step": step, "selection_score": score, "best_step": self.best_step}

    def _val_score(self, student: nn.Module) -> tuple[float, bool]:
        preds = predict_logits(student, self.val.images, self.device).argmax(1)
        score = (preds == self.val.labels).float().mean().item()
        return score, self.best_state is None or score >= self.best_score

    def _agreement(self, parts: Parts) -> tuple[float, bool]:
        self._grow_heldout(parts)
        score = teacher_agreement(parts.student, self.heldout_images, self.heldout_labels, self.device)
        if self.best_state is None:
            return score, True
        incumbent = copy.deepcopy(parts.student)
        incumbent.load_state_dict(self.best_state)
        self.best_score = teacher_agreement(incumbent, self.heldout_images, self.heldout_labels, self.device)
        return score, score >= self.best_score

    def _grow_heldout(self, parts: Parts) -> None:
        """New generator images (as the last round left the generator), labelled by the teacher."""
        parts.generator.eval()
        with torch.no_grad():
            z = torch.randn(self.per_eval, self.noise_dim, generator=self.rng).to(self.device)
            new_images = parts.generator(z).float().cpu()
        parts.generator.train()
        new_labels = predict_logits(parts.teacher, new_images, self.device).argmax(1)
        self.heldout_images = torch.cat([self.heldout_images, new_images])[-self.most:]
        self.heldout_labels = torch.cat([self.heldout_labels, new_labels])[-self.most:]

    def state_dict(self) -> dict:
        return {"heldout_images": self.heldout_images, "heldout_labels": self.heldout_labels,
                "best_state": self.best_state, "best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.heldout_images, self.heldout_labels = state["heldout_images"].cpu(), state["heldout_labels"].cpu()
        self.best_state, self.best_score, self.best_step = (state["best_state"], float(state["best_score"]),
                                                            int(state["best_step"]))
