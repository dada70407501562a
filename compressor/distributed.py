"""Several processes, one run: what `torchrun` starts, on torch.distributed (NCCL on GPUs, gloo on CPUs).

Without torchrun (no WORLD_SIZE in the environment) every function here is a no-op on a world of one, so the
single-process loop is the same code. Under torchrun:
- every rank holds the same student and generator (built from one seed); the student trains under
  DistributedDataParallel and the generator's gradients are averaged by `average_gradients`;
- the synthesis batch is one global batch split across ranks (`local_slice` of one shared noise draw), and the
  terms that describe a whole batch (batch-norm statistics, class balance) use `global_batch_mean`, whose
  all-reduce is differentiable: the objective, and its gradient, do not depend on the number of ranks;
- rank 0 alone evaluates, selects, writes and exports; a checkpoint carries every rank's random state.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from compressor.errors import CompressorError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), else a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def elastic_restart() -> int:
    """How often torchrun has restarted this group of workers after a failure (`--max-restarts`; 0: never). A
    restarted group runs the same command again, which must continue from the last checkpoint, not start over."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def start(world: World, device: torch.device, timeout_s: float = 1800) -> torch.device:
    """Join the process group (once per process); the device this rank computes on."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        if torch.cuda.device_count() <= world.local_rank:
            raise CompressorError(f"rank {world.rank} wants cuda:{world.local_rank} but this machine has "
                                  f"{torch.cuda.device_count()} GPUs: lower --nproc-per-node")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return device


def stop(together: bool = True) -> None:
    """Leave the process group. `together`: first wait for every rank (rank 0 finishes its evaluation and export
    while the others are done), since a rank tearing its connections down early can abort a peer still using
    them. Not after Ctrl-C, when ranks may be anywhere. What still holds the group (a finished run's DDP wrapper,
    in a reference cycle) is collected first: a gloo group last freed during interpreter shutdown can abort the
    process (exit -6 after a completed run, seen once under load)."""
    if dist.is_available() and dist.is_initialized():
        if together and dist.get_world_size() > 1:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


_local_only = False


@contextlib.contextmanager
def local_only():
    """Within: this rank computes alone (no collectives), e.g. while it times trial batches of its own size."""
    global _local_only
    before, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = before


def active() -> bool:
    return not _local_only and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local_slice(global_batch: torch.Tensor) -> torch.Tensor:
    """This rank's share of a batch every rank drew identically (equal shares; the caller checks divisibility)."""
    if not active():
        return global_batch
    n = global_batch.shape[0] // dist.get_world_size()
    start = local_start(n)
    return global_batch[start : start + n]


def local_start(n_local: int) -> int:
    """Where this rank's share of `n_local` rows begins in the global batch (what `all_gather` returns)."""
    return dist.get_rank() * n_local if active() else 0


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) with a gradient: every rank's loss depends on every rank's share, so the backward sums the
    incoming gradients across ranks too (torch.distributed.nn.functional.all_reduce, which does this, is deprecated)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def global_batch_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over dimension 0 of the global batch (equal shares per rank), differentiable through the all-reduce.

    Every rank computes the same value; after `average_gradients` divides by the number of ranks, each rank's
    images have received exactly their share of the global term's gradient."""
    if not active():
        return x.mean(dim=0)
    return _SumAcrossRanks.apply(x.sum(dim=0)) / (x.shape[0] * dist.get_world_size())


def local_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of this rank's N x C x H x W batch, in one fused pass."""
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    return mean.float(), var.float()


def combine_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch's mean and variance from every rank's (equal-sized shares): one differentiable all-reduce
    of [mean, var, mean²] (the variance of the union is the mean of the variances plus the variance of the means).
    Any number of layers' moments may be concatenated into one call, which is what keeps this cheap: latency,
    not volume, is what many small all-reduces cost."""
    if not active():
        return mean, var
    n = mean.numel()
    averaged = _SumAcrossRanks.apply(torch.cat([mean, var, mean.square()])) / dist.get_world_size()
    global_mean, mean_of_vars, mean_of_squares = averaged[:n], averaged[n : 2 * n], averaged[2 * n :]
    return global_mean, mean_of_vars + (mean_of_squares - global_mean.square()).clamp_min(0)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises with the global batch's statistics under torchrun, on CPUs (gloo) as on GPUs.

    The generator's BatchNorm is part of what it computes: with per-rank statistics the same noise would give
    other images on 2 ranks than on 1. (torch.nn.SyncBatchNorm does this on GPUs only.) Same state dict as
    nn.BatchNorm2d; outside torchrun, or in eval mode, it is nn.BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        mean, var = combine_moments(*local_moments(x))  # of the global batch
        if self.track_running_stats:
            with torch.no_grad():
                n = x.shape[0] * dist.get_world_size() * x.shape[2] * x.shape[3]
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_((var * n / max(n - 1, 1)).to(self.running_var.dtype), self.momentum)
        y = (x.float() - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def average_gradients(module: nn.Module) -> None:
    """The mean of every rank's gradients, in place (what DDP does for the student, done for the generator)."""
    if not active():
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor, concatenated along dimension 0 in rank order (the global batch)."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_objects(obj):
    """Every rank's `obj` (small, picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: nn.Module, buffers_only: bool = False) -> None:
    """Rank 0's parameters and buffers on every rank (one seed builds the same weights; this makes it certain).

    `buffers_only`: after the student's steps, its BatchNorm running statistics, which each rank updated from its
    own batches; the generator's adversarial term reads them (eval mode), and a checkpoint holds rank 0's."""
    if not active():
        return
    for t in [*([] if buffers_only else module.parameters()), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def digest(module: nn.Module) -> float:
    """A cheap fingerprint of a module's parameters: ranks whose students diverged give different numbers.
    (Buffers are left out: each rank's BatchNorm running statistics follow its own last batch, and DDP
    broadcasts rank 0's at every forward.)"""
    with torch.no_grad():
        return float(sum((p.detach().double() * (i + 1)).sum() for i, p in enumerate(module.parameters())))
