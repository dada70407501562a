"""A residual student started from its residual teacher's own weights instead of random ones.

The student of a ResNet teacher has the teacher's stem and stages, each narrower and with fewer blocks. Every
student layer can therefore take the teacher's weights at a subset of its channels, as channel pruning does:
each stage keeps the channels of its residual stream that the teacher's BatchNorm layers scale most (summed
over every layer that writes to that stream), each block the hidden channels its first BatchNorm scales most,
and each stage its first block (which changes width and stride) and the blocks whose residual branches are
strongest. No data is needed to choose them, and the student starts with the teacher's filters instead of
noise; at half the width it does not yet classify (the pruned sums no longer fit the copied statistics), and
distillation repairs that within its first rounds.

Only plain BasicBlock ResNets are handled (the CIFAR family and torchvision's ResNet-18/34); for any other pair
`inherit_teacher_weights` says why and leaves the student as it was.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from compressor.models.cifar_resnet import BasicBlock as CifarBasicBlock


@dataclass
class _Block:
    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    conv2: nn.Conv2d
    bn2: nn.BatchNorm2d
    shortcut: tuple[nn.Conv2d, nn.BatchNorm2d] | None


@dataclass
class _ResNetView:
    """What the mapping needs of a BasicBlock ResNet, whichever code defined it."""

    stem: tuple[nn.Conv2d, nn.BatchNorm2d]
    stages: list[list[_Block]]
    head: nn.Linear


def _is_torchvision_basic_block(module: nn.Module) -> bool:
    """Told by name: importing torchvision to ask would add seconds to every run that has no use for it."""
    return type(module).__name__ == "BasicBlock" and type(module).__module__ == "torchvision.models.resnet"


def _block(module: nn.Module) -> _Block | None:
    """The block's layers, for post-activation basic blocks only (conv, BN, ReLU, conv, BN, add): a pre-activation
    block (WideResNet's) has layers of the same names whose BatchNorms sit elsewhere."""
    if isinstance(module, CifarBasicBlock):
        short = module.shortcut
    elif _is_torchvision_basic_block(module):
        short = module.downsample
    else:
        return None
    shortcut = (short[0], short[1]) if short is not None and len(short) == 2 else None
    return _Block(module.conv1, module.bn1, module.conv2, module.bn2, shortcut)


def _view(model: nn.Module) -> _ResNetView | None:
    """The student's (stem Sequential, stages, head) or a teacher's (conv1, bn1, layer1..4, linear/fc) layout."""
    if hasattr(model, "stem") and hasattr(model, "stages"):
        stem, stages, head = (model.stem[0], model.stem[1]), list(model.stages), model.head
    elif all(hasattr(model, n) for n in ("conv1", "bn1", "layer1")):
        stem = (model.conv1, model.bn1)
        stages = [s for s in (getattr(model, f"layer{i}", None) for i in range(1, 5)) if isinstance(s, nn.Sequential)]
        head = getattr(model, "linear", None) or getattr(model, "fc", None)
    else:
        return None
    blocks = [[_block(b) for b in stage] for stage in stages]
    if not isinstance(head, nn.Linear) or any(b is None for stage in blocks for b in stage):
        return None
    return _ResNetView(stem, blocks, head)


def _strongest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in their original order."""
    return scores.topk(k).indices.sort().values


def _plan(student: _ResNetView, teacher: _ResNetView) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(student tensor, the teacher's values for it) for every weight and statistic of the student."""
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def conv(dst: nn.Conv2d, src: nn.Conv2d, out: torch.Tensor, inp: torch.Tensor) -> None:
        pairs.append((dst.weight, src.weight[out][:, inp]))

    def bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx: torch.Tensor) -> None:
        pairs.extend((getattr(dst, n), getattr(src, n)[idx]) for n in ("weight", "bias", "running_mean", "running_var"))

    if len(student.stages) != len(teacher.stages):
        raise ValueError(f"the student has {len(student.stages)} stages, the teacher {len(teacher.stages)}")
    stream = torch.arange(teacher.stem[0].in_channels)
    for i, (s_stage, t_stage) in enumerate(zip(student.stages, teacher.stages, strict=True)):
        inp = stream
        writers = [b.bn2 for b in t_stage] + [teacher.stem[1] if i == 0 else t_stage[0].shortcut[1]]
        stream = _strongest(sum(w.weight.abs() for w in writers), s_stage[0].bn2.num_features)
        if i == 0:
            conv(student.stem[0], teacher.stem[0], stream, inp)
            bn(student.stem[1], teacher.stem[1], stream)
            inp = stream
        branch = torch.stack([b.bn2.weight.abs().mean() for b in t_stage[1:]]) if len(t_stage) > 1 else torch.zeros(0)
        kept = [0, *(_strongest(branch, len(s_stage) - 1) + 1).tolist()]
        for s, t in zip(s_stage, (t_stage[j] for j in kept), strict=True):
            hidden = _strongest(t.bn1.weight.abs(), s.bn1.num_features)
            conv(s.conv1, t.conv1, hidden, inp)
            bn(s.bn1, t.bn1, hidden)
            conv(s.conv2, t.conv2, stream, hidden)
            bn(s.bn2, t.bn2, stream)
            if (s.shortcut is None) != (t.shortcut is None):
                raise ValueError("a student block and the teacher block it would copy differ in their shortcut")
            if s.shortcut is not None:
                conv(s.shortcut[0], t.shortcut[0], stream, inp)
                bn(s.shortcut[1], t.shortcut[1], stream)
            inp = stream
    pairs += [(student.head.weight, teacher.head.weight[:, stream]), (student.head.bias, teacher.head.bias)]
    return pairs


@torch.no_grad()
def inherit_teacher_weights(student: nn.Module, teacher: nn.Module) -> str | None:
    """Copy the teacher's weights into the student as the module docstring says; None when done, else why not
    (the student is then untouched)."""
    s_view, t_view = _view(student), _view(teacher)
    if s_view is None or t_view is None:
        return "only a residual student of a ResNet teacher built of basic blocks can start from the teacher's weights"
    try:
        pairs = _plan(s_view, t_view)
    except (ValueError, RuntimeError, IndexError, AttributeError, TypeError) as exc:
        return f"the student does not fit inside the teacher's layers: {exc}"
    misfit = next(((d.shape, s.shape) for d, s in pairs if d.shape != s.shape), None)
    if misfit is not None:
        return f"the student does not fit inside the teacher's layers (a {tuple(misfit[0])} tensor against {tuple(misfit[1])})"
    for dst, src in pairs:
        dst.copy_(src)
    return None
