import pytest
import torch

from compressor.errors import CompressorError
from compressor.model_stats import count_macs, count_params
from compressor.models import create_model
from compressor.students import MIN_FILL, plan_student

TEACHERS = [
    ("resnet20", 10, 3, 32),
    ("small_cnn", 10, 1, 16),
    ("cifar_resnet34", 100, 3, 32),
    ("resnet34", 100, 3, 224),
]


@pytest.mark.parametrize("family", ["resnet", "mobilenet"])
@pytest.mark.parametrize("teacher_arch, classes, channels, size", TEACHERS)
@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.5])
def test_student_fits_budget(family, teacher_arch, classes, channels, size, ratio):
    with torch.device("meta"):
        teacher_params = count_params(create_model(teacher_arch, num_classes=classes, in_channels=channels))
    plan = plan_student(family, ratio, teacher_params, classes, channels, size)
    budget = ratio * teacher_params
    assert MIN_FILL * budget <= plan.params <= budget
    with torch.device("meta"):
        student = plan.build(classes, channels)  # also asserts the analytic count equals the real one
    assert count_params(student) == plan.params


@pytest.mark.parametrize("family", ["resnet", "mobilenet"])
def test_student_runs_and_costs_less_than_teacher(family):
    teacher = create_model("resnet20", num_classes=10)
    plan = plan_student(family, 0.2, count_params(teacher), 10, 3, 32)
    student = plan.build(10, 3)
    assert student(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert count_macs(student, (3, 32, 32)) < count_macs(teacher, (3, 32, 32))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.5, 1.5])
def test_ratio_outside_open_interval_is_refused(ratio):
    with pytest.raises(CompressorError, match=r"\(0, 1\)"):
        plan_student("resnet", ratio, 1_000_000, 10, 3, 32)


def test_impossible_budget_is_a_clear_error():
    # 0.1 % of a 270k-parameter teacher is 270 parameters: less than a 100-class linear head.
    with pytest.raises(CompressorError, match="too small"):
        plan_student("resnet", 0.001, 270_000, 100, 3, 32)
    with pytest.raises(CompressorError, match="too small"):
        plan_student("mobilenet", 0.001, 270_000, 100, 3, 32)
