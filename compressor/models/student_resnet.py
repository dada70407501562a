"""The `resnet` student family: residual stages that follow the teacher's spatial schedule.

The stem (kernel, stride, optional max-pool) and the stride of each stage are copied from the teacher's
schedule (compressor.model_stats), so a student of a torchvision ResNet has its 7x7/2 stem and max-pool and
runs its first stage at a quarter of the input size, while a student of a CIFAR ResNet keeps the full size.
Widths and depth are what the budget search (compressor.students) chooses. Optional hidden layers in the head
hold parameters at one multiply-add each, for a teacher whose own head has them (VGG's two 4096-wide layers):
the search never makes them wider or more numerous than the teacher's.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator, model_validator

from compressor.models.cifar_resnet import BasicBlock
from compressor.models.registry import register_model


class ResNetStudentSpec(BaseModel):
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    strides: tuple[int, ...]  # per stage; the first is 1 (the stem and its pool do the first downsampling)
    stem_kernel: int = Field(3, ge=1)
    stem_stride: int = Field(1, ge=1)
    stem_pool: int = Field(1, ge=1)
    head_hidden: tuple[int, ...] = ()  # hidden layer widths between the global pool and the classifier

    @field_validator("head_hidden", mode="before")
    @classmethod
    def _one_width_is_one_layer(cls, v: object) -> object:
        """A spec written as one width (0: no hidden layer) reads as a tuple of widths."""
        if isinstance(v, int):
            return () if v == 0 else (v,)
        return v

    @model_validator(mode="after")
    def _one_entry_per_stage(self) -> ResNetStudentSpec:
        if not self.widths or not (len(self.widths) == len(self.blocks) == len(self.strides)):
            raise ValueError("widths, blocks and strides need one entry per stage")
        if any(h <= 0 for h in self.head_hidden):
            raise ValueError("hidden head widths must be positive")
        return self


def pool_for(factor: int) -> nn.Module:
    """A max-pool that maps n pixels to ceil(n / factor), as torchvision's 3x3/2 stem pool does."""
    return nn.MaxPool2d(2 * factor - 1, factor, factor - 1) if factor > 1 else nn.Identity()


def classifier_head(in_features: int, hidden: tuple[int, ...], num_classes: int) -> nn.Module:
    if not hidden:
        return nn.Linear(in_features, num_classes)
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


def head_cost(in_features: int, hidden: tuple[int, ...], num_classes: int) -> tuple[int, int]:
    """(parameters, multiply-adds) of `classifier_head`."""
    widths = (in_features, *hidden, num_classes)
    macs = sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    return macs + sum(widths[1:]), macs


class ResNetStudent(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, spec: ResNetStudentSpec) -> None:
        super().__init__()
        c0, k = spec.widths[0], spec.stem_kernel
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c0, k, spec.stem_stride, k // 2, bias=False),
            nn.BatchNorm2d(c0),
            nn.ReLU(inplace=True),
            pool_for(spec.stem_pool),
        )
        stages, in_planes = [], c0
        for width, n, stride in zip(spec.widths, spec.blocks, spec.strides, strict=True):  # ResNetStudentSpec checks the lengths
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(BasicBlock(in_planes, width, s))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = classifier_head(in_planes, spec.head_hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet_student_cost(spec: ResNetStudentSpec, num_classes: int, in_channels: int, input_size: int) -> tuple[int, int]:
    """Exact (parameters, multiply-adds at batch 1) without building the model, so the search can try
    thousands of shapes; the tests check both against the built model and FlopCounterMode."""
    k, c0 = spec.stem_kernel, spec.widths[0]
    size = math.ceil(input_size / spec.stem_stride)
    params, macs = k * k * in_channels * c0 + 2 * c0, k * k * in_channels * c0 * size * size
    size = math.ceil(size / spec.stem_pool)
    in_planes = c0
    for width, n, stride in zip(spec.widths, spec.blocks, spec.strides, strict=True):
        for s in [stride] + [1] * (n - 1):
            size = math.ceil(size / s)
            conv = 9 * in_planes * width + 9 * width * width
            params += conv + 4 * width
            macs += conv * size * size
            if s != 1 or in_planes != width:
                params += in_planes * width + 2 * width
                macs += in_planes * width * size * size
            in_planes = width
    head_params, head_macs = head_cost(in_planes, spec.head_hidden, num_classes)
    return params + head_params, macs + head_macs


register_model(
    "student_resnet",
    lambda num_classes, in_channels, spec: ResNetStudent(num_classes, in_channels, ResNetStudentSpec(**spec)),
    family="student",
    inferable=False,
)
