"""Every torchvision classification ResNet / ResNeXt / WideResNet / VGG /
MobileNet / EfficientNet / DenseNet, built without weights (nothing is ever
downloaded at run time), for any number of input channels."""
from __future__ import annotations

from functools import partial

import torch.nn as nn
import torchvision

from compressor.models.registry import register_model

# Registration order is detection order: the most common teachers first, the slowest to build last.
_PREFIXES = ("resnet", "wide_resnet", "resnext", "mobilenet", "vgg", "densenet", "efficientnet")


def _build(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        adapt_first_conv(model, in_channels)
    return model


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first convolution by one taking `in_channels` (grey or RGBA teachers): the change users make
    to torchvision models, so a checkpoint saved that way has exactly this model's keys and shapes."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, child.groups if child.groups == 1 else in_channels, child.bias is not None,
                ))
                return
    raise ValueError("the model has no convolution to adapt to other input channels")


_ALL = torchvision.models.list_models(module=torchvision.models)
for _prefix in _PREFIXES:
    for _name in _ALL:
        if _name.startswith(_prefix):
            register_model(_name, partial(_build, _name), family="torchvision")
