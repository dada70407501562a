"""The student planner on real teacher architectures: both budgets, the fill, and the teacher's spatial schedule."""
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from compressor.errors import CompressorError
from compressor.model_stats import count_macs, count_params, profile_model
from compressor.models import create_model
from compressor.students import MIN_FILL, given_student, plan_student
from compressor.teachers import load_teacher

TEACHERS = [  # (arch, classes, channels, input size, family that `auto` picks)
    ("resnet34", 10, 3, 32, "resnet"),
    ("resnet34", 100, 3, 32, "resnet"),
    ("resnet34", 10, 3, 224, "resnet"),
    ("resnet34", 100, 3, 224, "resnet"),
    ("resnet50", 1000, 3, 224, "resnet"),
    ("mobilenet_v3_large", 1000, 3, 224, "mobilenet"),
    ("mobilenet_v3_large", 10, 3, 32, "mobilenet"),
    ("efficientnet_b0", 1000, 3, 224, "mobilenet"),
    ("efficientnet_b0", 10, 3, 32, "mobilenet"),
    ("vgg16_bn", 10, 3, 32, "resnet"),
    ("vgg16_bn", 1000, 3, 224, "resnet"),
    ("resnet20", 10, 3, 32, "resnet"),
    ("wrn_40_2", 10, 3, 32, "resnet"),
    ("wrn_40_2", 100, 3, 32, "resnet"),
    ("cifar_resnet34", 100, 3, 32, "resnet"),
    ("small_cnn", 10, 1, 16, "resnet"),
]


def _check_plan(plan, teacher_profile, ratio, macs_ratio, classes, channels, size):
    """Both budgets held, the parameter budget filled, and the built student shaped and costed as planned."""
    assert MIN_FILL * int(ratio * teacher_profile.params) <= plan.params <= ratio * teacher_profile.params
    student = plan.build(classes, channels)  # also asserts the analytic parameter count equals the real one
    measured = profile_model(student, (channels, size, size))
    assert measured.params == plan.params
    assert measured.macs == plan.macs <= macs_ratio * teacher_profile.macs
    assert measured.schedule.sizes == teacher_profile.schedule.sizes
    assert student(torch.randn(2, channels, size, size)).shape == (2, classes)
    return student


@pytest.mark.parametrize("arch, classes, channels, size, family", TEACHERS)
@pytest.mark.parametrize("ratio", [0.1, 0.2])
def test_auto_student_holds_both_budgets_and_the_teachers_schedule(arch, classes, channels, size, family, ratio):
    teacher = create_model(arch, num_classes=classes, in_channels=channels)
    profile = profile_model(teacher, (channels, size, size))
    plan = plan_student("auto", ratio, profile, classes, channels)
    assert plan.family == family
    _check_plan(plan, profile, ratio, ratio, classes, channels, size)


@pytest.mark.parametrize("arch, size", [("resnet34", 32), ("resnet20", 32), ("efficientnet_b0", 32)])
@pytest.mark.parametrize("family", ["resnet", "mobilenet"])
def test_forced_family_holds_its_budgets(arch, size, family):
    teacher = create_model(arch, num_classes=10)
    profile = profile_model(teacher, (3, size, size))
    plan = plan_student(family, 0.2, profile, 10, 3, macs_ratio=0.4)
    assert plan.family == family
    _check_plan(plan, profile, 0.2, 0.4, 10, 3, size)


def test_torchvision_resnet_student_keeps_the_stem_and_pool():
    """The measured defect: a 32 px ResNet-34 teacher pools to 8 px before its first stage; so must its student."""
    profile = profile_model(create_model("resnet34", num_classes=10), (3, 32, 32))
    assert profile.schedule.sizes == (16, 8, 4, 2, 1) and profile.schedule.stem_pool == 2
    plan = plan_student("auto", 0.1, profile, 10, 3)
    assert plan.spec["stem_kernel"] == 7 and plan.spec["stem_stride"] == 2 and plan.spec["stem_pool"] == 2
    assert len(plan.spec["widths"]) == 4
    cifar = profile_model(create_model("resnet20", num_classes=10), (3, 32, 32))
    assert cifar.schedule.sizes == (32, 16, 8) and cifar.schedule.stem_pool == 1


def test_custom_architecture_gets_its_own_schedule(tmp_path, monkeypatch):
    """A user's own network, never seen by any table of names: the schedule is read from running it, including a
    functional convolution and a pool that is not a module."""
    (tmp_path / "odd_nets.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn, torch.nn.functional as F
        class Odd(nn.Module):
            def __init__(self, num_classes=7):
                super().__init__()
                self.a = nn.Conv2d(1, 24, 5, stride=3, padding=2)
                self.b = nn.Parameter(torch.randn(48, 24, 3, 3) * 0.1)
                self.c = nn.Conv2d(48, 96, 3, padding=1)
                self.fc = nn.Linear(96, num_classes)
            def forward(self, x):
                x = F.relu(self.a(x))                            # 48 -> 16
                x = F.relu(F.conv2d(x, self.b, padding=1))        # 16
                x = F.avg_pool2d(x, 2)                            # 8
                x = F.relu(self.c(x))                             # 8
                return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("odd_nets", None)
    import odd_nets

    torch.save(odd_nets.Odd().state_dict(), tmp_path / "odd.pth")
    teacher = load_teacher(tmp_path / "odd.pth", arch="odd_nets:Odd")
    profile = profile_model(teacher.model, (1, 48, 48))
    assert profile.schedule.sizes == (16, 8)
    plan = plan_student("auto", 0.3, profile, 7, 1)
    assert plan.spec["stem_stride"] == 3 and plan.spec["strides"] == [1, 2]
    _check_plan(plan, profile, 0.3, 0.3, 7, 1, 48)


def test_torchscript_teacher_is_profiled_like_the_module(tmp_path):
    model = create_model("resnet18", num_classes=10).eval()
    scripted = torch.jit.trace(model, torch.randn(1, 3, 64, 64))
    a, b = profile_model(model, (3, 64, 64)), profile_model(scripted, (3, 64, 64))
    assert (a.params, a.macs, a.schedule) == (b.params, b.macs, b.schedule)


def test_flop_counter_agrees_with_a_conv_and_linear_hook_count():
    """FlopCounterMode counts what a hand-written counter would (depthwise and grouped convolutions included)."""
    for arch, size in [("mobilenet_v3_large", 64), ("efficientnet_b0", 32), ("resnext50_32x4d", 32), ("resnet20", 32)]:
        model = create_model(arch, num_classes=10).eval()
        total = 0

        def conv_hook(m, _inp, out):
            nonlocal total
            total += out.numel() * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)

        def linear_hook(m, _inp, out):
            nonlocal total
            total += out.numel() * m.in_features

        handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
                   for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        for h in handles:
            h.remove()
        assert count_macs(model, (3, size, size)) == total, arch


def test_infeasible_compute_budget_names_the_macs_ratio_that_works():
    profile = profile_model(create_model("resnet20", num_classes=10), (3, 32, 32))
    with pytest.raises(CompressorError) as err:
        plan_student("resnet", 0.1, profile, 10, 3, macs_ratio=0.01)
    message = str(err.value)
    assert "\n" not in message and "--macs-ratio" in message
    suggested = float(message.split("--macs-ratio ")[1].split()[0])
    assert 0.01 < suggested <= 0.1
    plan = plan_student("resnet", 0.1, profile, 10, 3, macs_ratio=suggested)  # the advice works
    _check_plan(plan, profile, 0.1, suggested, 10, 3, 32)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.5, 1.5])
def test_ratio_outside_open_interval_is_refused(ratio):
    profile = profile_model(create_model("resnet20", num_classes=10), (3, 32, 32))
    with pytest.raises(CompressorError, match=r"\(0, 1\)"):
        plan_student("resnet", ratio, profile, 10, 3)


def test_impossible_parameter_budget_is_a_clear_error():
    # 0.1 % of a 270k-parameter teacher is 270 parameters: less than a 100-class linear head.
    profile = profile_model(create_model("resnet20", num_classes=100), (3, 32, 32))
    for family in ("resnet", "mobilenet"):
        with pytest.raises(CompressorError, match="too small"):
            plan_student(family, 0.001, profile, 100, 3)


def test_students_cost_less_than_their_teacher():
    teacher = create_model("resnet20", num_classes=10)
    profile = profile_model(teacher, (3, 32, 32))
    for family in ("resnet", "mobilenet"):
        student = plan_student(family, 0.2, profile, 10, 3).build(10, 3)
        assert count_params(student) < profile.params and count_macs(student, (3, 32, 32)) < profile.macs


@pytest.mark.parametrize("arch, classes, size", [("vgg11_bn", 20, 224), ("vgg16_bn", 10, 32)])
def test_a_head_is_never_wider_or_deeper_than_the_teachers(arch, classes, size):
    """VGG's parameters sit in its two 4096-wide layers, and compute binds before the convolutions can hold the
    budget: the student's head may copy that shape (no 116,921-unit layer, as the planner once made), no more."""
    profile = profile_model(create_model(arch, num_classes=classes), (3, size, size))
    assert profile.head_hidden == (4096, 4096)
    for ratio in (0.1, 0.2):
        plan = plan_student("resnet", ratio, profile, classes, 3)
        hidden = plan.spec["head_hidden"]
        assert len(hidden) <= 2 and all(0 < h <= 4096 for h in hidden), hidden
        assert plan.short_of_budget is None  # two teacher-like layers hold the budget here
        _check_plan(plan, profile, ratio, ratio, classes, 3, size)


def test_where_compute_binds_and_the_teacher_has_no_head_the_student_is_smaller_and_says_why():
    profile = profile_model(create_model("resnet20", num_classes=10), (3, 32, 32))
    assert profile.head_hidden == ()
    feasible = plan_student("resnet", 0.1, profile, 10, 3)
    plan = plan_student("resnet", 0.3, profile, 10, 3, macs_ratio=feasible.macs / profile.macs)
    assert plan.spec["head_hidden"] == [] and plan.params < MIN_FILL * int(0.3 * profile.params)
    assert plan.macs <= feasible.macs and plan.params >= feasible.params
    assert "compute budget binds first" in plan.short_of_budget and "--macs-ratio" in plan.short_of_budget
    assert "\n" not in plan.short_of_budget
    built = plan.build(10, 3)
    assert count_params(built) == plan.params and count_macs(built, (3, 32, 32)) == plan.macs


def test_where_compute_binds_the_first_stages_keep_their_share_of_it():
    """On a VGG-style teacher, whose weights sit in its head, the most parameters within the compute budget meant
    first stages of 4 and 6 channels under a 215-channel last one, a student far behind the padded one on the
    validation split (RESULTS.md); the planner now gives the widest first stages whose last stage still grows
    like the others, and the teacher's head shape."""
    profile = profile_model(create_model("vgg8_cifar", num_classes=10), (3, 32, 32))
    for ratio in (0.1, 0.2):
        plan = plan_student("auto", ratio, profile, 10, 3)
        w = plan.spec["widths"]
        assert plan.short_of_budget and plan.spec["head_hidden"] == [512]
        assert w[0] >= 16 and w[2] / w[1] >= w[1] / w[0] - 0.05, w
        assert plan.macs <= ratio * profile.macs and plan.params < ratio * profile.params
        assert count_params(plan.build(10, 3)) == plan.params


def test_a_spec_written_with_one_hidden_width_reads_as_one_layer():
    from compressor.models.student_resnet import ResNetStudentSpec

    old = {"widths": [8, 16], "blocks": [1, 1], "strides": [1, 2], "head_hidden": 32}
    assert ResNetStudentSpec(**old).head_hidden == (32,)
    assert ResNetStudentSpec(**{**old, "head_hidden": 0}).head_hidden == ()


def test_a_given_spec_is_the_plan_it_came_from_or_says_it_was_given():
    """A resumed run takes the spec its config.json recorded: the same student, budgets and note as the plan; a
    shape given by hand is built as it is and says so where it is short of the budget."""
    profile = profile_model(create_model("vgg8_cifar", num_classes=10), (3, 32, 32))
    plan = plan_student("auto", 0.2, profile, 10, 3)
    assert plan.short_of_budget and plan.spec["head_hidden"] == [512]  # compute binds on this teacher
    assert given_student(plan.arch, plan.spec, 0.2, None, profile, 10, 3) == plan
    # The shape the planner once gave this teacher: one 9,028-unit hidden layer, built as given.
    padded = {"widths": [25, 50, 50], "blocks": [1, 1, 1], "strides": [1, 2, 2], "stem_kernel": 3, "stem_stride": 1,
              "stem_pool": 2, "head_hidden": 9028}
    given = given_student("student_resnet", padded, 0.2, None, profile, 10, 3)
    assert given.spec["head_hidden"] == [9028] and given.short_of_budget is None
    assert given.params == count_params(given.build(10, 3)) > plan.params
    small = given_student("student_resnet", {**padded, "head_hidden": 64}, 0.2, None, profile, 10, 3)
    assert small.short_of_budget.startswith("the student's shape was given, not planned")


@pytest.mark.parametrize("arch, spec, message", [
    (None, {"widths": [8, 16]}, "needs its architecture"),
    ("student_resnet", {"widths": [8, 16], "blocks": [1], "strides": [1, 2]}, "does not describe a resnet student"),
    ("student_resnet", {"widths": [512, 1024], "blocks": [3, 3], "strides": [1, 2]}, "not fewer than the teacher's"),
])
def test_a_given_spec_that_cannot_be_built_is_a_clear_error(arch, spec, message):
    profile = profile_model(create_model("resnet20", num_classes=10), (3, 32, 32))
    with pytest.raises(CompressorError, match=message):
        given_student(arch, spec, 0.2, None, profile, 10, 3)
