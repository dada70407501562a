"""Accuracy on labelled splits (reporting only) and teacher agreement on synthetic images (data-free selection)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from compressor.data import Split


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Logits for already-normalised images, in eval mode, restoring the model's mode afterwards."""
    was_training = model.training
    model.eval()
    out = [model(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels.view(-1, 1)).any(dim=1)
    return hits.float().mean().item()


ON_DEVICE_LIMIT_BYTES = 2 * 2**30  # evaluation images kept on the GPU up to this size; larger sets stream


def prepare_eval_images(test: Split, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> Split:
    """The test split normalised once and, on a GPU, moved there once when it fits: the loop's evaluations
    then cost forward passes only, not a normalisation and a host-to-device copy of the whole set each time."""
    images = normalise(test.images, mean, std)
    if device.type == "cuda" and images.numel() * images.element_size() <= ON_DEVICE_LIMIT_BYTES:
        images = images.to(device)
    return Split(images, test.labels)


def evaluate_splits(
    model: nn.Module,
    test: Split,
    split_indices: dict[str, torch.Tensor],
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    device: torch.device,
) -> tuple[dict[str, float], dict[str, float] | None, torch.Tensor]:
    """Top-1 per split, top-5 per split where there are more than 10 classes, and the test-set predictions.

    The splits index one test set, so the model runs over it once. `mean`/`std` None: `test` already went
    through `prepare_eval_images`.
    """
    images = test.images if mean is None else normalise(test.images, mean, std)
    logits = predict_logits(model, images, device)
    top1 = {name: topk_accuracy(logits[idx], test.labels[idx], 1) for name, idx in split_indices.items()}
    top5 = {name: topk_accuracy(logits[idx], test.labels[idx], 5) for name, idx in split_indices.items()}
    return top1, (top5 if logits.shape[1] > 10 else None), logits.argmax(dim=1)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    flat = labels.numpy().astype(np.int64) * num_classes + predictions.numpy().astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@torch.no_grad()
def teacher_agreement(student: nn.Module, images: torch.Tensor, teacher_labels: torch.Tensor, device: torch.device) -> float:
    """Fraction of held-out synthetic images on which the student predicts the teacher's class."""
    if len(images) == 0:
        return 0.0
    preds = predict_logits(student, images, device).argmax(dim=1)
    return (preds == teacher_labels).float().mean().item()
