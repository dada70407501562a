"""A VGG-style CIFAR network whose head holds most of its weights, as torchvision's VGGs do at 224 px.

Its last convolutions run at a quarter of the input's side and their whole map is flattened into a fully
connected hidden layer: the shape where a student's compute budget binds before its parameter budget (the
student's convolutions pay many multiply-adds per weight, the teacher's head one), so it is the teacher on
which the planner's choice between a wider head and a smaller student is measured (`benchmarks/RESULTS.md`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from compressor.models.registry import register_model

VGG8_WIDTHS = (32, "M", 64, "M", 128, 128, "M", 256, 256)  # 3x3 convolutions and 2x2 max-pools, as in VGG


class CifarVGG(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32,
                 widths: tuple[int | str, ...] = VGG8_WIDTHS, head_hidden: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for w in widths:
            if w == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(channels, int(w), 3, padding=1, bias=False), nn.BatchNorm2d(int(w)), nn.ReLU(inplace=True)]
            channels = int(w)
        self.features = nn.Sequential(*layers)
        side = input_size // 2 ** widths.count("M")
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, head_hidden), nn.ReLU(inplace=True), nn.Linear(head_hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


register_model("vgg8_cifar", CifarVGG, family="cifar_vgg")
