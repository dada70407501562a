"""Random crop (reflect-padded, in whole pixels) and horizontal flip, per image, on a batch tensor.

One implementation for real images (supervised training) and synthetic ones (the student's KD batches):
the usual CIFAR augmentation, done on whole batches on whatever device they live on.

The random draws come from a CPU generator (a seeded run repeats, and resumes, on any device) and reach the
GPU without a host sync: a plain `.to("cuda")` of a CPU tensor makes the host wait for every kernel queued
before it, which on a KD step bound by launching kernels serialises the host's work and the GPU's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on `device`, without making the host wait for the GPU: on CUDA it is copied from pinned
    memory asynchronously (the caching host allocator keeps the pinned block until the copy has run)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, g: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (reflected borders) and mirror half of them; `g` draws on the CPU."""
    n, c, h, w = x.shape
    draws = []  # the shifts across and down, then the mirror flags: drawn in this order, moved in one copy
    if pad > 0:
        draws += [torch.randint(0, 2 * pad + 1, (n,), generator=g), torch.randint(0, 2 * pad + 1, (n,), generator=g)]
    if flip:
        draws.append((torch.rand(n, generator=g) < 0.5).long())
    if not draws:
        return x
    drawn = host_to_device(torch.stack(draws), x.device)
    if pad > 0:
        dx, dy = drawn[0], drawn[1]
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w)).view(n, 1, 1, w)
        x = padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1),
                   rows, cols]
    if flip:
        mirror = drawn[-1].bool().view(n, 1, 1, 1)
        x = torch.where(mirror, x.flip(-1), x)
    return x

