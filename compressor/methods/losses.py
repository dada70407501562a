"""One loss, one function (like RepDistiller's distiller_zoo)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.distributed import combine_moments, global_batch_mean, local_moments


def l1_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The seed's DFAD discrepancy: mean absolute difference of logits."""
    return F.l1_loss(student_logits, teacher_logits)


def kl_at_temperature(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD: KL(teacher || student) of softened distributions, scaled by T^2 to keep gradients comparable."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    p_t = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * t * t


def per_sample_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


def class_balance(teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL of the batch's mean teacher prediction from uniform: zero when every class is equally represented."""
    mean_p = global_batch_mean(F.softmax(teacher_logits.float(), dim=1))  # the whole batch, across ranks
    return (mean_p * torch.log(mean_p.clamp_min(1e-8))).sum() + math.log(teacher_logits.shape[1])


def one_hot_confidence(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teacher's own argmax: pushes each image to look like one class."""
    return F.cross_entropy(teacher_logits.float(), teacher_logits.argmax(dim=1))


class BatchNormStatistics:
    """Matches each teacher BatchNorm's batch statistics to its running statistics (DeepInversion).

    Hooks record each layer's batch moments during a teacher forward while `active`; `collect` turns them into
    the summed distance that keeps synthetic images in the teacher's domain. Under torchrun the moments are those
    of the global batch, combined for all layers in one all-reduce at `collect` (the teacher is in eval mode,
    so its forward never needs them earlier).
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.layers = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
        self.active = False
        self._moments: list[tuple[nn.BatchNorm2d, torch.Tensor, torch.Tensor]] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        if not self.active:
            return
        # One fused pass in the activation's own dtype (reductions accumulate in fp32 internally): no fp32 copy
        # of every activation under bf16 autocast; only the per-channel results are promoted.
        mean, var = local_moments(inputs[0])
        self._moments.append((module, mean, var))

    def start(self) -> None:
        """Record from here (until `active` is False), and only from here: what a forward that failed part-way left
        (a CUDA graph capture that fell back to eager) must not reach the next `collect`."""
        self._moments = []
        self.active = True

    def __len__(self) -> int:
        return len(self.layers)

    def collect(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The summed distance over the layers recorded since the last call (a zero on `device` if none were)."""
        moments, self._moments = self._moments, []
        if not moments:
            return torch.zeros((), device=device)  # made there: a copy from the host would sync with the GPU
        sizes = [m.numel() for _, m, _ in moments]
        means, variances = combine_moments(torch.cat([m for _, m, _ in moments]), torch.cat([v for _, _, v in moments]))
        return torch.stack([
            torch.norm(mean - layer.running_mean, 2) + torch.norm(var - layer.running_var, 2)
            for (layer, _, _), mean, var in zip(moments, means.split(sizes), variances.split(sizes), strict=True)
        ]).sum()


def feature_repulsion(features: torch.Tensor, others: torch.Tensor, temperature: float, offset: int = 0,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """How close each image's feature lies to its nearest neighbours among `others` (the whole synthesis batch
    and a bank of earlier images, held fixed): the log-sum-exp of cosine similarities at `temperature`, the
    denominator of CMI's contrastive loss. Minimising it pushes new images away from what the pool already
    holds. `features` are rows offset ... offset + n of `others` (an image is not its own neighbour).
    `valid` (a mask over `others`) leaves out rows that hold nothing yet: a bank of fixed size, filling up, keeps
    the shapes static, which `--compile` needs (a growing one recompiled the synthesis step every round)."""
    f = F.normalize(features.float(), dim=1)
    similarity = f @ others.to(f.device, f.dtype).T / temperature
    # No Python number reaches the GPU as a tensor here: a plain copy of one (torch.tensor(x, device=...), or
    # `t[rows, cols] = x`, whose index_put_ copies its 0-d value) makes the host wait for the GPU.
    if valid is None:
        count = torch.full((), float(len(others)), device=f.device)
    else:
        similarity = similarity.masked_fill(~valid, float("-inf"))
        count = valid.sum().float()
    similarity.diagonal(offset).fill_(float("-inf"))  # entries (i, offset + i): each image and itself
    # The mean over the global batch under torchrun (every rank logs the same value, and the gradient is exact).
    return global_batch_mean(torch.logsumexp(similarity, dim=1) - torch.log((count - 1).clamp_min(1)))


class PenultimateFeatures:
    """Records what the model's last Linear layer receives (its penultimate features) on each forward, for
    diversity terms measured where the model itself tells images apart."""

    def __init__(self, model: nn.Module) -> None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.found = bool(linears)
        self.dim = linears[-1].in_features if linears else 0  # the width of each image's feature
        self.last: torch.Tensor | None = None
        if linears:
            linears[-1].register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        self.last = inputs[0].flatten(1)
