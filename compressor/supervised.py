"""Plain supervised training on labelled images: how the demo (and the benchmarks) get a teacher.

Not part of data-free distillation; it exists because no teacher weights can be downloaded here.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.augment import host_to_device, random_crop_flip
from compressor.data import Split
from compressor.evaluate import normalise
from compressor.methods.losses import kl_at_temperature

CPU = torch.device("cpu")


def train_classifier(
    model: nn.Module,
    train: Split,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    pad: int = 2,
    flip: bool = False,
    seed: int = 0,
    device: torch.device = CPU,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    log=None,
    eval_every: int | None = None,
    on_eval: Callable[[int], None] | None = None,
) -> nn.Module:
    """SGD + one-cycle schedule for `epochs` passes or exactly `steps` updates.

    With `teacher`, the loss is KD at `temperature` on real images instead of labels. `on_eval(step)` is
    called every `eval_every` updates and after the last (benchmarks record accuracy curves with it).
    """
    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    # On a GPU: the whole split lives on the device (CIFAR-10 is 600 MB as float32), so a step copies nothing
    # from the host; bf16 autocast and channels-last let cuDNN use the tensor cores. On the CPU all three are
    # no-ops and the run is the same as ever.
    cuda = device.type == "cuda"
    images, labels = train.images.to(device), train.labels.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps_per_epoch = max(1, len(train.labels) // batch_size)
    total_steps = steps if steps is not None else epochs * steps_per_epoch
    epochs = -(-total_steps // steps_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.15)
    done = 0
    for epoch in range(epochs):
        perm = host_to_device(torch.randperm(len(train.labels), generator=g), device)  # one copy per epoch, not per step
        total = torch.zeros((), device=device)  # summed on the device: no host sync per step
        for i in range(min(steps_per_epoch, total_steps - done)):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = normalise(random_crop_flip(images[idx], pad, flip, g), mean, std)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = _loss(model, x, labels[idx], teacher, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
            done += 1
            if on_eval and (done == total_steps or (eval_every and done % eval_every == 0)):
                on_eval(done)
                model.train()
        if log:
            log(f"epoch {epoch + 1}/{epochs}: loss {total.item() / max(1, i + 1):.4f}")
    return model.eval()


def _loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, teacher: nn.Module | None,
          temperature: float) -> torch.Tensor:
    """Cross-entropy on the labels, or with a teacher KD at `temperature` on the same real images."""
    logits = model(x)
    if teacher is None:
        return F.cross_entropy(logits.float(), labels)
    with torch.no_grad():
        t_logits = teacher(x)
    return kl_at_temperature(logits.float(), t_logits.float(), temperature)
