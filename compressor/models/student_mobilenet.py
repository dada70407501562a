"""The `mobilenet` student family: MobileNetV2-style inverted residual blocks
with depthwise-separable convolutions, as the seed's students. The width of
the final 1x1 convolution is a free integer, which lets the budget search land
within a fraction of a percent of any parameter budget."""
from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import BaseModel, Field

from compressor.models.registry import register_model

# (expansion t, output channels at width 1.0, repeats n, stride s) for 32 px inputs.
STAGES: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
    (6, 96, 1, 1),
]
STEM_CHANNELS = 32


def scaled(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


class MobileNetStudentSpec(BaseModel):
    width: float = Field(gt=0)
    last_channels: int = Field(ge=1)
    stem_stride: int = 1


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(inp, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, oup, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and inp == oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetStudent(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, spec: MobileNetStudentSpec) -> None:
        super().__init__()
        stem = scaled(STEM_CHANNELS, spec.width)
        layers: list[nn.Module] = [_conv_bn(in_channels, stem, 3, spec.stem_stride)]
        if spec.stem_stride > 1:
            layers.append(nn.MaxPool2d(2))
        inp = stem
        for t, c, n, s in STAGES:
            oup = scaled(c, spec.width)
            for i in range(n):
                layers.append(InvertedResidual(inp, oup, s if i == 0 else 1, t))
                inp = oup
        layers.append(_conv_bn(inp, spec.last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(spec.last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def mobilenet_body_params(width: float, in_channels: int) -> tuple[int, int]:
    """Parameters of everything before the final 1x1 convolution, and that convolution's input width."""
    stem = scaled(STEM_CHANNELS, width)
    total = 9 * in_channels * stem + 2 * stem
    inp = stem
    for t, c, n, _ in STAGES:
        oup = scaled(c, width)
        for _ in range(n):
            hidden = inp * t
            if t != 1:
                total += inp * hidden + 2 * hidden
            total += 9 * hidden + 2 * hidden + hidden * oup + 2 * oup
            inp = oup
    return total, inp


def count_mobilenet_student_params(spec: MobileNetStudentSpec, num_classes: int, in_channels: int) -> int:
    body, last_in = mobilenet_body_params(spec.width, in_channels)
    h = spec.last_channels
    return body + last_in * h + 2 * h + h * num_classes + num_classes


register_model(
    "student_mobilenet",
    lambda num_classes, in_channels, spec: MobileNetStudent(num_classes, in_channels, MobileNetStudentSpec(**spec)),
    family="student",
    inferable=False,
)
