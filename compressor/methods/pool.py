"""The pool of every synthetic image a run has made, as uint8 pixels in a memory-mapped file.

Synthesis is the expensive half of data-free distillation; the strongest published methods (CMI, Fast,
NAYER) keep every synthesised batch and let the student sample from all of them, so each image is reused
tens of times. Pixels are stored as bytes (50,000 CIFAR images are 150 MB) in a file in the run folder,
so a pool larger than memory works the same way as a small one, through the page cache.

Exact resume: a file-backed pool is append-only until it is full, so a checkpoint needs only its size; once
it has wrapped around, slots are overwritten after the checkpoint, and the checkpoint carries the pool's
bytes. On a GPU a pool of up to 2 GiB lives in device memory instead (its checkpoint carries the bytes).

The file is sparse, and writing into a memory-mapped hole on a full disk is SIGBUS: the process dies with no
message and no checkpoint. So the disk blocks of every slot are reserved (posix_fallocate) before it is
written: a full disk is then an OSError ("No space left on device") that the run reports and a resume survives.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

# On a GPU a pool up to this size lives in device memory: no host round trip, and no sync, per round.
DEVICE_POOL_BYTES = 2 << 30

CPU = torch.device("cpu")


class SyntheticPool:
    def __init__(self, capacity: int, path: Path, device: torch.device = CPU) -> None:
        self.capacity = capacity
        self.path = Path(path)
        self.device = device
        self.data: torch.Tensor | None = None  # capacity x C x H x W, uint8: file-backed, or on the GPU
        self.size = 0
        self.cursor = 0
        self.wrapped = False

    @property
    def file_backed(self) -> bool:
        return self.data is not None and self.data.device.type == "cpu"

    def _allocate(self, shape: tuple[int, ...]) -> None:
        numel = self.capacity * int(torch.Size(shape).numel())
        if self.device.type == "cuda" and numel <= DEVICE_POOL_BYTES:
            self.data = torch.empty((self.capacity, *shape), dtype=torch.uint8, device=self.device)
            return
        with open(self.path, "a+b") as f:  # keeps what a resumed run wrote; grows a new file (sparse)
            f.truncate(max(numel, f.seek(0, 2)))
            if self.size:  # the slots a resumed run reads, or (wrapped) rewrites from its checkpoint
                os.posix_fallocate(f.fileno(), 0, self.size * int(torch.Size(shape).numel()))
        self.data = torch.from_file(str(self.path), shared=True, size=numel, dtype=torch.uint8).view(self.capacity, *shape)

    def add(self, pixels: torch.Tensor) -> None:
        """Store images given as pixels in [0, 1] (N x C x H x W, any device)."""
        if self.capacity <= 0:
            return
        as_bytes = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        if self.data is None:
            self._allocate(tuple(as_bytes.shape[1:]))
        as_bytes = as_bytes.to(self.data.device)
        for chunk in as_bytes.split(self.capacity):
            n = chunk.shape[0]
            self._reserve(self.cursor, n)
            idx = (torch.arange(n, device=self.data.device) + self.cursor) % self.capacity
            self.data[idx] = chunk
            self.wrapped = self.wrapped or self.size + n > self.capacity  # slots written before are overwritten
            self.cursor = (self.cursor + n) % self.capacity
            self.size = min(self.capacity, self.size + n)

    def _reserve(self, first: int, n: int) -> None:
        """Disk blocks for slots first … first+n-1 (wrapping), before they are written through the memory map."""
        if not self.file_backed or self.wrapped:  # once wrapped, every slot has been written, so has its blocks
            return
        per_image = int(self.data.shape[1:].numel())
        end = min(first + n, self.capacity)
        with open(self.path, "r+b") as f:
            os.posix_fallocate(f.fileno(), first * per_image, (end - first) * per_image)
            if first + n > self.capacity:
                os.posix_fallocate(f.fileno(), 0, (first + n - self.capacity) * per_image)

    def sample(self, n: int, device: torch.device) -> torch.Tensor:
        """n images drawn uniformly from the whole pool, as pixels in [0, 1] on `device`."""
        assert self.data is not None and self.size > 0, "sample from an empty pool"
        idx = torch.randint(0, self.size, (n,), device=self.data.device)
        return self.data[idx].to(device, non_blocking=True).float().div_(255)

    def state_dict(self) -> dict:
        keep_bytes = self.data is not None and (self.wrapped or not self.file_backed)
        return {
            "size": self.size, "cursor": self.cursor, "wrapped": self.wrapped,
            "shape": list(self.data.shape[1:]) if self.data is not None else None,
            "bytes": self.data[: self.size].to("cpu", copy=True) if keep_bytes else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.size, self.cursor, self.wrapped = int(state["size"]), int(state["cursor"]), bool(state["wrapped"])
        if state["shape"] is None:
            return
        needed = self.size * int(torch.Size(state["shape"]).numel())
        if state["bytes"] is None and (not self.path.is_file() or self.path.stat().st_size < needed):
            raise FileNotFoundError(f"the synthetic pool {self.path} is missing or truncated; cannot resume exactly")
        self._allocate(tuple(state["shape"]))
        if state["bytes"] is not None:
            self.data[: self.size] = state["bytes"].to(self.data.device)
