"""The image generator: noise -> images in the teacher's normalised input space.

It draws pixels in [0, 1] (Tanh rescaled) and then applies the teacher's
mean/std, so synthetic images are real images to look at and to calibrate
INT8 on, and need no extra normalisation before the teacher.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Generator(nn.Module):
    def __init__(
        self,
        noise_dim: int,
        out_channels: int,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        width: int = 64,
    ) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.image_size = image_size
        self.init_size = math.ceil(image_size / 4)
        self.project = nn.Sequential(nn.Linear(noise_dim, 2 * width * self.init_size**2))
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, out_channels, 3, padding=1),
            nn.Tanh(),
        )
        self.width = width
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], for looking at."""
        x = self.project(z).view(z.shape[0], 2 * self.width, self.init_size, self.init_size)
        x = self.body(x)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x + 1) / 2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images normalised the way the teacher expects its input."""
        return (self.pixels(z) - self.mean) / self.std

    def to_pixels(self, normalised: torch.Tensor) -> torch.Tensor:
        return normalised * self.std + self.mean

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] into the teacher's input space (what `forward` returns)."""
        return (pixels - self.mean) / self.std
