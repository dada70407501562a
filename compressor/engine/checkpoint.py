"""Checkpoint files: written atomically, in the background, and read back safely (`weights_only=True`)."""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from compressor.atomic import save_atomically
from compressor.errors import CompressorError, disk_full


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically, so a crash mid-save never leaves a truncated checkpoint behind; a full disk is an OSError."""
    save_atomically(state, path)


def load_checkpoint(path: Path, device: torch.device) -> dict:
    return torch.load(path, map_location=device, weights_only=True)


def checkpoint_step(path: Path) -> int | None:
    """The round a checkpoint file was written at, read without loading its tensors (memory-mapped); None if
    there is no readable checkpoint."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return None


def host_copy(obj):
    """A checkpoint state with every tensor copied to host memory, so the loop may go on changing its own."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Checkpoints written by a background thread: the loop waits for the copy to host memory, not for the
    disk (a GPU run's pool alone can be 2 GiB). One write at a time; `wait()` before anything reads the files
    or the run ends, and a failed write is raised there."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def save(self, paths: list[Path], state: dict) -> None:
        self.wait()
        snapshot = host_copy(state)
        self.thread = threading.Thread(target=self._write, args=(paths, snapshot), name="checkpoint-writer")
        self.thread.start()

    def _write(self, paths: list[Path], snapshot: dict) -> None:
        try:
            for path in paths:
                save_checkpoint(path, snapshot)
        except BaseException as exc:  # raised in the loop's thread by wait()
            self.error = exc

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            if disk_full(error):
                raise error  # the run's own answer to a full disk: exit code NO_SPACE, resumable
            raise CompressorError(f"could not write a checkpoint: {error}") from error
