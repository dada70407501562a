"""`--batch-size auto`: the largest power of two that fits in memory and still makes synthesis faster.

Each candidate runs one timed trial round (a generator step and a student step, forward and backward). On CUDA
each is preceded by an untimed warm-up, since cuDNN tunes its kernels for every new shape; on the CPU only the
first is, for the one-time set-up a process pays (nothing there is tuned per shape, and at 224 px each trial
round is seconds of work). Doubling stops at the first out-of-memory error, when the next size would not fit in
the memory left (CUDA: the device's free memory; CPU: the machine's available memory, from the peak
resident size a trial added), or when images per second rose by less than 10 %. The caller restores every weight
and random state a trial touched, so choosing a batch size changes nothing else about the run.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Callable

import psutil
import torch
from pydantic import BaseModel

MIN_GAIN = 1.10  # a doubling must buy at least this much throughput


class BatchTrial(BaseModel):
    batch_size: int
    images_per_second: float | None
    fits: bool


class BatchSizeChoice(BaseModel):
    batch_size: int
    reason: str
    trials: list[BatchTrial]


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def choose_batch_size(trial: Callable[[int], None], device: torch.device, start: int = 16, limit: int = 4096) -> BatchSizeChoice:
    trials: list[BatchTrial] = []
    best, best_ips, reason = None, 0.0, f"reached the search limit of {limit}"
    size = start
    while size <= limit:
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rss_before = _peak_rss_bytes()
            if device.type == "cuda" or not trials:
                trial(size)  # warm-up: cuDNN's autotuning for this shape; the process's first-call set-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tic = time.perf_counter()
            trial(size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ips = size / (time.perf_counter() - tic)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            trials.append(BatchTrial(batch_size=size, images_per_second=None, fits=False))
            reason = f"{size} ran out of device memory"
            break
        trials.append(BatchTrial(batch_size=size, images_per_second=ips, fits=True))
        if best is not None and ips < best_ips * MIN_GAIN:
            reason = f"{size} was less than {int(100 * (MIN_GAIN - 1))} % faster than {best}"
            break
        best, best_ips = size, ips
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            needed = torch.cuda.max_memory_allocated(device)
        else:
            free = psutil.virtual_memory().available
            needed = max(_peak_rss_bytes() - rss_before, 1)
        if 2 * needed > 0.8 * free:  # the next size would need about twice what this one added
            reason = f"{2 * size} would not fit in the {free / 2**30:.1f} GiB of free memory"
            break
        size *= 2
    if best is None:
        raise torch.OutOfMemoryError(f"even a batch of {start} does not fit in memory")
    return BatchSizeChoice(batch_size=best, reason=reason, trials=trials)
