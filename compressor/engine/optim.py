"""Optimisers, their schedules and one optimiser step: the same for the student and the generator."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from compressor.config import OptimizerConfig


def make_optimizer(params, cfg: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    """On CUDA the fused kernels: one launch per step for all parameters instead of one per tensor."""
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True, **fused)
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)


def make_schedule(opt: torch.optim.Optimizer, cfg: OptimizerConfig, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=cfg.lr * 1e-3)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module, clip: float | None,
                   sync: Callable[[nn.Module], None] | None = None) -> None:
    """`sync(module)`, if given, runs between backward and clipping (the generator's cross-rank average)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if sync is not None:
        sync(module)
    if clip:
        nn.utils.clip_grad_norm_(module.parameters(), clip)
    opt.step()
