"""Set-up: the teacher (and what it tells about its input), the evaluation data, the student planned on the
teacher's measurements, the generator and the method. Seeded so that a run repeats exactly."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from compressor import distributed
from compressor.config import RunConfig
from compressor.data import IMAGENET_MEAN, IMAGENET_STD, PRESETS, LabelledData, load_dataset
from compressor.engine.context import RunContext
from compressor.errors import CompressorError, first_line
from compressor.generator import Generator
from compressor.methods import Method, create_method
from compressor.model_stats import ModelProfile, count_macs, profile_model
from compressor.models import get_entry, list_models
from compressor.student_init import inherit_teacher_weights
from compressor.students import StudentPlan, given_student, named_student, plan_student
from compressor.teachers import LoadedTeacher, load_teacher


@dataclass
class Parts:
    """The models and the method a run trains, on this rank's device, and what the report says of them."""

    teacher: nn.Module
    student: nn.Module
    generator: Generator
    method: Method
    plan: StudentPlan
    teacher_profile: ModelProfile
    data: LabelledData | None
    input_shape: tuple[int, int, int]  # the teacher's: channels, height, width
    student_macs: int


def default_input(arch: str, dataset: str | None) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input size, mean, std) when the user gives none: the dataset's preset, else the architecture's home
    (224 px and ImageNet statistics for torchvision models, 32 px CIFAR for the rest)."""
    preset = PRESETS.get(dataset or "")
    if preset is None and arch == "small_cnn":
        preset = PRESETS["digits"]
    if preset:
        return preset.input_size, preset.mean, preset.std
    if arch in list_models() and get_entry(arch).family == "torchvision":
        return 224, IMAGENET_MEAN, IMAGENET_STD
    return 32, PRESETS["cifar10"].mean, PRESETS["cifar10"].std


def per_channel(values: tuple[float, ...], channels: int, what: str) -> tuple[float, ...]:
    if len(values) == channels:
        return tuple(values)
    if len(values) == 1:
        return tuple(values) * channels
    if channels == 1:
        return (sum(values) / len(values),)
    raise CompressorError(f"--{what} has {len(values)} values but the teacher takes {channels} channels")


def resolve_teacher(cfg: RunConfig) -> LoadedTeacher:
    """Load the teacher and write what was inferred (arch, classes, input) back into the config."""
    teacher = load_teacher(cfg.teacher.path, cfg.teacher.arch, cfg.teacher.trust_code)
    t = cfg.teacher
    if t.sha256 and t.sha256 != teacher.sha256:
        raise CompressorError(f"teacher {t.path} changed since this run started (sha256 differs); cannot resume")
    default_size, default_mean, default_std = default_input(teacher.arch, cfg.eval.dataset)
    t.arch = teacher.arch
    t.sha256 = teacher.sha256
    t.num_classes = teacher.num_classes
    t.in_channels = teacher.in_channels
    t.input_size = t.input_size or default_size
    t.mean = per_channel(t.mean or default_mean, teacher.in_channels, "mean")
    t.std = per_channel(t.std or default_std, teacher.in_channels, "std")
    return teacher


def load_eval_data(cfg: RunConfig) -> LabelledData | None:
    if not cfg.eval.dataset:
        return None
    t = cfg.teacher
    data = load_dataset(cfg.eval.dataset, cfg.eval.data_dir, cfg.eval.download, t.input_size, t.in_channels)
    n_classes = len(data.class_names)
    if n_classes != t.num_classes:
        raise CompressorError(f"dataset {cfg.eval.dataset} has {n_classes} classes but the teacher predicts {t.num_classes}")
    t.class_names = t.class_names or data.class_names
    return data


def resolve_student(cfg: RunConfig, teacher: LoadedTeacher) -> tuple[nn.Module, StudentPlan, ModelProfile]:
    """Plan the student on the teacher's measured parameters, multiply-adds and spatial schedule (or take
    the named architecture or the given spec as it is)."""
    s, t = cfg.student, cfg.teacher
    try:
        profile = profile_model(teacher.model, (t.in_channels, t.input_size, t.input_size))
    except Exception as exc:  # e.g. an input size the teacher cannot take
        raise CompressorError(f"the teacher cannot run on {t.in_channels}x{t.input_size}x{t.input_size} inputs: "
                              f"{first_line(exc)}") from None
    if s.name:
        plan = named_student(s.name, profile, t.num_classes, t.in_channels)
        s.ratio = plan.params / profile.params
    elif s.spec is not None:  # a shape given as it is (or resumed): not searched again
        plan = given_student(s.arch, s.spec, s.ratio, s.macs_ratio, profile, t.num_classes, t.in_channels)
    else:
        plan = plan_student(s.family, s.ratio, profile, t.num_classes, t.in_channels, s.macs_ratio)
    s.arch, s.spec, s.params = plan.arch, plan.spec, plan.params
    return plan.build(t.num_classes, t.in_channels), plan, profile


def start_from_teacher(ctx: RunContext, student: nn.Module, teacher: nn.Module) -> None:
    """The student takes its teacher's weights where the config asks and the pair allows, and the config records
    which it got. It draws no random numbers, so the generator and everything after are what they would be
    without it; a resumed run does it again and then loads its checkpoint over it."""
    s = ctx.cfg.student
    if s.init == "random":
        return
    why_not = inherit_teacher_weights(student, teacher)
    if why_not and s.init == "teacher":
        ctx.warn(f"the student starts from random weights: {why_not}")
    s.init = "random" if why_not else "teacher"


def build(ctx: RunContext) -> Parts:
    """One seed for the weights (every rank builds the same models, rank 0's broadcast to make sure), then each
    rank's own stream for what it draws (pool batches, crops)."""
    cfg, device = ctx.cfg, ctx.device
    torch.manual_seed(cfg.seed)
    loaded = resolve_teacher(cfg)
    data = load_eval_data(cfg)
    student, plan, profile = resolve_student(cfg, loaded)
    start_from_teacher(ctx, student, loaded.model)
    t = cfg.teacher
    t.class_names = t.class_names or [str(i) for i in range(t.num_classes)]
    teacher = loaded.model.to(device).eval()
    student = student.to(device)
    generator = Generator(cfg.generator.noise_dim, t.in_channels, t.input_size, t.mean, t.std, cfg.generator.width).to(device)
    if ctx.on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its fastest kernels once
        for m in (teacher, student, generator):
            m.to(memory_format=torch.channels_last)
    distributed.broadcast_module(student)
    distributed.broadcast_module(generator)
    torch.manual_seed(cfg.seed + ctx.world.rank)
    method = create_method(cfg.method.name, teacher, student, generator, cfg.method, ctx.work_dir)
    for warning in method.warnings():
        ctx.warn(warning)
    shape = (t.in_channels, t.input_size, t.input_size)
    return Parts(teacher, student, generator, method, plan, profile, data, shape, count_macs(student, shape))
