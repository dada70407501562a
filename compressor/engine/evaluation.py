"""The report's accuracy on the dataset's test split: measured on rank 0 only, never used for selection."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from compressor.data import LabelledData, reported_split_indices
from compressor.evaluate import confusion_matrix, evaluate_splits, prepare_eval_images


class TestEvaluation:
    """The teacher is measured once (it never changes); the student at each evaluation and at the end."""

    __test__ = False  # not a pytest class

    def __init__(self, data: LabelledData, teacher: nn.Module, mean, std, device: torch.device) -> None:
        self.data, self.device = data, device
        self.splits = reported_split_indices(data.test.labels)
        self.images = prepare_eval_images(data.test, mean, std, device)
        top1, top5, self.teacher_predictions = evaluate_splits(teacher, self.images, self.splits, None, None, device)
        self.teacher_accuracy = {"top1": top1, "top5": top5}

    def full_accuracy(self, student: nn.Module) -> float:
        top1, _, _ = evaluate_splits(student, self.images, {"full": self.splits["full"]}, None, None, self.device)
        return top1["full"]

    def final(self, student: nn.Module, num_classes: int) -> tuple[dict, dict[str, np.ndarray]]:
        """(the student's top-1 and top-5 on every reported split, both models' confusion matrices)."""
        top1, top5, predictions = evaluate_splits(student, self.images, self.splits, None, None, self.device)
        labels = self.data.test.labels
        confusions = {"student": confusion_matrix(predictions, labels, num_classes),
                      "teacher": confusion_matrix(self.teacher_predictions, labels, num_classes)}
        return {"top1": top1, "top5": top5}, confusions
