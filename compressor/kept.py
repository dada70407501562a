"""Run something on modules and put them back as they were: what a trial round and a CUDA-graph capture need."""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn


@contextlib.contextmanager
def kept(modules: list[nn.Module], rng_device: torch.device | None = None):
    """Within, anything may change `modules`; after, their weights and buffers (BatchNorm statistics), training
    modes and which parameters require grad are as before, and their gradients are gone. With `rng_device`, the
    CPU's random state and that device's (if CUDA) are put back too, so that the run draws what it would have."""
    saved = [(copy.deepcopy(m.state_dict()), m.training, [p.requires_grad for p in m.parameters()]) for m in modules]
    cuda = rng_device is not None and rng_device.type == "cuda"
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state(rng_device) if cuda else None) if rng_device else None
    try:
        yield
    finally:
        for m, (state, training, needs_grad) in zip(modules, saved, strict=True):
            m.load_state_dict(state)
            m.train(training)
            for p, flag in zip(m.parameters(), needs_grad, strict=True):
                p.requires_grad_(flag)
            m.zero_grad(set_to_none=True)
        if rng is not None:
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], rng_device)
