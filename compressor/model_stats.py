"""What a model costs and how it is shaped, measured by running it once on a dummy input.

Multiply-adds come from PyTorch's own `FlopCounterMode` (every convolution, depthwise included, and every
matrix product; it agrees to the MAC with a hook counter on conv and linear layers, see the tests). The
spatial schedule is recorded at the same dispatch level rather than with module hooks, so it sees functional
convolutions and TorchScript teachers as well as `nn.Conv2d` modules: nothing here depends on layer names.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

_aten = torch.ops.aten
_CONV = {_aten.convolution.default, _aten._convolution.default}  # the second is what traced TorchScript calls
_POOL = {_aten.max_pool2d_with_indices.default, _aten.max_pool2d.default, _aten.avg_pool2d.default}
_MATMUL = {_aten.addmm.default, _aten.mm.default}  # what nn.Linear dispatches to


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class SpatialSchedule:
    """Where a network does its work: the feature-map sizes its spatial convolutions run at.

    `sizes` lists, largest first, every output size of a convolution with a kernel or stride above 1
    (1x1 stride-1 convolutions only mix channels, and squeeze-excitation ones run on pooled 1x1 maps).
    `stem_pool` is the factor of a pooling layer that follows a lone stem convolution (torchvision's
    ResNets and DenseNets: 7x7/2 then max-pool); 1 where the first stage runs at the stem's size.
    """

    input_size: int
    sizes: tuple[int, ...]
    stem_kernel: int
    stem_pool: int
    depthwise: bool  # any depthwise convolution: a MobileNet / EfficientNet-like teacher
    spatial_convs: int = 0  # how many spatial convolutions one forward pass runs (the teacher's depth)

    @property
    def stem_stride(self) -> int:
        return downsampling_factor(self.input_size, self.sizes[0])

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        """The sizes residual stages run at: every size after the stem (the pooled one first, if pooled)."""
        return self.sizes[1:] if self.stem_pool > 1 else self.sizes

    @property
    def stage_strides(self) -> tuple[int, ...]:
        s = self.stage_sizes
        return (1,) + tuple(downsampling_factor(a, b) for a, b in zip(s, s[1:], strict=False))  # consecutive pairs


def downsampling_factor(before: int, after: int) -> int:
    """The integer stride f with ceil(before / f) == after: what a padded k x k convolution of stride f does."""
    for f in range(1, before + 1):
        if math.ceil(before / f) == after:
            return f
    raise ValueError(f"no integer stride takes a {before}-pixel map to {after} pixels")


class _ScheduleRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int, int, int, bool]] = []  # kind, in size, out size, kernel, depthwise

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _CONV and args[0].dim() == 4:
            weight, stride, groups = args[1], args[3], args[8]
            kernel = max(weight.shape[-2:])
            spatial = kernel > 1 or max(stride) > 1
            depthwise = groups > 1 and groups == args[0].shape[1]
            if spatial:
                self.events.append(("conv", args[0].shape[-2], out.shape[-2], kernel, depthwise))
        elif func in _POOL and args[0].dim() == 4:
            first = out[0] if isinstance(out, tuple) else out
            self.events.append(("pool", args[0].shape[-2], first.shape[-2], 0, False))
        elif func in _MATMUL and out.dim() == 2:
            self.events.append(("linear", 0, out.shape[-1], 0, False))
        return out

    def head_hidden(self) -> tuple[int, ...]:
        """The widths of the fully-connected layers after the last convolution, the classifier excepted."""
        last_conv = max((i for i, e in enumerate(self.events) if e[0] == "conv"), default=-1)
        return tuple(e[2] for e in self.events[last_conv + 1:] if e[0] == "linear")[:-1]


@dataclass(frozen=True)
class ModelProfile:
    params: int
    macs: int
    schedule: SpatialSchedule
    head_hidden: tuple[int, ...] = ()  # hidden fully-connected widths of the head (VGG: 4096, 4096; ResNet: none)


@torch.no_grad()
def _forward_once(model: nn.Module, input_shape: tuple[int, int, int], *modes) -> None:
    """One batch-1 forward pass of zeros in eval mode under the given dispatch modes; the mode is restored."""
    was_training = model.training
    model.eval()
    try:
        device = next(iter(model.parameters()), torch.empty(0)).device
        with contextlib.ExitStack() as stack:
            for mode in modes:
                stack.enter_context(mode)
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)


def profile_model(model: nn.Module, input_shape: tuple[int, int, int]) -> ModelProfile:
    """Parameters, multiply-adds at batch 1, and spatial schedule, from one forward pass."""
    flops, recorder = FlopCounterMode(display=False), _ScheduleRecorder()
    _forward_once(model, input_shape, flops, recorder)
    convs = [e for e in recorder.events if e[0] == "conv"]
    if not convs:
        raise ValueError("the model runs no spatial convolution, so it has no spatial schedule to follow")
    sizes = tuple(sorted({e[2] for e in convs}, reverse=True))
    stem_size = convs[0][2]
    lone_stem = sum(1 for e in convs if e[2] == stem_size) == 1
    pools = [e for e in recorder.events if e[0] == "pool" and e[1] == stem_size and e[2] < stem_size]
    stem_pool = (downsampling_factor(stem_size, pools[0][2])
                 if lone_stem and pools and len(sizes) > 1 and pools[0][2] == sizes[1] else 1)
    schedule = SpatialSchedule(
        input_size=input_shape[-1], sizes=sizes, stem_kernel=convs[0][3], stem_pool=stem_pool,
        depthwise=any(e[4] for e in convs), spatial_convs=len(convs),
    )
    return ModelProfile(count_params(model), flops.get_total_flops() // 2, schedule, recorder.head_hidden())


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-adds of one forward pass at batch 1 (FlopCounterMode's flops / 2)."""
    flops = FlopCounterMode(display=False)
    _forward_once(model, input_shape, flops)
    return flops.get_total_flops() // 2
