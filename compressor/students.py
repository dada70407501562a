"""Budgeted students: for a ratio r, a student with at most r x teacher params
and at least 0.97 x that, from the family the user picks.

Parameter counts are computed analytically (and checked against the built
model in the tests), so the search can try many shapes in milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn as nn

from compressor.errors import CompressorError
from compressor.model_stats import count_params
from compressor.models import create_model
from compressor.models.student_mobilenet import (
    MobileNetStudentSpec,
    count_mobilenet_student_params,
    mobilenet_body_params,
)
from compressor.models.student_resnet import ResNetStudentSpec, count_resnet_student_params

StudentFamily = Literal["resnet", "mobilenet"]
MIN_FILL = 0.97  # the contract: params >= 0.97 x budget
_FAMILY_TO_ARCH = {"resnet": "student_resnet", "mobilenet": "student_mobilenet"}


@dataclass(frozen=True)
class StudentPlan:
    family: StudentFamily
    arch: str
    spec: dict
    params: int
    budget: int

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        model = create_model(self.arch, num_classes=num_classes, in_channels=in_channels, spec=self.spec)
        assert count_params(model) == self.params, "analytic parameter count drifted from the model"
        return model


def stem_stride_for(input_size: int) -> int:
    return 1 if input_size <= 64 else 2


def _best_resnet(budget: int, num_classes: int, in_channels: int, stem_stride: int) -> ResNetStudentSpec | None:
    def params(c1: int, c2: int, c3: int, b: int) -> int:
        spec = ResNetStudentSpec(widths=(c1, c2, c3), blocks_per_stage=b, stem_stride=stem_stride)
        return count_resnet_student_params(spec, num_classes, in_channels)

    best: tuple[int, ResNetStudentSpec] | None = None
    # Prefer depth (3 blocks per stage, ResNet-20 like) unless that leaves the net too thin to learn.
    for b in (3, 2, 1):
        c1 = 1
        while params(c1 + 1, 2 * (c1 + 1), 4 * (c1 + 1), b) <= budget:
            c1 += 1
        if c1 < 8 and b > 1:
            continue
        for base in range(max(2, c1 - 2), c1 + 1):
            for c2 in range(int(1.5 * base), int(2.5 * base) + 1):
                lo, hi = int(1.5 * c2), int(2.5 * c2)
                if params(base, c2, lo, b) > budget:
                    continue
                while lo < hi:  # the largest c3 that fits
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if params(base, c2, mid, b) <= budget else (lo, mid - 1)
                p = params(base, c2, lo, b)
                if best is None or p > best[0]:
                    best = (p, ResNetStudentSpec(widths=(base, c2, lo), blocks_per_stage=b, stem_stride=stem_stride))
        if best is not None:
            return best[1]
    return None


def _best_mobilenet(budget: int, num_classes: int, in_channels: int, stem_stride: int) -> MobileNetStudentSpec | None:
    """Scale the body to about 60 % of the budget, then size the last 1x1 conv to fill the rest exactly."""
    best: MobileNetStudentSpec | None = None
    for share in (0.6, 0.45, 0.3, 0.15):
        lo, hi = 0.01, 16.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mobilenet_body_params(mid, in_channels)[0] <= share * budget else (lo, mid)
        body, last_in = mobilenet_body_params(lo, in_channels)
        h = (budget - body - num_classes) // (last_in + 2 + num_classes)
        if h >= last_in:
            best = MobileNetStudentSpec(width=round(lo, 4), last_channels=int(h), stem_stride=stem_stride)
            # Rounding the width can shift the body by a few parameters: re-fit h on the rounded width.
            body, last_in = mobilenet_body_params(best.width, in_channels)
            h = (budget - body - num_classes) // (last_in + 2 + num_classes)
            return best.model_copy(update={"last_channels": int(h)})
    return best


def plan_student(
    family: StudentFamily,
    ratio: float,
    teacher_params: int,
    num_classes: int,
    in_channels: int,
    input_size: int,
) -> StudentPlan:
    if not 0 < ratio < 1:
        raise CompressorError(f"--ratio must be in (0, 1), got {ratio}")
    if family not in _FAMILY_TO_ARCH:
        raise CompressorError(f"unknown student family {family!r}; choose from {', '.join(_FAMILY_TO_ARCH)}")
    budget = int(ratio * teacher_params)
    stem = stem_stride_for(input_size)
    if family == "resnet":
        spec = _best_resnet(budget, num_classes, in_channels, stem)
        params = count_resnet_student_params(spec, num_classes, in_channels) if spec else 0
    else:
        spec = _best_mobilenet(budget, num_classes, in_channels, stem)
        params = count_mobilenet_student_params(spec, num_classes, in_channels) if spec else 0
    if spec is None or params < MIN_FILL * budget:
        raise CompressorError(
            f"ratio {ratio} leaves a budget of {budget:,} parameters, too small for a {family} student "
            f"with {num_classes} classes; raise --ratio or try --student "
            f"{'mobilenet' if family == 'resnet' else 'resnet'}"
        )
    return StudentPlan(family, _FAMILY_TO_ARCH[family], spec.model_dump(mode="json"), params, budget)
