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

from compressor.distributed import GlobalBatchNorm2d


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
        # A small spatial seed and as many 2x upsampling stages as the size needs: two up to 32 px (8 -> 32),
        # five at 224 px (7 -> 224). The projection then stays small (a linear layer growing with the square of
        # the size was 40 M parameters at 224 px), and channels halve at each stage after the first, so the
        # high-resolution stages stay cheap.
        self.stages = max(2, math.ceil(math.log2(image_size / 8)))
        self.init_size = math.ceil(image_size / 2**self.stages)
        self.project = nn.Sequential(nn.Linear(noise_dim, 2 * width * self.init_size**2))
        # 2w, 2w, w, w/2, ... (never below min(16, w)): up to 32 px exactly the DFAD-style 2w -> 2w -> w.
        channels = [2 * width] + [max(min(16, width), (2 * width) >> (i - 1)) for i in range(1, self.stages + 1)]
        layers: list[nn.Module] = [GlobalBatchNorm2d(2 * width)]  # nn.BatchNorm2d outside torchrun
        for c_in, c_out in zip(channels, channels[1:], strict=False):  # consecutive pairs
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                       GlobalBatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(channels[-1], out_channels, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
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
