"""The `resnet` student family: a CIFAR-style residual net of three stages whose
widths and depth are chosen to fit a parameter budget (see compressor.students)."""
from __future__ import annotations

from pydantic import BaseModel, Field

from compressor.models.cifar_resnet import BasicBlock, CifarResNet
from compressor.models.registry import register_model


class ResNetStudentSpec(BaseModel):
    widths: tuple[int, int, int]
    blocks_per_stage: int = Field(ge=1)
    stem_stride: int = 1


def build_resnet_student(num_classes: int, in_channels: int, spec: dict) -> CifarResNet:
    s = ResNetStudentSpec(**spec)
    return CifarResNet(BasicBlock, [s.blocks_per_stage] * 3, list(s.widths), num_classes, in_channels, s.stem_stride)


def count_resnet_student_params(spec: ResNetStudentSpec, num_classes: int, in_channels: int) -> int:
    """Exact parameter count without building the model, so the budget search can try thousands of shapes."""
    c1 = spec.widths[0]
    total = 9 * in_channels * c1 + 2 * c1
    in_planes = c1
    for stage, planes in enumerate(spec.widths):
        for j in range(spec.blocks_per_stage):
            stride = 2 if (stage > 0 and j == 0) else 1
            total += 9 * in_planes * planes + 2 * planes + 9 * planes * planes + 2 * planes
            if stride != 1 or in_planes != planes:
                total += in_planes * planes + 2 * planes
            in_planes = planes
    return total + in_planes * num_classes + num_classes


register_model(
    "student_resnet",
    lambda num_classes, in_channels, spec: build_resnet_student(num_classes, in_channels, spec),
    family="student",
    inferable=False,
)
