"""One registry for every architecture we can build, in the spirit of timm.

`create_model(name, **kw)` is the only way in. Teacher detection walks the
*inferable* entries (those that can be built from ``num_classes`` and
``in_channels`` alone) and compares their state-dict shapes with a checkpoint.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: ModelFactory
    family: str
    inferable: bool


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    factory: ModelFactory,
    *,
    family: str,
    inferable: bool = True,
) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(name, factory, family, inferable)


def _ensure_loaded() -> None:
    # Importing the architecture modules registers their constructors.
    from compressor.models import cifar_resnet, cifar_vgg, small_cnn, student_mobilenet, student_resnet, torchvision_models  # noqa: F401


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, *, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    return get_entry(name).factory(num_classes=num_classes, in_channels=in_channels, **kwargs)


def list_models(*, inferable_only: bool = False) -> list[str]:
    _ensure_loaded()
    return [n for n, e in _REGISTRY.items() if e.inferable or not inferable_only]
