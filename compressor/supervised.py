"""Plain supervised training on labelled images: how the demo (and the benchmarks) get a teacher.

Not part of data-free distillation; it exists because no teacher weights can be downloaded here.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.data import Split
from compressor.evaluate import normalise


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1), rows, cols]
    if flip:
        mirror = torch.rand(n, generator=g) < 0.5
        out[mirror] = out[mirror].flip(-1)
    return out


def train_classifier(
    model: nn.Module,
    train: Split,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    pad: int = 2,
    flip: bool = False,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    log=None,
) -> nn.Module:
    """SGD + cosine schedule; with `teacher`, the loss is KD at `temperature` on real images instead of labels."""
    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps_per_epoch = max(1, len(train.labels) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    for epoch in range(epochs):
        perm = torch.randperm(len(train.labels), generator=g)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = normalise(random_crop_flip(train.images[idx], pad, flip, g), mean, std).to(device)
            logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits, train.labels[idx].to(device))
            else:
                with torch.no_grad():
                    t_logits = teacher(x)
                from compressor.methods.losses import kl_at_temperature

                loss = kl_at_temperature(logits, t_logits, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if log:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f}")
    return model.eval()
