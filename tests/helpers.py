"""Small helpers several test modules share."""
from __future__ import annotations

import torch


def randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics, so that parity and loading are checked on non-trivial normalisation too."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()
