"""The `mobilenet` student family: MobileNetV2-style inverted residual blocks
with depthwise-separable convolutions, as the seed's students. The stem and
the downsampling stages follow the teacher's spatial schedule; the width of
the final 1x1 convolution is a free integer, which lets the budget search land
within a fraction of a percent of any parameter budget. That convolution runs
at the smallest feature-map size, so it is also the cheapest place to hold
parameters when the compute budget is tight."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from pydantic import BaseModel, Field

from compressor.models.registry import register_model
from compressor.models.student_resnet import pool_for

STEM_CHANNELS = 32
# Output channels (at width 1.0) of the downsampling stages, in order, and of the stage after the last one.
DOWN_CHANNELS = (32, 64, 96, 160, 240, 320, 480, 640)


def stage_table(down_strides: tuple[int, ...], repeats: int = 2, strided_stem: bool = False) -> list[tuple[int, int, int, int]]:
    """(expansion t, channels at width 1.0, repeats n, stride s) per stage.

    Behind a stride-1 stem (CIFAR-style teachers) the 24-channel stage stays at full size: with two
    stride-2 stages and two repeats this is the seed's CIFAR MobileNetV2 (16, 24; 32, 64 downsampling; 96).
    Behind a strided stem (ImageNet-style teachers) it downsamples, as in MobileNetV2 itself: expanded
    blocks at the stem's size are memory-bound on a CPU and cost far more time than their MACs say.
    """
    channels = (24, *DOWN_CHANNELS) if strided_stem else DOWN_CHANNELS
    if len(down_strides) >= len(channels):
        raise ValueError(f"at most {len(channels) - 1} downsampling stages, not {len(down_strides)}")
    table = [(1, 16, 1, 1)] + ([] if strided_stem else [(6, 24, repeats, 1)])
    table += [(6, c, repeats, s) for c, s in zip(channels, down_strides, strict=False)]  # channels has more entries
    return table + [(6, channels[len(down_strides)], 1, 1)]


def scaled(channels: int, width: float) -> int:
    """Channels at a width multiplier, in multiples of 8 from 8 up (as torchvision's `_make_divisible`):
    ONNX Runtime's CPU kernels work in blocks of 8 or 16 channels and pad the rest, so 10 channels cost what
    16 do, plus layout conversions. Below 8 the count stays exact (at least 4) for the smallest budgets."""
    c = channels * width
    if c < 7.5:
        return max(4, int(round(c)))
    return max(8, int(c + 4) // 8 * 8)


def expanded(channels: int, expansion: int) -> int:
    """The hidden width of an inverted residual block, on the same channel grid as `scaled`."""
    return channels if expansion == 1 else scaled(channels * expansion, 1.0)


class MobileNetStudentSpec(BaseModel):
    width: float = Field(gt=0)
    last_channels: int = Field(ge=1)
    down_strides: tuple[int, ...] = (2, 2)
    repeats: int = Field(2, ge=1)  # blocks per stage after the first
    stem_stride: int = Field(1, ge=1)
    stem_pool: int = Field(1, ge=1)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = expanded(inp, expand)
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
        layers: list[nn.Module] = [_conv_bn(in_channels, stem, 3, spec.stem_stride), pool_for(spec.stem_pool)]
        inp = stem
        for t, c, n, s in stage_table(spec.down_strides, spec.repeats, spec.stem_stride * spec.stem_pool > 1):
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


def mobilenet_body_cost(spec: MobileNetStudentSpec, in_channels: int, input_size: int) -> tuple[int, int, int, int]:
    """(parameters, multiply-adds) of everything before the final 1x1 convolution, that convolution's input
    width, and the feature-map size it runs at; `last_channels` is not read."""
    stem = scaled(STEM_CHANNELS, spec.width)
    size = math.ceil(input_size / spec.stem_stride)
    params, macs = 9 * in_channels * stem + 2 * stem, 9 * in_channels * stem * size * size
    size = math.ceil(size / spec.stem_pool)
    inp = stem
    for t, c, n, s in stage_table(spec.down_strides, spec.repeats, spec.stem_stride * spec.stem_pool > 1):
        oup = scaled(c, spec.width)
        for i in range(n):
            hidden = expanded(inp, t)
            expand = inp * hidden if t != 1 else 0
            macs += expand * size * size
            size = math.ceil(size / (s if i == 0 else 1))
            params += expand + (2 * hidden if t != 1 else 0) + 9 * hidden + 2 * hidden + hidden * oup + 2 * oup
            macs += (9 * hidden + hidden * oup) * size * size
            inp = oup
    return params, macs, inp, size


def mobilenet_student_cost(spec: MobileNetStudentSpec, num_classes: int, in_channels: int, input_size: int) -> tuple[int, int]:
    """Exact (parameters, multiply-adds at batch 1), checked against the built model in the tests."""
    params, macs, last_in, size = mobilenet_body_cost(spec, in_channels, input_size)
    h = spec.last_channels
    return params + last_in * h + 2 * h + h * num_classes + num_classes, macs + last_in * h * size * size + h * num_classes


register_model(
    "student_mobilenet",
    lambda num_classes, in_channels, spec: MobileNetStudent(num_classes, in_channels, MobileNetStudentSpec(**spec)),
    family="student",
    inferable=False,
)
