"""A residual student started from its ResNet teacher's weights: exact where the shapes are the teacher's, the
strongest channels where they are narrower, untouched (with the reason) where the pair does not fit."""
import pytest
import torch
import torch.nn as nn
import torchvision

from compressor.__main__ import build_parser, config_from_args
from compressor.config import GeneratorConfig, MethodSettings, RunConfig, StudentConfig, TeacherConfig
from compressor.engine.build import build
from compressor.engine.context import open_context
from compressor.models import create_model
from compressor.student_init import inherit_teacher_weights

CIFAR_SHAPE = {"strides": (1, 2, 2)}
TORCHVISION_SHAPE = {"strides": (1, 2, 2, 2), "stem_kernel": 7, "stem_stride": 2, "stem_pool": 2}


def _with_random_statistics(model: nn.Module) -> nn.Module:
    """Every BatchNorm given random scales, shifts and running statistics, so a wrong channel shows in the output."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _student(widths, blocks, shape, num_classes=10, in_channels=3) -> nn.Module:
    spec = {"widths": widths, "blocks": blocks, **shape}
    return create_model("student_resnet", num_classes=num_classes, in_channels=in_channels, spec=spec).eval()


@pytest.mark.parametrize("teacher, widths, blocks, shape, size", [
    (lambda: create_model("resnet20", num_classes=10), (16, 32, 64), (3, 3, 3), CIFAR_SHAPE, 32),
    (lambda: torchvision.models.resnet18(num_classes=10), (64, 128, 256, 512), (2, 2, 2, 2), TORCHVISION_SHAPE, 64),
], ids=["cifar-resnet20", "torchvision-resnet18"])
def test_a_student_of_the_teachers_own_shape_computes_what_the_teacher_computes(teacher, widths, blocks, shape, size):
    teacher = _with_random_statistics(teacher())
    student = _student(widths, blocks, shape)
    assert inherit_teacher_weights(student, teacher) is None
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x), rtol=1e-4, atol=1e-4)


def test_a_narrower_student_takes_the_teachers_strongest_channels_and_blocks():
    teacher = _with_random_statistics(create_model("resnet20", num_classes=10))
    with torch.no_grad():
        # The residual stream of the first stage: channels 3, 7 and 11 scaled most by every layer writing to it.
        for bn in [teacher.bn1] + [b.bn2 for b in teacher.layer1]:
            bn.weight[[3, 7, 11]] = 5.0
        teacher.layer3[1].bn2.weight.mul_(0.01)  # the weakest residual branch of the last stage: dropped
    student = _student((3, 4, 8), (1, 1, 2), CIFAR_SHAPE)
    assert inherit_teacher_weights(student, teacher) is None
    torch.testing.assert_close(student.stem[0].weight, teacher.conv1.weight[[3, 7, 11]])
    torch.testing.assert_close(student.stem[1].running_var, teacher.bn1.running_var[[3, 7, 11]])
    first, hidden = student.stages[0][0], teacher.layer1[0].bn1.weight.abs().topk(3).indices.sort().values
    torch.testing.assert_close(first.conv1.weight, teacher.layer1[0].conv1.weight[hidden][:, [3, 7, 11]])
    kept = student.stages[2][1].bn2.running_mean  # random values: each is found in one teacher block only
    assert all(v in teacher.layer3[2].bn2.running_mean for v in kept)
    assert not any(v in teacher.layer3[1].bn2.running_mean for v in kept)


@pytest.mark.parametrize("teacher, student", [
    (lambda: create_model("vgg8_cifar", num_classes=10), lambda: _student((8, 16, 32), (1, 1, 1), CIFAR_SHAPE)),
    (lambda: create_model("resnet20", num_classes=10), lambda: _student((32, 32, 64), (1, 1, 1), CIFAR_SHAPE)),
    (lambda: create_model("resnet20", num_classes=10), lambda: _student((8, 16, 32, 64), (1, 1, 1, 1), TORCHVISION_SHAPE)),
    (lambda: create_model("wrn_16_2", num_classes=10), lambda: _student((8, 16, 32), (1, 1, 1), CIFAR_SHAPE)),
], ids=["vgg-teacher", "wider-than-the-teacher", "more-stages", "pre-activation-teacher"])
def test_a_pair_that_does_not_fit_is_left_as_it_was_with_the_reason(teacher, student):
    teacher, student = teacher(), student()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    why_not = inherit_teacher_weights(student, teacher)
    assert why_not and "teacher" in why_not
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def _config(tmp_path, init: str, teacher_arch: str = "resnet20") -> RunConfig:
    teacher = tmp_path / f"{teacher_arch}.pth"
    if not teacher.exists():
        torch.save(_with_random_statistics(create_model(teacher_arch, num_classes=10, in_channels=1)).state_dict(), teacher)
    return RunConfig(
        out_dir=str(tmp_path / f"{teacher_arch}-{init}"),
        teacher=TeacherConfig(path=str(teacher), input_size=16, mean=(0.3,), std=(0.4,)),
        student=StudentConfig(ratio=0.3, init=init), generator=GeneratorConfig(width=8, noise_dim=16), steps=1,
        batch_size=8, method=MethodSettings(generator_steps=1, student_steps=1), device="cpu", export_onnx=False,
    )


def test_a_run_asked_to_start_from_the_teacher_builds_its_student_so(tmp_path):
    inherited = build(open_context(_config(tmp_path, "teacher"), quiet=True))
    random = build(open_context(_config(tmp_path, "random"), quiet=True))
    expected = inherited.plan.build(10, 1)
    assert inherit_teacher_weights(expected, inherited.teacher) is None
    for name, value in expected.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(inherited.student.state_dict()[name], value), name
    assert not torch.equal(random.student.stem[0].weight, inherited.student.stem[0].weight)
    # The generator is drawn as it would be without the copy: only the student's starting point differs.
    for a, b in zip(inherited.generator.parameters(), random.generator.parameters(), strict=True):
        assert torch.equal(a, b)


def test_by_default_a_resnet_pair_starts_from_the_teacher_and_the_config_says_so(tmp_path, capsys):
    cfg = _config(tmp_path, "auto")
    assert StudentConfig().init == "auto"
    automatic = build(open_context(cfg, quiet=True))
    asked = build(open_context(_config(tmp_path, "teacher"), quiet=True))
    assert cfg.student.init == "teacher"  # what config.json and the report record
    for name, value in asked.student.state_dict().items():
        assert torch.equal(automatic.student.state_dict()[name], value), name
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize("init, warned", [("auto", False), ("teacher", True)])
def test_a_pair_that_does_not_fit_starts_from_random_weights_said_only_when_asked(tmp_path, capsys, init, warned):
    cfg = _config(tmp_path, init, teacher_arch="small_cnn")
    parts = build(open_context(cfg, quiet=True))
    random = build(open_context(_config(tmp_path, "random", teacher_arch="small_cnn"), quiet=True))
    assert cfg.student.init == "random"
    for name, value in random.student.state_dict().items():
        assert torch.equal(parts.student.state_dict()[name], value), name
    assert ("warning: the student starts from random weights" in capsys.readouterr().out) == warned


@pytest.mark.parametrize("flags, expected", [
    ([], "auto"),
    (["--student-init", "random"], "random"),
    (["--preset", "seed"], "random"),  # the seed's DFAD, as published: its student from random weights
    (["--preset", "seed", "--student-init", "teacher"], "teacher"),
])
def test_the_command_line_chooses_where_the_student_starts(tmp_path, flags, expected):
    args = build_parser().parse_args(["--teacher", "t.pth", "--ratio", "0.2", "--out", str(tmp_path / "r"), *flags])
    assert config_from_args(args).student.init == expected
