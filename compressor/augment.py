"""Random crop (reflect-padded, in whole pixels) and horizontal flip, per image, on a batch tensor.

One implementation for real images (supervised training) and synthetic ones (the student's KD batches):
the usual CIFAR augmentation, done on whole batches on whatever device they live on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, g: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (reflected borders) and mirror half of them; `g` draws on the CPU."""
    n, c, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w)).view(n, 1, 1, w)
        x = padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1), rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=g) < 0.5).to(x.device).view(n, 1, 1, 1)
        x = torch.where(mirror, x.flip(-1), x)
    return x


def mix_pairs(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Blend each image with another of its batch, weight λ ~ Beta(alpha, alpha) per image (mixup without labels).

    For distillation the teacher labels the blend itself ("function matching", Beyer et al. 2022), so every
    blend is a new, correctly labelled input: a small pool of synthetic images covers far more of the input
    space. Draws come from the global CPU generator, so a seeded run repeats (and resumes) on any device.
    """
    n = x.shape[0]
    lam = torch.distributions.Beta(float(alpha), float(alpha)).sample((n,)).to(x.device, x.dtype).view(n, 1, 1, 1)
    partner = torch.randperm(n).to(x.device)
    return lam * x + (1 - lam) * x[partner]
