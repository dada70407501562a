"""Every torchvision classification ResNet / ResNeXt / WideResNet / VGG /
MobileNet / EfficientNet / DenseNet, built without weights (nothing is ever
downloaded at run time)."""
from __future__ import annotations

from functools import partial

import torchvision

from compressor.models.registry import register_model

# Registration order is detection order: the most common teachers first, the slowest to build last.
_PREFIXES = ("resnet", "wide_resnet", "resnext", "mobilenet", "vgg", "densenet", "efficientnet")


def _build(name: str, num_classes: int):
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


_ALL = torchvision.models.list_models(module=torchvision.models)
for _prefix in _PREFIXES:
    for _name in _ALL:
        if _name.startswith(_prefix):
            register_model(_name, partial(_build, _name), family="torchvision", fixed_in_channels=3)
