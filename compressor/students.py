"""Budgeted students shaped like their teacher.

Two budgets, both relative to the teacher at its input size: parameters (at most ratio x teacher and at
least 0.97 x that) and multiply-adds (at most macs_ratio x teacher). A parameter budget alone is not enough:
a student that runs its first stage at full resolution behind a teacher that pools to a quarter first does
several times the teacher's arithmetic with a tenth of its weights. So the student copies the teacher's
spatial schedule (`compressor.model_stats.profile_model`: the sizes its convolutions run at, measured, not
looked up by name), and the search picks widths and depth that fill the parameter budget inside the compute
budget. Costs are computed analytically, so the search tries thousands of shapes in well under a second.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch.nn as nn
from pydantic import ValidationError

from compressor.errors import CompressorError, first_line, first_problem
from compressor.model_stats import ModelProfile, SpatialSchedule, count_macs, count_params
from compressor.models import create_model
from compressor.models.student_mobilenet import MobileNetStudentSpec, mobilenet_body_cost, mobilenet_student_cost
from compressor.models.student_resnet import ResNetStudentSpec, resnet_student_cost

# The planned student families and the registered architecture each builds; "auto" picks one from the teacher.
FAMILY_ARCHS = {"resnet": "student_resnet", "mobilenet": "student_mobilenet"}
StudentFamily = Literal[("auto", *FAMILY_ARCHS)]
_SPEC_TYPES = {"resnet": ResNetStudentSpec, "mobilenet": MobileNetStudentSpec}
MIN_FILL = 0.97  # the contract: params >= 0.97 x budget
MIN_FIRST_WIDTH = 8  # below this the first stage is too thin to learn; depth gives way first
# Width growth from stage to stage. A fine grid matters: with the last width the only free integer, one more
# channel can be more than the 3 % fill tolerance of a small budget, and a deeper student is then missed.
GROWTHS = tuple(1.5 + 0.125 * i for i in range(21))  # 1.5 ... 4.0; doubling is preferred, then the nearest


@dataclass(frozen=True)
class StudentPlan:
    family: Literal["resnet", "mobilenet", "named"]
    arch: str
    spec: dict
    params: int
    macs: int
    budget: int
    macs_budget: int
    short_of_budget: str | None = None  # why the student holds fewer parameters than the ratio allows, where it does

    @property
    def label(self) -> str:
        """What reports call the student: its family (its shape is in `spec`), or a named architecture's name."""
        return self.arch if self.family == "named" else self.family

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        extra = {"spec": self.spec} if self.family != "named" else {}
        model = create_model(self.arch, num_classes=num_classes, in_channels=in_channels, **extra)
        assert count_params(model) == self.params, "analytic parameter count drifted from the model"
        return model


@dataclass(frozen=True)
class _Budget:
    params: int
    macs: int
    num_classes: int
    in_channels: int
    input_size: int
    head_hidden: tuple[int, ...] = ()  # the teacher's hidden head widths: what a student's head may copy


def family_for(schedule: SpatialSchedule) -> Literal["resnet", "mobilenet"]:
    """`auto`: depthwise teachers (MobileNet, EfficientNet) get the depthwise family, every other a residual one."""
    return "mobilenet" if schedule.depthwise else "resnet"


def _largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """The largest v in [lo, hi] with fits(v), for a monotone `fits`; None if even lo does not fit."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _resnet_candidates(b: _Budget, schedule: SpatialSchedule,
                       macs_cap: int) -> Iterator[tuple[tuple, ResNetStudentSpec, int, int]]:
    """Every shape under both budgets, with a preference key (larger is better). Filling the parameter budget
    first; then no hidden head, a first stage of at least MIN_FIRST_WIDTH channels, depth, growth nearest to
    doubling, the most compute. Where compute binds first, the widest first stages whose last stage can still
    grow like the others: the most parameters would put all the compute in the last stage and starve the first
    ones (measured on a VGG teacher, RESULTS.md)."""
    strides = schedule.stage_strides
    n = len(strides)
    base = {"strides": strides, "stem_kernel": min(7, schedule.stem_kernel) | 1, "stem_stride": schedule.stem_stride,
            "stem_pool": schedule.stem_pool}

    def cost(spec: ResNetStudentSpec) -> tuple[int, int]:
        return resnet_student_cost(spec, b.num_classes, b.in_channels, b.input_size)

    def fits(spec: ResNetStudentSpec) -> bool:
        p, m = cost(spec)
        return p <= b.params and m <= macs_cap

    # Never deeper than the teacher (beyond one block per stage): on small feature maps every layer costs time
    # whatever its width, and a thin but deep student of a shallow teacher is slower than it (measured: the
    # digits teacher's 4 convolutions against a 13-convolution student, 2.0x instead of 3.8x at batch 64).
    depths = [d for d in (3, 2, 1) if d == 1 or 1 + 2 * d * n <= schedule.spatial_convs]
    for depth in depths:
        for growth in GROWTHS:
            for c1 in range(4, 257):
                widths = [max(1, round(c1 * growth**i)) for i in range(n - 1)]
                floor = widths[-1] if widths else c1
                # This iteration's widths and depth, bound here: the closures below run within the iteration.
                def spec_with(last: int, hidden: tuple[int, ...] = (), *, widths: list[int] = widths,
                              depth: int = depth) -> ResNetStudentSpec:
                    return ResNetStudentSpec(widths=(*widths, last), blocks=(depth,) * n, head_hidden=hidden, **base)
                if not fits(spec_with(floor)):
                    break  # wider first stages only cost more
                last = _largest(floor, 64 * floor, lambda w: fits(spec_with(w)))
                spec = spec_with(last)
                params, macs = cost(spec)
                if params < MIN_FILL * b.params:
                    spec = _with_teacher_like_head(spec, b, fits, cost)
                    params, macs = cost(spec)
                shape = (c1 >= MIN_FIRST_WIDTH, depth, -abs(growth - 2))
                if params >= MIN_FILL * b.params:
                    yield (True, not spec.head_hidden, *shape, macs), spec, params, macs
                else:  # compute binds first
                    grows_alike = spec.widths[-1] >= round(floor * growth)
                    yield (False, grows_alike, *shape, c1, params, macs), spec, params, macs


def _with_teacher_like_head(spec: ResNetStudentSpec, b: _Budget, fits: Callable[[ResNetStudentSpec], bool],
                            cost: Callable[[ResNetStudentSpec], tuple[int, int]]) -> ResNetStudentSpec:
    """Where compute stopped the last stage short of the parameter budget: hidden head layers hold the rest at one
    multiply-add per parameter, but only as many and as wide as the teacher's own head has (none for a ResNet),
    so the budget is filled with capacity of a shape the teacher uses, not padding. The most parameters wins."""
    best, best_params = spec, cost(spec)[0]
    floor = spec.widths[-2] if len(spec.widths) > 1 else spec.widths[0]
    for layers in range(1, len(b.head_hidden) + 1):
        def with_head(width: int, last: int = floor, layers: int = layers) -> ResNetStudentSpec:
            return spec.model_copy(update={"widths": (*spec.widths[:-1], last), "head_hidden": (width,) * layers})
        width = _largest(1, min(max(b.head_hidden), b.params), lambda h: fits(with_head(h)))
        if width is None or width < b.num_classes:
            continue
        last = _largest(floor, max(floor, spec.widths[-1]), lambda w, width=width: fits(with_head(width, w)))
        candidate = with_head(width, last)
        params = cost(candidate)[0]
        if params > best_params:
            best, best_params = candidate, params
        if params >= MIN_FILL * b.params:
            break
    return best


def _mobilenet_candidates(b: _Budget, schedule: SpatialSchedule,
                          macs_cap: int) -> Iterator[tuple[tuple, MobileNetStudentSpec, int, int]]:
    """Width multipliers on a grid, two blocks per stage or (where compute is tight) one; the last 1x1
    convolution fills the rest. Prefers two blocks, then a body of about 60 % of the parameters (the seed's
    proportions), then more compute."""
    for repeats, width in itertools.product((2, 1), [round(0.05 * i, 2) for i in range(1, 61)]):
        spec = MobileNetStudentSpec(width=width, last_channels=1, down_strides=schedule.stage_strides[1:], repeats=repeats,
                                    stem_stride=schedule.stem_stride, stem_pool=schedule.stem_pool)
        body_params, _, last_in, _ = mobilenet_body_cost(spec, b.in_channels, b.input_size)
        if body_params > b.params:
            continue

        def fits(h: int, *, spec: MobileNetStudentSpec = spec) -> bool:  # this iteration's spec, as _largest runs now
            p, m = mobilenet_student_cost(spec.model_copy(update={"last_channels": h}), b.num_classes, b.in_channels,
                                          b.input_size)
            return p <= b.params and m <= macs_cap

        h = _largest(1, b.params, fits)
        if h is None or h < last_in:
            continue
        spec = spec.model_copy(update={"last_channels": h})
        params, macs = mobilenet_student_cost(spec, b.num_classes, b.in_channels, b.input_size)
        if params >= MIN_FILL * b.params:
            yield (repeats, -abs(body_params / b.params - 0.6), macs), spec, params, macs


_SEARCH = {"resnet": _resnet_candidates, "mobilenet": _mobilenet_candidates}


def plan_student(
    family: StudentFamily,
    ratio: float,
    teacher: ModelProfile,
    num_classes: int,
    in_channels: int,
    macs_ratio: float | None = None,
) -> StudentPlan:
    """The student of `family` (or the teacher's own kind for `auto`) within both budgets; a clear error naming
    what would work when none exists."""
    if not 0 < ratio < 1:
        raise CompressorError(f"--ratio must be in (0, 1), got {ratio}")
    macs_ratio = ratio if macs_ratio is None else macs_ratio
    if not (macs_ratio > 0 and math.isfinite(macs_ratio)):
        raise CompressorError(f"--macs-ratio must be a positive number, got {macs_ratio}")
    if family == "auto":
        family = family_for(teacher.schedule)
    if family not in _SEARCH:
        raise CompressorError(f"unknown student family {family!r}; choose from auto, {', '.join(_SEARCH)}")
    budget = _Budget(int(ratio * teacher.params), int(macs_ratio * teacher.macs), num_classes, in_channels,
                     teacher.schedule.input_size, teacher.head_hidden)
    search = _SEARCH[family]
    try:
        best = max(search(budget, teacher.schedule, budget.macs), key=lambda c: c[0], default=None)
    except ValueError as exc:  # a schedule the family cannot follow (e.g. too many downsampling stages)
        raise CompressorError(f"a {family} student cannot follow this teacher's spatial schedule: {exc}") from None
    if best is None:
        cheapest = min((c[3] for c in search(budget, teacher.schedule, 2**62) if c[2] >= MIN_FILL * budget.params), default=None)
        if cheapest is None:
            other = "mobilenet" if family == "resnet" else "resnet"
            raise CompressorError(
                f"ratio {ratio} leaves a budget of {budget.params:,} parameters, too small for a {family} student "
                f"with {num_classes} classes; raise --ratio or try --student {other}"
            )
        needed = math.ceil(1000 * cheapest / teacher.macs) / 1000
        raise CompressorError(
            f"no {family} student with {ratio:g} of the teacher's parameters runs within {macs_ratio:g} of its "
            f"multiply-adds ({budget.macs:,}); the cheapest needs --macs-ratio {needed:g} ({cheapest:,} MACs)"
        )
    _, spec, params, macs = best
    return StudentPlan(family, FAMILY_ARCHS[family], spec.model_dump(mode="json"), params, macs, budget.params, budget.macs,
                       _shortfall(params, budget, teacher, macs_ratio))


def _shortfall(params: int, budget: _Budget, teacher: ModelProfile, macs_ratio: float) -> str | None:
    if params >= MIN_FILL * budget.params:
        return None
    layers = len(budget.head_hidden)
    head = (f"a head no larger than the teacher's ({layers} hidden layer{'s' if layers > 1 else ''} of at most "
            f"{max(budget.head_hidden):,})" if budget.head_hidden else "no hidden head layer, as the teacher has none")
    return (f"the compute budget binds first: the student holds {params / teacher.params:.3f} of the teacher's parameters, "
            f"not the {budget.params / teacher.params:.3f} the ratio allows, within {macs_ratio:g} of its multiply-adds "
            f"and with {head}; --macs-ratio raises it")


def named_student(name: str, teacher: ModelProfile, num_classes: int, in_channels: int) -> StudentPlan:
    """A registered architecture taken as it is (e.g. WRN-16-1 for a WRN-40-2 teacher, the published pair); it
    must still be smaller than its teacher, or there is nothing to compress."""
    try:
        model = create_model(name, num_classes=num_classes, in_channels=in_channels)
    except KeyError as exc:
        raise CompressorError(str(exc.args[0])) from None
    except TypeError:
        raise CompressorError(f"{name!r} cannot be built from a class count alone; name a registered architecture") from None
    params, macs = _smaller_than_teacher(model, teacher, in_channels, f"student {name}")
    return StudentPlan("named", name, {}, params, macs, params, macs)


def _smaller_than_teacher(model: nn.Module, teacher: ModelProfile, in_channels: int, what: str) -> tuple[int, int]:
    """A student taken as it is: its parameters and multiply-adds at the teacher's input size, refused unless it
    has fewer parameters than the teacher (otherwise there is nothing to compress)."""
    size = teacher.schedule.input_size
    params, macs = count_params(model), count_macs(model, (in_channels, size, size))
    if params >= teacher.params:
        raise CompressorError(f"{what} has {params:,} parameters, not fewer than the teacher's {teacher.params:,}")
    return params, macs


def given_student(arch: str | None, spec: dict, ratio: float, macs_ratio: float | None, teacher: ModelProfile,
                  num_classes: int, in_channels: int) -> StudentPlan:
    """A planned family's student of a shape given as it is (a plan's `spec`, as a run's config.json records it):
    how two shapes are compared on one teacher, and how a resumed run gets its student back (the same plan, note
    included, as the search is deterministic). Only the student's being smaller than its teacher is required."""
    family = next((f for f, a in FAMILY_ARCHS.items() if a == arch), None)
    if family is None:
        raise CompressorError(f"a student spec needs its architecture: one of {', '.join(FAMILY_ARCHS.values())}, "
                              f"got {arch!r}")
    try:
        spec = _SPEC_TYPES[family](**spec).model_dump(mode="json")
    except ValidationError as exc:
        raise CompressorError(f"the student spec does not describe a {family} student: {first_problem(exc)}") from None
    except TypeError as exc:  # not a mapping of settings
        raise CompressorError(f"the student spec does not describe a {family} student: {first_line(exc)}") from None
    try:
        planned = plan_student(family, ratio, teacher, num_classes, in_channels, macs_ratio)
    except CompressorError:
        planned = None
    if planned is not None and planned.spec == spec:
        return planned  # a resumed run: the plan, its budgets and its note
    model = create_model(arch, num_classes=num_classes, in_channels=in_channels, spec=spec)
    params, macs = _smaller_than_teacher(model, teacher, in_channels, "the given student")
    macs_ratio = ratio if macs_ratio is None else macs_ratio
    short = (f"the student's shape was given, not planned: it holds {params / teacher.params:.3f} of the teacher's "
             f"parameters, not the {ratio:g} the ratio allows" if params < MIN_FILL * int(ratio * teacher.params) else None)
    return StudentPlan(family, arch, spec, params, macs, int(ratio * teacher.params), int(macs_ratio * teacher.macs), short)


def student_from_safetensors(path: str | Path) -> nn.Module:
    """The student a run saved as `student.safetensors`, rebuilt from the architecture, spec, class and channel
    counts in its metadata, in eval mode. Data only: nothing in the file runs. (The counts cannot be read from
    the weights: safetensors stores them by name, not in the order the layers run.)"""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        spec = json.loads(meta.get("spec") or "{}")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CompressorError(f"cannot read {path}: {exc}") from None
    if not meta.get("arch"):
        raise CompressorError(f"{path} has no student architecture in its metadata (not written by a run)")
    try:
        num_classes, in_channels = int(meta["num_classes"]), int(meta["in_channels"])
    except (KeyError, ValueError):
        raise CompressorError(f"{path} does not record its class and channel counts (written before they were)") from None
    extra = {"spec": spec} if spec else {}
    try:
        model = create_model(meta["arch"], num_classes=num_classes, in_channels=in_channels, **extra)
        model.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CompressorError(f"{path} does not match its architecture {meta['arch']!r}: {first_line(exc)}") from None
    return model.eval()
